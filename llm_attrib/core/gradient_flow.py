"""Whether gradients flow through every layer with weights: checked on a short probe before any work.

Some quantized layers compute in kernels that autograd cannot differentiate: their output needs no gradient
although their input does, or it claims one and gets none (PyTorch's fallback for a custom op without an
autograd kernel treats it as constant), or the backward fails. The residual stream still carries a gradient
around such a layer, so a gradient method would return numbers, quietly without that layer's share. Each layer
is therefore checked on its own: its output, projected on a random direction, must have a non-zero gradient
with respect to its input.
"""

from __future__ import annotations

import torch

from ..errors import UnsupportedModelError
from .placement import embedding_rows, input_device

PROBE_TOKENS = 4


def check_gradients(model, classifier: bool) -> None:
    """Refuse a model in which some layer with weights passes no gradient from its output to its input (or whose
    backward fails), naming the first such layer. The probe runs once without gradients, as generation would (a
    layer may change at its first inference forward: bitsandbytes' CPU 4-bit repacks its weights into a layout
    with no backward), then once with them, and each layer gets one small backward."""
    probe = torch.arange(PROBE_TOKENS, device=input_device(model))[None] % model.get_input_embeddings().num_embeddings
    embeds = embedding_rows(model, probe).detach().requires_grad_(True)
    seen: list[tuple[str, torch.Tensor, torch.Tensor | None]] = []

    def watch(name: str):
        def record(module, inputs, output):
            given = next((i for i in inputs if isinstance(i, torch.Tensor) and i.requires_grad), None)
            out = output[0] if isinstance(output, tuple) else output
            if given is not None and isinstance(out, torch.Tensor):
                seen.append((f"{name} ({type(module).__name__})", given, out if out.requires_grad else None))
        return record

    kwargs = {} if classifier else {"use_cache": False}
    with torch.no_grad():
        model(inputs_embeds=embeds, **kwargs)
    handles = [module.register_forward_hook(watch(name)) for name, module in model.named_modules()
               if next(module.parameters(recurse=False), None) is not None]
    try:
        with torch.enable_grad():
            model(inputs_embeds=embeds, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    generator = torch.Generator().manual_seed(0)
    for layer, given, out in seen:
        if out is None:
            _refuse(model, f"{layer} gives no gradient (its output is computed outside autograd)")
        direction = torch.randn(out.shape, generator=generator).to(out.device)
        try:
            (gradient,) = torch.autograd.grad((out.float() * direction).sum(), given, retain_graph=True,
                                              allow_unused=True)
        except (RuntimeError, NotImplementedError) as error:  # a kernel without a backward
            _refuse(model, f"the backward of {layer} fails ({str(error).splitlines()[0][:160]})")
        if gradient is None or not bool(gradient.any()):
            _refuse(model, f"{layer} gives no gradient (its kernel has no backward)")


def _refuse(model, cause: str) -> None:
    raise UnsupportedModelError(
        f"gradients cannot flow through {type(model).__name__}: {cause}. Gradient methods need every layer to have "
        "a backward: load the model unquantized or with a quantization whose layers have one, or use "
        "method='attention'."
    )
