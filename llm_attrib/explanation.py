"""The result of an attribution: a [targets x input tokens] matrix with everything that produced it."""

from __future__ import annotations

import bisect
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .core.sequence import padded_mask
from .errors import InvalidInputError


@dataclass
class Explanation:
    """Attributions of each target token (or class) to each input token.

    Inputs are the prompt tokens followed by the earlier targets (a generated token is an input of the
    ones after it), so `scores[t, j]` is zero for inputs j at or after target t's own position.

    Attributes:
        scores: (T, N) attribution of target t to input token j.
        input_tokens: readable text of the N input tokens.
        input_offsets: (start, end) of each input token in `text`.
        input_ids: the N input token ids.
        target_tokens: readable text of the T targets (class names for classifiers).
        target_ids: the T target token ids (class indices for classifiers).
        target_probs: model probability of each target given its prefix.
        completeness_error: (T,) relative completeness error; NaN where the method has none.
        text: the prompt followed by the answer text; offsets index into it.
        n_prompt_tokens: how many inputs belong to the prompt.
        method, space: what produced the scores; params: every other setting (steps, baseline, seed...).
        model_name, library_version: provenance.
        head_scores: (T, layers, heads, N) for attention-space methods, if kept.
        extra: method-specific results (e.g. RPI candidates).
        cost: what the explanation took: "n_forward", "n_backward" passes of the method (path points and ends),
            "n_forward_all" (every forward the call ran, summed over the processes sharing it: the space's
            set-up and checks, the memory probe and the target probabilities too), "internal_batch_size",
            "recompute" (whether the path points ran with recomputation, see `Attributor`), "point_bytes" (the
            memory guard's estimate of one path point, transients included) and "seconds".
        input_markup: for each input, True when it is markup rather than content: a special token or a chat
            template's role marker. Baselines keep markup, so its scores are what the template itself carried;
            `top_tokens` and `markup_share` report it apart from the user's words.
        converged: whether every completeness error is within the run's tolerance (1% for fixed-step runs);
            False means the scores are not a converged integral; None for methods without completeness.
        answer_level: rows are parts of the answer (target="answer": log p(answer | prompt), one row for the whole
            answer or one per `answer_segments`); `target_tokens` is then each part's text and `target_ids` all the
            answer's token ids.
        answer_segments: the target-index runs [start, end) of the rows of an answer-level explanation (None:
            the whole answer, or per-token rows).
        notes: plain-words warnings about the input or the result that a reader must see beside the scores (e.g.
            many prompt tokens unknown to the tokenizer); renderers show them.
        newer_fields: keys of a file saved by a newer version that this one does not know, kept as read (and
            written back by `save`).
    """

    scores: torch.Tensor
    input_tokens: list[str]
    input_offsets: list[tuple[int, int]]
    input_ids: list[int]
    target_tokens: list[str]
    target_ids: list[int]
    target_probs: list[float]
    completeness_error: torch.Tensor
    text: str
    n_prompt_tokens: int
    method: str
    space: str
    params: dict[str, Any] = field(default_factory=dict)
    model_name: str = ""
    library_version: str = ""
    head_scores: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)
    input_markup: list[bool] = field(default_factory=list)
    converged: bool | None = None
    answer_level: bool = False
    answer_segments: list[tuple[int, int]] | None = None
    notes: list[str] = field(default_factory=list)
    newer_fields: dict[str, Any] = field(default_factory=dict, repr=False)

    def segments(self) -> list[tuple[int, int]] | None:
        """The answer runs behind the rows: None for per-token rows, [(0, T)] for the whole answer."""
        if not self.answer_level:
            return None
        return [tuple(s) for s in self.answer_segments] if self.answer_segments else [(0, len(self.target_ids))]

    def _markup(self) -> torch.Tensor:
        return padded_mask(self.input_markup, len(self.input_tokens))

    @property
    def markup_share(self) -> torch.Tensor:
        """(T,) the part of each target's total |attribution| that went to markup rather than content."""
        magnitude = self.scores.abs()
        return magnitude[:, self._markup()].sum(1) / magnitude.sum(1).clamp_min(1e-30)

    @property
    def prompt_scores(self) -> torch.Tensor:
        """(T, n_prompt_tokens): attributions to the prompt only."""
        return self.scores[:, : self.n_prompt_tokens]

    def top_tokens(self, target: int = 0, k: int = 5, include_markup: bool = False) -> list[tuple[str, float]]:
        """The k prompt tokens with the largest attribution for one target (content only, by default)."""
        if not -len(self.target_tokens) <= target < len(self.target_tokens):
            raise InvalidInputError(f"target {target} does not exist: the explanation has {len(self.target_tokens)} targets.")
        scores = self.prompt_scores[target].clone()
        eligible = torch.ones_like(scores, dtype=torch.bool) if include_markup else ~self._markup()[: self.n_prompt_tokens]
        scores[~eligible] = -float("inf")
        values, index = scores.topk(min(k, int(eligible.sum())))
        return [(self.input_tokens[i], v) for i, v in zip(index.tolist(), values.tolist())]

    def aggregate(self, spans: list[tuple[int, int]], labels: list[str] | None = None) -> "Explanation":
        """Sum token scores into character spans of `text` (a token belongs to the span holding its start).

        Tokens outside every span are dropped; use `words()` for a full partition.
        """
        groups = []
        for start, end in spans:
            if not 0 <= start < end <= len(self.text):
                raise InvalidInputError(f"span ({start}, {end}) is not inside the text of length {len(self.text)}.")
            groups.append([j for j, (s, e) in enumerate(self.input_offsets) if e > s and start <= s < end])
        return self._grouped(groups, [(s, e) for s, e in spans], labels)

    def words(self) -> "Explanation":
        """Sum token scores into whitespace-separated words of the content; markup tokens stay alone.

        A token belongs to the word holding its first non-space character: byte-level BPE and SentencePiece
        tokens carry the space before them in their offsets (" Kil" + "imanjaro"), WordPiece pieces ("##")
        touch their word; a whitespace-only token (SentencePiece's lone `▁`) joins the word right after it.
        Markup (special tokens, a chat template's role markers) is cut out of the text first, so `?<|im_end|>`
        gives the word `?` and the markup token `<|im_end|>`, never one word. Text without spaces (Chinese,
        Japanese) is one word per run.
        """
        markup = self._markup().tolist()
        chars = list(self.text)
        for j, (s, e) in enumerate(self.input_offsets):
            if markup[j]:
                chars[s:e] = " " * (e - s)
        spans = [m.span() for m in re.finditer(r"\S+", "".join(chars))]
        starts = [s for s, _ in spans]
        members: dict[tuple[int, bool], list[int]] = {}  # (word, in the answer): a word never spans both
        alone, firsts = [], {}
        for j, (s, e) in enumerate(self.input_offsets):
            piece = self.text[s:e]
            first = firsts[j] = s + len(piece) - len(piece.lstrip())  # the token's first non-space character
            w = bisect.bisect_right(starts, first) - 1
            empty = e <= s and self.input_tokens[j].strip() != ""  # a special token's empty span, not a space's
            if markup[j] or empty or w < 0 or first >= spans[w][1]:
                alone.append(j)
            else:
                members.setdefault((w, j >= self.n_prompt_tokens), []).append(j)
        groups = sorted([[j] for j in alone] + list(members.values()), key=lambda g: g[0])
        words = {g[0] for g in members.values()}
        offsets, labels = [], []
        for g in groups:
            if g[0] in words:  # the word's characters that its tokens cover
                start, end = min(firsts[j] for j in g), max(self.input_offsets[j][1] for j in g)
                labels.append(self.text[start:end] or self.input_tokens[g[0]])
            else:
                start, end = self.input_offsets[g[0]]
                labels.append(self.input_tokens[g[0]])
            offsets.append((start, end))
        return self._grouped(groups, offsets, labels)

    def _grouped(self, groups: list[list[int]], offsets, labels: list[str] | None) -> "Explanation":
        scores = torch.stack([self.scores[:, g].sum(1) if g else self.scores.new_zeros(len(self.scores)) for g in groups], 1)
        tokens = labels or ["".join(self.input_tokens[j] for j in g).strip() or self.text[s:e] for g, (s, e) in zip(groups, offsets)]
        n_prompt = sum(1 for g in groups if g and g[0] < self.n_prompt_tokens)
        head = None
        if self.head_scores is not None:
            head = torch.stack([self.head_scores[..., g].sum(-1) for g in groups], -1)
        return replace(
            self,
            scores=scores,
            input_tokens=tokens,
            input_offsets=[tuple(o) for o in offsets],
            input_ids=[self.input_ids[g[0]] if g else -1 for g in groups],
            n_prompt_tokens=n_prompt,
            params={**self.params, "aggregated": True},
            head_scores=head,
            input_markup=[bool(g) and all(self._markup()[j] for j in g) for g in groups],
            newer_fields={},
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tensors as nested lists, NaN as null), in the format `schema.ExplanationFile`."""
        from .schema import FORMAT_VERSION

        data = {key: _jsonable(value) for key, value in asdict(self).items() if key != "newer_fields"}
        data["format_version"] = FORMAT_VERSION
        return {**self.newer_fields, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Explanation":
        """An explanation from `to_dict`'s format, validated (types, shapes, sizes); InvalidInputError otherwise."""
        from .schema import ExplanationFile, validated

        return cls.from_file(validated(ExplanationFile, data, "Explanation"))

    @classmethod
    def from_file(cls, file) -> "Explanation":
        """An explanation from its validated file model (`schema.ExplanationFile`)."""
        n_targets, n_inputs = len(file.target_tokens), len(file.input_tokens)
        head = None
        if file.head_scores is not None:
            head = torch.tensor(_none_to_nan(file.head_scores), dtype=torch.float32)
        return cls(
            scores=torch.tensor(file.scores, dtype=torch.float32).reshape(n_targets, n_inputs),
            input_tokens=file.input_tokens,
            input_offsets=[tuple(o) for o in file.input_offsets],
            input_ids=file.input_ids,
            target_tokens=file.target_tokens,
            target_ids=file.target_ids,
            target_probs=_none_to_nan(file.target_probs),
            completeness_error=torch.tensor(_none_to_nan(file.completeness_error), dtype=torch.float32),
            text=file.text,
            n_prompt_tokens=file.n_prompt_tokens,
            method=file.method,
            space=file.space,
            params=file.params,
            model_name=file.model_name,
            library_version=file.library_version,
            head_scores=head,
            extra={k: _numeric(v) for k, v in file.extra.items()},
            cost=file.cost,
            input_markup=file.input_markup,
            converged=file.converged,
            answer_level=file.answer_level,
            answer_segments=None if file.answer_segments is None else [tuple(s) for s in file.answer_segments],
            notes=file.notes,
            newer_fields=dict(file.model_extra or {}),
        )

    def save(self, path: str | Path) -> None:
        """Strict JSON (NaN written as null), so any JSON parser reads it."""
        from .schema import write_json

        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "Explanation":
        """An explanation saved by `save`, validated; InvalidInputError for anything else."""
        from .schema import read_json

        return cls.from_dict(read_json(path, "Explanation"))

    def to_dataframe(self):
        """Long pandas DataFrame: one row per (target, input token)."""
        import pandas as pd

        rows = [
            {
                "target_index": t,
                "target_token": self.target_tokens[t],
                "target_prob": self.target_probs[t],
                "input_index": j,
                "input_token": self.input_tokens[j],
                "input_start": self.input_offsets[j][0],
                "input_end": self.input_offsets[j][1],
                "is_prompt": j < self.n_prompt_tokens,
                "is_markup": bool(self._markup()[j]),
                "score": float(self.scores[t, j]),
            }
            for t in range(len(self.target_tokens))
            for j in range(len(self.input_tokens))
        ]
        return pd.DataFrame(rows)

    def to_html(self, **kwargs: Any) -> str:
        """A self-contained HTML heatmap (no external assets)."""
        from .render.html import render_html

        return render_html(self, **kwargs)

    def _repr_html_(self) -> str:
        """Jupyter's inline display: the HTML page in an iframe."""
        from .render.html import inline_html

        return inline_html(self.to_html(), f"llm-attrib: {self.method} / {self.space}")

    def __repr__(self) -> str:
        """A few lines a person reads: what produced it, its size, and the top tokens of the first row."""
        n_targets, n_inputs = len(self.target_tokens), len(self.input_tokens)
        state = {True: "converged", False: "NOT converged", None: "no completeness check"}[self.converged]
        model = f" of {self.model_name.rstrip('/').rsplit('/', 1)[-1]}" if self.model_name else ""
        rows = "answer part" if self.answer_level else "target"
        lines = [f"Explanation: {self.method} over {self.space}{model}, {n_targets} {rows}{'s' * (n_targets != 1)} x "
                 f"{n_inputs} inputs ({self.n_prompt_tokens} prompt), {state}"]
        if n_targets and self.n_prompt_tokens:
            top = ", ".join(f"{_short(token)} {score:+.3g}" for token, score in self.top_tokens(0, k=3))
            lines.append(f"  {_short(self.target_tokens[0])}: {top}")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def print(self, **kwargs: Any) -> None:
        """Render in the terminal with rich."""
        from .render.terminal import print_explanation

        print_explanation(self, **kwargs)

    def plot(self, **kwargs: Any):
        """A matplotlib heatmap; returns the figure."""
        from .render.plot import plot_heatmap

        return plot_heatmap(self, **kwargs)


def _short(text: str, limit: int = 24) -> str:
    """A token or text quoted for a one-line summary, cut to `limit` characters."""
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def _nan_to_none(value):
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return None if value != value else value


def _none_to_nan(value):
    if isinstance(value, list):
        return [_none_to_nan(v) for v in value]
    return float("nan") if value is None else value


def _is_numeric_list(value) -> bool:
    while isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, (int, float)) and not isinstance(value, bool) or value is None


def _numeric(value):
    """A saved numeric array as a tensor (as `to_dict` wrote it); anything else (ragged, mixed) as it is."""
    if not isinstance(value, list) or not _is_numeric_list(value):
        return value
    try:
        return torch.tensor(_none_to_nan(value))
    except (TypeError, ValueError, RuntimeError, OverflowError):
        return value


def _jsonable(value):
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, torch.Tensor):
        return _nan_to_none(value.tolist())
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
