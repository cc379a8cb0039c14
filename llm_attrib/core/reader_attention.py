"""Soft-mask attention of a batch of path points over one shared cached past: the reader mode's attention.

With reading="answer" (and any static prefix) every path point of a forward attends to the same cached keys and
values (the prefix, run once at the explicand) followed by its own few tokens'. Eager attention copies the cached
keys into every point of the batch, repeats grouped key/value heads to the query heads, and its backward computes
gradients for every cached key and value, which nothing needs (the cache is a constant). Here the cached keys stay
one (1, Hkv, Lp, D) tensor: the queries of every point and every head of a group are stacked into the rows of one
matrix product per key head, and the backward computes only what the path needs: the queries, the points' own
keys and values, and the visibility.

The arithmetic is the mask space's (see `patching.soft_masked`): with e_qk = exp(s_qk - max), Z_q = sum_j v_j e_qj,
p_qk = v_k e_qk / Z_q, O_q = sum_k p_qk V_k; the backward, with dp_qk = dO_q . V_k and delta_q = dO_q . O_q, gives
the logits p_qk (dp_qk - delta_q) and the visibility dv_k = sum over heads and queries of (e_qk / Z_q)(dp_qk - delta_q).
A layer keeps one (heads x queries x keys) tensor, e / Z, for its backward.
"""

from __future__ import annotations

import torch

from .soft_mask_attention import _exact


def _by_key_head(x: torch.Tensor, n_key_heads: int) -> torch.Tensor:
    """(B, Hq, L, D) -> (Hkv, B, g * L, D): the queries (or their gradients) of each key head's group as rows."""
    batch, heads, length, dim = x.shape
    return x.reshape(batch, n_key_heads, heads // n_key_heads * length, dim).transpose(0, 1)


def _by_query_head(x: torch.Tensor, n_query_heads: int) -> torch.Tensor:
    """(Hkv, B, g * L, D) -> (B, Hq, L, D), the inverse of `_by_key_head`."""
    n_key_heads, batch, rows, dim = x.shape
    return x.transpose(0, 1).reshape(batch, n_query_heads, rows * n_key_heads // n_query_heads, dim)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(Hkv, B, R, K) -> (Hkv, B * R, K): every point's rows of a key head in one matrix (a view where it can be)."""
    return x.reshape(x.shape[0], -1, x.shape[-1])


class _SharedPastAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, past_key, past_value, key, value, visibility, mask, scaling):
        n_key_heads, n_past = past_key.shape[1], past_key.shape[2]
        batch, n_heads, n_queries, _ = query.shape
        q = _by_key_head(_exact(query) * scaling, n_key_heads)  # (Hkv, B, g*Lr, D)
        # Copies (small) so that the backward keeps none of the batch's copy of the cache alive.
        k, v = (_exact(x).transpose(0, 1).contiguous() for x in (key, value))  # (Hkv, B, Lr, D)
        k_past, v_past = (_exact(x[0]).contiguous() for x in (past_key, past_value))  # (Hkv, Lp, D)
        past = torch.matmul(_rows(q), k_past.transpose(-1, -2)).view(*q.shape[:3], n_past)
        share = torch.cat([past, torch.matmul(q, k.transpose(-1, -2))], -1)  # logits (Hkv, B, g*Lr, Lk)
        if mask is not None:  # (B or 1, 1, Lr, Lk) -> broadcast over key heads and each group's heads
            groups = n_heads // n_key_heads
            share = share.view(n_key_heads, batch, groups, n_queries, -1).add_(_exact(mask).transpose(0, 1)[:, :, None])
            share = share.view(n_key_heads, batch, groups * n_queries, -1)
        seen = _exact(visibility)[None, :, None, :]  # (1, B or 1, 1, Lk)
        share.sub_(share.amax(-1, keepdim=True)).exp_()
        share.div_(torch.matmul(share, seen.transpose(-1, -2)))  # e / Z
        probs = share * seen
        output = torch.matmul(_rows(probs[..., :n_past]), v_past).view_as(q) + torch.matmul(probs[..., n_past:], v)
        ctx.save_for_backward(q, k_past, v_past, k, v, visibility, share, output)
        ctx.scaling, ctx.n_heads = scaling, n_heads
        ctx.dtypes = (query.dtype, key.dtype, value.dtype)
        return _by_query_head(output, n_heads).to(query.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        q, k_past, v_past, k, v, visibility, share, output = ctx.saved_tensors
        n_key_heads, n_past = k_past.shape[0], k_past.shape[1]
        d_out = _by_key_head(_exact(grad_output), n_key_heads)  # (Hkv, B, g*Lr, D)
        delta = (d_out * output).sum(-1, keepdim=True)
        past = torch.matmul(_rows(d_out), v_past.transpose(-1, -2)).view(*d_out.shape[:3], n_past)
        moved = torch.cat([past, torch.matmul(d_out, v.transpose(-1, -2))], -1).sub_(delta).mul_(share)
        grad_seen = moved.sum((0, 2))  # (B, Lk)
        if visibility.shape[0] == 1:
            grad_seen = grad_seen.sum(0, keepdim=True)
        seen = _exact(visibility)[None, :, None, :]
        grad_logits = moved.mul_(seen)  # p (dp - delta)
        grad_q = (torch.matmul(_rows(grad_logits[..., :n_past]), k_past).view_as(q)
                  + torch.matmul(grad_logits[..., n_past:], k)) * ctx.scaling
        grad_k = torch.matmul(grad_logits[..., n_past:].transpose(-1, -2), q)  # q carries the scaling already
        grad_v = torch.matmul((share[..., n_past:] * seen[..., n_past:]).transpose(-1, -2), d_out)
        query_dtype, key_dtype, value_dtype = ctx.dtypes
        return (_by_query_head(grad_q, ctx.n_heads).to(query_dtype), None, None,
                grad_k.transpose(0, 1).to(key_dtype), grad_v.transpose(0, 1).to(value_dtype),
                grad_seen.to(visibility.dtype), None, None)


def shared_past_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, n_past: int,
                          visibility: torch.Tensor, mask: torch.Tensor | None, scaling: float) -> torch.Tensor:
    """Attention output (B, Hq, Lr, D) of Lr new queries per point over Lp = `n_past` cached tokens that every point
    of the batch shares, then the points' own Lr tokens, each key's weight scaled by its visibility and every row
    renormalised (the mask space). Equal to eager attention over the concatenated keys, up to float rounding.

    Args:
        query: (B, Hq, Lr, D).
        key, value: (B, Hkv, Lp + Lr, D) as the cache hands them over: the first Lp tokens the same in every point
            (only the first point's are read, and no gradient flows to them), grouped heads not repeated.
        visibility: (B or 1, >= Lp + Lr) in [0, 1]; every query must see some visible key.
        mask: the model's additive mask (B or 1, 1, Lr, >= Lp + Lr), or None.
        scaling: the logits' scale.
    """
    n_keys = key.shape[-2]
    mask = None if mask is None else mask[..., :n_keys]
    return _SharedPastAttention.apply(query, key[:1, :, :n_past].detach(), value[:1, :, :n_past].detach(),
                                      key[:, :, n_past:], value[:, :, n_past:], visibility[:, :n_keys], mask, scaling)
