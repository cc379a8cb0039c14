"""Targets: the scalar explained for each target token.

A target maps logits at the target positions (B, T, V) and the target ids (T,) to scores (B, T). For
sequence classifiers T = 1 and V is the number of classes, so the same targets serve both model kinds:
"logit" of a class is the class logit, "log_prob" its log-softmax.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import InvalidInputError, UnknownNameError

Target = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _pick(values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """values (B, T, V), ids (T,) -> values[b, t, ids[t]] (B, T)."""
    return values.gather(-1, ids.view(1, -1, 1).expand(values.shape[0], -1, 1)).squeeze(-1)


def log_probability(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Log-probability of each target token given its prefix (the default for generation)."""
    return _pick(logits.float().log_softmax(-1), ids)


def probability(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Probability of each target token; bounded, so attributions of confident tokens are small."""
    return _pick(logits.float().softmax(-1), ids)


def logit(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Raw logit of each target (the class logit for sequence classifiers)."""
    return _pick(logits.float(), ids)


def answer_log_probability(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log p(answer | prompt): the targets' log-probabilities, summed by the problem over the answer's segments
    (the whole answer, or each sentence) into one output per segment."""
    return log_probability(logits, ids)


answer_log_probability.answer_level = True


def contrastive(foil: int | torch.Tensor) -> Target:
    """Logit of the target minus the logit of a foil token: why this token rather than that one."""

    def target(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        foils = torch.as_tensor(foil, device=ids.device).expand_as(ids)
        return logit(logits, ids) - logit(logits, foils)

    return target


def checked(target: Target) -> Target:
    """A user's target callable, with its output checked on every call: a wrong shape or a value that does not
    depend on the logits would otherwise surface as a silent wrong answer or an error deep inside autograd."""
    name = getattr(target, "__name__", type(target).__name__)

    def checked_target(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        scores = target(logits, ids)
        expected = (logits.shape[0], ids.shape[0])
        if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != expected:
            got = f"shape {tuple(scores.shape)}" if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise InvalidInputError(
                f"the target callable {name} returned {got}; it must return one score per path point and target, "
                f"a tensor of shape (batch, targets) = {expected}, from logits (batch, targets, vocab) and ids (targets,)."
            )
        if logits.requires_grad and not scores.requires_grad:
            raise InvalidInputError(
                f"the target callable {name} returned scores that do not depend on the logits (a constant or a "
                "detached tensor), so there is nothing to attribute; compute the scores from the logits it receives."
            )
        return scores

    checked_target.answer_level = getattr(target, "answer_level", False)
    return checked_target


TARGETS: dict[str, Target] = {"log_prob": log_probability, "prob": probability, "logit": logit,
                              "answer": answer_log_probability}


def resolve_target(target: str | Target, foil: int | None, vocab_size: int) -> Target:
    """Turn a target name (or callable) into a target function, validating the foil id."""
    if foil is not None:
        if not isinstance(foil, int) or not 0 <= foil < vocab_size:
            raise InvalidInputError(f"foil must be a token id in [0, {vocab_size}), got {foil!r}.")
        if target not in ("contrastive", "log_prob"):
            raise InvalidInputError(f"a foil is only used with target='contrastive', got target={target!r}.")
        return contrastive(foil)
    if target == "contrastive":
        raise InvalidInputError("target='contrastive' needs foil=<token id> (the alternative token to contrast with).")
    if callable(target):
        return checked(target)
    if target not in TARGETS:
        raise UnknownNameError(
            f"unknown target {target!r}; choose one of {sorted(TARGETS) + ['contrastive']} or pass a callable "
            "(logits (B, T, V), target_ids (T,)) -> scores (B, T)."
        )
    return TARGETS[target]
