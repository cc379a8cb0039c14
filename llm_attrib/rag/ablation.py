"""Removing documents: the answer's log-probability, per answer segment, with only some documents in the prompt.

The brute-force reference for a document ranking (one forward per subset of documents), the check behind a
verdict (an answer sentence a document supports loses probability when that document is removed, more than when
any other one is), and the game behind the documents' Shapley values. Removal re-renders the prompt without the
documents (same template, the others unchanged, their labels keeping their numbers), so nothing else moves, and
what comes before the first removed document is not run again (`SharedPrefixes`).

That is removal="rerun" (the default): the exact probability of the answer to the prompt without the documents.
removal="hidden" (`HiddenDocuments`) is a cheaper, different quantity for long prompts: the prompt runs once, and
each subset runs only the readers (the tokens after the last document: question, instructions, answer) with the
removed documents hidden from their attention. The documents after a removed one keep what they read from it, and
nothing moves position, so the values differ from the rerun's (eval/results/rag/hidden_removal.md measures by how
much); it is reading="answer"'s endpoint, what the mask space's path reaches with those documents at 0.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import replace

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import Cache, DynamicCache

from ..attributor import Attributor, covered, reader_start
from ..core.spaces import MaskSpace
from ..core.static_prefix import StaticPrefix, cache_argument, copied, holds_every_token, same_logits, static_prefix
from ..errors import UnknownNameError, UnsupportedModelError
from ..metrics._perturb import logits_at, padding_token
from ..patching import own_attention, prepared, supports_attention_hook
from .prompt import Document, Template, build_prompt


def segment_log_probs(attributor: Attributor, prompts: list, answer_ids: list[int], segments: list[tuple[int, int]],
                      on_forward: Callable[[int], object] | None = None,
                      prefixes: SharedPrefixes | None = None) -> torch.Tensor:
    """(N, S) log p(segment | prompt, earlier answer) of each answer segment after each of N prompts, teacher-forced:
    `token_log_probs` summed over each segment's tokens."""
    seq = attributor.sequence(prompts[0], answer=answer_ids)
    seq.answer_segments = segments
    return token_log_probs(attributor, prompts, answer_ids, on_forward, prefixes) @ seq.segment_matrix().cpu()


def token_log_probs(attributor: Attributor, prompts: list, answer_ids: list[int],
                    on_forward: Callable[[int], object] | None = None,
                    prefixes: SharedPrefixes | None = None) -> torch.Tensor:
    """(N, T) log p(answer token | prompt, earlier answer) of each of the T answer tokens after each of N prompts.

    With `prefixes`, each prompt runs only from its first token that differs from the prompt run before it (see
    `SharedPrefixes`); prompts it cannot run so (a model whose cache is not exact) run in full. One prompt per
    forward unless the Attributor's internal_batch_size asks for more: on a CPU batching gains nothing
    (eval/results/rag_debugging.md, 3i); a GPU, which runs a batch about as fast as one prompt, should gain.
    `on_forward` is told how many prompts each forward ran."""
    seqs = [attributor.sequence(prompt, answer=answer_ids) for prompt in prompts]
    ids = [seq.input_ids[0] for seq in seqs]
    rows = attributor.internal_batch_size or 1
    pad = padding_token(attributor.tokenizer)
    done = {} if prefixes is None or seqs[0].is_classifier else prefixes.log_probs(ids, seqs[0].target_ids, rows,
                                                                                     pad, on_forward)
    rest = [i for i in range(len(ids)) if i not in done]
    done.update(zip(rest, full_log_probs(attributor.model, [ids[i] for i in rest], seqs[0].target_ids, rows, pad,
                                         on_forward)))
    return torch.stack([done[i] for i in range(len(ids))]).float().cpu()


