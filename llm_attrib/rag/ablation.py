"""Leave-documents-out: the answer's log-probability, per answer segment, with documents removed from the prompt.

The brute-force reference for a document ranking (one forward per removal), and the check behind a verdict:
an answer sentence a document supports loses probability when that document is removed, more than when any
other one is. Removal re-renders the prompt without the documents (same template, the others unchanged, their
labels keeping their numbers), so nothing else moves.
"""

from __future__ import annotations

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


def without(attributor: Attributor, question: str, documents: list[Document], template: Template,
            removed: list[list[int]], answer_ids: list[int], segments: list[tuple[int, int]],
            system: str | None = None) -> torch.Tensor:
    """(len(removed), S) segment log-probabilities with each set of documents removed."""
    rows = [with_only(attributor, question, documents, template, [i for i in range(len(documents)) if i not in drop],
                      answer_ids, segments, system) for drop in map(set, removed)]
    return torch.stack(rows) if rows else torch.zeros(0, len(segments))


def with_only(attributor: Attributor, question: str, documents: list[Document], template: Template, kept: list[int],
              answer_ids: list[int], segments: list[tuple[int, int]], system: str | None = None) -> torch.Tensor:
    """(S,) segment log-probabilities with only the `kept` documents in the prompt."""
    prompt = build_prompt(attributor.tokenizer, question, documents, template, kept, system).prompt
    return segment_log_probs(attributor, prompt, answer_ids, segments)
