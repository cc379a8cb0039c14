"""Integrated Gradients: a straight path from a fixed baseline, with a chosen quadrature.

Optionally adaptive: with `tolerance`, the step count doubles until every target's completeness error is
below it (or `max_steps` is reached); the result records the steps used.
"""

from __future__ import annotations

from typing import Any

from ..core.engine import integrate
from ..core.paths import StraightPaths
from ..core.quadrature import quadrature as quadrature_rule
from ..errors import InvalidInputError
from .base import MethodResult, Problem, register_method, reject_unknown


def integrated_gradients(problem: Problem, baseline: Any, n_steps: int, quadrature: str) -> MethodResult:
    """IG of every target, from one baseline, in the problem's space."""
    x = problem.space.point(problem.model, problem.seq)
    start = problem.space.baseline(baseline, problem.model, problem.tokenizer, problem.seq, x)
    nodes, weights = quadrature_rule(quadrature, n_steps)
    paths = StraightPaths(x=x, baselines=start.unsqueeze(0), nodes=nodes, weights=weights)
    integral = integrate(
        problem.scores, paths, x, problem.space.reduce, problem.internal_batch_size,
        show_progress=problem.show_progress,
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
        tolerance: float | None = None,
        max_steps: int = 512,
        **params: Any,
    ) -> MethodResult:
        reject_unknown(self.name, params)
        result = integrated_gradients(problem, baseline, n_steps, quadrature)
        if tolerance is None:
            return result
        if tolerance <= 0:
            raise InvalidInputError(f"tolerance must be positive, got {tolerance}.")
        spent = (result.n_forward, result.n_backward)
        while result.completeness_error.max() > tolerance and n_steps * 2 <= max_steps:
            n_steps *= 2
            result = integrated_gradients(problem, baseline, n_steps, quadrature)
            spent = (spent[0] + result.n_forward, spent[1] + result.n_backward)
        result.n_forward, result.n_backward = spent
        return result