def full_log_probs(model, ids: list[torch.Tensor], target_ids: torch.Tensor, rows: int, pad: int,
                   on_forward: Callable[[int], object] | None = None) -> list[torch.Tensor]:
    """(T,) log-probability of each answer token (the last T of every sequence) for each whole sequence, `rows`
    sequences per forward. A batch is padded on the left with each row's own positions, so the answer sits at the
    same positions in every row and the LM head runs only there; a model that takes no position ids runs one
    sequence per forward."""
    if "position_ids" not in inspect.signature(model.forward).parameters:
        rows = 1
    n_targets = len(target_ids)
    out = []
    for start in range(0, len(ids), rows):
        flipped = [row.flip(0) for row in ids[start:start + rows]]
        batch = pad_sequence(flipped, batch_first=True, padding_value=pad).flip(1)
        attention = pad_sequence([torch.ones_like(f) for f in flipped], batch_first=True).flip(1)
        width = batch.shape[1]
        read = torch.arange(width - n_targets - 1, width - 1, device=batch.device).repeat(len(flipped), 1)  # (B, T)
        inputs = dict(input_ids=batch, attention_mask=attention)
        if len(flipped) > 1:
            inputs["position_ids"] = (attention.cumsum(1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = logits_at(model, read, **inputs)
        out.extend(answer_log_probs(logits, target_ids))
        if on_forward is not None:
            on_forward(len(flipped))
    return out


def answer_log_probs(logits: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) log-probabilities of the answer tokens (T,) from the logits at the positions that predict them."""
    return logits.float().log_softmax(-1).gather(-1, target_ids.expand(len(logits), -1)[..., None])[..., 0]


def shared_length(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many first tokens two 1-D sequences share."""
    n = min(len(a), len(b))
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0, 0]) if len(differ) else n


class SharedPrefixes:
    """Runs teacher-forced sequences from the keys and values of the first tokens they share with a sequence run
    before them, only the rest running (its positions continue from there). Two caches (batch 1) are kept: the
    last sequence run, cut back in place to what the next one shares, and the longest (with every document, the
    full prompt), copied when a sequence starts from it. Sequences run in sorted order, so each one shares the most
    it can with the one before: removing a document re-runs only what follows it, subsets that keep the same first
    documents share them (a set of sequences costs about the tokens of their prefix tree), and a removal asked
    for alone later still starts from the full prompt.

    Exact or not used: the first sequence runs whole and its answer runs again from the cache of the tokens before
    it; the logits must agree within the dtype's rounding, and every layer's cache must hold every token (a
    sliding window shorter than the prompt drops the first ones). Otherwise, and for models without a cache, the
    sequences are left to full forwards. The last answer token runs in no sequence: nothing reads its logits."""

    def __init__(self, model):
        self.model = model
        self.argument = cache_argument(model)
        self.last: tuple[torch.Tensor, Cache] | None = None  # tokens and their keys and values, extended in place
        self.longest: tuple[torch.Tensor, Cache] | None = None  # never changed: copied when used
        self.exact: bool | None = None if self.argument else False  # None: not checked yet

    def log_probs(self, ids: list[torch.Tensor], target_ids: torch.Tensor, rows: int = 1, pad: int = 0,
                  on_forward: Callable[[int], object] | None = None) -> dict[int, torch.Tensor]:
        """(T,) answer log-probabilities (the last T tokens of each sequence) of the sequences run from shared
        prefixes, by index into `ids`; `rows` sequences per forward (right-padded: causal rows never see their
        padding). Sequences left out (all where the cache is not exact) are the caller's to run in full."""
        n_targets = len(target_ids)
        out: dict[int, torch.Tensor] = {}
        order = sorted(range(len(ids)), key=lambda i: ids[i].tolist())
        for at in range(0, len(order), rows):
            if self.exact is False:
                break
            chunk = order[at:at + rows]
            firsts = [len(ids[i]) - n_targets - 1 for i in chunk]  # each row's first position read
            start, cache = self.prefix([ids[i] for i in chunk], min(firsts), len(chunk))
            batch = pad_sequence([ids[i][start:-1] for i in chunk], batch_first=True, padding_value=pad)
            read = torch.stack([torch.arange(first, first + n_targets, device=batch.device) for first in firsts])
            with torch.no_grad():
                logits = logits_at(self.model, read - start, input_ids=batch, use_cache=True,
                                   **{self.argument: cache})  # (B, T, V)
            out.update(zip(chunk, answer_log_probs(logits, target_ids)))
            if on_forward is not None:
                on_forward(len(chunk))
            tokens, seen = ids[chunk[-1]][:-1], start + batch.shape[1]
            if not holds_every_token(cache, seen):  # a layer dropped first tokens: no later forward can start there
                self.exact, self.last, self.longest = False, None, None
                break
            if len(chunk) > 1:  # keep the last row, its padding cut off
                cache.batch_select_indices([len(chunk) - 1])  # a list: layers may sit on several devices
                cache.crop(len(tokens) - seen)
            if self.exact is None:
                self.exact = self.check(cache, tokens, logits[-1], n_targets)
            if not self.exact:
                self.last, self.longest = None, None
            elif self.longest is None or len(tokens) > len(self.longest[0]):
                self.longest, self.last = (tokens, cache), None
            else:
                self.last = (tokens, cache)
        return out

    def prefix(self, rows: list[torch.Tensor], most: int, batch: int) -> tuple[int, Cache]:
        """How many first tokens (at most `most`) every row shares with the last or the longest sequence run, and a
        cache holding them for `batch` rows (the last one's own for one row: the forward extends it in place)."""
        shared = [(min(most, *(shared_length(held[0], row) for row in rows)), held)
                  for held in (self.last, self.longest) if held is not None]
        start, held = max(shared, key=lambda pair: pair[0], default=(0, None))
        if start == 0:
            return 0, DynamicCache(config=self.model.config)
        tokens, cache = held
        if held is self.last and batch == 1:
            self.last = None  # extended in place by the forward
        else:
            cache = copied(cache, batch)
        cache.crop(start - len(tokens))
        return start, cache

    def check(self, cache: Cache, tokens: torch.Tensor, logits: torch.Tensor, n_targets: int) -> bool:
        """Whether the answer logits (T, V) of `tokens` from its full forward come out the same when the answer
        runs again from the cache of the tokens before it (`cache`, of all of `tokens`, is as before afterwards)."""
        cache.crop(-n_targets)
        with torch.no_grad():
            again = logits_at(self.model, torch.arange(n_targets, device=logits.device)[None],
                              input_ids=tokens[None, len(tokens) - n_targets:], use_cache=True,
                              **{self.argument: cache})
        return same_logits(again[0], logits, self.model)


