"""Score-guided quadrature: integrate along any routes with nodes placed where each target's score moves.

Along a path the target's score F(s) is often flat for most of [0, 1] and then jumps; uniform nodes waste
themselves on the flat parts. Forward-only probes read F at a grid of s (and at every vertex of a polyline)
for all targets at once (a one-panel start needs no placement, and its own nodes' forwards read F); each
target's composite Boole panels (5 equally spaced nodes, weights 7 32 12 32 7
over 90, exact for quintics) are put at equal quantiles of |dF| (plus a uniform share), and neighbouring
panels share their edge node. A panel's exact integral, F(b) - F(a), is known from the probes, so its
quadrature error is measured, and only the panels that make a target miss its tolerance are bisected, as
far as the target's budget of gradient evaluations allows. Bisection is nested: a panel's 5 nodes are the
edges and middles of its two halves, so it costs 4 new gradients and discards none, and the scores the
gradients' forwards computed give the halves' exact integrals. Since every panel starts from the same
bisection, the nodes of different targets mostly coincide: each point runs forward once for all the targets
it serves (`RoutedNodes.point_ids`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import InvalidInputError
from .engine import FirstScores, Integral, Reduce, Scores, evaluate, integrate, unknown_ends
from .paths import RoutedNodes, Routes
from .quadrature import variation_edges

SCORE_GUIDED = "score-guided"
PANEL_WEIGHTS = torch.tensor([7.0, 32.0, 12.0, 32.0, 7.0], dtype=torch.float64) / 90
# The nested rule on the same 5 nodes: composite Simpson on the panel's two halves. Boole is its Richardson
# extrapolation, so |Boole - Simpson| estimates Simpson's error per token, an over-estimate of Boole's own on a
# smooth integrand; it costs no gradient. Summed over panels in absolute value, it is a per-token error bar.
NESTED_WEIGHTS = torch.tensor([1.0, 4.0, 2.0, 4.0, 1.0], dtype=torch.float64) / 12
NODES_PER_PANEL = 4  # new gradient evaluations per panel (and per bisection): neighbours share an edge
# A target's worst panels are bisected until the others' |errors| sum to this share of its tolerance. Half
# (the earlier rule) cost 5-10% more gradients over embeddings on held-out zoo examples, and every target
# ended within 1% either way (`python eval/quadrature_budget.py shares`).
SPLIT_UNTIL = 1.0
Key = tuple[int, int, int, float]  # route, target, polyline piece, s


def minimum_steps(n_pieces: int) -> int:
    """Gradient evaluations a route of `n_pieces` needs at least: a panel per piece (none straddles a corner)."""
    return NODES_PER_PANEL * n_pieces + 1


def check_budget(max_steps: int, n_pieces: int, per: str = "path") -> None:
    """Refuse a `max_steps` below `minimum_steps(n_pieces)`, so the budget is never silently exceeded."""
    needed = minimum_steps(n_pieces)
    if max_steps < needed:
        raise InvalidInputError(
            f"max_steps={max_steps} is below what one path needs: a Boole panel of 5 gradient evaluations per "
            f"piece ({n_pieces} piece{'s' if n_pieces > 1 else ''}), {needed} gradient evaluations per {per}; "
            "raise max_steps to that, or use a path of fewer pieces (IG2: lower n_steps)."
        )


@dataclass
class Node:
    """One gradient evaluation: its contribution at unit weight (tokens, the space's detail) and the score of
    its target there."""

    tokens: torch.Tensor
    detail: torch.Tensor | None
    score: float


@dataclass
class Panel:
    """A Boole panel on one piece of one route, for one target: its 5 nodes `s`, its target's scores at its
    ends, and, once its nodes are evaluated, its attribution."""

    route: int
    target: int
    piece: int
    s: tuple[float, float, float, float, float]
    f_a: float
    f_b: float
    tokens: torch.Tensor | None = None
    detail: torch.Tensor | None = None
    token_error: torch.Tensor | None = None
    detail_error: torch.Tensor | None = None

    @classmethod
    def between(cls, route: int, target: int, a: float, b: float, f_a: float, f_b: float, n_pieces: int) -> Panel:
        middle = (a + b) / 2
        return cls(route, target, min(int(middle * n_pieces), n_pieces - 1),
                   (a, (a + middle) / 2, middle, (middle + b) / 2, b), f_a, f_b)

    @property
    def keys(self) -> list[Key]:
        return [(self.route, self.target, self.piece, s) for s in self.s]

    @property
    def error(self) -> float:
        """Signed quadrature error: the attribution's total minus the exact integral F(b) - F(a)."""
        return float(self.tokens.sum()) - (self.f_b - self.f_a)

    def estimate(self, nodes: dict[Key, Node]) -> None:
        """The panel's attribution by Boole's rule, and Boole - Simpson per token (the error estimate)."""
        width = self.s[-1] - self.s[0]
        weights = (PANEL_WEIGHTS * width).tolist()
        differences = ((PANEL_WEIGHTS - NESTED_WEIGHTS) * width).tolist()
        values = [nodes[key] for key in self.keys]
        self.tokens = sum(w * node.tokens for w, node in zip(weights, values))
        self.token_error = sum(d * node.tokens for d, node in zip(differences, values))
        if values[0].detail is not None:
            self.detail = sum(w * node.detail for w, node in zip(weights, values))
            self.detail_error = sum(d * node.detail for d, node in zip(differences, values))

    def halves(self, nodes: dict[Key, Node]) -> list[Panel]:
        """The two halves, whose edges and middles are this panel's nodes."""
        s0, s1, s2, s3, s4 = self.s
        f_middle = nodes[self.keys[2]].score
        return [Panel(self.route, self.target, self.piece, (s0, (s0 + s1) / 2, s1, (s1 + s2) / 2, s2), self.f_a, f_middle),
                Panel(self.route, self.target, self.piece, (s2, (s2 + s3) / 2, s3, (s3 + s4) / 2, s4), f_middle, self.f_b)]


@dataclass
class Run:
    """How to evaluate: the model forward plus the target, the space's reduction to tokens, the chunk size."""

    scores: Scores
    reduce: Reduce
    internal_batch_size: int
    show_progress: bool = True
    first_scores: FirstScores | None = None


def guided_integral(
    run: Run,
    routes: Routes,
    serves: Callable[[int], list[int]],
    n_targets: int,
    n_steps: int,
    tolerance: float | None,
    max_steps: int,
    n_probes: int | None,
    error_scale: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[Integral, torch.Tensor]:
    """Integrate every route for the targets it serves to `tolerance`.

    Args:
        serves: route index -> the targets whose gradients are integrated along it.
        n_steps: gradient evaluations per (route, target) to start with: (n_steps - 1) // 4 panels, at least
            one (5 nodes), more where a polyline has more pieces.
        max_steps: gradient evaluations per (route, target) at most.
        n_probes: probe intervals of the forward-only grid (polyline vertices are probed as well); None: 4 per
            starting panel, enough to place them (refinement reads its scores from its own forwards).
        error_scale: each (route, target)'s gap F(x) - F(start) (R, T) -> what its error is relative to (R, T);
            default |gap|, each route complete on its own. A method that averages routes (IG2) passes
            |mean gap| of the target's routes, since that is the completeness it reports.

    Returns:
        The integral (tokens (R, T, L), zero where a route does not serve a target) and the gradient
        evaluations each (route, target) used (R, T).
    """
    check_budget(max_steps, routes.n_pieces)
    n_panels = max(1, (min(n_steps, max_steps) - 1) // NODES_PER_PANEL)
    # One straight panel per (route, target) needs no placement: its own 5 nodes are the whole probe grid, and
    # their forwards give the scores, so nothing is probed beforehand.
    from_nodes = (n_probes is None and n_panels == 1 and routes.n_pieces == 1
                  and all(len(serves(r)) == n_targets for r in range(len(routes))))
    if n_probes is None:
        n_probes = max(2, NODES_PER_PANEL * n_panels)
    if not isinstance(n_probes, int) or n_probes < 2:
        raise InvalidInputError(f"n_probes must be an integer >= 2, got {n_probes!r}.")
    corner_s = torch.arange(routes.n_pieces + 1, dtype=torch.float64) / routes.n_pieces
    grid = torch.cat([torch.linspace(0, 1, n_probes + 1, dtype=torch.float64), corner_s]).unique()
    n_forward, n_backward = 0, 0
    if from_nodes:
        f_grid = None
        panels = [Panel.between(r, t, 0.0, 1.0, float("nan"), float("nan"), 1)
                  for r in range(len(routes)) for t in serves(r)]
    else:
        every = torch.arange(len(routes)).repeat_interleave(len(grid))
        f_grid = _scores_at(run, routes, every, grid.repeat(len(routes))).view(len(routes), len(grid), -1)  # (R, M+1, T)
        n_forward += len(routes) * len(grid)
        panels = _placed_panels(routes, serves, grid, f_grid, corner_s, n_panels)
    used = torch.zeros(len(routes), n_targets, dtype=torch.long)
    nodes: dict[Key, Node] = {}
    todo = panels
    while todo:
        missing = list(dict.fromkeys(key for panel in todo for key in panel.keys if key not in nodes))
        integral = _evaluate_nodes(run, routes, missing, n_targets)
        n_forward += integral.n_forward
        n_backward += integral.n_backward
        for i, key in enumerate(missing):
            detail = None if integral.detail is None else integral.detail[i, 0]
            nodes[key] = Node(integral.tokens[i, 0], detail, float(integral.point_scores[i]))
            used[key[0], key[1]] += 1
        if f_grid is None:
            f_grid = torch.tensor([[[nodes[(r, t, 0, s)].score for t in range(n_targets)] for s in grid.tolist()]
                                   for r in range(len(routes))])
            for panel in panels:
                panel.f_a, panel.f_b = float(f_grid[panel.route, 0, panel.target]), float(f_grid[panel.route, -1, panel.target])
        gap = f_grid[:, -1] - f_grid[:, 0]
        scale = gap.abs() if error_scale is None else error_scale(gap)
        for panel in todo:
            panel.estimate(nodes)
        if tolerance is None:
            break
        splits = _panels_to_split(panels, scale, tolerance, used, max_steps)
        todo = [half for panel in splits for half in panel.halves(nodes)]
        refining = {(panel.route, panel.target) for panel in splits}  # a pair left out now is done for good
        nodes = {key: node for key, node in nodes.items() if key[:2] in refining}
        split_ids = {id(panel) for panel in splits}
        panels = [panel for panel in panels if id(panel) not in split_ids] + todo
    return _assemble(panels, f_grid, n_targets, n_forward, n_backward), used


def _placed_panels(routes: Routes, serves: Callable[[int], list[int]], grid: torch.Tensor, f_grid: torch.Tensor,
                   corner_s: torch.Tensor, n_panels: int) -> list[Panel]:
    """Each (route, target)'s starting panels, at equal quantiles of its probed score's variation."""
    corners = torch.searchsorted(grid, corner_s)
    panels: list[Panel] = []
    for r in range(len(routes)):
        for t in serves(r):
            # A panel never straddles a polyline's corner, where the integrand has a kink that polynomial rules
            # (and bisection, whose midpoints miss the corner) would resolve only slowly.
            edges = torch.cat([variation_edges(f_grid[r, :, t], n_panels), corners]).unique().tolist()
            panels += [Panel.between(r, t, grid[i].item(), grid[j].item(), f_grid[r, i, t].item(),
                                     f_grid[r, j, t].item(), routes.n_pieces)
                       for i, j in zip(edges[:-1], edges[1:])]
    return panels


def _assemble(panels: list[Panel], f_grid: torch.Tensor, n_targets: int, n_forward: int,
              n_backward: int) -> Integral:
    """Sum the panels of each (route, target) into an `Integral`."""
    first = panels[0]
    tokens = first.tokens.new_zeros((f_grid.shape[0], n_targets) + tuple(first.tokens.shape))
    detail = None if first.detail is None else first.detail.new_zeros((f_grid.shape[0], n_targets) + tuple(first.detail.shape))
    token_error = torch.zeros_like(tokens)
    detail_error = None if detail is None else torch.zeros_like(detail)
    for panel in panels:
        tokens[panel.route, panel.target] += panel.tokens
        token_error[panel.route, panel.target] += panel.token_error.abs()
        if detail is not None:
            detail[panel.route, panel.target] += panel.detail
            detail_error[panel.route, panel.target] += panel.detail_error.abs()
    # Every route ends at the explicand, so its score there is the same on every route.
    return Integral(tokens, detail, f_grid[0, -1], f_grid[:, 0], n_forward, n_backward,
                    token_error=token_error, detail_error=detail_error)


def _scores_at(run: Run, routes: Routes, route: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Target scores (A, T) at positions `s` (A,) of routes `route` (A,), forward only, one chunk at a time
    (so the probe points are never all in memory)."""
    return torch.cat([
        evaluate(run.scores, routes.at(r, chunk), run.internal_batch_size)
        for r, chunk in zip(route.split(run.internal_batch_size), s.split(run.internal_batch_size))
    ])


def _evaluate_nodes(run: Run, routes: Routes, keys: list[Key], n_targets: int) -> Integral:
    """Each node's contribution at unit weight and its target's score there, each node serving its own target,
    in one integral. The routes' end scores are the caller's (probed, or read off the nodes), so the engine is
    told not to run them: its ends are left NaN and never read."""
    route, target, piece, s = zip(*keys)
    paths = RoutedNodes(
        routes=routes,
        route=torch.tensor(route),
        s=torch.tensor(s, dtype=torch.float64),
        weight=torch.ones(len(keys), dtype=torch.float64),
        target=torch.tensor(target),
        bucket=torch.arange(len(keys)),
        n_buckets=len(keys),
        piece=torch.tensor(piece),
    )
    return integrate(run.scores, paths, routes.vertices[0, -1], run.reduce, run.internal_batch_size,
                     show_progress=run.show_progress, first_scores=run.first_scores,
                     known_ends=unknown_ends(len(routes), n_targets))


def _panels_to_split(panels: list[Panel], scale: torch.Tensor, tolerance: float, used: torch.Tensor,
                     max_steps: int) -> list[Panel]:
    """For each (route, target) over tolerance, its worst panels (largest |error| first) until the rest would
    be within tolerance (`SPLIT_UNTIL`), as far as its budget of gradient evaluations allows."""
    own: dict[tuple[int, int], list[Panel]] = {}
    for panel in panels:
        own.setdefault((panel.route, panel.target), []).append(panel)
    chosen = []
    for (r, t), mine in own.items():
        mine.sort(key=lambda p: -abs(p.error))
        allowed = tolerance * max(float(scale[r, t]), 1e-12)
        if abs(sum(p.error for p in mine)) <= allowed:
            continue
        budget = max(0, (max_steps - int(used[r, t])) // NODES_PER_PANEL)
        remaining = sum(abs(p.error) for p in mine)
        for panel in mine[:budget]:
            chosen.append(panel)
            remaining -= abs(panel.error)
            if remaining <= SPLIT_UNTIL * allowed:
                break
    return chosen
