"""Score-guided quadrature: integrate along any routes with nodes placed where each target's score moves.

Along a path the target's score F(s) is often flat for most of [0, 1] and then jumps; uniform nodes waste
themselves on the flat parts. Forward-only probes read F at a grid of s (and at every vertex of a polyline)
for all targets at once; each target's composite 4-node Gauss-Legendre segments are put at equal quantiles of
|dF| (plus a uniform share). A segment's exact integral, F(b) - F(a), is known from the probes, so its
quadrature error is measured, and only the segments that make a target miss its tolerance are bisected, as
far as the target's budget of gradient evaluations allows. Nodes of different targets and routes share one
backward per chunk (`RoutedNodes`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import InvalidInputError
from .engine import Integral, Reduce, Scores, evaluate, integrate
from .paths import RoutedNodes, Routes
from .quadrature import gauss_legendre, variation_edges

SCORE_GUIDED = "score-guided"
NODES_PER_SEGMENT = 4


@dataclass
class Segment:
    """[a, b] of one route, for one target, with the target's scores at its ends and, once integrated, its
    attribution."""

    route: int
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


@dataclass
class Run:
    """How to evaluate: the model forward plus the target, the space's reduction to tokens, the chunk size."""

    scores: Scores
    reduce: Reduce
    internal_batch_size: int
    show_progress: bool = True


