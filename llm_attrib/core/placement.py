"""Where a model runs: its input device, its compute dtype and its embedding rows, read the same way for a model
held whole on one device and for one Accelerate has placed.

`from_pretrained(device_map=...)`, `accelerate.dispatch_model`, `cpu_offload` and `disk_offload` spread a model
over devices and attach hooks (`module._hf_hook`) that move each module's inputs to its execution device and, for
offloaded modules, load the weights for the duration of a forward, leaving them on `meta` otherwise. So the
embedding's `.weight` is not where inputs go nor something to read: inputs go to the hook's execution device,
and embedding rows are read through the embedding's forward, which the hook serves. This module is the one
place that knows; the rest of the package asks it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..errors import InvalidInputError

ROWS_PER_READ = 4096  # embedding rows read per forward when scanning the whole matrix


def _hooks(module: nn.Module) -> Iterator[object]:
    """The Accelerate hooks on one module (a `SequentialHook` holds several)."""
    hook = getattr(module, "_hf_hook", None)
    if hook is not None:
        yield from getattr(hook, "hooks", (hook,))


def _as_device(device: int | str | torch.device) -> torch.device:
    return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)


def _execution_device(module: nn.Module) -> torch.device | None:
    devices = [getattr(hook, "execution_device", None) for hook in _hooks(module)]
    return next((_as_device(d) for d in devices if d is not None), None)


def input_device(model: nn.Module) -> torch.device:
    """Where the model's input ids go: the execution device of the embedding's (or the model's) Accelerate hook,
    else the first non-offloaded entry of `hf_device_map`, else the embedding's own device."""
    embedding = model.get_input_embeddings()
    for module in (embedding, model):
        device = _execution_device(module)
        if device is not None:
            return device
    placed = [d for d in (getattr(model, "hf_device_map", None) or {}).values() if d != "disk"]
    return _as_device(placed[0]) if placed else embedding.weight.device


def compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the model's embeddings come in (a `meta` weight keeps its dtype, so offload changes nothing)."""
    return model.get_input_embeddings().weight.dtype


def execution_devices(model: nn.Module) -> list[torch.device]:
    """Every device a forward of the model computes on: its hooks' execution devices and its loaded weights'."""
    devices = {d for d in map(_execution_device, model.modules()) if d is not None}
    devices |= {p.device for p in model.parameters() if p.device.type != "meta"}
    return sorted(devices, key=str) or [input_device(model)]


@contextlib.contextmanager
def _loaded(model: nn.Module, embedding: nn.Module) -> Iterator[None]:
    """The embedding's weights loaded for the block: its own hook loads them at its forward; where an ancestor's
    hook holds them (a device map that offloads a whole block), that hook loads them here and offloads after."""
    if embedding.weight.device.type != "meta" or _offloads(embedding):
        yield
        return
    owner = [m for m in model.modules() if _offloads(m) and any(s is embedding for s in m.modules())][-1]  # innermost
    hook = owner._hf_hook
    hook.pre_forward(owner)
    try:
        yield
    finally:
        hook.post_forward(owner, None)


def embedding_rows(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The embedding's output for `ids` (any shape), read through its forward so that an offload hook serves the
    weights (a `meta` weight has no rows to index)."""
    embedding = model.get_input_embeddings()
    with torch.no_grad(), _loaded(model, embedding):
        return embedding(ids.to(input_device(model)))


def embedding_range(model: nn.Module) -> tuple[float, float]:
    """The smallest and largest value of any embedding row, read in slices through the embedding's forward."""
    embedding = model.get_input_embeddings()
    low, high = float("inf"), float("-inf")
    for start in range(0, embedding.num_embeddings, ROWS_PER_READ):
        ids = torch.arange(start, min(start + ROWS_PER_READ, embedding.num_embeddings))
        rows = embedding_rows(model, ids)
        low, high = min(low, float(rows.min())), max(high, float(rows.max()))
    return low, high


def _offloads(module: nn.Module) -> bool:
    return any(getattr(hook, "offload", False) for hook in _hooks(module))


def _covered(name: str, device_map: dict[str, object]) -> bool:
    return any(key == "" or name == key or name.startswith(key + ".") for key in device_map)


def _offloading_owner(modules: dict[str, nn.Module], tensor_name: str) -> nn.Module | None:
    """The innermost module around a tensor whose Accelerate hook loads it for a forward, if any."""
    chain = tensor_name.split(".")[:-1]
    scopes = [".".join(chain[:i]) for i in range(len(chain) + 1)]
    owners = [modules[scope] for scope in scopes if scope in modules and _offloads(modules[scope])]
    return owners[-1] if owners else None


def offloaded_bytes(model: nn.Module) -> dict[torch.device, int]:
    """Bytes of the offloaded weights, per device their hooks load them on. A backward holds all of them at
    once: autograd keeps each layer's weights from the forward for the gradient of its input."""
    modules = dict(model.named_modules())
    loaded: dict[torch.device, int] = {}
    for name, weight in model.named_parameters():
        owner = _offloading_owner(modules, name) if weight.device.type == "meta" else None
        if owner is not None:
            device = _execution_device(owner)
            loaded[device] = loaded.get(device, 0) + weight.numel() * weight.element_size()
    return loaded


def check_placement(model: nn.Module) -> None:
    """Refuse, before any work, a model whose weights cannot be used as placed: a weight on `meta` that no
    offload hook loads (the checkpoint was never loaded into it), or an `hf_device_map` that gives some module
    no device."""
    modules = dict(model.named_modules())
    device_map = getattr(model, "hf_device_map", None) or {}
    unloaded, unmapped = [], []
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if device_map and not _covered(name.rpartition(".")[0], device_map):
            unmapped.append(name)
        if tensor.device.type == "meta" and _offloading_owner(modules, name) is None:
            unloaded.append(name)
    if unloaded:
        raise InvalidInputError(
            f"{type(model).__name__} has weights on the 'meta' device with no offload hook to load them "
            f"({_listed(unloaded)}): the model was built without its weights (e.g. under init_empty_weights) and "
            "never given them. Load it with from_pretrained(..., device_map=...) or "
            "accelerate.load_checkpoint_and_dispatch(model, checkpoint, device_map=...)."
        )
    if unmapped:
        raise InvalidInputError(
            f"the model's hf_device_map gives no device to {_listed(unmapped)}; give every module a device "
            "(device_map='auto' does) and dispatch the model again with accelerate.dispatch_model."
        )


def _listed(names: list[str], limit: int = 3) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
