"""Removing documents: the answer's log-probability, per answer segment, with only some documents in the prompt.

The brute-force reference for a document ranking (one forward per subset of documents), the check behind a
verdict (an answer sentence a document supports loses probability when that document is removed, more than when
any other one is), and the game behind the documents' Shapley values. Removal re-renders the prompt without the
documents (same template, the others unchanged, their labels keeping their numbers), so nothing else moves.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable

import torch
from torch.nn.utils.rnn import pad_sequence

from ..attributor import Attributor
from ..metrics._perturb import logits_at, padding_token
from .prompt import Document, Template, build_prompt


def segment_log_probs(attributor: Attributor, prompts: list, answer_ids: list[int], segments: list[tuple[int, int]],
                      on_forward: Callable[[int], object] | None = None) -> torch.Tensor:
    """(N, S) log p(segment | prompt, earlier answer) of each answer segment after each of N prompts, teacher-forced.

    One prompt per forward unless the Attributor's internal_batch_size asks for more: on a CPU batching gains
    nothing (eval/results/rag_debugging.md, 3i); a GPU, which runs a batch about as fast as one prompt, should gain. A batch is padded on the left with each
    row's own positions, so the answer sits at the same positions in every row and the LM head runs only there;
    a model that takes no position ids runs one prompt per forward. `on_forward` is told how many prompts each
    forward ran."""
    seqs = [attributor.sequence(prompt, answer=answer_ids) for prompt in prompts]
    seqs[0].answer_segments = segments
    members = seqs[0].segment_matrix()  # (T, S): the same answer after every prompt
    model = attributor.model
    rows = attributor.internal_batch_size or 1
    if "position_ids" not in inspect.signature(model.forward).parameters:
        rows = 1
    pad = padding_token(attributor.tokenizer)
    n_targets = seqs[0].n_targets
    out = []
    for start in range(0, len(seqs), rows):
        chunk = seqs[start:start + rows]
        flipped = [seq.input_ids[0].flip(0) for seq in chunk]
        ids = pad_sequence(flipped, batch_first=True, padding_value=pad).flip(1)
        attention = pad_sequence([torch.ones_like(f) for f in flipped], batch_first=True).flip(1)
        width = ids.shape[1]
        read = torch.arange(width - n_targets - 1, width - 1, device=ids.device).repeat(len(chunk), 1)  # (B, T)
        inputs = dict(input_ids=ids, attention_mask=attention)
        if rows > 1:
            inputs["position_ids"] = (attention.cumsum(1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = logits_at(model, read, **inputs)
        targets = chunk[0].target_ids.expand(len(chunk), -1)[..., None]
        out.append(logits.float().log_softmax(-1).gather(-1, targets)[..., 0] @ members)
        if on_forward is not None:
            on_forward(len(chunk))
    return torch.cat(out).cpu()


class DocumentSubsets:
    """(S,) answer segment log-probabilities with a subset of the documents kept, each subset run once, so
    leave-one-out, the verdicts' removals and the Shapley values share their forwards; subsets known in advance
    (`evaluate`) can share batched forwards (the Attributor's internal_batch_size)."""

    def __init__(self, attributor: Attributor, question: str, documents: list[Document], template: Template,
                 answer_ids: list[int], segments: list[tuple[int, int]], system: str | None = None,
                 on_forward: Callable[[int], object] | None = None):
        self.attributor, self.question, self.documents, self.template = attributor, question, documents, template
        self.answer_ids, self.segments, self.system = answer_ids, segments, system
        self.on_forward = on_forward  # told how many subsets each forward ran (a progress bar's update)
        self.values: dict[tuple[int, ...], torch.Tensor] = {}

    def evaluate(self, subsets: Iterable[Iterable[int]]) -> None:
        """Run every subset (each an iterable of kept documents) not run yet, internal_batch_size per forward."""
        keys = list(dict.fromkeys(tuple(sorted(set(kept))) for kept in subsets))
        keys = [key for key in keys if key not in self.values]
        if not keys:
            return
        prompts = [build_prompt(self.attributor.tokenizer, self.question, self.documents, self.template, list(key),
                                self.system).prompt for key in keys]
        values = segment_log_probs(self.attributor, prompts, self.answer_ids, self.segments, self.on_forward)
        self.values.update(zip(keys, values))

    def stack(self, subsets: Iterable[Iterable[int]]) -> torch.Tensor:
        """(N, S) the values of N subsets, run together where not run yet (`document_shapley`'s `log_probs`)."""
        subsets = [list(kept) for kept in subsets]
        self.evaluate(subsets)
        return torch.stack([self(kept) for kept in subsets])

    def __call__(self, kept: Iterable[int]) -> torch.Tensor:
        key = tuple(sorted(set(kept)))
        self.evaluate([key])
        return self.values[key]

    def without(self, removed: Iterable[int]) -> torch.Tensor:
        dropped = set(removed)
        return self(d for d in range(len(self.documents)) if d not in dropped)

    @property
    def full(self) -> torch.Tensor:
        return self(range(len(self.documents)))
