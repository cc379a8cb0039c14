"""Attention under a soft key mask that keeps no (L x L) probabilities for the backward.

The mask space scales each key's weight by its visibility v (B, Lk) and renormalises every row, which is the
softmax of s + log v, s being the masked attention logits. Eager attention keeps every layer's (B, H, L, L)
probabilities for the backward, so a point's memory grows with layers x heads x L^2. Here the forward runs through
torch's fused `scaled_dot_product_attention` with the additive mask `mask + log v`, and the backward recomputes the
probabilities one block of queries at a time: a layer keeps its queries, keys, values, output and visibility, and
the backward's working memory is one block.

The gradients, with e_qk = exp(s_qk), Z_q = sum_j v_j e_qj, p_qk = v_k e_qk / Z_q, dp_qk = dO_q . V_k and
delta_q = dO_q . O_q: the logits get p_qk (dp_qk - delta_q) (as for a plain softmax, log v being additive), and
the visibility dv_k = sum over heads and queries of (e_qk / Z_q)(dp_qk - delta_q), which stays finite at v_k = 0
where differentiating log v would not.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
from torch.nn import functional as F

BLOCK_ELEMENTS = 2**21  # entries of one block's (B, H, queries, keys) tensors in the backward (8 MiB in float32)
BLOCK_TENSORS = 6  # the backward's (B, H, queries, keys) tensors alive at once

# While memory is measured: the largest working memory (bytes) any call needs beyond what it saves.
_WORKSPACE: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("llm_attrib_workspace", default=None)


@contextlib.contextmanager
def workspace_counted() -> Iterator[list[int]]:
    """Collect the working memory of each soft-mask attention run in the block: the forward's additive mask and
    the backward's block of queries, which exist only while a layer runs and are saved nowhere."""
    found: list[int] = []
    token = _WORKSPACE.set(found)
    try:
        yield found
    finally:
        _WORKSPACE.reset(token)


def _workspace_bytes(shape: tuple[int, ...], itemsize: int) -> int:
    """At most what a call works in: the forward's additive mask (B, 1, Lq, Lk), and the backward's block
    tensors, each at most a block or one query's row (counted at that bound even where the prompt is shorter:
    the memory guard extrapolates short prompts' figures by a polynomial, which a minimum would break)."""
    batch, heads, n_queries, n_keys = shape
    return batch * n_queries * n_keys * itemsize + BLOCK_TENSORS * 4 * max(BLOCK_ELEMENTS, batch * heads * n_keys)


