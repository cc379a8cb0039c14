"""Paths through a space, as points with the displacement each point stands for.

A path method's attribution is `sum_k delta_k * grad F(point_k)`. For a straight line from baseline b to
x with quadrature (alpha_k, w_k): point_k = b + alpha_k (x - b) and delta_k = w_k (x - b). For a polyline
gamma_0 = x, ..., gamma_J (IG2's GradPath): point_j = gamma_j and delta_j = gamma_j - gamma_{j+1}.
Several paths (RPI's baselines, IG2's references) are integrated together; each point knows its path.
Points are built lazily per chunk, so memory is bounded by the chunk, not by the path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class StraightPaths:
    """P straight lines from `baselines` (P, *S) to `x` (*S) with shared quadrature nodes and weights (K,).

    `displacement` (P, *S) replaces x - baseline as what the averaged gradient is multiplied by (RPI's
    reference code multiplies by x itself); the points stay on the straight line.
    """

    x: torch.Tensor
    baselines: torch.Tensor
    nodes: torch.Tensor
    weights: torch.Tensor
    displacement: torch.Tensor | None = None

    @property
    def n_paths(self) -> int:
        return self.baselines.shape[0]

    def __len__(self) -> int:
        return self.n_paths * len(self.nodes)

    def path_of(self, index: torch.Tensor) -> torch.Tensor:
        return index // len(self.nodes)

    def points(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Points (B, *S) and deltas (B, *S) for flat point indices (B,)."""
        k = (index % len(self.nodes)).to(self.x.device)
        start = self.baselines[self.path_of(index).to(self.x.device)]
        shape = (-1,) + (1,) * self.x.dim()
        direction = self.x.unsqueeze(0) - start
        moved = direction if self.displacement is None else self.displacement[self.path_of(index).to(self.x.device)]
        return start + self.nodes.to(self.x)[k].view(shape) * direction, self.weights.to(self.x)[k].view(shape) * moved

    def starts(self) -> torch.Tensor:
        return self.baselines


