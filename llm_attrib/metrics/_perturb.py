"""The perturbation core: rank prompt tokens by score, build every perturbed input of one example, and read
the target probabilities of all of them in batched forwards.

A perturbation is a pair (target t, keep mask over the prompt). For a causal LM, target t is read at its own
position with the prompt perturbed and the earlier targets kept (teacher-forced); by causality the tokens
after t's position never matter, so rows are cut there. For a classifier the single target is the class.
Identical rows (same target, same mask, e.g. a bin shared by the deletion curve and comprehensiveness, or
two candidate maps with the same ranking) go through the model once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch

from ..core.model_kind import head_only_at
from ..core.sequence import Sequence
from ..core.spaces import model_logits
from ..errors import InvalidInputError, NumericalError, UnknownNameError

REMOVALS = ("delete", "replace", "mask")
ROUNDINGS = ("ceil", "floor")
ERASER_BINS = (1.0, 5.0, 10.0, 20.0, 50.0)
FERRET_BINS = tuple(float(b) for b in range(10, 101, 10))


def check_removal(removal: str) -> str:
    if removal not in REMOVALS:
        raise UnknownNameError(f"unknown removal {removal!r}; choose one of {list(REMOVALS)}.")
    return removal


def check_rounding(rounding: str) -> str:
    if rounding not in ROUNDINGS:
        raise UnknownNameError(f"unknown bin_rounding {rounding!r}; choose one of {list(ROUNDINGS)}.")
    return rounding


def check_bins(bins) -> tuple[float, ...]:
    """Percentages in (0, 100], in the order given."""
    try:
        values = tuple(float(b) for b in bins)
    except TypeError as error:
        raise InvalidInputError(f"bins must be a sequence of percentages in (0, 100], got {bins!r}.") from error
    if not values:
        raise InvalidInputError("bins is empty; give percentages in (0, 100], e.g. (1, 5, 10, 20, 50).")
    bad = [b for b in values if not 0 < b <= 100]
    if bad:
        raise InvalidInputError(f"bins must be percentages in (0, 100], got {bad}; e.g. (1, 5, 10, 20, 50).")
    return values


def bin_counts(bins: tuple[float, ...], n_removable: int, rounding: str = "ceil") -> list[int]:
    """Tokens in each top-k% bin: ceil (default) or floor of k% of the removable prompt tokens, computed exactly
    (no float rounding). "floor" can give 0 tokens (k% of n below 1)."""
    round_ = math.ceil if check_rounding(rounding) == "ceil" else math.floor
    return [round_(Fraction(str(b)) * n_removable / 100) for b in bins]


def rank_tokens(scores: torch.Tensor, removable: torch.Tensor) -> torch.Tensor:
    """Rank of each prompt token in descending score order, ties broken by position (earlier first).

    Args:
        scores: (..., P) scores of the prompt tokens.
        removable: (P,) bool; other tokens (special tokens) are ranked after every removable one.

    Returns:
        (..., P) long: 0 for the highest-scored removable token.
    """
    finite = torch.finfo(torch.float64).max
    key = scores.double().clamp(-finite, finite)
    key = torch.where(removable, key, torch.full_like(key, -math.inf))
    order = key.argsort(dim=-1, descending=True, stable=True)  # (..., P)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return rank


def top_masks(rank: torch.Tensor, counts) -> torch.Tensor:
    """(..., P) ranks and counts, K ints or a tensor (..., K) -> (..., K, P) bool, True for the top-`count` tokens."""
    limits = torch.as_tensor(counts, device=rank.device).unsqueeze(-1)  # (..., K, 1)
    return rank.unsqueeze(-2) < limits


@dataclass
class PerturbedInputs:
    """Rows to evaluate: target index (M,) and prompt keep mask (M, P)."""

    target_index: torch.Tensor
    keep: torch.Tensor


def replacement_token(tokenizer, replacement: int | None, vocab_size: int) -> int:
    """The explicit token id, else the tokenizer's mask, unk, then pad token."""
    if replacement is None:
        for name in ("mask_token_id", "unk_token_id", "pad_token_id"):
            token = getattr(tokenizer, name, None)
            if isinstance(token, int):
                replacement = token
                break
        else:
            raise InvalidInputError(
                "the tokenizer has no mask, unk or pad token to replace removed tokens with; pass replacement=<token id>."
            )
    if isinstance(replacement, bool) or not isinstance(replacement, int) or not 0 <= replacement < vocab_size:
        raise InvalidInputError(f"replacement must be a token id in [0, {vocab_size}), got {replacement!r}.")
    return replacement


def padding_token(tokenizer) -> int:
    """Filler for right padding (masked out, so any id works)."""
    for name in ("pad_token_id", "eos_token_id", "unk_token_id"):
        token = getattr(tokenizer, name, None)
        if isinstance(token, int):
            return token
    return 0


def target_log_probabilities(model, seq: Sequence, logits: torch.Tensor | None = None) -> torch.Tensor:
    """(T,) log-probability of each target (token given its prefix, or class) on the unperturbed input; (S,) each
    answer segment's, the sum over its tokens, for a segment-level sequence. One forward, LM head at the targets,
    unless its `logits` (1, T, V) are given (a forward that ran anyway)."""
    if logits is None:
        with torch.no_grad():
            logits = model_logits(model, seq, input_ids=seq.input_ids)  # (1, T, V)
    log_probs = logits.float().log_softmax(-1)[0].gather(-1, seq.target_ids[:, None])[:, 0]
    return log_probs @ seq.segment_matrix() if seq.answer_level else log_probs


