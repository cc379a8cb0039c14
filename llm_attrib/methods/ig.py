"""Integrated Gradients: a straight path from a fixed baseline.

Default quadrature, "score-guided": a target's score along the path, F_t(alpha), is usually flat and then
jumps, so uniform nodes are wasted on the flat parts. Forward-only probes read every target's F_t on a grid
(one batch, no graph); each target then gets its own composite Gauss-Legendre rule, with short segments
where F_t moves. Since the probes know F_t at every segment edge, each segment's exact integral
F_t(b) - F_t(a) is known too, so the error of each segment is measured, not guessed: segments over their
share of the tolerance are bisected (one probe at the new midpoint) and re-integrated, and only they pay.
Each node serves one target, so a chunk of nodes needs one backward pass whatever the number of targets.

The fixed rules ("gauss-legendre", "riemann-*", "trapezoid") remain for equality with Captum and the
papers; with a tolerance they are refined by doubling the steps of the targets that miss it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..core.engine import evaluate, integrate
from ..core.paths import StraightPaths, TargetedNodes
from ..core.quadrature import gauss_legendre, variation_edges
from ..core.quadrature import quadrature as quadrature_rule
from ..errors import InvalidInputError
from .base import MethodResult, Problem, register_method, reject_unknown

SCORE_GUIDED = "score-guided"
NODES_PER_SEGMENT = 4


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


@dataclass
class Segment:
    """[a, b] of one target's path with the scores at its ends and, once integrated, its attribution."""

    target: int
    a: float
    b: float
    f_a: float
    f_b: float
    tokens: torch.Tensor | None = None
    detail: torch.Tensor | None = None

    @property
    def error(self) -> float:
        """Signed quadrature error: the attribution's total minus the exact integral F(b) - F(a)."""
        return float(self.tokens.sum()) - (self.f_b - self.f_a)


