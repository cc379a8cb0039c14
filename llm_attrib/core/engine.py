"""The engine: the only place that runs forward and backward passes for attributions.

It evaluates every target's gradient at every point of a set of paths, in chunks of `internal_batch_size`
points. One forward per chunk serves all targets of the sequence (a causal model's target t depends only
on positions <= t), followed by one backward per target on the shared graph. Contributions
(gradient x displacement) are reduced to tokens per chunk, so memory is bounded by the chunk. Under
`parallel.sharding` each process takes every n-th chunk and the sums are added across processes; the
forward-only evaluations (endpoints, probes) are cheap and run on every process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .. import parallel
from ..errors import NumericalError
from .paths import Paths, taken
from .progress import current

Scores = Callable[[torch.Tensor], torch.Tensor]
Reduce = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor | None]]
Contribution = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # gradient, delta, point
FirstScores = Callable[[torch.Tensor, int], torch.Tensor]  # points, n -> scores of the first n targets


def gradient_times_delta(gradient: torch.Tensor, delta: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """The path-integral contribution of one point: its gradient times the displacement it stands for."""
    return gradient * delta


@dataclass
class Integral:
    """What the engine computed for P paths and T targets.

    Attributes:
        tokens: (P, T, L) attribution per path, target and token.
        detail: (P, T, *D) the space's finer attribution (attention: layers x heads x keys), or None.
        f_end: (T,) target scores at the explicand.
        f_start: (P, T) target scores at each path's start (the baseline).
        n_forward: sequences run forward (path points and endpoints; a chunk of B points counts B).
        n_backward: sequences run backward (B per target per chunk).
        point_scores: (N,) for paths whose points each serve one target: that target's score at each point,
            which the forward computed anyway (score-guided refinement reads the scores at its new edges here).
        token_error, detail_error: (P, T, L) and (P, T, *D), per-token (per-entry) quadrature error estimates
            where the rule has a nested one (score-guided panels: |Boole - Simpson on the same nodes| summed over
            the panels, so errors of different panels never cancel in it), else None.
    """

    tokens: torch.Tensor
    detail: torch.Tensor | None
    f_end: torch.Tensor
    f_start: torch.Tensor
    n_forward: int
    n_backward: int
    point_scores: torch.Tensor | None = None
    token_error: torch.Tensor | None = None
    detail_error: torch.Tensor | None = None

    def completeness_error(self) -> torch.Tensor:
        """(P, T) |sum(attr) - (F(x) - F(x'))| / |F(x) - F(x')|."""
        gap = self.f_end.unsqueeze(0) - self.f_start
        return (self.tokens.sum(-1) - gap).abs() / gap.abs().clamp_min(1e-12)


def check_finite(values: torch.Tensor, what: str) -> None:
    """Stop at the first NaN or inf, naming where it appeared, instead of letting it spread into the result."""
    if not torch.isfinite(values).all():
        raise NumericalError(
            f"the model produced NaN or inf {what}; check the model's weights and dtype (half precision "
            "overflows are common, and huge weights overflow gradients) before attributing."
        )


def unknown_ends(n_paths: int, n_targets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`known_ends` for an integral whose endpoint scores nobody reads: no forward is spent on them, and the
    completeness error comes out NaN."""
    return torch.full((n_targets,), float("nan")), torch.full((n_paths, n_targets), float("nan"))


def evaluate(scores: Scores, points: torch.Tensor, internal_batch_size: int) -> torch.Tensor:
    """Target scores (N, T) at points (N, *S) without gradients, in chunks."""
    with torch.no_grad():
        out = torch.cat([scores(chunk).float() for chunk in points.split(internal_batch_size)])
    check_finite(out, "target scores at the path's endpoints")
    return out


def integrate(
    scores: Scores,
    paths: Paths,
    end: torch.Tensor,
    reduce: Reduce,
    internal_batch_size: int,
    contribution: Contribution = gradient_times_delta,
    show_progress: bool = True,
    targets: list[int] | None = None,
    known_ends: tuple[torch.Tensor, torch.Tensor] | None = None,
    first_scores: FirstScores | None = None,
) -> Integral:
    """Integrate the gradients of all targets along all paths.

    Args:
        scores: points (B, *S) -> target scores (B, T); the model forward plus the target.
        paths: the paths; each point comes with the displacement it stands for.
        end: (*S) the explicand x, where every path ends.
        reduce: (contribution (*S), target index) -> (tokens (L,), detail (*D) or None); linear.
        internal_batch_size: path points per forward.
        contribution: (gradient, delta, point) -> contribution; gradient x delta for path methods (others, e.g.
            RPI's reference-code integrand, also weigh by the point itself).
        show_progress: show a progress bar when the work takes more than a second.
        targets: the targets whose gradients to integrate (default all); the others' rows stay zero. One
            forward still serves them all, so refining a few targets costs only their backward passes.
        known_ends: the target scores at the explicand (T,) and at each path's start (P, T) when the caller
            has them already (score-guided refinement rounds), so they are not run forward again.
        first_scores: (points, n) -> scores of the first n targets only; with paths whose points each serve one
            target, a chunk then runs forward only as far as its last target needs.

    Paths whose points each serve one target (`one_target_per_point`, e.g. `RoutedNodes`) take one backward per chunk
    instead of one per target, and their integral has a single column: tokens (P, 1, L).
    """
    if known_ends is None:
        f_all = evaluate(scores, torch.cat([end.unsqueeze(0), paths.starts()]), internal_batch_size)
        f_end, f_start = f_all[0], f_all[1:]
    else:
        f_end, f_start = known_ends
    n_ends = 0 if known_ends is not None else 1 + len(f_start)
    n_targets = f_end.shape[0]
    target_of = paths.target_of if getattr(paths, "one_target_per_point", False) else None
    columns = 1 if target_of is not None else n_targets
    tokens: torch.Tensor | None = None
    detail: torch.Tensor | None = None
    point_scores = torch.zeros(len(paths)) if target_of is not None else None
    n_forward, n_backward = n_ends, 0

    def accumulate(contrib: torch.Tensor, path_ids: torch.Tensor, column: int, target: int) -> None:
        nonlocal tokens, detail
        for p in path_ids.unique().tolist():
            token_part, detail_part = reduce(contrib[path_ids == p].sum(0), target)
            if tokens is None:
                tokens = token_part.new_zeros((paths.n_paths, columns) + token_part.shape)
                if detail_part is not None:
                    detail = detail_part.new_zeros((paths.n_paths, columns) + detail_part.shape)
            tokens[p, column] += token_part
            if detail is not None:
                detail[p, column] += detail_part

    chunks = parallel.my_chunks(_chunks(paths, internal_batch_size))
    bar = current()  # the explanation's one bar, when an Attributor runs this
    for index in chunks if bar is not None else tqdm(chunks, desc="attributing", delay=1.0, leave=False,
                                                      disable=not show_progress):
        if bar is not None:
            bar.advance()
        path_ids = paths.path_of(index)
        if target_of is not None:
            own = target_of(index)
            row, points, deltas = _shared_points(paths, index)
            gradient, scored, n_rows, n_passes = _own_gradients(scores, first_scores, points, row, own)
            n_forward += n_rows
            n_backward += n_rows * n_passes
            point_scores[index] = scored
            # The default needs no point per node; another hook gets them (a gather of the chunk's points).
            contrib = (gradient * deltas if contribution is gradient_times_delta
                       else contribution(gradient, deltas, taken(points, row)))
            for t in own.unique().tolist():
                accumulate(contrib[own == t], path_ids[own == t], 0, t)
            continue
        points, deltas = paths.points(index)
        points = points.detach().requires_grad_(True)
        out = scores(points)
        check_finite(out, "target scores at a path point")
        n_forward += len(index)
        chosen = list(range(n_targets)) if targets is None else targets
        for t in chosen:
            (gradient,) = torch.autograd.grad(out[:, t].sum(), points, retain_graph=t != chosen[-1])
            n_backward += len(index)
            check_finite(gradient, "gradients at a path point")
            accumulate(contribution(gradient.float(), deltas, points.detach()), path_ids, t, t)
    if parallel.is_sharding():
        if tokens is None:  # this process had no chunk: add zeros of the right shape
            token_part, detail_part = reduce(torch.zeros_like(end).float(), 0)
            tokens = token_part.new_zeros((paths.n_paths, columns) + token_part.shape)
            detail = None if detail_part is None else detail_part.new_zeros((paths.n_paths, columns) + detail_part.shape)
        tokens = parallel.sum_across(tokens)
        detail = None if detail is None else parallel.sum_across(detail)
        if point_scores is not None:
            point_scores = parallel.sum_across(point_scores.to(tokens.device)).cpu()
        work = parallel.sum_across(torch.tensor([n_forward - n_ends, n_backward], device=tokens.device))
        n_forward, n_backward = n_ends + int(work[0]), int(work[1])
    return Integral(tokens, detail, f_end, f_start, n_forward, n_backward, point_scores)


def _chunks(paths: Paths, internal_batch_size: int) -> list[torch.Tensor]:
    """Indices of at most `internal_batch_size` nodes at a time. Where nodes share points (`point_ids`), they
    are grouped by point, a point's nodes stay in one chunk as far as the size allows, and a chunk holds
    points of one multiplicity (each of its backward passes then serves every point in it), earliest last
    target first (its forward stops there)."""
    everything = torch.arange(len(paths))
    if getattr(paths, "point_ids", None) is None:
        return list(everything.split(internal_batch_size))
    ids, targets = paths.point_ids(everything), paths.target_of(everything)
    multiplicity = torch.bincount(ids)
    last = torch.zeros_like(multiplicity).scatter_reduce(0, ids, targets, "amax")
    order = everything
    for key in (targets, ids, last[ids], -multiplicity[ids]):  # sort by the last key, ties by the ones before
        order = order[torch.argsort(key[order], stable=True)]
    cuts = [0] + ((ids[order].diff() != 0).nonzero()[:, 0] + 1).tolist() + [len(order)]
    groups = [group for a, b in zip(cuts[:-1], cuts[1:]) for group in order[a:b].split(internal_batch_size)]
    chunks: list[list[torch.Tensor]] = []
    for group in groups:
        if chunks and len(chunks[-1][0]) == len(group) and (len(chunks[-1]) + 1) * len(group) <= internal_batch_size:
            chunks[-1].append(group)
        else:
            chunks.append([group])
    return [torch.cat(chunk) for chunk in chunks]


def _shared_points(paths: Paths, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A chunk's distinct points (U, *S), which of them each node sits at (B,), and each node's displacement
    (B, *S); every node its own point where the paths cannot share them."""
    shared = getattr(paths, "shared_points", None)
    if shared is not None:
        return shared(index)
    points, deltas = paths.points(index)
    return torch.arange(len(index)), points, deltas


def _own_gradients(scores: Scores, first_scores: FirstScores | None, points: torch.Tensor, row: torch.Tensor,
                   own: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Each node's gradient of its own target, with one forward per distinct point.

    Nodes (B,) sit at `points[row]` (points (U, *S)) and serve targets `own` (B,). The points run forward
    once (as far as the chunk's last target needs); a point serving k nodes takes k backward passes on the
    shared graph, the i-th pass giving every point's i-th node. Returns the gradients (B, *S) in float32, each
    node's score (B,), the points run forward and the backward passes.
    """
    order = torch.argsort(row, stable=True)
    counts = torch.bincount(row, minlength=len(points))
    starts = counts.cumsum(0) - counts
    rank = torch.empty_like(row)
    rank[order] = torch.arange(len(row)) - starts[row[order]]  # i-th node of its point
    shared = points.detach().requires_grad_(True)
    out = scores(shared) if first_scores is None else first_scores(shared, int(own.max()) + 1)
    check_finite(out, "target scores at a path point")
    row_dev = row.to(out.device)
    scored = out[row_dev, own.to(out.device)]
    n_passes = int(rank.max()) + 1
    gradient = torch.empty((len(row),) + tuple(points.shape[1:]), dtype=torch.float32, device=points.device)
    for i in range(n_passes):
        mine = (rank == i).to(out.device)
        (grad,) = torch.autograd.grad(scored[mine].sum(), shared, retain_graph=i < n_passes - 1)
        check_finite(grad, "gradients at a path point")
        gradient[mine] = grad[row_dev[mine]].float()
    return gradient, scored.detach().float().cpu(), len(points), n_passes
