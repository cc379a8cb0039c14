"""IG2: Integrated Gradients on the iterative gradient path (Zhuo and Ge, arXiv 2406.10852).

GradPath starts at the explicand x (input embeddings) and takes `n_steps` normalised gradient-descent steps
on the representation distance D = ||rep(gamma_j) - rep(x_ref)||^2 towards each counterfactual reference:
gamma_{j+1} = gamma_j - eta * grad D / max(||grad D||, eps). Its last point is GradCF, the counterfactual
baseline. The attribution is the mean over references of the path integral of dF/dx along the GradPath, a
path method whose completeness holds against F(x) - F(GradCF). A reference that is the explicand itself (same
ids, or its representation) would be its own GradCF, a path of length zero: it is dropped and the result says
so (`extra["references_dropped"]`).

For generation every target gets its own GradPaths: the representation is read where that target is
predicted, every input it sees moves (earlier generated tokens included), and only references whose outcome
differs from that target's token are its counterfactuals. Each path serves its own target only, so a chunk of
path points needs one backward pass. The integral along a GradPath is score-guided by default: the target's
score at every vertex is probed, so each stretch's exact integral is known and refined to the tolerance;
the paper's left-point sum stays available as `quadrature="riemann-left", segment_steps=1`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..core.engine import Integral, integrate
from ..core.guided import SCORE_GUIDED, check_budget, guided_integral
from ..core.paths import PolylinePaths, Routes
from ..core.placement import compute_dtype, embedding_range, embedding_rows
from ..core.quadrature import checked_steps
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


@dataclass
class Reference:
    """A counterfactual reference: its token ids, its representation, and the model's outcome on it."""

    ids: list[int]
    representation: torch.Tensor
    outcome: int


def read_references(problem: Problem, references: Any, represent: Callable[[torch.Tensor, int], torch.Tensor],
                    limit: int) -> list[Reference]:
    """The references (prompt strings, dicts with a "prompt", or a `datasets.Dataset`) with their outcomes,
    read until `limit` of them differ in outcome from every target and are not the explicand's own text (or the
    references run out)."""
    if references is None:
        raise InvalidInputError(
            "IG2 needs counterfactual references: pass references=[...] (prompts, or examples with a 'prompt' "
            "field, e.g. a datasets.Dataset) or toward='baseline' for a GradPath to the neutral baseline."
        )
    if isinstance(references, str):
        references = [references]
    seq, device = problem.seq, problem.seq.input_ids.device
    read, enough = [], 0
    for item in references:
        prompt = item if isinstance(item, str) else item.get("prompt") if isinstance(item, dict) else None
        if not isinstance(prompt, str):
            raise InvalidInputError(f"a reference must be a prompt string or a dict with a 'prompt', got {item!r}.")
        ids, result = outcome(problem.model, problem.tokenizer, prompt, device, seq.is_classifier)
        with torch.no_grad():
            representation = represent(embedding_rows(problem.model, torch.tensor([ids], device=device)),
                                       0 if seq.is_classifier else len(ids) - 1)
        read.append(Reference(ids, representation[0], result))
        enough += result not in seq.target_ids.tolist() and ids != seq.input_ids[0, :len(ids)].tolist()
        if enough == limit:
            break
    return read


# A reference whose representation is this close to the explicand's (relative to its norm) is the explicand as
# far as GradPath can tell: its path has length zero. Float rounding between a prefix run alone and inside the
# longer sequence is ~1e-7 relative; two different texts are O(1) apart.
SAME_REPRESENTATION = 1e-5