def _block_size(shape: tuple[int, ...]) -> int:
    batch, heads, _, n_keys = shape
    return max(1, BLOCK_ELEMENTS // (batch * heads * n_keys))


def _query_blocks(mask: torch.Tensor | None, shape: tuple[int, ...]) -> Iterator[tuple[int, int, int, int]]:
    """(first query, end query, first key, end key) per block of queries; the key range drops the columns the mask
    forbids to every query of the block (later tokens under causality, earlier ones outside a sliding window)."""
    n_queries, n_keys = shape[2], shape[3]
    size = _block_size(shape)
    for start in range(0, n_queries, size):
        end = min(start + size, n_queries)
        lo, hi = 0, n_keys
        if mask is not None:
            allowed = (mask[..., start:end, :n_keys] > torch.finfo(mask.dtype).min / 2).flatten(0, -2).any(0)
            columns = allowed.nonzero()
            if len(columns):
                lo, hi = int(columns[0]), int(columns[-1]) + 1
        yield start, end, lo, hi


def _exact(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor in float32 at least (half precision is computed in float32, as the eager softmax is)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _logits(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, scaling: float,
            rows: slice, columns: slice) -> torch.Tensor:
    """Masked attention logits (B, H, rows, columns), in float32 at least."""
    logits = torch.matmul(_exact(query[:, :, rows]), _exact(key[:, :, columns]).transpose(-1, -2)) * scaling
    return logits if mask is None else logits + _exact(mask[..., rows, columns])


class _SoftMaskAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, visibility, mask, scaling):
        bias = visibility.log()[:, None, None, :].to(query.dtype)  # (Bv, 1, 1, Lk); -inf where a key is hidden
        output = F.scaled_dot_product_attention(query, key, value, attn_mask=bias if mask is None else mask + bias,
                                                scale=scaling)
        ctx.save_for_backward(query, key, value, visibility, mask, output)
        ctx.scaling = scaling
        counted = _WORKSPACE.get()
        if counted is not None:
            shape = (query.shape[0], query.shape[1], query.shape[2], key.shape[2])
            counted.append(_workspace_bytes(shape, query.element_size()))
        return output

    @staticmethod
    def backward(ctx, grad_output):
        query, key, value, visibility, mask, output = ctx.saved_tensors
        scaling = ctx.scaling
        seen = _exact(visibility)[:, None, None, :]  # (Bv, 1, 1, Lk)
        log_seen = seen.log()
        grad_output = _exact(grad_output)
        delta = (grad_output * _exact(output)).sum(-1, keepdim=True)  # (B, H, Lq, 1)
        grad_query, grad_key, grad_value = (torch.zeros_like(_exact(x)) for x in (query, key, value))
        grad_seen = torch.zeros(query.shape[0], visibility.shape[-1], dtype=seen.dtype, device=query.device)
        shape = (query.shape[0], query.shape[1], query.shape[2], key.shape[2])
        for start, end, lo, hi in _query_blocks(mask, shape):
            rows, columns = slice(start, end), slice(lo, hi)
            logits = _logits(query, key, mask, scaling, rows, columns)
            log_norm = torch.logsumexp(logits + log_seen[..., columns], -1, keepdim=True)
            share = torch.exp(logits - log_norm)  # e / Z
            probs = share * seen[..., columns]
            moved = share * (torch.matmul(grad_output[:, :, rows], _exact(value[:, :, columns]).transpose(-1, -2))
                             - delta[:, :, rows])
            grad_seen[:, columns] += moved.sum((1, 2))
            grad_logits = (moved * seen[..., columns]) * scaling
            grad_query[:, :, rows] += torch.matmul(grad_logits, _exact(key[:, :, columns]))
            grad_key[:, :, columns] += torch.matmul(grad_logits.transpose(-1, -2), _exact(query[:, :, rows]))
            grad_value[:, :, columns] += torch.matmul(probs.transpose(-1, -2), grad_output[:, :, rows])
        if visibility.shape[0] == 1:
            grad_seen = grad_seen.sum(0, keepdim=True)
        return (grad_query.to(query.dtype), grad_key.to(key.dtype), grad_value.to(value.dtype),
                grad_seen.to(visibility.dtype), None, None)


def soft_mask_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, visibility: torch.Tensor,
                        mask: torch.Tensor | None, scaling: float) -> torch.Tensor:
    """Attention output (B, H, Lq, D) with each key's weight scaled by `visibility` and every row renormalised.

    Args:
        query: (B, H, Lq, D); key, value: (B, H, Lk, D), grouped heads already repeated.
        visibility: (B or 1, Lk) in [0, 1]; every query must see some visible key.
        mask: the model's additive mask (B or 1, 1, Lq, >= Lk), or None.
        scaling: the logits' scale.
    """
    mask = None if mask is None else mask[..., : key.shape[-2]]
    return _SoftMaskAttention.apply(query, key, value, visibility, mask, scaling)


def visible_share(query: torch.Tensor, key: torch.Tensor, visibility: torch.Tensor, mask: torch.Tensor | None,
                  scaling: float) -> torch.Tensor:
    """The smallest share of any attention row that falls on visible keys (sum_k p_qk v_k under the unscaled
    softmax), computed a block of queries at a time; 0 where a query sees nothing."""
    mask = None if mask is None else mask[..., : key.shape[-2]]
    seen = _exact(visibility)[:, None, None, :]
    least = torch.tensor(1.0, device=query.device)
    with torch.no_grad():
        for start, end, lo, hi in _query_blocks(mask, (query.shape[0], query.shape[1], query.shape[2], key.shape[2])):
            logits = _logits(query, key, mask, scaling, slice(start, end), slice(lo, hi))
            share = torch.exp(torch.logsumexp(logits + seen[..., lo:hi].log(), -1)
                              - torch.logsumexp(logits, -1))
            least = torch.minimum(least, share.amin())
    return least
