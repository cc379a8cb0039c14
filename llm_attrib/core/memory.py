"""A memory guard: estimate what one path point costs before allocating, and fit the chunk to the device.

Eager attention materialises every layer's (heads x L x L) scores and probabilities, and the backward keeps
them, so memory grows with L^2: a 2000-token prompt on a 30-layer model needs gigabytes per path point. The
estimate is deliberately rough (an upper bound from the config), enough to choose a chunk that fits or to
stop at once with the figures, instead of dying in the allocator minutes later.
"""

from __future__ import annotations

import os

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


def fit_chunk(model, length: int, requested: int, eager_attention: bool) -> int:
    """The largest chunk of path points, at most `requested`, whose estimate fits in free memory."""
    device = model.get_input_embeddings().weight.device
    per_point = bytes_per_point(model.config, length, eager_attention)
    budget = HEADROOM * available_bytes(device)
    if per_point > budget:
        raise InvalidInputError(
            f"one path point over {length} tokens needs about {per_point / 2**30:.1f} GiB of activations on "
            f"{device.type}, and about {budget / 2**30:.1f} GiB is free; shorten the prompt, choose fewer attention "
            "layers (layers=...), use a device with more memory, or method='attention' / 'saliency' for long inputs."
        )
    return max(1, min(requested, int(budget // per_point)))