def counterfactuals_of(target: int, target_id: int, references: list[Reference], limit: int,
                       explicand_ids: list[int], explicand_rep: torch.Tensor
                       ) -> tuple[list[int], list[dict[str, Any]]]:
    """Which references are counterfactuals for this target: the first `limit` whose outcome differs from the
    target's token (class) and which are not the explicand itself. Returns their indices and the references
    dropped on the way, each with its reason.

    A reference with the explicand's own ids (or its representation) is its own GradCF: a path of length zero
    whose zero attribution would silently shrink the mean over references by (n - 1) / n. It qualifies by outcome
    whenever the explained outcome is not the model's own (`answer=` forcing another continuation, a classifier
    class other than the predicted one), so it is dropped by identity, not by outcome. None left is a clear error.
    """
    chosen: list[int] = []
    dropped: list[dict[str, Any]] = []
    size = float(explicand_rep.norm())
    for index, reference in enumerate(references):
        if len(chosen) == limit:
            break
        distance = float((reference.representation - explicand_rep).norm())
        if reference.outcome == target_id:
            reason = "same outcome as the target"
        elif reference.ids == explicand_ids:
            reason = "the explicand itself"
        elif distance <= SAME_REPRESENTATION * max(size, 1e-12):
            reason = "zero representation distance to the explicand"
        else:
            chosen.append(index)
            continue
        dropped.append({"reference": index, "reason": reason, "distance": distance})
    if not chosen:
        reasons = sorted({d["reason"] for d in dropped}) or ["no references"]
        raise InvalidInputError(
            f"no reference qualifies for target {target} (token id {target_id}): every reference was dropped "
            f"({'; '.join(reasons)}). A counterfactual needs another outcome than the target's token and another "
            "input than the explicand; give references whose outcome differs."
        )
    return chosen, dropped


def counterfactual_goals(problem: Problem, x: torch.Tensor, rep: Callable[[torch.Tensor, int], torch.Tensor],
                         positions: list[int], read: list[Reference], limit: int
                         ) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """Each target's counterfactual representations (n_t, R), and the record of the references used and dropped
    (dicts, not a ragged list of lists, so it survives `Explanation.save`/`load` as it is)."""
    seq = problem.seq
    used, dropped = [], []
    for t, (position, target_id) in enumerate(zip(positions, seq.target_ids.tolist())):
        own_ids = seq.input_ids[0, : seq.length if seq.is_classifier else position + 1].tolist()
        with torch.no_grad():
            own_rep = rep(x[None], position)[0]
        mine, lost = counterfactuals_of(t, target_id, read, limit, own_ids, own_rep)
        used.append(mine)
        dropped += [{"target": t, **d} for d in lost]
    goals = [torch.stack([read[i].representation for i in mine]) for mine in used]
    return goals, {"references_used": [{"target": t, "references": mine} for t, mine in enumerate(used)],
                   "references_dropped": dropped}


