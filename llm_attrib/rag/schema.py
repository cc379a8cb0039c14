"""The file a `RagExplanation` is saved in: its declared schema, checked on load (see `llm_attrib.schema`)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from ..schema import ExplanationFile, Pair, StrictModel, array_shape, check_spans

KIND = "llm-attrib rag explanation"
FORMAT_VERSION = 2  # 2: the leave-one-out and Shapley tables are (answer sentences, documents), as the scores are


class DocumentFile(StrictModel):
    text: str
    title: str | None = None
    id: str | None = None


class VerdictFile(StrictModel):
    label: str
    drop_cited: float
    drop_other: float
    margin: float
    thresholds: list[float] | None = Field(default=None, min_length=2, max_length=2)  # None: uncalibrated
    drop_all: float | None = None
    calibrated: bool = True


class ShapleyFile(StrictModel):
    """(answer sentences, documents) tables, and (answer sentences,) log-probabilities with every and no document."""

    values: list[list[float]]
    full: list[float]
    empty: list[float]
    exact: bool
    stderr: list[list[float]]
    n_subsets: int = Field(ge=0)
    n_orders: int = Field(ge=0)


class RagExplanationFile(StrictModel):
    """The JSON of a `RagExplanation` (see its attributes), format version 2.

    Version 1 kept the leave-one-out and Shapley tables documents first, (documents, answer sentences), against
    the scores' (rows, documents); a version-1 file is read into today's layout (its tables transposed)."""

    FORMAT_VERSION: ClassVar[int] = FORMAT_VERSION
    kind: Literal[KIND]
    format_version: int = Field(default=FORMAT_VERSION, ge=1)
    question: str
    documents: list[DocumentFile] = Field(min_length=1, max_length=10_000)
    answer: str
    explanation: ExplanationFile
    granularity: Literal["token", "sentence", "answer"]
    document_spans: list[Pair]
    sentence_spans: list[list[Pair]]
    question_span: Pair
    answer_sentences: list[Pair] = Field(min_length=1)
    answer_sentence_spans: list[Pair]
    verdicts: list[VerdictFile] | None = None
    leave_one_out: list[list[float | None]] | None = None
    shapley: ShapleyFile | None = None
    retrieval: list[dict[str, Any]] | None = None
    cost: dict[str, bool | float | None] = {}
    scope: Literal["documents", "prompt"] = "documents"
    truncated: bool = False
    reading: Literal["full", "answer"] = "full"
    removal: Literal["rerun", "hidden"] = "rerun"
    ranking_scores: list[float] | None = None
    sentence_documents: list[int] | None = None
    answer_words: list[Pair] | None = None
    word_leave_one_out: list[list[float | None]] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "RagExplanationFile":
        exp = self.explanation
        if exp.format_version > ExplanationFile.FORMAT_VERSION:
            raise ValueError(f"its explanation is in format version {exp.format_version}, from a newer llm-attrib "
                             f"(this one reads up to {ExplanationFile.FORMAT_VERSION}): upgrade llm-attrib")
        n_docs, n_sentences, n_rows = len(self.documents), len(self.answer_sentences), len(exp.target_tokens)
        length = len(exp.text)
        for name in ("document_spans", "sentence_spans"):
            if len(getattr(self, name)) != n_docs:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {n_docs} documents")
        check_spans(self.document_spans, length, "document_spans")
        for spans in self.sentence_spans:
            check_spans(spans, length, "sentence_spans")
        check_spans([self.question_span], length, "question_span")
        check_spans(self.answer_sentence_spans, length, "answer_sentence_spans")
        if len(self.answer_sentence_spans) != n_sentences:
            raise ValueError(f"answer_sentence_spans has {len(self.answer_sentence_spans)} entries for {n_sentences} "
                             "answer sentences")
        expected = {"token": len(exp.target_ids), "sentence": n_sentences, "answer": 1}[self.granularity]
        if n_rows != expected:
            raise ValueError(f"granularity {self.granularity!r} needs {expected} rows of scores, the explanation has "
                             f"{n_rows}")
        bounds = [0] + [b for _, b in self.answer_sentences]
        if [a for a, _ in self.answer_sentences] != bounds[:-1] or bounds[-1] != len(exp.target_ids) or any(
                b <= a for a, b in self.answer_sentences):
            raise ValueError(f"answer_sentences must split the {len(exp.target_ids)} answer tokens into consecutive "
                             "runs")
        if self.verdicts is not None and len(self.verdicts) != n_sentences:
            raise ValueError(f"verdicts has {len(self.verdicts)} entries for {n_sentences} answer sentences")
        if self.ranking_scores is not None and len(self.ranking_scores) != n_docs:
            raise ValueError(f"ranking_scores has {len(self.ranking_scores)} entries for {n_docs} documents")
        if self.sentence_documents is not None and not all(0 <= d < n_docs for d in self.sentence_documents):
            raise ValueError(f"sentence_documents must be document indices below {n_docs}")
        if (self.answer_words is None) != (self.word_leave_one_out is None):
            raise ValueError("answer_words and word_leave_one_out come together (both or neither)")
        if self.answer_words is not None:
            check_spans(self.answer_words, length, "answer_words")
            words, table = len(self.answer_words), self.word_leave_one_out
            shape = array_shape(table, 2, "word_leave_one_out") if words else [len(table)]
            if shape != ([words, n_docs] if words else [0]):
                raise ValueError(f"word_leave_one_out must be (answer words {words}, documents {n_docs})")
        tables = {"leave_one_out": self.leave_one_out}
        if self.shapley is not None:
            tables.update({"shapley.values": self.shapley.values, "shapley.stderr": self.shapley.stderr})
            if len(self.shapley.full) != n_sentences or len(self.shapley.empty) != n_sentences:
                raise ValueError(f"shapley.full and shapley.empty must have one value per answer sentence "
                                 f"({n_sentences})")
        documents_first = self.format_version == 1  # version 1's layout, read into today's below
        shape = [n_docs, n_sentences] if documents_first else [n_sentences, n_docs]
        layout = (f"documents {n_docs}, answer sentences {n_sentences}" if documents_first
                  else f"answer sentences {n_sentences}, documents {n_docs}")
        for name, table in tables.items():
            if table is not None and array_shape(table, 2, name) != shape:
                raise ValueError(f"{name} must be ({layout})")
        if documents_first:
            if self.leave_one_out is not None:
                self.leave_one_out = _transposed(self.leave_one_out)
            if self.shapley is not None:
                self.shapley.values = _transposed(self.shapley.values)
                self.shapley.stderr = _transposed(self.shapley.stderr)
            self.format_version = FORMAT_VERSION
        return self


def _transposed(table: list[list]) -> list[list]:
    return [list(column) for column in zip(*table)]
