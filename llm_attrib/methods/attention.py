"""Raw attention: the probabilities the model put on each input token, no gradients.

For target t the row of the position that predicts it (decoders), or the first token's row (encoders,
the CLS position), averaged over heads and chosen layers; for an answer segment, the mean of its targets' rows.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import MethodResult, Problem, register_method, reject_unknown


@register_method("attention")
class RawAttention:
    spaces = frozenset({"attention"})
    default_space = "attention"
    has_completeness = False
    needs_references = False
    uses_gradients = False
    keeps_point = True  # it holds every layer's attention at once, so the memory guard sizes that

    def attribute(self, problem: Problem, **params: Any) -> MethodResult:
        reject_unknown(self.name, params)
        x = problem.point()  # (layers, H, L, L)
        seq = problem.seq
        rows = torch.zeros(seq.n_targets, dtype=torch.long) if seq.is_classifier else seq.target_positions.cpu()
        detail = x[:, :, rows.to(x.device)].permute(2, 0, 1, 3)  # (T, layers, H, L)
        if seq.answer_level:  # an answer segment: the mean over the rows that predict its tokens
            member = seq.segment_matrix().to(detail)
            detail = torch.einsum("ts,tlhn->slhn", member / member.sum(0), detail)
        scores = detail.mean(dim=(1, 2))
        return MethodResult(
            scores=scores,
            completeness_error=torch.full((seq.n_outputs,), float("nan")),
            detail=detail,
            n_forward=1,
        )
