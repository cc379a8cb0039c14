"""Integrated Gradients: a straight path from a fixed baseline.

Default quadrature, "score-guided" (`core.guided`): forward-only probes of every target's score along the
path place each target's own composite Boole panels where the score moves, and only the panels whose
measured error makes a target miss the tolerance are bisected (nested: no gradient is discarded). The fixed
rules ("gauss-legendre", "riemann-*", "trapezoid") remain for equality with Captum and the papers; with a
tolerance they are refined by doubling the steps of the targets that miss it.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.engine import integrate
from ..core.guided import SCORE_GUIDED, guided_integral
from ..core.paths import Routes, StraightPaths
from ..core.quadrature import checked_steps
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


def doubling_ig(
    problem: Problem, x: torch.Tensor, start: torch.Tensor, n_steps: int, quadrature: str,
    tolerance: float | None, max_steps: int,
) -> MethodResult:
    """A fixed rule, with the steps of the targets over `tolerance` doubled until `max_steps`."""
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
    result.settings = {"n_steps": steps if len(set(steps)) > 1 else steps[0], "quadrature": quadrature,
                       "tolerance": tolerance}
    return result


def score_guided_ig(
    problem: Problem, x: torch.Tensor, start: torch.Tensor, n_steps: int, tolerance: float | None,
    max_steps: int, n_probes: int | None,
) -> MethodResult:
    """IG with per-target composite Boole panels placed by forward-only probes (`core.guided`)."""
    n_targets = problem.seq.n_outputs
    routes = Routes(torch.stack([start, x]).unsqueeze(0))
    integral, used = guided_integral(problem.run, routes, lambda route: list(range(n_targets)), n_targets,
                                     n_steps, tolerance, max_steps, n_probes)
    steps = used[0].tolist()
    result = MethodResult.from_integral(
        integral, n_steps=steps if len(set(steps)) > 1 else steps[0], quadrature=SCORE_GUIDED,
        tolerance=tolerance, n_probes=n_probes,
    )
    result.extra["token_error"] = integral.token_error[0, :, : problem.seq.n_inputs].abs()
    return result


@register_method("ig")
class IntegratedGradients:
    spaces = frozenset({"embeddings", "attention", "mask"})
    default_space = "embeddings"
    has_completeness = True
    needs_references = False
    uses_gradients = True

    def attribute(
        self,
        problem: Problem,
        baseline: Any = None,
        n_steps: int = 5,
        quadrature: str = SCORE_GUIDED,
        tolerance: float | None = 0.01,
        max_steps: int = 512,
        n_probes: int | None = None,
        **params: Any,
    ) -> MethodResult:
        """`n_steps`: gradient evaluations per target to start with (score-guided: 4 per panel plus one), or
        the fixed rule's steps; `tolerance`: relative completeness error to reach (None: no refinement);
        `max_steps`: gradient evaluations per target at most; `n_probes`: forward-only probe intervals
        (default 4 per starting panel; none for a one-panel start, whose nodes are its probes).

        The default starts every target with one Boole panel (5 gradients) and lets nested bisection put the
        rest where the error is: fewer gradients than a 7-panel start at the same rank agreement with a fine
        reference (eval/results/quadrature_budget.md)."""
        reject_unknown(self.name, params)
        if tolerance is not None and not tolerance > 0:
            raise InvalidInputError(f"tolerance must be positive (or None for a fixed n_steps), got {tolerance}.")
        checked_steps(n_steps)
        checked_steps(max_steps, "max_steps", cap=None)
        if n_probes is not None:
            checked_steps(n_probes, "n_probes")
        x = problem.point()
        start = problem.space.baseline(baseline, problem.model, problem.tokenizer, problem.seq, x)
        if quadrature == SCORE_GUIDED:
            return score_guided_ig(problem, x, start, n_steps, tolerance, max_steps, n_probes)
        return doubling_ig(problem, x, start, n_steps, quadrature, tolerance, max_steps)
