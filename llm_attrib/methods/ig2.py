"""IG2: Integrated Gradients on the iterative gradient path (Zhuo and Ge, arXiv 2406.10852).

GradPath starts at the explicand x (input embeddings) and takes `n_steps` normalised gradient-descent steps
on the representation distance D = ||rep(gamma_j) - rep(x_ref)||^2 towards each counterfactual reference:
gamma_{j+1} = gamma_j - eta * grad D / max(||grad D||, eps). Its last point is GradCF, the counterfactual
baseline. The attribution is the mean over references of sum_j (gamma_j - gamma_{j+1}) * dF/dx(gamma_j), a
path method whose completeness holds against F(x) - F(GradCF).

For generation the path is computed once, on the whole teacher-forced sequence, towards the reference's
representation at the prediction position (the last prompt token), and every target shares it: one
GradPath per reference, then one forward per chunk of path points and one backward per target, as for IG.
Because a causal model's representation at the last prompt token does not depend on the generated tokens,
they do not move along the path and receive zero attribution.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..core.engine import integrate
from ..core.paths import PolylinePaths, StraightPaths
from ..core.quadrature import quadrature as quadrature_rule
from ..errors import InvalidInputError, UnknownNameError
from .base import MethodResult, Problem, register_method, reject_unknown

Representation = Callable[[torch.Tensor], torch.Tensor]


def grad_path(
    x: torch.Tensor,
    represent: Representation,
    reference_reps: torch.Tensor,
    n_steps: int,
    step_size: float,
    norm: str = "l2",
    eps: float = 1e-12,
    movable: torch.Tensor | None = None,
    clip: tuple[float, float] | None = None,
) -> torch.Tensor:
    """GradPath vertices (P, n_steps + 1, *S) from x (*S) towards each of P reference representations (P, R).

    Args:
        represent: points (P, *S) -> representations (P, R), differentiable.
        step_size: eta, the length of every step in the chosen norm.
        norm: "l2" (default, as the paper) or "l1" normalisation of each reference's gradient.
        eps: guards the normalisation, so a zero gradient gives a zero step instead of NaN.
        movable: (*S) bool, the entries allowed to move (special tokens stay put), or None for all.
        clip: (low, high) bounds for every coordinate of the path (e.g. the embedding matrix's range).
    """
    if norm not in ("l2", "l1"):
        raise UnknownNameError(f"unknown gradient normalisation {norm!r}; choose 'l2' or 'l1'.")
    gamma = x.detach().unsqueeze(0).expand((reference_reps.shape[0],) + tuple(x.shape)).clone()
    vertices = [gamma]
    for _ in range(n_steps):
        gamma = gamma.detach().requires_grad_(True)
        distance = (represent(gamma).float() - reference_reps).pow(2).sum(-1)
        (gradient,) = torch.autograd.grad(distance.sum(), gamma)
        if movable is not None:
            gradient = gradient * movable
        flat = gradient.flatten(1)
        size = flat.norm(dim=1) if norm == "l2" else flat.abs().sum(1)
        step = gradient / size.clamp_min(eps).view((-1,) + (1,) * x.dim())
        gamma = (gamma - step_size * step).detach()
        if clip is not None:
            gamma = gamma.clamp(*clip)
        vertices.append(gamma)
    return torch.stack(vertices, 1)


def representation_fn(model, seq, layer: int | str | None) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """(embeddings (B, L, D), position) -> representation (B, R) at the chosen layer.

    Default: the final hidden state at the prediction position for LMs, the features the classification head
    receives (pooled output) for classifiers. An int selects `hidden_states[layer]`; a str a module by name.
    """
    modules = dict(model.named_modules())
    if isinstance(layer, str) and layer not in modules:
        raise InvalidInputError(f"no module named {layer!r} in {type(model).__name__}; see model.named_modules().")
    if layer is None and seq.is_classifier:
        head = next((modules[n] for n in ("classifier", "score") if n in modules), None)
        if head is None:
            raise InvalidInputError(
                f"{type(model).__name__} has no 'classifier' or 'score' head; pass rep_layer= (an index or module name)."
            )
        return _hooked_representation(model, head, use_input=True)
    if isinstance(layer, str):
        return _hooked_representation(model, modules[layer], use_input=False)
    index = -1 if layer is None else layer

    def represent(embeddings: torch.Tensor, position: int) -> torch.Tensor:
        hidden = model(inputs_embeds=embeddings, output_hidden_states=True).hidden_states
        if not -len(hidden) <= index < len(hidden):
            raise InvalidInputError(f"rep_layer {index} does not exist: the model has {len(hidden)} hidden states.")
        return hidden[index][:, position]

    return represent


def _hooked_representation(model, module, use_input: bool) -> Callable[[torch.Tensor, int], torch.Tensor]:
    def represent(embeddings: torch.Tensor, position: int) -> torch.Tensor:
        captured = []

        def hook(_module, inputs, output):
            value = inputs[0] if use_input else output
            captured.append(value[0] if isinstance(value, tuple) else value)

        handle = module.register_forward_hook(hook)
        try:
            model(inputs_embeds=embeddings)
        finally:
            handle.remove()
        value = captured[0]
        return value[:, position] if value.dim() == 3 else value

    return represent


def outcome(model, tokenizer, prompt: str, device, is_classifier: bool) -> tuple[list[int], int]:
    """A reference's token ids and the model's outcome on it (predicted class, or greedy next token)."""
    ids = tokenizer(prompt)["input_ids"]
    if not ids:
        raise InvalidInputError(f"reference {prompt!r} is empty.")
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids], device=device)).logits
    return ids, int(logits[0].argmax() if is_classifier else logits[0, -1].argmax())


def choose_references(problem: Problem, references: Any, n_references: int) -> list[list[int]]:
    """Token ids of the references: strings are used as given; examples (dicts with "prompt", or a
    `datasets.Dataset`) only where the model's outcome differs from the explicand's."""
    if references is None:
        raise InvalidInputError(
            "IG2 needs counterfactual references: pass references=[...] (prompts, or examples with a 'prompt' "
            "field, e.g. a datasets.Dataset) or toward='baseline' for a GradPath to the neutral baseline."
        )
    if isinstance(references, str):
        references = [references]
    seq, device = problem.seq, problem.seq.input_ids.device
    explained = int(seq.target_ids[0])
    chosen = []
    for item in references:
        given = isinstance(item, str)
        prompt = item if given else item.get("prompt") if isinstance(item, dict) else None
        if not isinstance(prompt, str):
            raise InvalidInputError(f"a reference must be a prompt string or a dict with a 'prompt', got {item!r}.")
        ids, result = outcome(problem.model, problem.tokenizer, prompt, device, seq.is_classifier)
        if given or result != explained:
            chosen.append(ids)
        if len(chosen) == n_references:
            break
    if not chosen:
        raise InvalidInputError(
            "no reference qualifies: on every given example the model's outcome equals the explicand's "
            f"({explained}); give examples with a different outcome, or prompts to use as they are."
        )
    return chosen


@register_method("ig2")
class IG2:
    spaces = frozenset({"embeddings"})
    default_space = "embeddings"
    has_completeness = True
    needs_references = True

    def attribute(
        self,
        problem: Problem,
        references: Any = None,
        n_references: int = 20,
        n_steps: int = 50,
        step_size: float | None = None,
        norm: str = "l2",
        eps: float = 1e-12,
        rep_layer: int | str | None = None,
        clip: bool = False,
        toward: str = "references",
        path: str = "gradpath",
        quadrature: str = "gauss-legendre",
        segment_steps: int = 2,
        baseline: Any = None,
        **params: Any,
    ) -> MethodResult:
        """
        Args:
            references: counterfactual prompts, or examples to draw them from (see `choose_references`).
            n_steps: GradPath steps (also the quadrature steps of path="straight").
            step_size: eta; default 2 ||x - neutral baseline|| / n_steps, so the path can travel twice the
                distance to the neutral baseline.
            rep_layer: representation layer (None: final hidden state / classifier features; int; module name).
            clip: keep the path inside the embedding matrix's value range.
            toward: "references" (GradCF, the paper) or "baseline" (ablation: GradPath towards the neutral
                baseline's representation instead of counterfactuals).
            path: "gradpath" (the paper) or "straight" (ablation: IG on the straight line from GradCF to x).
            segment_steps: Gauss-Legendre nodes per GradPath segment (default 2). 1 is the paper's left-point
                sum (gamma_j - gamma_{j+1}) * grad F(gamma_j), whose completeness error is large at practical
                step counts (measured in the README); the path itself is the paper's either way.
        """
        reject_unknown(self.name, params)
        if toward not in ("references", "baseline"):
            raise UnknownNameError(f"unknown toward {toward!r}; choose 'references' or 'baseline'.")
        if path not in ("gradpath", "straight"):
            raise UnknownNameError(f"unknown path {path!r}; choose 'gradpath' or 'straight'.")
        if not isinstance(n_steps, int) or n_steps < 1:
            raise InvalidInputError(f"n_steps must be a positive integer, got {n_steps!r}.")
        model, seq, space = problem.model, problem.seq, problem.space
        x = space.point(model, seq)
        neutral = space.baseline(baseline, model, problem.tokenizer, seq, x)
        position = 0 if seq.is_classifier else seq.n_prompt - 1
        represent = representation_fn(model, seq, rep_layer)
        dtype = model.get_input_embeddings().weight.dtype

        def rep_at(embeddings: torch.Tensor, at: int = position) -> torch.Tensor:
            return represent(embeddings.to(dtype), at).float()

        with torch.no_grad():
            if toward == "baseline":
                targets = rep_at(neutral.unsqueeze(0))
            else:
                embed = model.get_input_embeddings()
                targets = torch.cat([
                    rep_at(embed(torch.tensor([ids], device=x.device)).float(), 0 if seq.is_classifier else len(ids) - 1)
                    for ids in choose_references(problem, references, n_references)
                ])
        if step_size is None:
            step_size = 2 * float((x - neutral).norm()) / n_steps
        weight = model.get_input_embeddings().weight
        bounds = (float(weight.min()), float(weight.max())) if clip else None
        movable = (~seq.keep)[:, None].to(x)
        n_refs = targets.shape[0]
        vertices = torch.cat([
            grad_path(x, rep_at, chunk, n_steps, step_size, norm, eps, movable, bounds)
            for chunk in targets.split(problem.internal_batch_size)
        ])
        n_search = n_steps * n_refs
        if path == "gradpath":
            rule = quadrature_rule("riemann-left" if segment_steps == 1 else "gauss-legendre", segment_steps)
            paths = PolylinePaths(vertices, *rule)
        else:
            nodes, weights = quadrature_rule(quadrature, n_steps)
            paths = StraightPaths(x=x, baselines=vertices[:, -1], nodes=nodes, weights=weights)
        integral = integrate(problem.scores, paths, x, space.reduce, problem.internal_batch_size,
                             show_progress=problem.show_progress)
        scores = integral.tokens.mean(0)
        gap = (integral.f_end.unsqueeze(0) - integral.f_start).mean(0)
        completeness = (scores.sum(-1) - gap).abs() / gap.abs().clamp_min(1e-12)
        with torch.no_grad():
            distances = [(rep_at(points) - targets).pow(2).sum(-1).sqrt() for points in (x.unsqueeze(0), vertices[:, -1])]
        return MethodResult(
            scores=scores,
            completeness_error=completeness,
            settings={"n_references": n_refs, "step_size": step_size},
            extra={
                "f_gradcf": integral.f_start,
                "initial_distance": distances[0],
                "final_distance": distances[1],
            },
            n_forward=integral.n_forward + n_search + n_refs,
            n_backward=integral.n_backward + n_search,
        )
