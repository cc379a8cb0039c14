"""RPI: Randomized Path Integration (Barkan et al., Findings of EMNLP 2024).

Integrated gradients along straight lines from R random baselines drawn from a Gaussian diffusion forward
process around the explicand A, q(b | A) = N(sqrt(abar_t) A, s_t^2 I), then one of the R maps is kept per
target (or per example) by a faithfulness metric psi evaluated on the same example.

Paper defaults: attention space, the third layer from the end, all heads; linear beta schedule 1e-4..0.02,
T = t = 500; R = 24 baselines; 30 interpolation intervals. The reference code (rpiconf/rpi) differs in four
places, each available as an option here:

- noise scale `1 - abar_t` instead of the process's `sqrt(1 - abar_t)`  (`noise_scale="code"`);
- the averaged gradient multiplied by A instead of (A - b)                (`multiply_by="input"`);
- the plain mean over the 31 points of 30 intervals, both ends included   (`quadrature="riemann-inclusive"`);
- mean over heads and one query row (last token / CLS)                    (`aggregation="paper"`), where
  `aggregation="completeness"` sums over layers, heads and query rows, so that every candidate satisfies
  completeness against F(A) - F(b_r).

Attention baselines are zero where the model's mask forbids attention (future tokens, padding, outside a
sliding window). The reference code explains only the last position, where nothing is in the future; for
token-wise generation, noise on future keys would let a target see the tokens after it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..core.engine import integrate
from ..core.paths import StraightPaths
from ..core.quadrature import checked_steps
from ..core.quadrature import quadrature as quadrature_rule
from ..errors import InvalidInputError, UnknownNameError
from .base import MethodResult, Problem, register_method, reject_unknown


def alpha_bar(schedule: str, n_timesteps: int) -> torch.Tensor:
    """(T + 1,) cumulative products abar_t of the noise schedule, abar_0 = 1 (float64)."""
    if not isinstance(n_timesteps, int) or n_timesteps < 1:
        raise InvalidInputError(f"n_timesteps must be a positive integer, got {n_timesteps!r}.")
    if schedule == "linear":
        betas = torch.linspace(1e-4, 0.02, n_timesteps, dtype=torch.float64)
    elif schedule == "cosine":  # Nichol & Dhariwal 2021, s = 0.008, betas clipped at 0.999
        steps = torch.arange(n_timesteps + 1, dtype=torch.float64) / n_timesteps
        f = torch.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    else:
        raise UnknownNameError(f"unknown noise schedule {schedule!r}; choose 'linear' or 'cosine'.")
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])


def diffusion_baselines(
    x: torch.Tensor,
    n_baselines: int,
    generator: torch.Generator,
    schedule: str = "linear",
    n_timesteps: int = 500,
    t: int | tuple[int, int] | None = None,
    noise_scale: str = "paper",
    noise_multiplier: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw baselines b_r ~ N(sqrt(abar_t) x, s_t^2 I) around x (*S).

    Args:
        t: the diffusion time of every baseline (default T), or (t_min, t_max) to draw each baseline's t
            uniformly, for more diverse baselines.
        noise_scale: "paper" s_t = sqrt(1 - abar_t) (the diffusion process), "code" s_t = 1 - abar_t.
        noise_multiplier: scales s_t; 0 is the ablation without noise (IG from sqrt(abar_t) x).

    Returns:
        baselines (R, *S) and the time step of each (R,).
    """
    abar = alpha_bar(schedule, n_timesteps)
    if t is None:
        t = n_timesteps
    if isinstance(t, int):
        times = torch.full((n_baselines,), t)
        low, high = t, t
    else:
        low, high = t
        times = torch.randint(low, high + 1, (n_baselines,), generator=generator)
    if not 0 <= low <= high <= n_timesteps:
        raise InvalidInputError(f"t must lie in [0, n_timesteps={n_timesteps}], got {t!r}.")
    if noise_scale not in ("paper", "code"):
        raise UnknownNameError(f"unknown noise_scale {noise_scale!r}; choose 'paper' (sqrt(1 - abar_t)) or 'code' (1 - abar_t).")
    shape = (-1,) + (1,) * x.dim()
    a = abar[times]
    scale = noise_multiplier * ((1 - a).sqrt() if noise_scale == "paper" else 1 - a)
    noise = torch.randn((n_baselines,) + tuple(x.shape), generator=generator, dtype=torch.float64)
    baselines = a.sqrt().view(shape) * x.detach().double().cpu() + scale.view(shape) * noise
    return baselines.to(x), times


Psi = Callable[[Problem, torch.Tensor], torch.Tensor]