REMOVALS = ("rerun", "hidden")


def check_removal(model, removal: str) -> None:
    """Refuse an unknown removal, or removal="hidden" on a model whose attention cannot be hooked, before any work."""
    if removal not in REMOVALS:
        raise UnknownNameError(f"unknown removal {removal!r}; choose one of {list(REMOVALS)}.")
    if removal == "hidden" and not supports_attention_hook(model):
        raise UnsupportedModelError(f"removal='hidden' hides documents from the question and answer through the "
                                    f"attention hook, but {type(model).__name__} computes attention in its own code; "
                                    "use removal='rerun' (the default).")


class HiddenDocuments:
    """Answer token log-probabilities with documents hidden from the readers (removal="hidden"): the whole prompt
    runs once (its keys and values, checked to reproduce the model's logits, as reading="answer" builds them) and
    each subset runs only the tokens after the last document, every removed document's tokens at visibility 0 in
    every layer (the mask space: exactly the model with those keys masked out of the readers' attention).
    `rows` subsets per forward; each forward reads the prompt's cache once, whatever its rows."""

    def __init__(self, attributor: Attributor, prompt, answer_ids: list[int], document_spans: list[tuple[int, int]]):
        self.model = attributor.model
        self.seq = attributor.sequence(prompt, answer=answer_ids)
        self.documents = [covered(self.seq, [span]) for span in document_spans]  # (L,) bool each
        moving = torch.stack(self.documents).any(0).to(self.seq.keep.device)  # only the documents move
        self.seq.keep = self.seq.keep | ~moving
        self.reader_length = reader_start(self.seq, "answer", "mask", document_spans[-1][1])
        self.space = MaskSpace()
        self.x: torch.Tensor | None = None  # (layers, L) every key visible, set with the cache on first use
        self.prefix: StaticPrefix | None = None  # the prompt's keys and values up to the readers

    def log_probs(self, kept_sets: list[tuple[int, ...]], rows: int = 1,
                  on_forward: Callable[[int], object] | None = None) -> list[torch.Tensor]:
        """(T,) answer log-probabilities with only the documents of each kept set visible to the readers."""
        out = []
        with prepared(self.model, hook_attention=True):
            prefix = self.readers()
            for start in range(0, len(kept_sets), rows):
                chunk = kept_sets[start:start + rows]
                points = self.x.expand(len(chunk), *self.x.shape).clone()
                for point, kept in zip(points, chunk):
                    for d, tokens in enumerate(self.documents):
                        if d not in kept:
                            point[:, tokens.to(point.device)] = 0.0
                with torch.no_grad():
                    logits = self.space.logits(self.model, self.seq, points, prefix)
                out.extend(answer_log_probs(logits, self.seq.target_ids))
                if on_forward is not None:
                    on_forward(len(chunk))
        return out

    def readers(self) -> StaticPrefix:
        """The prompt's keys and values up to the readers (built and checked once, with the model's attention)."""
        if self.prefix is None:
            self.x = self.space.point(self.model, self.seq)
            with own_attention():
                prefix = static_prefix(self.model, self.seq, self.space, self.x, self.reader_length)
            if prefix is None:
                raise UnsupportedModelError(
                    f"removal='hidden' runs the prompt's first {self.reader_length} tokens once from a cache of keys "
                    f"and values, but {type(self.model).__name__} takes no such cache or its cached forward does not "
                    "reproduce its logits here (e.g. a sliding window shorter than the prompt); use removal='rerun'.")
            self.space.readers = self.prefix = prefix
        return self.prefix


