"""Cheap comparison methods: one gradient at the input, no path (so no completeness)."""

from __future__ import annotations

from typing import Any

import torch

from ..core.engine import integrate, unknown_ends
from ..core.paths import StraightPaths
from .base import MethodResult, Problem, register_method, reject_unknown


def gradient_at_input(problem: Problem, contribution) -> MethodResult:
    """A one-point 'path' at x itself (delta = x), reusing the engine's forward/backward machinery. Its "start"
    (zero) is never run: it is no baseline (in the mask space it would hide every token), and these methods have
    no completeness to check against it."""
    x = problem.point()
    at_x = StraightPaths(x=x, baselines=torch.zeros_like(x)[None], nodes=torch.ones(1), weights=torch.ones(1))
    integral = integrate(
        problem.scores, at_x, x, problem.space.reduce, problem.internal_batch_size,
        contribution=contribution, show_progress=problem.show_progress,
        known_ends=unknown_ends(1, problem.seq.n_outputs),
    )
    return MethodResult.from_integral(integral)


@register_method("saliency")
class Saliency:
    """Sum of absolute gradients per token (Simonyan et al. 2014): sensitivity, not contribution."""

    spaces = frozenset({"embeddings", "attention", "mask"})
    default_space = "embeddings"
    has_completeness = False
    needs_references = False
    uses_gradients = True

    def attribute(self, problem: Problem, **params: Any) -> MethodResult:
        reject_unknown(self.name, params)
        return gradient_at_input(problem, lambda gradient, delta, point: gradient.abs())


@register_method("input_x_gradient")
class InputXGradient:
    """Gradient times input (Shrikumar et al. 2016): IG's one-step approximation from a zero baseline."""

    spaces = frozenset({"embeddings", "attention", "mask"})
    default_space = "embeddings"
    has_completeness = False
    needs_references = False
    uses_gradients = True

    def attribute(self, problem: Problem, **params: Any) -> MethodResult:
        reject_unknown(self.name, params)
        return gradient_at_input(problem, lambda gradient, delta, point: gradient * delta)
