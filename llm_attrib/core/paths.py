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

    @property
    def n_paths(self) -> int:
        return self.vertices.shape[0]

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


@dataclass
class TargetedNodes:
    """One straight line from `baseline` to `x` whose nodes each serve a single target.

    Node k sits at `alpha[k]` with weight `weight[k]` (the part of [0, 1] it stands for), serves target
    `target[k]` only, and its contribution is summed into `bucket[k]` (one segment of one target's composite
    rule). Per-target nodes let every target put its nodes where its own score moves, and a chunk holding
    nodes of several targets needs one backward pass: each point's gradient is that of its own target.
    """

    x: torch.Tensor
    baseline: torch.Tensor
    alpha: torch.Tensor
    weight: torch.Tensor
    target: torch.Tensor
    bucket: torch.Tensor
    n_buckets: int

    @property
    def n_paths(self) -> int:
        return self.n_buckets

    def __len__(self) -> int:
        return len(self.alpha)

    def path_of(self, index: torch.Tensor) -> torch.Tensor:
        return self.bucket[index]

    def target_of(self, index: torch.Tensor) -> torch.Tensor:
        return self.target[index]

    def points(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (-1,) + (1,) * self.x.dim()
        direction = (self.x - self.baseline).unsqueeze(0)
        alpha, weight = self.alpha[index].to(self.x).view(shape), self.weight[index].to(self.x).view(shape)
        return self.baseline.unsqueeze(0) + alpha * direction, weight * direction

    def starts(self) -> torch.Tensor:
        return self.baseline.unsqueeze(0)


Paths = StraightPaths | PolylinePaths | TargetedNodes
