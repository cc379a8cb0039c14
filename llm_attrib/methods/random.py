"""Random attribution: the floor every method must beat in an evaluation (seeded, no model passes)."""

from __future__ import annotations

from typing import Any

import torch

from .base import MethodResult, Problem, register_method, reject_unknown


@register_method("random")
class RandomAttribution:
    spaces = frozenset({"embeddings", "attention", "mask"})
    default_space = "embeddings"
    has_completeness = False
    needs_references = False
    uses_gradients = False

    def attribute(self, problem: Problem, seed: int = 0, **params: Any) -> MethodResult:
        reject_unknown(self.name, params)
        seq = problem.seq
        scores = torch.rand((seq.n_outputs, seq.length), generator=torch.Generator().manual_seed(seed))
        if not seq.is_classifier:  # like every real method, nothing from a target's own or later positions
            sees = seq.output_positions.cpu()
            scores = scores * (torch.arange(seq.length)[None] <= sees[:, None])
        return MethodResult(scores=scores, completeness_error=torch.full((seq.n_outputs,), float("nan")))
