"""The static prefix: leading tokens that no path point moves run once, and every chunk reuses their keys and values.

A chat prompt opens with markup (role markers, often a default system prompt), and a RAG prompt attributed to
its documents opens with instructions; every built-in baseline keeps such tokens as they are, so along a straight
path (or a GradPath, which never moves markup) they, and everything a causal model computes from them, are the
same at every point. Running them once and handing their keys and values to each chunk's forward saves their
share of every forward and backward (a third of a short chat prompt).

Nothing is assumed: a chunk uses the prefix only if its points equal the explicand on those tokens exactly
(RPI's noisy baselines or a custom baseline that moves markup run in full), and a prefix is kept only if the
model's logits at the explicand come out the same with it as without it (within the dtype's rounding), so a model
whose cache behaves differently runs in full instead of giving other numbers.

The cache helpers here (a copy for a batch, the forward's cache argument, whether every token is held, the logits
check) also serve the RAG removals, which run each subset of documents from the prefix it shares with one run
before (`rag.ablation.SharedPrefixes`).
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import torch
from transformers import Cache
from transformers.cache_utils import DynamicLayer

from ..patching import recomputing
from .model_kind import head_only_at
from .placement import compute_dtype
from .sequence import Sequence

MIN_LENGTH = 8  # shorter prefixes save less than the three forwards that build and check one


@dataclass
class StaticPrefix:
    """The first `length` tokens' cache (batch 1, as the model returned it) and the space's point on them."""

    length: int
    head: torch.Tensor
    prefix_cache: Cache
    argument: str = "cache"  # the model's forward argument for it ("past_key_values" before transformers 5.2x)
    logits: torch.Tensor | None = None  # (1, T, V) the whole sequence's logits at the targets, from the check

    def cache(self, batch: int) -> Cache:
        """A fresh copy holding the prefix for `batch` sequences (the forward appends to it, so never shared)."""
        return copied(self.prefix_cache, batch)

    def fits(self, space, points: torch.Tensor) -> bool:
        """Whether every point (B, *S) equals the explicand on the prefix tokens, so the prefix is theirs too."""
        return unmoved(space, points, self.head, self.length)


def copied(cache: Cache, batch: int) -> Cache:
    """A copy of a batch-1 cache for `batch` sequences. Copied whole, not rebuilt from its tensors: a
    sliding-window layer keeps only its window, and its count of tokens seen is what places the next ones."""
    cache = copy.deepcopy(cache)
    if batch > 1:
        cache.batch_repeat_interleave(batch)
    return cache


def cache_argument(model) -> str | None:
    """The model's forward argument for a cache ("past_key_values" before transformers 5.2x), None if it takes none."""
    parameters = inspect.signature(model.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)


def holds_every_token(cache, length: int) -> bool:
    """Whether every layer of `cache` holds keys for all its `length` tokens, so a later forward can take any
    first tokens of it as its own (a sliding window shorter than that keeps only the last ones)."""
    layers = getattr(cache, "layers", None) if isinstance(cache, Cache) else None
    return bool(layers) and all(getattr(layer, "keys", None) is not None and layer.keys.shape[-2] == length
                                for layer in layers)


def same_logits(cached: torch.Tensor, full: torch.Tensor, model) -> bool:
    """Whether logits from a forward that reused a cache are the full forward's, within the dtype's rounding."""
    tolerance = max(1e-3, 8 * torch.finfo(compute_dtype(model)).eps)
    return torch.allclose(cached.float(), full.float(), rtol=tolerance, atol=tolerance)


def skipped_tokens(prefix: StaticPrefix | None) -> int:
    """How many leading tokens a forward leaves out: the prefix's (their keys and values come from its cache)."""
    return 0 if prefix is None else prefix.length


def unmoved(space, points: torch.Tensor, x: torch.Tensor, length: int) -> bool:
    """Whether every point (B, *S) equals x (*S, or its first `length` tokens) on the first `length` tokens."""
    head, own = points.narrow(space.token_axis, 0, length), x.narrow(space.token_axis, 0, length)
    return torch.equal(head, own.expand_as(head))


def prefix_length(seq: Sequence) -> int:
    """Leading tokens kept by every built-in baseline, up to the first position whose logits are read; 0 where
    they are fewer than MIN_LENGTH (or the model is a classifier, which attends both ways)."""
    if seq.is_classifier:
        return 0
    moving = (~seq.keep).nonzero()
    first_moving = int(moving[0, 0]) if len(moving) else seq.length
    length = min(first_moving, int(seq.target_positions.min()))
    return length if length >= MIN_LENGTH else 0


def static_prefix(model, seq: Sequence, space, x: torch.Tensor, length: int) -> StaticPrefix | None:
    """The first `length` tokens as a static prefix in this space (x: the explicand there), or None where the
    model takes no cache, a layer's cache does not hold every prefix token (the attention and mask spaces index
    keys from token 0), or the cached forward does not reproduce the model's logits at the explicand; and None
    under recomputation (`patching.recomputed`): a checkpointed layer cannot run twice on a cache (it would append
    its keys twice), so its layers would keep every activation, more than the memory guard measured.

    One forward of the whole sequence gives the check's reference logits and, where every layer's cache is a plain
    growing one, the prefix's keys and values as well (its first `length` tokens: a causal model's keys there do
    not depend on later tokens); other caches (sliding windows, which count the tokens they have seen) are built
    by a forward of the prefix alone. The reference logits stay with the prefix (`StaticPrefix.logits`)."""
    if recomputing():
        return None
    argument = cache_argument(model)
    if argument is None:
        return None
    with torch.no_grad():
        x = x[None]
        head = head_only_at(model, seq.target_positions)
        whole = model(input_ids=seq.input_ids, use_cache=True, **head)
        full = whole.logits if head else whole.logits[:, seq.target_positions]
        cache = _cut(whole[argument], length)
        if cache is None:
            # Only the cache is wanted: one row of logits, not the LM head over every prefix token (262k columns on
            # Gemma 3).
            cache = model(input_ids=seq.input_ids[:, :length], use_cache=True, **head_only_at(model, 1))[argument]
        if not holds_every_token(cache, length):
            return None  # e.g. a sliding window shorter than the prefix: later keys would not start at token 0
        prefix = StaticPrefix(length, x.narrow(space.token_axis, 0, length), cache, argument, full)
        cached = space.logits(model, seq, x, prefix)
    return prefix if same_logits(cached, full, model) else None


def _cut(cache, length: int) -> Cache | None:
    """The cache's first `length` tokens, as a cache of its own, where every layer is a plain growing one (keys
    and values only); else None."""
    layers = getattr(cache, "layers", None) if isinstance(cache, Cache) else None
    if not layers or any(type(layer) is not DynamicLayer or not layer.is_initialized for layer in layers):
        return None
    for layer in layers:
        layer.keys = layer.keys[..., :length, :].clone()
        layer.values = layer.values[..., :length, :].clone()
    return cache