def paper_reduce(problem: Problem) -> Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]:
    """The paper's aggregation: one query row per target (the predicting position; CLS for classifiers), mean over heads and layers."""
    rows = [0] if problem.seq.is_classifier else problem.seq.target_positions.tolist()

    def reduce(contribution: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = contribution[:, :, rows[min(target, len(rows) - 1)]]  # (layers, H, Lk)
        return row.mean((0, 1)), row

    return reduce


@register_method("rpi")
class RandomizedPathIntegration:
    spaces = frozenset({"attention", "embeddings"})
    default_space = "attention"
    has_completeness = True
    needs_references = False

    @staticmethod
    def default_layers(n_layers: int) -> list[int]:
        """The paper's layer: the third from the end (the first layer for models with fewer than three)."""
        return [max(n_layers - 3, 0)]

    def attribute(
        self,
        problem: Problem,
        n_baselines: int = 24,
        n_steps: int = 30,
        quadrature: str = "riemann-right",
        schedule: str = "linear",
        n_timesteps: int = 500,
        t: int | tuple[int, int] | None = None,
        noise_scale: str = "paper",
        noise_multiplier: float = 1.0,
        multiply_by: str = "difference",
        aggregation: str = "completeness",
        psi: str | Psi = "aopc_sufficiency",
        psi_options: dict[str, Any] | None = None,
        select: str = "per_target",
        seed: int = 0,
        **params: Any,
    ) -> MethodResult:
        reject_unknown(self.name, params)
        checked_steps(n_baselines, "n_baselines", cap=None)
        if multiply_by not in ("difference", "input"):
            raise UnknownNameError(f"unknown multiply_by {multiply_by!r}; choose 'difference' (A - b) or 'input' (A).")
        if aggregation not in ("completeness", "paper"):
            raise UnknownNameError(f"unknown aggregation {aggregation!r}; choose 'completeness' or 'paper'.")
        if aggregation == "paper" and problem.space.name != "attention":
            raise InvalidInputError("aggregation='paper' reads attention rows; use it with space='attention'.")
        if select not in ("per_target", "per_example"):
            raise UnknownNameError(f"unknown select {select!r}; choose 'per_target' or 'per_example'.")
        x = problem.space.point(problem.model, problem.seq)
        generator = torch.Generator().manual_seed(seed)
        baselines, times = diffusion_baselines(
            x, n_baselines, generator, schedule, n_timesteps, t, noise_scale, noise_multiplier
        )
        if problem.space.name == "embeddings":
            baselines = torch.where(problem.seq.keep[None, :, None], x, baselines)
        else:
            baselines = baselines * problem.space.allowed(x)
        nodes, weights = quadrature_rule(quadrature, n_steps)
        displacement = x.expand_as(baselines) if multiply_by == "input" else None
        paths = StraightPaths(x=x, baselines=baselines, nodes=nodes, weights=weights, displacement=displacement)
        reduce = paper_reduce(problem) if aggregation == "paper" else problem.space.reduce
        integral = integrate(
            problem.scores, paths, x, reduce, problem.internal_batch_size, show_progress=problem.show_progress
        )
        candidates = integral.tokens  # (R, T, L)
        n = problem.seq.n_inputs
        psi_scores, higher_is_better = score_candidates(problem, candidates[..., :n], psi, psi_options)
        best = psi_scores.argmax(0) if higher_is_better else psi_scores.argmin(0)  # (T,)
        if select == "per_example":
            mean = psi_scores.mean(1)
            best = torch.full_like(best, int(mean.argmax() if higher_is_better else mean.argmin()))
        targets = torch.arange(candidates.shape[1])
        completeness = integral.completeness_error()[best, targets]
        if multiply_by == "input" or aggregation == "paper":
            completeness = torch.full_like(completeness, float("nan"))
        return MethodResult(
            scores=candidates[best, targets],
            completeness_error=completeness,
            detail=None if integral.detail is None else integral.detail[best, targets],
            extra={
                "candidates": candidates[..., :n],
                "psi": psi_scores,
                "psi_name": psi if isinstance(psi, str) else getattr(psi, "__name__", "callable"),
                "chosen": best,
                "baseline_t": times,
            },
            n_forward=integral.n_forward,
            n_backward=integral.n_backward,
        )


def score_candidates(
    problem: Problem, candidates: torch.Tensor, psi: str | Psi, psi_options: dict[str, Any] | None = None
) -> tuple[torch.Tensor, bool]:
    """psi of every candidate map (R, T, N) -> ((R, T), higher_is_better), in one batched perturbation pass.

    psi is a metric name from `llm_attrib.metrics.METRICS` (a per-bin one as "comprehensiveness@20"), or a
    callable (problem, candidates) -> (R, T) with a `higher_is_better` attribute (default True).
    """
    if callable(psi):
        return psi(problem, candidates), bool(getattr(psi, "higher_is_better", True))
    from ..metrics import METRICS, score_candidates as metric_values

    name = psi.split("@")[0]
    if name not in METRICS:
        raise UnknownNameError(f"unknown psi {psi!r}; choose a metric from {sorted(METRICS)} or pass a callable.")
    options = {"batch_size": problem.internal_batch_size, **(psi_options or {})}
    values = metric_values((problem.model, problem.tokenizer), problem.seq, candidates, [name], **options)
    if psi not in values:
        raise UnknownNameError(f"psi {psi!r} is not among the metric's values {sorted(values)}.")
    return values[psi], METRICS[name].higher_is_better
