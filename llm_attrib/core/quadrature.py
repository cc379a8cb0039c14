"""Quadrature rules on [0, 1]: pure functions returning nodes and weights (weights sum to one).

The node conventions match Captum's `approximation_methods`, so results can be compared point for point.
Gauss-Legendre is the default: it converges far faster than Riemann sums on the smooth integrands of IG.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..errors import InvalidInputError, UnknownNameError

Rule = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


def gauss_legendre(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Legendre nodes and weights mapped from [-1, 1] to [0, 1]; exact for polynomials of degree 2n-1."""
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return torch.from_numpy(0.5 * (nodes + 1)).float(), torch.from_numpy(0.5 * weights).float()


def riemann_left(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left Riemann sum: nodes 0, 1/n, ..., (n-1)/n."""
    return torch.arange(n, dtype=torch.float64).div(n).float(), torch.full((n,), 1.0 / n)


def riemann_right(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right Riemann sum: nodes 1/n, ..., 1."""
    return torch.arange(1, n + 1, dtype=torch.float64).div(n).float(), torch.full((n,), 1.0 / n)


def riemann_middle(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Midpoint rule: nodes (i + 1/2)/n."""
    return torch.arange(n, dtype=torch.float64).add(0.5).div(n).float(), torch.full((n,), 1.0 / n)


def trapezoid(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Trapezoid rule on n equally spaced nodes including both ends (needs n >= 2)."""
    if n < 2:
        raise InvalidInputError(f"the trapezoid rule needs n_steps >= 2, got {n}; use more steps or another rule.")
    weights = torch.full((n,), 1.0 / (n - 1))
    weights[[0, -1]] *= 0.5
    return torch.linspace(0, 1, n), weights


def riemann_inclusive(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain mean over n intervals' n + 1 equally spaced points, both ends included (RPI's reference code)."""
    return torch.linspace(0, 1, n + 1), torch.full((n + 1,), 1.0 / (n + 1))


def variation_edges(scores: torch.Tensor, n_segments: int, floor: float = 0.2) -> torch.Tensor:
    """Segment edges for one target, as indices into the probe grid where `scores` (M+1,) was read.

    The edges sit at equal quantiles of the score's variation |dF| along the path, mixed with a uniform
    share `floor` (so flat stretches still get some nodes): where the score jumps, segments are short.
    """
    steps = scores.diff().abs().double()
    total = float(steps.sum())
    share = steps / total if total > 0 else torch.full_like(steps, 1.0 / len(steps))
    density = (1 - floor) * share + floor / len(steps)
    cumulative = torch.cat([density.new_zeros(1), density.cumsum(0)])
    wanted = torch.linspace(0, float(cumulative[-1]), n_segments + 1, dtype=torch.float64)
    edges = torch.searchsorted(cumulative, wanted).clamp(0, len(steps))
    edges[0], edges[-1] = 0, len(steps)
    return edges.unique()


MAX_STEPS = 2048


def checked_steps(value: object, name: str = "n_steps", cap: int | None = MAX_STEPS) -> int:
    """A step count as given by a user: a positive integer, and (for nodes on one path) at most `cap`. Beyond
    it a fixed rule only costs time (Gauss-Legendre's nodes alone take seconds at 4096, memory at 10**5)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{name} must be a positive integer, got {value!r}.")
    if cap is not None and value > cap:
        raise InvalidInputError(
            f"{name}={value} is above {cap} nodes per path, where a fixed rule no longer pays for its cost; use the "
            "default score-guided quadrature with a tolerance, which puts nodes where the target's score changes."
        )
    return value


QUADRATURES: dict[str, Rule] = {
    "gauss-legendre": gauss_legendre,
    "riemann-left": riemann_left,
    "riemann-right": riemann_right,
    "riemann-middle": riemann_middle,
    "trapezoid": trapezoid,
    "riemann-inclusive": riemann_inclusive,
}


def quadrature(name: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes (n,) and weights (n,) of the named rule on [0, 1]."""
    if name not in QUADRATURES:
        raise UnknownNameError(f"unknown quadrature {name!r}; choose one of {sorted(QUADRATURES)}.")
    return QUADRATURES[name](checked_steps(n))
