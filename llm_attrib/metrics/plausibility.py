"""Plausibility: agreement of the attributions with ground-truth evidence in the prompt.

Evidence comes as character spans of the prompt text; a prompt token is evidence if its character span
overlaps one of them. Both metrics rank only the *eligible* prompt tokens: not special tokens (empty
character span, e.g. BOS/CLS) and not `template_spans`. The template is the part every prompt of a task
shares (the query cue, e.g. "=>"): under IG the last prompt token often carries the largest attribution
because the prediction is made at its position. It is needed but says nothing about the example, so counting
it would make every method look equally (im)plausible; exclude it by passing its spans.

- hit@k: 1 if any of the k highest-scored eligible tokens is evidence, else 0 (ties broken by position).
- auprc: average precision of the scores against the evidence labels over the eligible tokens,
  AP = sum over distinct score thresholds of (recall increase) x precision, tied scores forming one threshold
  (as sklearn's `average_precision_score`).
Both are NaN for a target when no eligible token is evidence.
"""

from __future__ import annotations

import torch

from ..core.sequence import padded_mask
from ..errors import InvalidInputError


def _check_spans(spans, text_length: int, what: str) -> list[tuple[int, int]]:
    checked = []
    for span in spans or []:
        try:
            start, end = (int(v) for v in span)
        except (TypeError, ValueError) as error:
            raise InvalidInputError(f"{what} must be (start, end) character pairs, got {span!r}.") from error
        if not 0 <= start < end <= text_length:
            raise InvalidInputError(f"{what} ({start}, {end}) is not a non-empty span of the text of length {text_length}.")
        checked.append((start, end))
    return checked


def overlap_mask(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> torch.Tensor:
    """(N,) bool: token j's character span [s, e) overlaps one of `spans` (empty token spans never do)."""
    return torch.tensor(
        [s < e and any(s < end and start < e for start, end in spans) for s, e in offsets], dtype=torch.bool
    )


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Average precision of scores (..., E) against bool labels (E,); NaN where there is no positive.

    Tied scores form one threshold: AP = sum_i (R_i - R_{i-1}) P_i over the distinct thresholds, descending.
    """
    labels = labels.to(scores.device)
    n_pos = labels.sum()
    order = scores.argsort(dim=-1, descending=True, stable=True)  # (..., E)
    ranked = scores.gather(-1, order)
    hits = labels.expand_as(scores).gather(-1, order).double()
    tp = hits.cumsum(-1)  # true positives at each cut
    predicted = torch.arange(1, scores.shape[-1] + 1, device=scores.device, dtype=torch.float64)
    last = torch.ones_like(ranked, dtype=torch.bool)  # last element of each group of tied scores
    last[..., :-1] = ranked[..., 1:] != ranked[..., :-1]
    tp_at = torch.where(last, tp, torch.zeros_like(tp))
    previous = torch.cummax(torch.cat([torch.zeros_like(tp_at[..., :1]), tp_at[..., :-1]], -1), -1).values
    gain = torch.where(last, (tp - previous) * tp / predicted, torch.zeros_like(tp))
    ap = gain.sum(-1) / n_pos.clamp_min(1)
    return torch.where(n_pos > 0, ap, torch.full_like(ap, float("nan"))).float()


def hit_at_k(scores: torch.Tensor, labels: torch.Tensor, k: int = 1) -> torch.Tensor:
    """(..., E) scores, (E,) bool labels -> (...) 1.0 if one of the top-k is a label, NaN if no label."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidInputError(f"k must be a positive integer, got {k!r}.")
    labels = labels.to(scores.device)
    top = scores.double().argsort(dim=-1, descending=True, stable=True)[..., :k]
    hit = labels[top].any(-1).float()
    return torch.where(labels.any(), hit, torch.full_like(hit, float("nan")))


def plausibility(explanation, evidence_spans, template_spans=None, k: int = 1) -> dict[str, torch.Tensor]:
    """hit@k and AUPRC of one explanation's prompt scores against evidence spans, per target.

    Args:
        explanation: an `Explanation` (scores (T, N), input_offsets, n_prompt_tokens, text).
        evidence_spans: (start, end) character spans of the evidence in `explanation.text`.
        template_spans: spans of the task's shared template (e.g. the final "=>"), excluded from ranking, as
            are special tokens and the explanation's chat markup.
        k: how many top tokens hit@k looks at.

    Returns:
        {"hit@{k}": (T,), "auprc": (T,)}, NaN for targets with no eligible evidence token.

    Example:
        >>> plausibility(exp, evidence_spans=[(15, 20)], template_spans=[(28, 30)])["hit@1"]
    """
    n_prompt = explanation.n_prompt_tokens
    offsets = [tuple(o) for o in explanation.input_offsets[:n_prompt]]
    length = len(explanation.text)
    evidence = overlap_mask(offsets, _check_spans(evidence_spans, length, "an evidence span"))
    template = overlap_mask(offsets, _check_spans(template_spans, length, "a template span"))
    special = torch.tensor([s >= e for s, e in offsets], dtype=torch.bool)
    markup = padded_mask(getattr(explanation, "input_markup", None), n_prompt)
    eligible = ~special & ~template & ~markup  # (P,)
    if not eligible.any():
        raise InvalidInputError("no prompt token is left once special tokens and the template are excluded.")
    scores = explanation.scores[:, :n_prompt][:, eligible].float()  # (T, E)
    labels = evidence[eligible]
    return {f"hit@{k}": hit_at_k(scores, labels, k), "auprc": average_precision(scores, labels)}
