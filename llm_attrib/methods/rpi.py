"""RPI: Randomized Path Integration (Barkan et al., Findings of EMNLP 2024).

Integrated gradients along straight lines from R random baselines drawn from a Gaussian diffusion forward
process around the explicand A, q(b | A) = N(sqrt(abar_t) A, s_t^2 I), then one of the R maps is kept per
target (or per example) by a faithfulness metric psi.

Paper defaults, kept: attention space, the third layer from the end, all heads; linear beta schedule
1e-4..0.02, T = t = 500; R = 24 baselines; the map of a target is its own query row, mean over heads
(`aggregation="paper"`; `"completeness"` sums over layers, heads and rows instead). Our defaults differ in
three places, each with the paper's setting one option away: the lines are integrated with score-guided
quadrature to a tolerance (the paper: `quadrature="riemann-right", n_steps=30`); the integrand is the path
integral's (A - b) * mean gradient (`multiply_by="difference"`); and psi is evaluated on a perturbation the
default evaluation does not use (`SELECTION`, its bins moved per example to token counts no evaluation bin
has), where the paper and its code select on the test metric itself, which reports an in-sample best of R as
the result. The reference code (rpiconf/rpi) differs from the paper's text in more places: noise scale
`1 - abar_t` (`noise_scale="code"`), each gradient weighed by the interpolated attention it was taken at and
the mean multiplied by A (`multiply_by="input_x_point"`, its `is_gradient_x_input=True`; `"input"` is its
`False`), and the plain mean of 31 points (`quadrature="riemann-inclusive"`).

Only what moves is noised, as by every other baseline: the attention paid to markup keys and to tokens outside
`attribute_to` keeps its value, and entries the model's mask forbids (future tokens, padding, outside a
sliding window) stay zero. The reference code explains only the last position, where nothing is in the future,
and for prompted LLMs noises only the rows (queries) of the explained text, keeping the task prompt's rows.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch

from ..core.engine import gradient_times_delta, integrate
from ..core.guided import SCORE_GUIDED, guided_integral
from ..core.paths import Routes, StraightPaths
from ..core.quadrature import checked_steps
from ..core.quadrature import quadrature as quadrature_rule
from ..errors import InvalidInputError, UnknownNameError
from ..metrics._perturb import bin_counts
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


# The selection's perturbation: replacement instead of deletion, at bins the default evaluation (deletion at
# ERASER's 1/5/10/20/50%) does not name. On a short prompt two percentages can still round to the same number of
# tokens (2% and 1% of 40 tokens are both the top-1 token), which `selection_bins="disjoint"` rules out.
SELECTION = {"removal": "replace", "bins": (2.0, 15.0, 30.0, 40.0)}
EVALUATION_BINS = (1.0, 5.0, 10.0, 20.0, 50.0)  # the default evaluation's (ERASER's) bins, ceil-rounded
SELECTION_BINS = ("disjoint", "as_given")
MULTIPLY_BY = ("difference", "input", "input_x_point")


def disjoint_bins(bins: tuple[float, ...], n_removable: int, avoid: tuple[float, ...] = EVALUATION_BINS
                  ) -> tuple[tuple[float, ...], list[int]]:
    """Bins near `bins` whose token counts differ from every count of `avoid` (ceil of k% of n_removable), so no
    perturbed input of the selection is one the evaluation runs too. Each bin in turn takes the nearest free
    count not taken yet (ties upwards; all n tokens is no choice, since it perturbs every candidate alike); they
    come back as percentages that ceil-round to exactly those counts, with the counts. Where no count is free
    (a prompt of a few removable tokens), the bins stay as given."""
    taken = set(bin_counts(avoid, n_removable))
    free = [c for c in range(1, n_removable) if c not in taken]
    wanted = bin_counts(bins, n_removable)
    if not free:
        return bins, wanted
    counts: list[int] = []
    for w in wanted:
        left = [c for c in free if c not in counts]
        if left:
            counts.append(min(left, key=lambda c: (abs(c - w), -c)))
    counts.sort()
    return tuple(100 * (c - 0.5) / n_removable for c in counts), counts


def row_reduce(problem: Problem) -> Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]:
    """Tokens as the space sums them (completeness over every row and head), and as detail the target's own
    query row per layer and head (the predicting position; CLS for classifiers), for the paper's aggregation."""
    rows = [0] if problem.seq.is_classifier else problem.seq.target_positions.tolist()

    def reduce(contribution: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, _ = problem.space.reduce(contribution, target)
        return tokens, contribution[:, :, rows[min(target, len(rows) - 1)]]  # (layers, H, Lk)

    return reduce


@register_method("rpi")
class RandomizedPathIntegration:
    spaces = frozenset({"attention", "embeddings"})
    default_space = "attention"
    has_completeness = True
    needs_references = False
    uses_gradients = True

    @staticmethod
    def default_layers(n_layers: int) -> list[int]:
        """The paper's layer: the third from the end (the first layer for models with fewer than three)."""
        return [max(n_layers - 3, 0)]

    def attribute(
        self,
        problem: Problem,
        n_baselines: int = 24,
        n_steps: int = 32,
        quadrature: str = SCORE_GUIDED,
        tolerance: float | None = 0.01,
        max_steps: int = 128,
        n_probes: int = 32,
        schedule: str = "linear",
        n_timesteps: int = 500,
        t: int | tuple[int, int] | None = None,
        noise_scale: str = "paper",
        noise_multiplier: float = 1.0,
        multiply_by: str = "difference",
        aggregation: str | None = None,
        psi: str | Psi = "aopc_sufficiency",
        psi_options: dict[str, Any] | None = None,
        selection_bins: str = "disjoint",
        select: str = "per_target",
        seed: int = 0,
        **params: Any,
    ) -> MethodResult:
        """`quadrature`: "score-guided" (default; `n_steps`, `tolerance`, `max_steps`, `n_probes` as for IG, per
        baseline and target) or a fixed rule over `n_steps` (the paper: "riemann-right", 30). `aggregation`:
        "paper" (default in the attention space: mean over layers and heads of the target's query row) or
        "completeness" (sum over layers, heads and rows). `multiply_by`, the integrand, for baseline b and
        points g_k = b + a_k (A - b) with rule weights w_k: "difference" (default, the path integral)
        (A - b) * sum_k w_k grad F(g_k); "input" A * sum_k w_k grad F(g_k); "input_x_point" (the reference
        code's default, `is_gradient_x_input=True`) A * sum_k w_k g_k * grad F(g_k). `psi`, `psi_options`: the
        selection metric and its perturbation, by default `SELECTION` (replacement, bins 2/15/30/40%).
        `selection_bins`: "disjoint" (default) moves those bins, per example, to token counts that no bin of
        the default evaluation (ERASER's 1/5/10/20/50%, ceil) has; "as_given" uses them as they are."""
        reject_unknown(self.name, params)
        checked_steps(n_baselines, "n_baselines", cap=None)
        checked_steps(n_steps)
        checked_steps(max_steps, "max_steps", cap=None)
        if multiply_by not in MULTIPLY_BY:
            raise UnknownNameError(f"unknown multiply_by {multiply_by!r}; choose one of {list(MULTIPLY_BY)}.")
        if multiply_by != "difference" and quadrature == SCORE_GUIDED:
            raise InvalidInputError(
                f"multiply_by={multiply_by!r} (the reference code's integrand) is not a path integral, so its nodes "
                "cannot be placed by the score; use it with a fixed rule, e.g. quadrature='riemann-inclusive'."
            )
        if selection_bins not in SELECTION_BINS:
            raise UnknownNameError(f"unknown selection_bins {selection_bins!r}; choose one of {list(SELECTION_BINS)}.")
        paper_possible = problem.space.name == "attention" and not problem.seq.answer_level
        aggregation = aggregation or ("paper" if paper_possible else "completeness")
        if aggregation not in ("completeness", "paper"):
            raise UnknownNameError(f"unknown aggregation {aggregation!r}; choose 'completeness' or 'paper'.")
        if aggregation == "paper" and not paper_possible:
            raise InvalidInputError(
                "aggregation='paper' reads one target's attention row; use it with space='attention' and a "
                "per-token target (the whole answer has no single row)."
            )
        if select not in ("per_target", "per_example"):
            raise UnknownNameError(f"unknown select {select!r}; choose 'per_target' or 'per_example'.")
        x = problem.point()
        generator = torch.Generator().manual_seed(seed)
        baselines, times = diffusion_baselines(
            x, n_baselines, generator, schedule, n_timesteps, t, noise_scale, noise_multiplier
        )
        # Only what moves is noised, as every other baseline: tokens outside `attribute_to` and markup keep their
        # embedding, or the attention paid to them (their key column); entries the mask forbids stay zero.
        if problem.space.name == "embeddings":
            moves = ~problem.seq.keep[:, None]
        else:
            moves = problem.space.allowed(x) & ~problem.seq.keep.to(x.device)
        baselines = torch.where(moves, baselines, x)
        reduce = row_reduce(problem) if aggregation == "paper" else problem.space.reduce
        run = dataclasses.replace(problem.run, reduce=reduce)
        n_targets = problem.seq.n_outputs
        if quadrature == SCORE_GUIDED:
            routes = Routes(torch.stack([baselines, x.expand_as(baselines)], 1))
            integral, used = guided_integral(run, routes, lambda route: list(range(n_targets)), n_targets, n_steps,
                                             tolerance, max_steps, n_probes)
            steps: dict[str, Any] = {"n_steps": int(used.max()), "tolerance": tolerance}
        else:
            nodes, weights = quadrature_rule(quadrature, n_steps)
            # A frozen entry has no displacement under any integrand, so it gets exactly zero.
            displacement = None if multiply_by == "difference" else (x * moves).expand_as(baselines)
            paths = StraightPaths(x=x, baselines=baselines, nodes=nodes, weights=weights, displacement=displacement)
            contribution = times_point if multiply_by == "input_x_point" else gradient_times_delta
            integral = integrate(run.scores, paths, x, reduce, run.internal_batch_size, contribution=contribution,
                                 show_progress=run.show_progress)
            steps = {"n_steps": n_steps}
        # "paper": the target's query row, mean over layers and heads; completeness is the integral's own (its
        # sum over every row and head), which says whether the numbers are a converged integral.
        candidates = integral.detail.mean((2, 3)) if aggregation == "paper" else integral.tokens  # (R, T, L)
        n = problem.seq.n_inputs
        options = dict(SELECTION) if psi_options is None else dict(psi_options)
        n_removable = int((~problem.seq.keep[: problem.seq.n_prompt]).sum())
        if selection_bins == "disjoint":
            options["bins"], counts = disjoint_bins(tuple(options.get("bins", EVALUATION_BINS)), n_removable)
        else:
            counts = bin_counts(tuple(options.get("bins", EVALUATION_BINS)), n_removable,
                                options.get("bin_rounding", "ceil"))
        psi_scores, higher_is_better = score_candidates(problem, candidates[..., :n], psi, options)
        best = psi_scores.argmax(0) if higher_is_better else psi_scores.argmin(0)  # (T,)
        if select == "per_example":
            mean = psi_scores.mean(1)
            best = torch.full_like(best, int(mean.argmax() if higher_is_better else mean.argmin()))
        targets = torch.arange(candidates.shape[1])
        completeness = integral.completeness_error()[best, targets]
        if multiply_by != "difference":
            completeness = torch.full_like(completeness, float("nan"))
        detail = None if integral.detail is None else integral.detail[best, targets]
        psi_name = psi if isinstance(psi, str) else getattr(psi, "__name__", "callable")
        extra_error: dict[str, Any] = {}
        if integral.token_error is not None:
            error = integral.detail_error.mean((2, 3)) if aggregation == "paper" else integral.token_error
            extra_error["token_error"] = error[best, targets][..., :n].abs()
        evaluation_counts = bin_counts(EVALUATION_BINS, n_removable)
        return MethodResult(
            scores=candidates[best, targets],
            completeness_error=completeness,
            detail=detail,
            settings={"quadrature": quadrature, "aggregation": aggregation, **steps},
            extra={
                "candidates": candidates[..., :n],
                "psi": psi_scores,
                "psi_name": psi_name,
                "chosen": best,
                "baseline_t": times,
                "selected_on": {
                    "metric": psi_name, **{k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
                    "selection_bins": selection_bins,
                    "token_counts": counts,
                    # Same top-k tokens as a bin of the default evaluation (with another removal when the
                    # selection replaces): the part of the selection that is in-sample for that evaluation.
                    "counts_shared_with_default_evaluation": sorted(set(counts) & set(evaluation_counts)),
                },
                **extra_error,
            },
            n_forward=integral.n_forward,
            n_backward=integral.n_backward,
        )


def times_point(gradient: torch.Tensor, delta: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """The reference code's integrand (`is_gradient_x_input=True`): each gradient weighed by the interpolated
    attention it was taken at, times the displacement (there: A, times the rule's weight)."""
    return gradient * point * delta


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