def score_guided_ig(
    problem: Problem, x: torch.Tensor, start: torch.Tensor, n_steps: int, tolerance: float | None,
    max_steps: int, n_probes: int,
) -> MethodResult:
    """IG with per-target composite Gauss-Legendre nodes placed by forward-only probes (see module doc)."""
    if not isinstance(n_probes, int) or n_probes < 2:
        raise InvalidInputError(f"n_probes must be an integer >= 2, got {n_probes!r}.")
    n_segments = max(1, min(n_steps, max_steps) // NODES_PER_SEGMENT)
    grid = torch.linspace(0, 1, n_probes + 1)
    f_grid = _scores_on_line(problem, x, start, grid)  # (M+1, T)
    n_targets = f_grid.shape[1]
    gap = f_grid[-1] - f_grid[0]
    segments: list[Segment] = []
    for t in range(n_targets):
        edges = variation_edges(f_grid[:, t], n_segments).tolist()
        segments += [Segment(t, grid[i].item(), grid[j].item(), f_grid[i, t].item(), f_grid[j, t].item())
                     for i, j in zip(edges[:-1], edges[1:])]
    used = [0] * n_targets
    n_forward, n_backward = len(grid), 0
    todo = segments
    while todo:
        integral = _integrate_segments(problem, x, start, todo)
        n_forward += integral.n_forward
        n_backward += integral.n_backward
        for i, segment in enumerate(todo):
            segment.tokens = integral.tokens[i, 0]
            segment.detail = None if integral.detail is None else integral.detail[i, 0]
            used[segment.target] += NODES_PER_SEGMENT
        if tolerance is None:
            break
        splits = _segments_to_split(segments, gap, tolerance, used, max_steps)
        if not splits:
            break
        middles = torch.tensor([(s.a + s.b) / 2 for s in splits])
        f_middle = _scores_on_line(problem, x, start, middles)
        n_forward += len(middles)
        todo = []
        for segment, m, f_m in zip(splits, middles.tolist(), f_middle):
            value = f_m[segment.target].item()
            segments.remove(segment)
            todo += [Segment(segment.target, segment.a, m, segment.f_a, value),
                     Segment(segment.target, m, segment.b, value, segment.f_b)]
        segments += todo
    scores = torch.stack([sum(s.tokens for s in segments if s.target == t) for t in range(n_targets)])
    detail = None
    if segments[0].detail is not None:
        detail = torch.stack([sum(s.detail for s in segments if s.target == t) for t in range(n_targets)])
    completeness = (scores.sum(-1) - gap.to(scores)).abs() / gap.abs().clamp_min(1e-12).to(scores)
    return MethodResult(
        scores=scores, completeness_error=completeness, detail=detail,
        settings={"n_steps": used if len(set(used)) > 1 else used[0], "quadrature": SCORE_GUIDED,
                  "tolerance": tolerance, "n_probes": n_probes},
        n_forward=n_forward, n_backward=n_backward,
    )


def _scores_on_line(problem: Problem, x: torch.Tensor, start: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """Target scores (A, T) at start + alpha (x - start), forward only, one chunk of points at a time."""
    direction = x - start
    return torch.cat([
        evaluate(problem.scores, start + chunk.to(x).view((-1,) + (1,) * x.dim()) * direction,
                 problem.internal_batch_size)
        for chunk in alphas.split(problem.internal_batch_size)
    ])


def _integrate_segments(problem: Problem, x: torch.Tensor, start: torch.Tensor, segments: list[Segment]):
    """Gauss-Legendre nodes in each segment, each node serving its segment's target, in one integral."""
    nodes, weights = gauss_legendre(NODES_PER_SEGMENT)
    a = torch.tensor([s.a for s in segments], dtype=torch.float64)[:, None]
    length = torch.tensor([s.b - s.a for s in segments], dtype=torch.float64)[:, None]
    paths = TargetedNodes(
        x=x, baseline=start,
        alpha=(a + nodes.double() * length).flatten().float(),
        weight=(weights.double() * length).flatten().float(),
        target=torch.tensor([s.target for s in segments]).repeat_interleave(NODES_PER_SEGMENT),
        bucket=torch.arange(len(segments)).repeat_interleave(NODES_PER_SEGMENT),
        n_buckets=len(segments),
    )
    return integrate(problem.scores, paths, x, problem.space.reduce, problem.internal_batch_size,
                     show_progress=problem.show_progress)


def _segments_to_split(segments: list[Segment], gap: torch.Tensor, tolerance: float, used: list[int],
                       max_steps: int) -> list[Segment]:
    """For each target over tolerance, its worst segments (largest |error| first) until the rest would be
    within tolerance, as far as the target's budget of gradient evaluations allows."""
    chosen = []
    for t, g in enumerate(gap.tolist()):
        own = sorted((s for s in segments if s.target == t), key=lambda s: -abs(s.error))
        allowed = tolerance * max(abs(g), 1e-12)
        if abs(sum(s.error for s in own)) <= allowed:
            continue
        budget = max(0, (max_steps - used[t]) // (2 * NODES_PER_SEGMENT))
        remaining = sum(abs(s.error) for s in own)
        for segment in own[:budget]:
            chosen.append(segment)
            remaining -= abs(segment.error)
            if remaining <= allowed / 2:
                break
    return chosen


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
        quadrature: str = SCORE_GUIDED,
        tolerance: float | None = 0.01,
        max_steps: int = 512,
        n_probes: int = 32,
        **params: Any,
    ) -> MethodResult:
        """`n_steps`: gradient evaluations per target to start with (score-guided: 4 per segment), or the
        fixed rule's steps; `tolerance`: relative completeness error to reach (None: no refinement);
        `max_steps`: gradient evaluations per target at most; `n_probes`: forward-only probe intervals."""
        reject_unknown(self.name, params)
        if tolerance is not None and not tolerance > 0:
            raise InvalidInputError(f"tolerance must be positive (or None for a fixed n_steps), got {tolerance}.")
        if not isinstance(n_steps, int) or n_steps < 1:
            raise InvalidInputError(f"n_steps must be a positive integer, got {n_steps!r}.")
        x = problem.space.point(problem.model, problem.seq)
        start = problem.space.baseline(baseline, problem.model, problem.tokenizer, problem.seq, x)
        if quadrature == SCORE_GUIDED:
            return score_guided_ig(problem, x, start, n_steps, tolerance, max_steps, n_probes)
        return doubling_ig(problem, x, start, n_steps, quadrature, tolerance, max_steps)
