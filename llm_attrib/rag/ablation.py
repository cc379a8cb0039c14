"""Removing documents: the answer's log-probability, per answer segment, with only some documents in the prompt.

The brute-force reference for a document ranking (one forward per subset of documents), the check behind a
verdict (an answer sentence a document supports loses probability when that document is removed, more than when
any other one is), and the game behind the documents' Shapley values. Removal re-renders the prompt without the
documents (same template, the others unchanged, their labels keeping their numbers), so nothing else moves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from ..attributor import Attributor
from ..metrics._perturb import target_log_probabilities
from .prompt import Document, Template, build_prompt


def segment_log_probs(attributor: Attributor, prompt, answer_ids: list[int],
                      segments: list[tuple[int, int]]) -> torch.Tensor:
    """(S,) log p(segment | prompt, earlier answer) of each answer segment, teacher-forced in one forward."""
    seq = attributor.sequence(prompt, answer=answer_ids)
    seq.answer_segments = segments
    return target_log_probabilities(attributor.model, seq).cpu()


class DocumentSubsets:
    """(S,) answer segment log-probabilities with a subset of the documents kept, each subset run once, so
    leave-one-out, the verdicts' removals and the Shapley values share their forwards."""

    def __init__(self, attributor: Attributor, question: str, documents: list[Document], template: Template,
                 answer_ids: list[int], segments: list[tuple[int, int]], system: str | None = None,
                 on_forward: Callable[[int], object] | None = None):
        self.attributor, self.question, self.documents, self.template = attributor, question, documents, template
        self.answer_ids, self.segments, self.system = answer_ids, segments, system
        self.on_forward = on_forward  # told of each forward run (a progress bar's update)
        self.values: dict[tuple[int, ...], torch.Tensor] = {}

    def __call__(self, kept: Iterable[int]) -> torch.Tensor:
        key = tuple(sorted(set(kept)))
        if key not in self.values:
            prompt = build_prompt(self.attributor.tokenizer, self.question, self.documents, self.template, list(key),
                                  self.system).prompt
            self.values[key] = segment_log_probs(self.attributor, prompt, self.answer_ids, self.segments)
            if self.on_forward is not None:
                self.on_forward(1)
        return self.values[key]

    def without(self, removed: Iterable[int]) -> torch.Tensor:
        dropped = set(removed)
        return self(d for d in range(len(self.documents)) if d not in dropped)

    @property
    def full(self) -> torch.Tensor:
        return self(range(len(self.documents)))