class DocumentSubsets:
    """(S,) answer segment log-probabilities with a subset of the documents kept (and `tokens`, the (T,) answer
    tokens' own), each subset run once, so leave-one-out, the verdicts' removals, the answer words' removals and
    the Shapley values share their forwards; subsets known in advance (`evaluate`) can share batched forwards (the
    Attributor's internal_batch_size). Each subset runs only from the first token its prompt does not share with
    the prompt run before it (`SharedPrefixes`), unless `reuse_prefix` is False: the same values from full
    forwards. removal="hidden": the documents are hidden from the readers instead (`HiddenDocuments`)."""

    def __init__(self, attributor: Attributor, question: str, documents: list[Document], template: Template,
                 answer_ids: list[int], segments: list[tuple[int, int]], system: str | None = None,
                 on_forward: Callable[[int], object] | None = None, reuse_prefix: bool = True,
                 removal: str = "rerun"):
        check_removal(attributor.model, removal)
        self.attributor, self.question, self.documents, self.template = attributor, question, documents, template
        self.answer_ids, self.segments, self.system = answer_ids, segments, system
        self.on_forward = on_forward  # told how many subsets each forward ran (a progress bar's update)
        self.prefixes = SharedPrefixes(attributor.model) if reuse_prefix else None
        self.hidden = None
        if removal == "hidden":
            built = build_prompt(attributor.tokenizer, question, documents, template, system=system)
            self.hidden = HiddenDocuments(attributor, built.prompt, answer_ids, built.document_spans)
        self.token_values: dict[tuple[int, ...], torch.Tensor] = {}  # (T,) per subset run
        self.members: torch.Tensor | None = None  # (T, S): which answer tokens make each segment

    def evaluate(self, subsets: Iterable[Iterable[int]]) -> None:
        """Run every subset (each an iterable of kept documents) not run yet, internal_batch_size per forward."""
        keys = list(dict.fromkeys(tuple(sorted(set(kept))) for kept in subsets))
        keys = [key for key in keys if key not in self.token_values]
        if not keys:
            return
        if self.hidden is not None:
            if self.members is None:
                self.members = replace(self.hidden.seq, answer_segments=self.segments).segment_matrix().float().cpu()
            values = self.hidden.log_probs(keys, self.attributor.internal_batch_size or 1, self.on_forward)
            self.token_values.update(zip(keys, (v.float().cpu() for v in values)))
            return
        prompts = [build_prompt(self.attributor.tokenizer, self.question, self.documents, self.template, list(key),
                                self.system).prompt for key in keys]
        if self.members is None:
            seq = self.attributor.sequence(prompts[0], answer=self.answer_ids)
            seq.answer_segments = self.segments
            self.members = seq.segment_matrix().float().cpu()
        values = token_log_probs(self.attributor, prompts, self.answer_ids, self.on_forward, self.prefixes)
        self.token_values.update(zip(keys, values))

    def stack(self, subsets: Iterable[Iterable[int]]) -> torch.Tensor:
        """(N, S) the values of N subsets, run together where not run yet (`document_shapley`'s `log_probs`)."""
        subsets = [list(kept) for kept in subsets]
        self.evaluate(subsets)
        return torch.stack([self(kept) for kept in subsets])

    def tokens(self, kept: Iterable[int]) -> torch.Tensor:
        """(T,) each answer token's log-probability with only the `kept` documents."""
        key = tuple(sorted(set(kept)))
        self.evaluate([key])
        return self.token_values[key]

    def token_leave_one_out(self) -> torch.Tensor:
        """(T, D) what each answer token's log-probability loses when each document alone is removed."""
        everyone = range(len(self.documents))
        full = self.tokens(everyone)
        return torch.stack([full - self.tokens(d for d in everyone if d != left) for left in everyone], 1)

    def __call__(self, kept: Iterable[int]) -> torch.Tensor:
        return self.tokens(kept) @ self.members

    def without(self, removed: Iterable[int]) -> torch.Tensor:
        dropped = set(removed)
        return self(d for d in range(len(self.documents)) if d not in dropped)

    @property
    def full(self) -> torch.Tensor:
        return self(range(len(self.documents)))

    @property
    def values(self) -> dict[tuple[int, ...], torch.Tensor]:
        """(S,) segment values of every subset run so far, by its sorted kept documents."""
        return {key: tokens @ self.members for key, tokens in self.token_values.items()}