@dataclass
class PolylinePaths:
    """P polylines given by their vertices (P, J+1, *S), each starting at the explicand x = vertices[:, 0].

    Each segment gamma_j -> gamma_{j+1} is integrated with the quadrature `nodes`/`weights` (K,) on [0, 1];
    the default, one node at the segment's start with weight 1, is IG2's left-point sum
    (gamma_j - gamma_{j+1}) * grad F(gamma_j).
    """

    vertices: torch.Tensor
    nodes: torch.Tensor = field(default_factory=lambda: torch.zeros(1))
    weights: torch.Tensor = field(default_factory=lambda: torch.ones(1))
    targets: torch.Tensor | None = None

    @property
    def n_paths(self) -> int:
        return self.vertices.shape[0]

    @property
    def one_target_per_point(self) -> bool:
        """With `targets` (P,), path p serves target targets[p] only (one backward per chunk); without, every
        target is integrated along every path."""
        return self.targets is not None

    def target_of(self, index: torch.Tensor) -> torch.Tensor:
        return self.targets[self.path_of(index)]

    @property
    def points_per_path(self) -> int:
        return (self.vertices.shape[1] - 1) * len(self.nodes)

    def __len__(self) -> int:
        return self.n_paths * self.points_per_path

    def path_of(self, index: torch.Tensor) -> torch.Tensor:
        return index // self.points_per_path

    def points(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        within = index % self.points_per_path
        p, j, k = self.path_of(index), within // len(self.nodes), within % len(self.nodes)
        here, after = self.vertices[p, j], self.vertices[p, j + 1]
        shape = (-1,) + (1,) * (here.dim() - 1)
        alpha, weight = self.nodes.to(here)[k].view(shape), self.weights.to(here)[k].view(shape)
        return here + alpha * (after - here), weight * (here - after)

    def starts(self) -> torch.Tensor:
        return self.vertices[:, -1]


def taken(rows: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """rows[which], as a broadcast view when there is one distinct row (one, or a broadcast view of one): no
    copy of it per index."""
    if len(rows) == 1 or rows.stride(0) == 0:
        return rows[:1].expand((len(which),) + tuple(rows.shape[1:]))
    return rows[which.to(rows.device)]


@dataclass
class Routes:
    """R routes, each a polyline from its start (s = 0) to the explicand (s = 1), parametrised by s in [0, 1]
    with its J pieces at equal shares of s: vertices (R, J+1, *S). A straight line is the case J = 1.

    Score-guided quadrature places nodes by s, whatever the route's shape: IG's line from the baseline, RPI's
    lines from random baselines, IG2's GradPaths from their counterfactuals.
    """

    vertices: torch.Tensor

    def __len__(self) -> int:
        return self.vertices.shape[0]

    @property
    def n_pieces(self) -> int:
        return self.vertices.shape[1] - 1

    def _piece(self, route: torch.Tensor, s: torch.Tensor, piece: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The distinct pieces the positions fall on: their start vertices (P, *S) and steps to the next vertex
        (P, *S), which piece each position is on (A,), and where on it (A, 1, ...) in [0, 1]. Vertices are
        gathered once per piece, not per position: an attention-space point of a real model is tens of MB."""
        scaled = s.double() * self.n_pieces
        j = scaled.floor().long().clamp(0, self.n_pieces - 1) if piece is None else piece
        local = (scaled - j).to(self.vertices.dtype).view((-1,) + (1,) * (self.vertices.dim() - 2))
        pieces, which = torch.stack([route.cpu(), j.cpu()]).unique(dim=1, return_inverse=True)
        on, at = pieces.to(self.vertices.device)
        here = self.vertices[on, at]
        return here, self.vertices[on, at + 1] - here, which, local.to(self.vertices.device)

    def at(self, route: torch.Tensor, s: torch.Tensor, piece: torch.Tensor | None = None) -> torch.Tensor:
        """Points (A, *S) of routes `route` (A,) at positions `s` (A,) (on pieces `piece` (A,) if given: a
        corner belongs to the pieces on both sides)."""
        return self.at_with_velocity(route, s, piece)[0]

    def at_with_velocity(self, route: torch.Tensor, s: torch.Tensor,
                         piece: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The points (A, *S), as `at`, and d point / ds there (A, *S): the displacement a node of unit weight
        stands for. The velocity is a view where every position is on one piece (a straight route): no copy."""
        here, step, which, local = self._piece(route, s, piece)
        here, step = taken(here, which), taken(step, which)
        return torch.addcmul(here, local, step), self.n_pieces * step if self.n_pieces > 1 else step

    def starts(self) -> torch.Tensor:
        return self.vertices[:, 0]


@dataclass
class RoutedNodes:
    """Nodes on `routes`, each serving a single target: node k sits at `s[k]` of route `route[k]` with weight
    `weight[k]` (the part of [0, 1] it stands for), serves target `target[k]` only, and its contribution is
    summed into `bucket[k]` (one segment of one target's composite rule, or the node alone). `piece[k]`, if
    given, is the polyline piece whose velocity the node takes (a node on a corner ends one piece and starts
    the next). Per-target nodes let every target put
    its nodes where its own score moves; nodes of several targets at the same point share its forward
    (`point_ids`), and each gets the gradient of its own target.
    """

    routes: Routes
    route: torch.Tensor
    s: torch.Tensor
    weight: torch.Tensor
    target: torch.Tensor
    bucket: torch.Tensor
    n_buckets: int
    piece: torch.Tensor | None = None

    one_target_per_point = True

    @property
    def n_paths(self) -> int:
        return self.n_buckets

    def __len__(self) -> int:
        return len(self.s)

    def path_of(self, index: torch.Tensor) -> torch.Tensor:
        return self.bucket[index]

    def target_of(self, index: torch.Tensor) -> torch.Tensor:
        return self.target[index]

    def point_ids(self, index: torch.Tensor) -> torch.Tensor:
        """(B,) ids 0..U-1, equal where nodes sit at the same point (route, s, piece): one forward serves them."""
        piece = torch.full_like(self.route[index], -1) if self.piece is None else self.piece[index]
        where = torch.stack([self.route[index].double(), self.s[index].double(), piece.double()], 1)
        return where.unique(dim=0, return_inverse=True)[1]

    def shared_points(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The distinct points (U, *S) of nodes `index`, the point of each node (B,), and each node's
        displacement (B, *S): its weight times its point's velocity."""
        row = self.point_ids(index)
        first = torch.full((int(row.max()) + 1,), len(row)).scatter_reduce(0, row, torch.arange(len(row)), "amin")
        points, velocity = self._at(index[first])
        return row, points, self._weight(index, velocity) * taken(velocity, row)

    def points(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        points, velocity = self._at(index)
        return points, self._weight(index, velocity) * velocity

    def _at(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Points and velocities of nodes `index` on their routes (and pieces)."""
        piece = None if self.piece is None else self.piece[index]
        return self.routes.at_with_velocity(self.route[index], self.s[index], piece)

    def _weight(self, index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Nodes' quadrature weights shaped to broadcast over points like `like`."""
        return self.weight[index].to(like).view((-1,) + (1,) * (like.dim() - 1))

    def starts(self) -> torch.Tensor:
        return self.routes.starts()


Paths = StraightPaths | PolylinePaths | RoutedNodes
