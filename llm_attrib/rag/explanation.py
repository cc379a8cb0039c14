"""`RagExplanation`: a token-level `Explanation` read through the prompt's structure (documents, their sentences,
the answer's sentences), with citations, verdicts and the leave-one-out check.

Everything is derived from the token scores and the spans the prompt was built with, so a saved explanation
reloads to the same document and sentence scores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..errors import InvalidInputError
from ..explanation import Explanation, _jsonable, _none_to_nan, _short
from .prompt import Document
from .shapley import DocumentShapley

Span = tuple[int, int]
WORD_CREDIT = 0.1  # nats: removing the document makes the word about 10% less likely (e^-0.1 = 0.905)


@dataclass
class Verdict:
    """Whether the documents support one answer sentence, decided by ablation of the cited documents.

    Attributes:
        label: "supported", "unsupported", "uncertain" or "shared" (the documents together carry the sentence, the
            cited ones most, but removing them alone costs it too little to call: several documents state it);
            "uncalibrated" when the thresholds were not calibrated for the model at hand (margins in nats do not
            carry over between models): read the margin instead.
        drop_cited: nats the sentence's log-probability loses when the cited documents are removed.
        drop_other: the same when one other document is removed, averaged over the others (a gain counts as 0;
            0 with no other document).
        margin: drop_cited - drop_other, the statistic compared with the thresholds.
        thresholds: (low, high): unsupported below low, supported at or above high; None when uncalibrated.
        drop_all: nats lost when every document is removed. Near zero, the model says the sentence without any
            document (from what it knows): no document carried it, so no ranking of them can, whatever the label.
    """

    label: str
    drop_cited: float
    drop_other: float
    margin: float
    thresholds: tuple[float, float] | None
    drop_all: float | None = None
    calibrated: bool = True


@dataclass
class Citation:
    """What carried one answer sentence: documents and their sentences, with scores (the sentence's row sums).

    Attributes:
        sentence: the answer sentence; span: its characters in the explanation's text.
        documents: (document index, score), highest first: every document with at least half the top score.
        sentences: (document index, sentence index, score), the top sentences within the cited documents.
        verdict: the ablation check, when it was run.
    """

    sentence: str
    span: Span
    documents: list[tuple[int, float]]
    sentences: list[tuple[int, int, float]]
    verdict: Verdict | None = None


@dataclass
class RagExplanation:
    """Attribution of an answer to retrieved documents.

    Every per-document table puts documents on its last axis: `document_scores` (rows, documents),
    `sentence_document_scores()`, `leave_one_out` and `shapley.values` (answer sentences, documents), so
    `table[:, d]` is document d's column in each.

    Attributes:
        question: the question; documents: the retrieved documents, in prompt order.
        answer: the explained answer text.
        explanation: the token-level explanation underneath; its rows are the answer's tokens
            (granularity "token"), its sentences ("sentence") or the whole answer ("answer").
        granularity: what a row of the scores is.
        document_spans, sentence_spans, question_span: where documents, their sentences and the question sit in
            `explanation.text`.
        answer_sentences: (start, end) token runs of the answer's sentences, and `answer_sentence_spans` their
            characters in `explanation.text`.
        verdicts: one `Verdict` per answer sentence, when `verify=True`.
        leave_one_out: (answer sentences, documents) nats each sentence loses when that document alone is removed
            (computed with the verdicts).
        answer_words, word_leave_one_out: the answer's words (character spans in `explanation.text`) and (words,
            documents) the nats each word loses when that document alone is removed: which document carried which
            answer word (`word_documents`), from the verdicts' own removals (no extra forward).
        shapley: each answer sentence's Shapley value for each document (`DocumentShapley`, its `values`
            (answer sentences, documents)), when `shapley=True`.
        retrieval: the retriever's explanation of each document's similarity to the question, when given.
        scope: what moved along the path: "documents" (the rest of the prompt stayed real) or "prompt".
        truncated: the generated answer was cut by `max_new_tokens` before it ended (its last sentence may be
            unfinished).
        reading: how the documents were read along the path: "full" (the whole prompt) or "answer" (only the
            tokens after the documents; see `rag.explain`).
        removal: how documents were removed for leave-one-out, the verdicts and the Shapley values: "rerun" (the
            prompt re-rendered without them and run again: exact) or "hidden" (hidden from the question and answer
            only; see `rag.explain`).
        ranking_scores: (documents,) with coarse to fine, each document's score for the whole answer from the
            ranking that chose `sentence_documents`, the documents explained at sentence level (and the only ones
            with leave-one-out columns); both None when every document was.
        newer_fields: keys of a file saved by a newer version that this one does not know, kept as read (and
            written back by `save`).
        cost: the attribution's (`explanation.cost`), "n_forward_ablation" (the forwards that removed documents:
            leave-one-out, verdicts, Shapley values, and one that checks their reused cache), "n_tokens_ablation"
            (the tokens those forwards ran: each starts after the tokens it shares with one run before) and
            "seconds" for the whole call (prompt, generation, attribution, verdicts).
    """

    question: str
    documents: list[Document]
    answer: str
    explanation: Explanation
    granularity: str
    document_spans: list[Span]
    sentence_spans: list[list[Span]]
    question_span: Span
    answer_sentences: list[tuple[int, int]]
    answer_sentence_spans: list[Span]
    verdicts: list[Verdict] | None = None
    leave_one_out: torch.Tensor | None = None
    shapley: DocumentShapley | None = None
    retrieval: list[dict[str, Any]] | None = None
    cost: dict[str, float] = field(default_factory=dict)
    scope: str = "documents"
    truncated: bool = False
    reading: str = "full"
    removal: str = "rerun"
    ranking_scores: torch.Tensor | None = None
    sentence_documents: list[int] | None = None
    answer_words: list[Span] | None = None
    word_leave_one_out: torch.Tensor | None = None
    newer_fields: dict[str, Any] = field(default_factory=dict, repr=False)
    word_credit: ClassVar[float] = WORD_CREDIT  # nats: `word_documents`' default

    @property
    def document_scores(self) -> torch.Tensor:
        """(rows, documents): each row's attribution summed over each document (label included)."""
        return self.explanation.aggregate(self.document_spans).scores

    @property
    def answer_document_scores(self) -> torch.Tensor:
        """(documents,): the whole answer's attribution to each document (the rows' sum: IG is linear in the target);
        with coarse to fine, the ranking's."""
        return self.document_scores.sum(0) if self.ranking_scores is None else self.ranking_scores

    @property
    def header_spans(self) -> list[Span]:
        """Each document's label ("Document 2 (Mount Fuji):"): its span before its first sentence, trailing white
        space left out ((start, start) for a layout without a label)."""
        text = self.explanation.text
        out = []
        for (start, end), spans in zip(self.document_spans, self.sentence_spans):
            out.append((start, start + len(text[start:spans[0][0] if spans else end].rstrip())))
        return out

    @property
    def header_scores(self) -> torch.Tensor:
        """(rows, documents): each document's label; with the sentence scores it adds up to the document's score."""
        return self._partition_scores()[0]

    @property
    def sentence_scores(self) -> list[torch.Tensor]:
        """For each document, (rows, its sentences). A token belongs to the sentence its first character falls in,
        white space before a sentence counting as the sentence's (a byte-level token " It" is the next sentence's
        first word), so label and sentences partition the document: they add up to `document_scores`."""
        return self._partition_scores()[1]

    def _partition_scores(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        parts = []  # per document: its label, then its sentences, each reaching back to where the previous part ended
        for (start, end), (_, label_end), spans in zip(self.document_spans, self.header_spans, self.sentence_spans):
            bounds = [start, label_end] + [b for _, b in spans[:-1]] + ([end] if spans else [])
            parts.append(list(zip(bounds, bounds[1:])))
        scores = self.explanation.aggregate([(a, b) for doc in parts for a, b in doc if b > a]).scores
        columns, zero = iter(scores.unbind(1)), scores.new_zeros(len(scores))
        values = [[next(columns) if b > a else zero for a, b in doc] for doc in parts]
        sentences = [torch.stack(v[1:], 1) if len(v) > 1 else scores.new_zeros(len(scores), 0) for v in values]
        return torch.stack([v[0] for v in values], 1), sentences

    @property
    def answer_sentence_scores(self) -> list[torch.Tensor]:
        """For each document, (its sentences,): the whole answer's attribution to each sentence."""
        return [s.sum(0) for s in self.sentence_scores]

    @property
    def other_score(self) -> float:
        """The whole answer's attribution to everything outside the documents (instructions, question, markup)."""
        return float(self.explanation.prompt_scores.sum() - self.answer_document_scores.sum())

    @property
    def ranking(self) -> list[int]:
        """Document indices, most responsible first."""
        return self.answer_document_scores.argsort(descending=True).tolist()

    @property
    def top_document(self) -> int:
        return self.ranking[0]

    def rows_of(self, sentence: int) -> list[int]:
        """The rows of the scores that make up one answer sentence."""
        if self.granularity == "token":
            return list(range(*self.answer_sentences[sentence]))
        if self.granularity == "sentence":
            return [sentence]
        return [0]

    def sentence_document_scores(self) -> torch.Tensor:
        """(answer sentences, documents); with granularity "answer", the one row of the whole answer."""
        doc = self.document_scores
        n = 1 if self.granularity == "answer" else len(self.answer_sentences)
        return torch.stack([doc[self.rows_of(s)].sum(0) for s in range(n)])

    @property
    def citations(self) -> list[Citation]:
        """For each answer sentence (one citation for the whole answer at granularity "answer"), the documents and
        sentences that carried it."""
        by_doc = self.sentence_document_scores()
        sentence_scores = self.sentence_scores
        out = []
        for s, scores in enumerate(by_doc):
            cited = cited_documents(scores)
            sentences = []
            for d, _ in cited:
                within = sentence_scores[d][self.rows_of(s)].sum(0)
                sentences += [(d, int(k), float(within[k])) for k, _ in cited_documents(within)]
            span = (self.answer_sentence_spans[0][0], self.answer_sentence_spans[-1][1]) if self.granularity == "answer" \
                else self.answer_sentence_spans[s]
            verdict = self.verdicts[s] if self.verdicts is not None and s < len(self.verdicts) else None
            out.append(Citation(self.explanation.text[span[0]:span[1]], span, cited, sentences, verdict))
        return out

    def credited_words(self, min_drop: float = WORD_CREDIT) -> list[int]:
        """Indices of the answer words that lose at least `min_drop` nats when one document alone is removed."""
        if self.word_leave_one_out is None or not self.answer_words:
            return []
        best = torch.nan_to_num(self.word_leave_one_out.float(), nan=float("-inf")).max(1).values
        return [w for w, drop in enumerate(best.tolist()) if drop >= min_drop]

    def word_documents(self, min_drop: float = WORD_CREDIT) -> list[tuple[str, int, float]]:
        """(word, document, nats) for each answer word, in answer order, that loses at least `min_drop` nats when
        one document alone is removed: the document whose removal costs it most. A word no single document carries
        (the model says it from the question, the answer so far or what it knows) is left out. Empty without
        `verify` (no removals ran)."""
        out = []
        for w in self.credited_words(min_drop):
            start, end = self.answer_words[w]
            drops = torch.nan_to_num(self.word_leave_one_out[w].float(), nan=float("-inf"))
            d = int(drops.argmax())
            out.append((self.explanation.text[start:end], d, float(drops[d])))
        return out

    def to_dataframe(self):
        """One row per (answer row, document): the row's text, the document, its score and its rank."""
        import pandas as pd

        scores = self.document_scores
        rows = []
        for r, label in enumerate(self.explanation.target_tokens):
            order = scores[r].argsort(descending=True).tolist()
            for d, document in enumerate(self.documents):
                rows.append({"row": r, "answer_part": label, "document": d, "document_id": document.id,
                             "title": document.title, "score": float(scores[r, d]), "rank": order.index(d) + 1})
        return pd.DataFrame(rows)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tensors as nested lists, NaN as null), in the format `rag.schema.RagExplanationFile`."""
        from .schema import FORMAT_VERSION, KIND

        skip = ("explanation", "shapley", "newer_fields")
        data = {key: _jsonable(value) for key, value in asdict(self).items() if key not in skip}
        data["explanation"] = self.explanation.to_dict()
        data["shapley"] = None if self.shapley is None else self.shapley.to_dict()
        data["kind"] = KIND
        data["format_version"] = FORMAT_VERSION
        return {**self.newer_fields, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RagExplanation":
        """A RAG explanation from `to_dict`'s format, validated (types, shapes, sizes, spans inside the text);
        InvalidInputError otherwise. A format-1 file (tables documents first) is read into today's layout; a file of
        a newer format than this package's is refused."""
        from ..schema import validated
        from .schema import KIND, RagExplanationFile

        if not isinstance(data, dict) or data.get("kind") != KIND:
            raise InvalidInputError("this is not an llm-attrib RAG explanation; load files written by "
                                    "RagExplanation.save().")
        file = validated(RagExplanationFile, data, "RagExplanation")
        explanation = Explanation.from_file(file.explanation)
        spans = lambda pairs: [tuple(p) for p in pairs]  # noqa: E731
        shapley = None
        if file.shapley is not None:
            shapley = DocumentShapley.from_dict(file.shapley.model_dump())
        return cls(
            question=file.question,
            documents=[Document(text=d.text, title=d.title, id=d.id) for d in file.documents],
            answer=file.answer,
            explanation=explanation,
            granularity=file.granularity,
            document_spans=spans(file.document_spans),
            sentence_spans=[spans(s) for s in file.sentence_spans],
            question_span=tuple(file.question_span),
            answer_sentences=spans(file.answer_sentences),
            answer_sentence_spans=spans(file.answer_sentence_spans),
            verdicts=None if file.verdicts is None else [
                Verdict(**{**v.model_dump(exclude=set(v.model_extra or {})), "thresholds": None if v.thresholds is None else tuple(v.thresholds)})
                for v in file.verdicts],
            leave_one_out=None if file.leave_one_out is None else torch.tensor(_none_to_nan(file.leave_one_out)),
            shapley=shapley,
            retrieval=file.retrieval,
            cost=file.cost,
            scope=file.scope,
            truncated=file.truncated,
            reading=file.reading,
            removal=file.removal,
            ranking_scores=None if file.ranking_scores is None else torch.tensor(file.ranking_scores),
            sentence_documents=file.sentence_documents,
            answer_words=None if file.answer_words is None else spans(file.answer_words),
            word_leave_one_out=None if file.word_leave_one_out is None else torch.tensor(
                _none_to_nan(file.word_leave_one_out)),
            newer_fields=dict(file.model_extra or {}),
        )

    def save(self, path: str | Path) -> None:
        """Strict JSON (NaN as null)."""
        from ..schema import write_json

        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "RagExplanation":
        """A RAG explanation saved by `save`, validated; InvalidInputError for anything else."""
        from ..schema import read_json

        return cls.from_dict(read_json(path, "RagExplanation"))

    def to_html(self, **kwargs: Any) -> str:
        """One self-contained HTML report (no external assets)."""
        from ..render.rag_html import render_rag_html

        return render_rag_html(self, **kwargs)

    def _repr_html_(self) -> str:
        """Jupyter's inline display: the report in an iframe."""
        from ..render.html import inline_html

        return inline_html(self.to_html(), "RAG attribution report", height=800)

    def __repr__(self) -> str:
        """A few lines a person reads: the question and answer, the top document, the verdicts."""
        exp = self.explanation
        n_docs = len(self.documents)
        lines = [f"RagExplanation: {_short(self.question, 60)} -> {_short(self.answer.strip(), 60)}",
                 f"  {exp.method} over {exp.space}{', reading the answer' * (self.reading == 'answer')}, "
                 f"{len(exp.target_tokens)} {self.granularity} row"
                 f"{'s' * (len(exp.target_tokens) != 1)}, {n_docs} document{'s' * (n_docs != 1)}"]
        if self.sentence_documents is not None:
            lines.append(f"  sentences of the top {len(self.sentence_documents)} documents only")
        if n_docs:
            top = self.top_document
            title = f" ({self.documents[top].title})" if self.documents[top].title else ""
            lines.append(f"  top document: {top + 1}{title} {float(self.answer_document_scores[top]):+.3g}")
        if self.verdicts:
            lines.append("  verdicts: " + ", ".join(
                v.label if v.calibrated and v.label != "uncalibrated" else f"uncalibrated (margin {v.margin:+.2f} nats)"
                for v in self.verdicts))
        if self.truncated:
            lines.append("  answer truncated (max_new_tokens reached)")
        return "\n".join(lines)


def cited_documents(scores: torch.Tensor, share: float = 0.5, limit: int = 3) -> list[tuple[int, float]]:
    """Indices with a positive score of at least `share` of the top one, highest first (at most `limit`)."""
    order = scores.argsort(descending=True).tolist()
    top = float(scores[order[0]]) if order else 0.0
    if top <= 0:
        return []
    return [(i, float(scores[i])) for i in order[:limit] if float(scores[i]) >= share * top]