def guided_integral(
    run: Run,
    routes: Routes,
    serves: Callable[[int], list[int]],
    n_targets: int,
    n_steps: int,
    tolerance: float | None,
    max_steps: int,
    n_probes: int,
    error_scale: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[Integral, torch.Tensor]:
    """Integrate every route for the targets it serves to `tolerance`.

    Args:
        serves: route index -> the targets whose gradients are integrated along it.
        n_steps: gradient evaluations per (route, target) to start with (4 per segment).
        max_steps: gradient evaluations per (route, target) at most.
        n_probes: probe intervals of the forward-only grid (polyline vertices are probed as well).
        error_scale: each (route, target)'s gap F(x) - F(start) (R, T) -> what its error is relative to (R, T);
            default |gap|, each route complete on its own. A method that averages routes (IG2) passes
            |mean gap| of the target's routes, since that is the completeness it reports.

    Returns:
        The integral (tokens (R, T, L), zero where a route does not serve a target) and the gradient
        evaluations each (route, target) used (R, T).
    """
    if not isinstance(n_probes, int) or n_probes < 2:
        raise InvalidInputError(f"n_probes must be an integer >= 2, got {n_probes!r}.")
    n_segments = max(1, min(n_steps, max_steps) // NODES_PER_SEGMENT)
    corner_s = torch.arange(routes.n_pieces + 1, dtype=torch.float64) / routes.n_pieces
    grid = torch.cat([torch.linspace(0, 1, n_probes + 1, dtype=torch.float64), corner_s]).unique()
    every = torch.arange(len(routes)).repeat_interleave(len(grid))
    f_grid = _scores_at(run, routes, every, grid.repeat(len(routes))).view(len(routes), len(grid), -1)  # (R, M+1, T)
    corners = torch.searchsorted(grid, corner_s)
    segments: list[Segment] = []
    for r in range(len(routes)):
        for t in serves(r):
            # A segment never straddles a polyline's corner, where the integrand has a kink that Gauss-Legendre
            # nodes (and bisection, whose midpoints miss the corner) would resolve only slowly.
            edges = torch.cat([variation_edges(f_grid[r, :, t], n_segments), corners]).unique().tolist()
            segments += [Segment(r, t, grid[i].item(), grid[j].item(), f_grid[r, i, t].item(), f_grid[r, j, t].item())
                         for i, j in zip(edges[:-1], edges[1:])]
    used = torch.zeros(len(routes), n_targets, dtype=torch.long)
    gap = f_grid[:, -1] - f_grid[:, 0]
    scale = gap.abs() if error_scale is None else error_scale(gap)
    n_forward, n_backward = len(routes) * len(grid), 0
    todo = segments
    while todo:
        integral = _integrate_segments(run, routes, todo, (f_grid[0, -1], f_grid[:, 0]))
        n_forward += integral.n_forward
        n_backward += integral.n_backward
        for i, segment in enumerate(todo):
            segment.tokens = integral.tokens[i, 0]
            segment.detail = None if integral.detail is None else integral.detail[i, 0]
            used[segment.route, segment.target] += NODES_PER_SEGMENT
        if tolerance is None:
            break
        splits = _segments_to_split(segments, scale, tolerance, used, max_steps)
        if not splits:
            break
        middles = torch.tensor([(s.a + s.b) / 2 for s in splits], dtype=torch.float64)
        f_middle = _scores_at(run, routes, torch.tensor([s.route for s in splits]), middles)
        todo = []
        for segment, middle, f_m in zip(splits, middles.tolist(), f_middle):
            value = f_m[segment.target].item()
            segments.remove(segment)
            todo += [Segment(segment.route, segment.target, segment.a, middle, segment.f_a, value),
                     Segment(segment.route, segment.target, middle, segment.b, value, segment.f_b)]
        n_forward += len(splits)
        segments += todo
    return _assemble(segments, f_grid, n_targets, n_forward, n_backward), used


def _assemble(segments: list[Segment], f_grid: torch.Tensor, n_targets: int, n_forward: int,
              n_backward: int) -> Integral:
    """Sum the segments of each (route, target) into an `Integral`."""
    first = segments[0]
    tokens = first.tokens.new_zeros((f_grid.shape[0], n_targets) + tuple(first.tokens.shape))
    detail = None if first.detail is None else first.detail.new_zeros((f_grid.shape[0], n_targets) + tuple(first.detail.shape))
    for segment in segments:
        tokens[segment.route, segment.target] += segment.tokens
        if detail is not None:
            detail[segment.route, segment.target] += segment.detail
    # Every route ends at the explicand, so its score there is the same on every route.
    return Integral(tokens, detail, f_grid[0, -1], f_grid[:, 0], n_forward, n_backward)


def _scores_at(run: Run, routes: Routes, route: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Target scores (A, T) at positions `s` (A,) of routes `route` (A,), forward only, one chunk at a time
    (so the probe points are never all in memory)."""
    return torch.cat([
        evaluate(run.scores, routes.at(r, chunk), run.internal_batch_size)
        for r, chunk in zip(route.split(run.internal_batch_size), s.split(run.internal_batch_size))
    ])


def _integrate_segments(run: Run, routes: Routes, segments: list[Segment],
                        known_ends: tuple[torch.Tensor, torch.Tensor]) -> Integral:
    """Gauss-Legendre nodes in each segment, each node serving its segment's target, in one integral (the
    route ends' scores are known from the probes)."""
    nodes, weights = gauss_legendre(NODES_PER_SEGMENT)
    a = torch.tensor([s.a for s in segments], dtype=torch.float64)[:, None]
    length = torch.tensor([s.b - s.a for s in segments], dtype=torch.float64)[:, None]
    nodes_of = torch.arange(len(segments)).repeat_interleave(NODES_PER_SEGMENT)
    paths = RoutedNodes(
        routes=routes,
        route=torch.tensor([s.route for s in segments])[nodes_of],
        s=(a + nodes.double() * length).flatten(),
        weight=(weights.double() * length).flatten(),
        target=torch.tensor([s.target for s in segments])[nodes_of],
        bucket=nodes_of,
        n_buckets=len(segments),
    )
    return integrate(run.scores, paths, routes.vertices[0, -1], run.reduce, run.internal_batch_size,
                     show_progress=run.show_progress, known_ends=known_ends)


def _segments_to_split(segments: list[Segment], scale: torch.Tensor, tolerance: float, used: torch.Tensor,
                       max_steps: int) -> list[Segment]:
    """For each (route, target) over tolerance, its worst segments (largest |error| first) until the rest would
    be within tolerance, as far as its budget of gradient evaluations allows."""
    own: dict[tuple[int, int], list[Segment]] = {}
    for segment in segments:
        own.setdefault((segment.route, segment.target), []).append(segment)
    chosen = []
    for (r, t), mine in own.items():
        mine.sort(key=lambda s: -abs(s.error))
        allowed = tolerance * max(float(scale[r, t]), 1e-12)
        if abs(sum(s.error for s in mine)) <= allowed:
            continue
        budget = max(0, (max_steps - int(used[r, t])) // (2 * NODES_PER_SEGMENT))
        remaining = sum(abs(s.error) for s in mine)
        for segment in mine[:budget]:
            chosen.append(segment)
            remaining -= abs(segment.error)
            if remaining <= allowed / 2:
                break
    return chosen
