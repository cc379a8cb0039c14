"""Integrated Gradients: a straight path from a fixed baseline, with a chosen quadrature.

Adaptive by default: targets whose completeness error exceeds `tolerance` are integrated again with twice
the steps, until every one is below it or `max_steps` is reached. Trained models often have a sharp
integrand for a few targets (an end token, a copied token); only those pay for more steps, because the
engine backpropagates only the targets it is asked for. The result records the steps each target used.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.engine import integrate
from ..core.paths import StraightPaths
from ..core.quadrature import quadrature as quadrature_rule
from ..errors import InvalidInputError
from .base import MethodResult, Problem, register_method, reject_unknown


def integrated_gradients(
    problem: Problem, x: torch.Tensor, start: torch.Tensor, n_steps: int, quadrature: str,
    targets: list[int] | None = None,
) -> MethodResult:
    """IG of every target (or of `targets` only) from `start` to `x`, points of the problem's space."""
    nodes, weights = quadrature_rule(quadrature, n_steps)
    paths = StraightPaths(x=x, baselines=start.unsqueeze(0), nodes=nodes, weights=weights)
    integral = integrate(
        problem.scores, paths, x, problem.space.reduce, problem.internal_batch_size,
        show_progress=problem.show_progress, targets=targets,
    )
    return MethodResult.from_integral(integral, n_steps=n_steps)


@register_method("ig")
class IntegratedGradients:
    spaces = frozenset({"embeddings", "attention"})
    default_space = "embeddings"
    has_completeness = True
    needs_references = False

    def attribute(
        self,
        problem: Problem,
        baseline: Any = None,
        n_steps: int = 32,
        quadrature: str = "gauss-legendre",
        tolerance: float | None = 0.01,
        max_steps: int = 512,
        **params: Any,
    ) -> MethodResult:
        reject_unknown(self.name, params)
        if tolerance is not None and not tolerance > 0:
            raise InvalidInputError(f"tolerance must be positive (or None for a fixed n_steps), got {tolerance}.")
        x = problem.space.point(problem.model, problem.seq)
        start = problem.space.baseline(baseline, problem.model, problem.tokenizer, problem.seq, x)
        result = integrated_gradients(problem, x, start, n_steps, quadrature)
        steps = [n_steps] * len(result.completeness_error)
        while tolerance is not None and n_steps * 2 <= max_steps:
            todo = [t for t, error in enumerate(result.completeness_error.tolist()) if error > tolerance]
            if not todo:
                break
            n_steps *= 2
            finer = integrated_gradients(problem, x, start, n_steps, quadrature, targets=todo)
            for t in todo:
                result.scores[t] = finer.scores[t]
                result.completeness_error[t] = finer.completeness_error[t]
                if result.detail is not None:
                    result.detail[t] = finer.detail[t]
                steps[t] = n_steps
            result.n_forward += finer.n_forward
            result.n_backward += finer.n_backward
        result.settings = {"n_steps": steps if len(set(steps)) > 1 else steps[0], "tolerance": tolerance}
        return result
