"""The explained sequence: prompt plus targets, tokenised once, with the positions where targets are read.

A causal LM's target t (the token at position n_prompt + t) is predicted at position n_prompt + t - 1 and
depends only on positions before it, so one teacher-forced forward over the whole sequence serves every
target. A sequence classifier has one target, the explained class, read from the pooled output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InvalidInputError


@dataclass
class Sequence:
    """One explained example.

    Attributes:
        input_ids: (1, L) token ids of prompt and targets.
        n_prompt: number of prompt tokens.
        target_ids: (T,) ids of the explained tokens (classes for classifiers).
        text: prompt text followed by the answer text; offsets index into it.
        offsets: (start, end) character span of each of the L tokens in `text`.
        tokens: readable text of each of the L tokens.
        keep: (L,) bool, markup rather than content: special tokens (BOS, CLS, SEP, end of turn) and a chat
            template's role markers. Every built-in baseline keeps them, metrics never remove them, and
            explanations report them apart from the user's words.
        is_classifier: whether targets are classes of a sequence classifier.
        answer_segments: one output per contiguous run of targets [start, end), the log-probability of that part of
            the answer (the sum of its targets' log-probabilities), instead of one per target token; [(0, T)] is the
            whole answer, one segment per sentence gives sentence-level rows. A document ranking then costs one
            gradient per segment and path point. None: one output per target.
    """

    input_ids: torch.Tensor
    n_prompt: int
    target_ids: torch.Tensor
    text: str
    offsets: list[tuple[int, int]]
    tokens: list[str]
    keep: torch.Tensor
    is_classifier: bool = False
    answer_segments: list[tuple[int, int]] | None = None

    @property
    def answer_level(self) -> bool:
        return self.answer_segments is not None

    def segment_matrix(self) -> torch.Tensor:
        """(T, S) float: 1 where target t belongs to output row s (the identity for per-token rows)."""
        if self.answer_segments is None:
            return torch.eye(self.n_targets, device=self.input_ids.device)
        member = torch.zeros(self.n_targets, len(self.answer_segments), device=self.input_ids.device)
        for s, (start, end) in enumerate(self.answer_segments):
            member[start:end, s] = 1
        return member

    @property
    def output_positions(self) -> torch.Tensor:
        """(S,) the last position each output row depends on (a segment's last target's prediction)."""
        if self.answer_segments is None:
            return self.target_positions
        ends = torch.tensor([end - 1 for _, end in self.answer_segments], device=self.input_ids.device)
        return self.target_positions[ends]

    @property
    def length(self) -> int:
        return self.input_ids.shape[1]

    @property
    def n_targets(self) -> int:
        return self.target_ids.shape[0]

    @property
    def n_outputs(self) -> int:
        """Rows of the explanation: one per target, or one per answer segment."""
        return self.n_targets if self.answer_segments is None else len(self.answer_segments)

    @property
    def target_positions(self) -> torch.Tensor:
        """(T,) positions whose logits predict each target (empty for classifiers)."""
        if self.is_classifier:
            return self.target_ids.new_zeros(0)
        return torch.arange(self.n_prompt - 1, self.length - 1, device=self.input_ids.device)

    def prefix(self, n_targets: int) -> Sequence:
        """The sequence up to its `n_targets`-th target: what those targets depend on (per-token targets of a
        causal LM; later positions cannot change them)."""
        end = self.n_prompt + n_targets
        return Sequence(self.input_ids[:, :end], self.n_prompt, self.target_ids[:n_targets], self.text,
                        self.offsets[:end], self.tokens[:end], self.keep[:end])

    @property
    def n_inputs(self) -> int:
        """Tokens that receive attribution: everything but the last target token, which is never an input."""
        return self.length if self.is_classifier else self.length - 1


def special_token_mask(tokenizer, ids: list[int]) -> torch.Tensor:
    """(L,) bool, True for the tokenizer's special tokens (kept by baselines, never removed by metrics)."""
    special = set(tokenizer.all_special_ids)
    return torch.tensor([i in special for i in ids], dtype=torch.bool)


def readable_tokens(tokenizer, ids: list[int], text: str | None = None,
                    offsets: list[tuple[int, int]] | None = None) -> list[str]:
    """Each token as text. A byte-level BPE fragment of a character decodes to U+FFFD on its own; it is shown as
    the text its offsets cover instead (the whole character)."""
    tokens = [tokenizer.convert_tokens_to_string([t]) for t in tokenizer.convert_ids_to_tokens(ids)]
    if text is None or offsets is None:
        return tokens
    return [text[start:end] if "\ufffd" in token and end > start else token
            for token, (start, end) in zip(tokens, offsets)]


def answer_offsets(tokenizer, prompt_ids: list[int], ids: list[int], start: int) -> tuple[str, list[tuple[int, int]]]:
    """The answer's text as the tokenizer decodes it after the prompt, and each answer token's span in it.

    Decoding in context keeps the separator a tokenizer puts between prompt and answer (a word-level
    tokenizer joins words with spaces; a BPE one carries the space in the token). A token's span is the
    characters its bytes touch, as a tokenizer's own offsets give them: a prefix that ends inside a multi-byte
    character decodes to U+FFFD there, so the characters a prefix has settled are those it shares with the
    whole answer, and a token that leaves a character unfinished touches that character too. Every byte
    piece of one character (CJK, emoji, accents in byte-level BPE) thus spans that character.
    """
    prefix = tokenizer.decode(prompt_ids)
    text = _decoded_after(tokenizer, prompt_ids, prefix, ids)
    offsets, settled = [], 0  # characters of `text` finished by the tokens so far
    for i in range(len(ids)):
        decoded = _decoded_after(tokenizer, prompt_ids, prefix, ids[: i + 1])
        common = _common_prefix(decoded, text)
        end = common + (1 if len(decoded) > common and common < len(text) else 0)  # an unfinished character
        begin = settled
        piece = text[begin:end]
        begin += len(piece) - len(piece.lstrip())  # a token's span leaves out the space before it
        offsets.append((start + begin, start + max(begin, end)))
        settled = max(settled, common)
    return text, offsets


def _decoded_after(tokenizer, prompt_ids: list[int], prefix: str, ids: list[int]) -> str:
    """`ids` decoded after the prompt (which decodes to `prefix`): the text that follows it."""
    decoded = tokenizer.decode(prompt_ids + ids)
    return decoded[len(prefix):] if decoded.startswith(prefix) else tokenizer.decode(ids)


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def build_sequence(
    tokenizer,
    prompt: str,
    prompt_ids: list[int],
    prompt_offsets: list[tuple[int, int]],
    answer_ids: list[int],
    device: torch.device,
    vocab_size: int,
    prompt_markup: list[bool] | None = None,
) -> Sequence:
    """Assemble prompt and answer tokens into a teacher-forced `Sequence` for a causal LM.

    `prompt_markup` marks prompt tokens that are not the user's content (chat-template markup); with the
    special tokens anywhere in the sequence they form `keep`.
    """
    if not answer_ids:
        raise InvalidInputError("there is nothing to explain: the answer is empty (no token was generated or given).")
    bad = [i for i in answer_ids if not 0 <= i < vocab_size]
    if bad:
        raise InvalidInputError(f"answer token ids {bad} are outside the model's vocabulary [0, {vocab_size}).")
    answer_text, offsets = answer_offsets(tokenizer, prompt_ids, answer_ids, len(prompt))
    ids = prompt_ids + answer_ids
    return Sequence(
        input_ids=torch.tensor([ids], device=device),
        n_prompt=len(prompt_ids),
        target_ids=torch.tensor(answer_ids, device=device),
        text=prompt + answer_text,
        offsets=list(prompt_offsets) + offsets,
        tokens=readable_tokens(tokenizer, ids, prompt + answer_text, list(prompt_offsets) + offsets),
        keep=(special_token_mask(tokenizer, ids) | padded_mask(prompt_markup, len(ids))).to(device),
    )


def padded_mask(mask: list[bool] | None, length: int) -> torch.Tensor:
    """(length,) bool: `mask` (or nothing) cut or padded with False, e.g. markup of an older explanation."""
    values = list(mask or [])[:length]
    return torch.tensor(values + [False] * (length - len(values)), dtype=torch.bool)


def check_segments(segments: list[tuple[int, int]] | None, n_targets: int) -> list[tuple[int, int]]:
    """Answer segments as contiguous, non-empty, in-order runs that cover the answer's targets; None = the whole."""
    if segments is None:
        return [(0, n_targets)]
    try:
        runs = [(int(a), int(b)) for a, b in segments]
    except (TypeError, ValueError):
        raise InvalidInputError(f"answer_segments must be (start, end) pairs of target indices, got {segments!r}.") from None
    bounds = [0] + [b for _, b in runs]
    if not runs or [a for a, _ in runs] != bounds[:-1] or bounds[-1] != n_targets or any(b <= a for a, b in runs):
        raise InvalidInputError(
            f"answer_segments {runs} must split the answer's {n_targets} tokens into consecutive non-empty runs "
            f"(start, end) from 0 to {n_targets}, e.g. [(0, 4), (4, {n_targets})]."
        )
    return runs
