"""Memory: what one path point costs, and the chunk of points that fits a byte budget.

Eager attention materialises every layer's (heads x L x L) scores and probabilities, and the backward keeps
them, so memory grows with L^2: a 2000-token prompt on a 30-layer model needs gigabytes per path point. The
Attributor chooses its chunk from the bytes one point really keeps, measured on the model itself by counting
the tensors its forward saves for the backward, at short prompts (so a prompt that cannot fit stops at once
with the figures, instead of dying in the allocator minutes later). The retriever's bi-encoder still sizes
its chunk from a rough upper bound read off the config (`fit_chunk`).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from ..errors import InvalidInputError

# Tensors of size (heads x L x L) per layer: kept for the backward (scores, probabilities, the softmax's
# output reused by its gradient, the injected point) and, in the attention space, the path point's
# displacement, gradient and contribution (a 2000-token prompt on a 4-layer, 4-head Llama: estimated 2.4
# GiB a point, measured peak 10.5 GiB for a chunk of 5); and of size (L x hidden) per layer (residual
# stream, norms, projections, MLP activations).
QUADRATIC_COPIES = 8
LINEAR_COPIES = 16
HEADROOM = 0.7
# Beyond the saved tensors a point holds the forward's transients: on a 4-layer, d=256 Llama over a 2000-token
# prompt (attention space, chunk 6) the measured peak was about this factor times the saved bytes.
TRANSIENT_FACTOR = 1.5
MAX_CHUNK = 64


def available_bytes(device: torch.device) -> int:
    """Free memory on the device: CUDA's free memory, else the host's available physical memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def bytes_per_point(config, length: int, eager_attention: bool) -> int:
    """Rough upper bound of the activations one path point keeps for its backward, in bytes (float32).

    `eager_attention`: the attention probabilities are materialised (the attention space's hook); otherwise
    the model's own fused attention keeps no (L x L) tensors."""
    text = getattr(config, "get_text_config", lambda: config)()
    layers = getattr(text, "num_hidden_layers", 12)
    heads = getattr(text, "num_attention_heads", 12)
    hidden = getattr(text, "hidden_size", 768)
    intermediate = getattr(text, "intermediate_size", 4 * hidden) or 4 * hidden
    quadratic = QUADRATIC_COPIES * heads * length * length if eager_attention else 0
    linear = LINEAR_COPIES * length * hidden + 2 * length * intermediate
    return 4 * layers * (quadratic + linear)


def budget_bytes(model, memory_budget: int | None = None) -> int:
    """The bytes path points may use: `memory_budget`, or a share of the device's free memory."""
    if memory_budget is not None:
        return memory_budget
    return int(HEADROOM * available_bytes(model.get_input_embeddings().weight.device))


def fit_chunk(model, length: int, requested: int, eager_attention: bool, memory_budget: int | None = None) -> int:
    """The largest chunk of path points, at most `requested`, whose config estimate fits the budget."""
    device = model.get_input_embeddings().weight.device
    per_point = bytes_per_point(model.config, length, eager_attention)
    budget = budget_bytes(model, memory_budget)
    if per_point > budget:
        raise InvalidInputError(
            f"one path point over {length} tokens needs about {per_point / 2**30:.1f} GiB of activations on "
            f"{device.type}, and the budget is about {budget / 2**30:.1f} GiB; shorten the prompt, choose fewer "
            "attention layers (layers=...), use a device with more memory (or a larger memory_budget), or "
            "method='attention' / 'saliency' for long inputs."
        )
    return max(1, min(requested, int(budget // per_point)))


def saved_bytes(scores: Callable[[torch.Tensor], torch.Tensor], point: torch.Tensor, model) -> int:
    """Bytes one path point really keeps: every tensor its forward saves for the backward, counted once per
    storage, the model's parameters excluded (they are there anyway), plus its gradient and contribution."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        scores(point.detach().unsqueeze(0).requires_grad_(True))
    return sum(saved.values()) + 3 * point.float().nbytes


SHORT_PROMPTS = (8, 16, 32)


def length_polynomial(measure: Callable[[int], int]) -> torch.Tensor:
    """Coefficients (3,) of a point's bytes as a quadratic in the prompt's length, from `measure` (prompt
    length -> bytes) at short prompts: the saved tensors are each layer's L x L attention and things linear in
    L, so three short measurements determine every length, and a long prompt is never run to find out that it
    does not fit (SmolLM2, 208-token prompt: exact to the byte over both spaces)."""
    lengths = torch.tensor(SHORT_PROMPTS, dtype=torch.float64)
    measured = torch.tensor([float(measure(n)) for n in SHORT_PROMPTS], dtype=torch.float64)
    return torch.linalg.solve(torch.vander(lengths, 3), measured)


def bytes_at(coefficients: torch.Tensor, n_prompt: int) -> int:
    return int(torch.vander(torch.tensor([float(n_prompt)], dtype=torch.float64), 3) @ coefficients)


def measured_chunk(per_point: int, budget: int, requested: int | None, what: str) -> int:
    """Path points per forward: as many as the budget holds at the measured cost (at most MAX_CHUNK), or the
    requested chunk if it fits; a budget below one point is a clear error."""
    fits = int(budget // (TRANSIENT_FACTOR * per_point))
    if fits < 1:
        raise InvalidInputError(
            f"one path point of {what} keeps {TRANSIENT_FACTOR * per_point / 2**20:.0f} MiB (measured), and the "
            f"memory budget is {budget / 2**20:.0f} MiB; raise memory_budget, shorten the prompt, choose fewer "
            "attention layers (layers=...), or use space='embeddings'."
        )
    return min(fits, MAX_CHUNK if requested is None else requested)