def target_probabilities(model, seq: Sequence, logits: torch.Tensor | None = None) -> torch.Tensor:
    """(T,) probability of each target, or (S,) of each answer segment (the product over its tokens)."""
    return target_log_probabilities(model, seq, logits).exp()


def logits_at(model, read: torch.Tensor, **inputs) -> torch.Tensor:
    """(B, K, V) logits of a batch of rows (`inputs`: input_ids, attention_mask, ...) at each row's positions
    `read` (B, K); the LM head runs only at the positions some row reads, where the model allows it. Call without
    a graph. A caller that passes a cache (and use_cache=True) gets it extended with the rows' keys and values."""
    inputs.setdefault("use_cache", False)
    positions = read.unique()  # sorted
    head = head_only_at(model, positions)
    out = model(**inputs, **head).logits
    out = out if head else out[:, positions]  # (B, len(positions), V)
    return out.gather(1, torch.searchsorted(positions, read)[..., None].expand(-1, -1, out.shape[-1]))


def _forward_rows(
    model, seq: Sequence, target_index: torch.Tensor, keep: torch.Tensor, removal: str, replacement: int, pad: int
) -> torch.Tensor:
    """One batched forward over B rows: target index (B,), prompt keep mask (B, P) -> probabilities (B,).

    A row reads its target's position; a segment row reads every target's position and multiplies its segment's."""
    n_rows, n_prompt = keep.shape
    length = seq.length
    ids = seq.input_ids[0].expand(n_rows, -1)  # (B, L)
    full_keep = torch.cat([keep, keep.new_ones(n_rows, length - n_prompt)], dim=1)  # (B, L)
    columns = torch.arange(length, device=ids.device)
    # (B, K): the targets each row reads, K = 1 (its own) or T (an answer segment, weighted by membership).
    if seq.answer_level:
        reads = torch.arange(seq.n_targets, device=ids.device).expand(n_rows, -1)
        member = seq.segment_matrix().T[target_index]  # (B, T)
    else:
        reads, member = target_index[:, None], torch.ones(n_rows, 1, device=ids.device)
    if removal == "delete":
        packed = (~full_keep).to(torch.uint8).argsort(dim=1, stable=True)  # kept positions first, in order
        n_kept = full_keep.sum(1, keepdim=True)  # (B, 1)
        attention = columns < n_kept  # right padding: earlier positions never see it
        ids = torch.where(attention, ids.gather(1, packed), torch.full_like(ids, pad))
        read = keep.sum(1, keepdim=True) + reads - 1  # (B, K)
    elif removal == "replace":
        ids = torch.where(full_keep, ids, torch.full_like(ids, replacement))
        attention = torch.ones_like(full_keep)
        read = n_prompt + reads - 1
    else:  # mask
        attention = full_keep
        read = n_prompt + reads - 1
    classes = seq.target_ids[reads]  # (B, K)
    with torch.no_grad():
        if seq.is_classifier:
            width = int(attention.sum(1).max()) if removal == "delete" else length
            logits = model(input_ids=ids[:, :width], attention_mask=attention[:, :width].long()).logits[:, None]  # (B, 1, C)
        else:
            if int(read.min()) < 0:
                raise InvalidInputError(
                    "a perturbation deletes every prompt token before the first target, so there is no position to "
                    "predict it from (the prompt has no BOS or other special token). Use removal='replace' or "
                    "'mask', or bins below 100% (and, for sufficiency, bins that keep at least one token: "
                    "bin_rounding='floor' and only_positive=True can make a bin empty)."
                )
            width = int(read.max()) + 1  # later tokens cannot influence the read positions
            logits = logits_at(model, read, input_ids=ids[:, :width], attention_mask=attention[:, :width].long())
    log_probs = logits.float().log_softmax(-1).gather(-1, classes[..., None])[..., 0]
    probs = (log_probs * member).sum(-1).exp()
    if not torch.isfinite(probs).all():
        raise NumericalError(f"the model produced NaN or inf on perturbed inputs (removal={removal!r}).")
    return probs


def perturbed_probabilities(
    model,
    seq: Sequence,
    rows: PerturbedInputs,
    removal: str,
    replacement: int,
    pad: int,
    batch_size: int,
    p: torch.Tensor,
) -> torch.Tensor:
    """(M,) target probability of every row, in forwards of at most `batch_size` distinct rows.

    Rows that keep the whole prompt are the original input: they get `p` (T,) exactly, without a forward.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}.")
    key = torch.cat([rows.target_index[:, None], rows.keep.long()], dim=1)  # (M, 1 + P)
    unique, inverse = key.unique(dim=0, return_inverse=True)  # (U, 1 + P), (M,)
    target_index, keep = unique[:, 0], unique[:, 1:].bool()
    out = p[target_index].clone()  # (U,)
    todo = (~keep.all(1)).nonzero()[:, 0]
    for start in range(0, todo.numel(), batch_size):
        chunk = todo[start : start + batch_size]
        out[chunk] = _forward_rows(model, seq, target_index[chunk], keep[chunk], removal, replacement, pad)
    return out[inverse]