def given_gradpath(gradpath: Any, x: torch.Tensor, n_targets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The vertices (P, J + 1, *S) and target of each path (P,) of a saved GradPath, checked against this input."""
    if not isinstance(gradpath, dict) or not {"vertices", "target"} <= set(gradpath):
        raise InvalidInputError("gradpath= takes the dict an earlier run returned in extra['gradpath'] "
                                "(explain(..., keep_gradpath=True)), with 'vertices' and 'target'.")
    vertices, owner = torch.as_tensor(gradpath["vertices"]), torch.as_tensor(gradpath["target"]).long().cpu()
    if vertices.dim() != x.dim() + 2 or tuple(vertices.shape[2:]) != tuple(x.shape) or vertices.shape[1] < 2:
        raise InvalidInputError(f"the saved GradPath has shape {tuple(vertices.shape)}, but this input's paths need "
                                f"(paths, steps + 1, {', '.join(map(str, x.shape))}); was it made for another input?")
    if owner.shape != vertices.shape[:1] or set(owner.tolist()) != set(range(n_targets)):
        raise InvalidInputError(f"the saved GradPath's targets {sorted(set(owner.tolist()))} are not this "
                                f"explanation's {n_targets} targets; was it made for another answer?")
    vertices = vertices.to(x)
    if not torch.allclose(vertices[:, 0], x.expand_as(vertices[:, 0]), rtol=1e-4, atol=1e-5):
        raise InvalidInputError("the saved GradPath does not start at this input's embeddings; it was made for "
                                "another prompt, answer or model.")
    return vertices, owner


@register_method("ig2")
class IG2:
    spaces = frozenset({"embeddings"})
    default_space = "embeddings"
    has_completeness = True
    needs_references = True
    uses_gradients = True

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
        clip: bool = True,
        toward: str = "references",
        path: str = "gradpath",
        quadrature: str = SCORE_GUIDED,
        segment_steps: int = 2,
        tolerance: float | None = 0.01,
        max_steps: int = 512,
        n_probes: int = 32,
        baseline: Any = None,
        keep_gradpath: bool = False,
        gradpath: dict[str, torch.Tensor] | None = None,
        **params: Any,
    ) -> MethodResult:
        """
        Args:
            references: counterfactual prompts, or examples to draw them from; each target uses the first
                `n_references` whose outcome differs from its own token.
            n_steps: GradPath steps (reference code: 201 on images, 501 on TREC; 50 here, because every
                target of a generation gets its own GradPath per reference).
            step_size: eta; default 2 ||x - neutral baseline|| / n_steps, so the path can travel twice the
                distance to the neutral baseline (the reference code's 256 is in pixel units).
            rep_layer: representation layer (None: final hidden state / classifier features; int; module name).
            clip: keep the path inside the embedding matrix's value range (the reference code always clips).
            toward: "references" (GradCF, the paper) or "baseline" (ablation: GradPath towards the neutral
                baseline's representation instead of counterfactuals).
            path: "gradpath" (the paper) or "straight" (ablation: IG on the straight line from GradCF to x).
            quadrature: "score-guided" (default: nodes along the GradPath where the target's score moves, refined
                to `tolerance`), or a fixed rule with `segment_steps` nodes per GradPath segment
                ("riemann-left" with segment_steps=1 is the paper's Eq. 3, sum (gamma_j - gamma_{j+1}) *
                grad F(gamma_j), whose completeness error is large: see the methods guide).
            tolerance, max_steps, n_probes: as for IG's score-guided quadrature, per (reference, target).
            keep_gradpath: return the GradPaths in `extra["gradpath"]` ({"vertices": (P, n_steps + 1, L, D),
                "target": (P,)}; P = references x targets, so this can be large).
            gradpath: such a dict from an earlier run, integrated as given instead of searched again. GradPath is
                a chaotic iteration (a float rounding difference at one step can change GradCF), so the saved path
                is what makes a result reproduce on other hardware. `references`, `n_steps` and the path search's
                settings are then unused.
        """
        reject_unknown(self.name, params)
        if toward not in ("references", "baseline"):
            raise UnknownNameError(f"unknown toward {toward!r}; choose 'references' or 'baseline'.")
        if path not in ("gradpath", "straight"):
            raise UnknownNameError(f"unknown path {path!r}; choose 'gradpath' or 'straight'.")
        checked_steps(n_steps)
        checked_steps(n_references, "n_references", cap=None)
        if quadrature == SCORE_GUIDED:  # before any GradPath is built
            check_budget(max_steps, n_steps if path == "gradpath" else 1, per="reference and target")
        if problem.seq.answer_level:
            raise InvalidInputError(
                "IG2 reads a representation where each target is predicted and finds counterfactuals per target; "
                "the whole answer (target='answer') has neither. Use a per-token target, or method='ig'."
            )
        model, seq, space = problem.model, problem.seq, problem.space
        x = problem.point()
        neutral = space.baseline(baseline, model, problem.tokenizer, seq, x)
        represent = representation_fn(model, seq, rep_layer)
        dtype = compute_dtype(model)

        def rep(embeddings: torch.Tensor, at: int) -> torch.Tensor:
            return represent(embeddings.to(dtype), at).float()

        def rep_at(at: int) -> Representation:
            return lambda embeddings: rep(embeddings, at)

        target_ids = seq.target_ids.tolist()
        positions = [0] * len(target_ids) if seq.is_classifier else seq.target_positions.tolist()
        record: dict[str, Any] = {}
        if gradpath is not None:  # a saved GradPath: no search, so the numbers reproduce across hardware
            vertices, owner = given_gradpath(gradpath, x, len(target_ids))
            goals = None
            n_refs = torch.bincount(owner, minlength=len(target_ids)).tolist()
            n_search, n_read = 0, 0  # forwards spent on the GradPath search and on reading references
        else:
            if toward == "baseline":
                with torch.no_grad():
                    goals = [rep_at(p)(neutral.unsqueeze(0)) for p in positions]
                n_read = 0
            else:
                read = read_references(problem, references, rep, n_references)
                n_read = 2 * len(read) + len(positions)  # each: its outcome and representation; the explicand's
                goals, record = counterfactual_goals(problem, x, rep, positions, read, n_references)
            if step_size is None:
                step_size = 2 * float((x - neutral).norm()) / n_steps
            bounds = embedding_range(model) if clip else None
            vertices, owner = [], []
            for t, (position, goal) in enumerate(zip(positions, goals)):
                # Every input the target sees moves, earlier generated tokens included; markup stays put.
                sees = torch.arange(seq.length, device=x.device) <= (seq.length if seq.is_classifier else position)
                movable = (sees & ~seq.keep)[:, None].to(x)
                vertices += [grad_path(x, rep_at(position), chunk, n_steps, step_size, norm, eps, movable, bounds)
                             for chunk in goal.split(problem.internal_batch_size)]
                owner += [t] * len(goal)
            vertices = torch.cat(vertices)  # (P, n_steps + 1, *S), from x to each GradCF
            owner = torch.tensor(owner)
            n_refs = [len(goal) for goal in goals]
            n_search = n_steps * len(owner)
        n_steps = vertices.shape[1] - 1
        integral, steps = self._integrate(problem, x, vertices, owner, path, quadrature, segment_steps, n_steps,
                                          tolerance, max_steps, n_probes)
        columns = owner if integral.tokens.shape[1] > 1 else torch.zeros_like(owner)
        mine = torch.arange(len(owner))
        per_path = integral.tokens[mine, columns]  # (P, L): each path's attribution to its own target
        f_start = integral.f_start[mine, owner]
        scores = torch.stack([per_path[owner == t].mean(0) for t in range(len(target_ids))])
        gap = torch.stack([(integral.f_end[t] - f_start[owner == t]).mean() for t in range(len(target_ids))])
        completeness = (scores.sum(-1) - gap).abs() / gap.abs().clamp_min(1e-12)
        extra: dict[str, Any] = {"f_gradcf": f_start, "reference_target": owner, **record}
        if goals is not None:
            goal_rows = torch.cat(goals)

            def distance(points: torch.Tensor) -> torch.Tensor:
                """Each path's representation distance to its goal at `points` (P, *S)."""
                with torch.no_grad():
                    return torch.stack([(rep(point[None], positions[t])[0] - goal).norm()
                                        for point, t, goal in zip(points, owner.tolist(), goal_rows)])

            extra.update(initial_distance=distance(vertices[:, 0]), final_distance=distance(vertices[:, -1]))
        if keep_gradpath:
            extra["gradpath"] = {"vertices": vertices, "target": owner}
        if integral.token_error is not None:
            deviation = integral.token_error[mine, columns]  # (P, L)
            extra["token_error"] = torch.stack([deviation[owner == t].mean(0)
                                                for t in range(len(target_ids))])[:, : seq.n_inputs].abs()
        return MethodResult(
            scores=scores,
            completeness_error=completeness,
            settings={"n_references": n_refs if len(set(n_refs)) > 1 else n_refs[0], "step_size": step_size,
                      "quadrature": quadrature, "tolerance": tolerance, "n_steps": n_steps,
                      "gradpath": "given" if gradpath is not None else "searched", **steps},
            extra=extra,
            n_forward=integral.n_forward + n_search + n_read,
            n_backward=integral.n_backward + n_search,
        )

    @staticmethod
    def _integrate(problem: Problem, x: torch.Tensor, vertices: torch.Tensor, owner: torch.Tensor, path: str,
                   quadrature: str, segment_steps: int, n_steps: int, tolerance: float | None, max_steps: int,
                   n_probes: int) -> tuple[Integral, dict[str, Any]]:
        """Each path's integral for its own target: along the GradPath (or the straight line to its GradCF),
        score-guided or with a fixed rule."""
        if path == "straight":
            vertices = torch.stack([vertices[:, -1], x.expand_as(vertices[:, 0])], 1)
        else:
            vertices = vertices.flip(1)  # routes run from the counterfactual (s = 0) to the explicand (s = 1)
        if quadrature == SCORE_GUIDED:
            def mean_gap(gap: torch.Tensor) -> torch.Tensor:
                """IG2 averages a target's paths, so each path's error counts against their mean gap."""
                own = gap[torch.arange(len(owner)), owner]
                means = torch.stack([own[owner == t].mean() for t in range(gap.shape[1])])
                return means[owner].abs()[:, None].expand_as(gap)

            integral, used = guided_integral(problem.run, Routes(vertices), lambda route: [int(owner[route])],
                                             len(problem.seq.target_ids), n_steps, tolerance, max_steps, n_probes,
                                             error_scale=mean_gap)
            return integral, {"gradient_evaluations": int(used.sum())}
        count = segment_steps if path == "gradpath" else n_steps
        paths = PolylinePaths(vertices.flip(1), *quadrature_rule(quadrature, count), targets=owner)
        integral = integrate(problem.scores, paths, x, problem.space.reduce, problem.internal_batch_size,
                             show_progress=problem.show_progress)
        return integral, {"segment_steps": segment_steps} if path == "gradpath" else {}
