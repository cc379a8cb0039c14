"""A self-contained HTML report for a `RagExplanation`: which documents and sentences carried each part of an answer.

The page shows the question, the answer split into its rows (tokens, sentences or the whole answer), every document
as a card with its header and sentences shaded by their score for the selected rows, the citations with their
verdicts, the leave-one-out table and, when present, the retriever's view. Hovering an answer row previews it,
clicking pins it; the whole answer is selected when the page opens. The markup is the template
`templates/rag_report.html` (autoescaped), its style and script `rag_report.css` and `rag_report.js`; this module
only turns the result into plain values for them. Everything is inline: the page opens from disk with no network.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from ._colors import fmt_error, fmt_score, fmt_seconds, is_dark, score_rgb, short_model_name, visible
from .html import cost_line, finite_or_none
from .templating import render

if TYPE_CHECKING:
    from ..rag.explanation import RagExplanation

Span = tuple[int, int]

# The shared diverging scale, sampled at 0.01 steps of the normalised score in [-1, 1]: the page's JS looks colours
# up here instead of re-implementing the scale.
_LEVELS = 100
_VERDICT_COLORS = {"supported": "#1a7f37", "unsupported": "#cf222e", "uncertain": "#9a6700", "shared": "#bc4c00"}
_NEUTRAL = "#59636e"


def render_rag_html(result: "RagExplanation", title: str | None = None) -> str:
    """Render a RAG explanation as one self-contained HTML report (inline CSS and JS, no external assets).

    The report shows: the question, the answer and how it was explained (method, space, granularity, whether the
    integral converged and its worst completeness error, the cost, whether the answer was truncated); the answer
    split into its rows (hover to preview one, click to pin it, "whole answer" for the sum of all rows); each
    document, in prompt order, as a card with its rank and total score for the selection, its header ("Document 1
    (title):") and its sentences shaded by their score (red: supported the answer, blue: worked against it;
    optionally each token instead), so the shaded parts add up to the document's score; the citations of each
    answer sentence with the ablation verdict (an uncalibrated verdict as its margin in nats, in grey); the
    leave-one-out table; the retriever's view when the result has one.

    Args:
        result: the explanation to show (from `llm_attrib.rag.explain`).
        title: page title (default: "RAG attribution report").

    Returns:
        The HTML document as a string.
    """
    return render("rag_report.html", **rag_view(result, title))


def rag_view(result: "RagExplanation", title: str | None = None) -> dict[str, Any]:
    """The plain values the report template shows (strings, numbers, lists): nothing in it is markup."""
    row_spans = _row_spans(result)
    placed = [_place_document(result, d) for d in range(len(result.documents))]
    groups = [_token_groups(result, d, start) if start is not None else [] for d, start in enumerate(placed)]
    headers = _header_scores(result)  # (rows, documents)
    low, high = score_rgb(-1.0), score_rgb(1.0)
    return {
        "title": title or "RAG attribution report",
        **_header(result),
        "answer_runs": _answer_runs(result, row_spans),
        "what": {"token": "token", "sentence": "sentence", "answer": "whole answer"}.get(result.granularity, "row"),
        "sentence_buttons": len(result.answer_sentences) if result.granularity == "token"
        and len(result.answer_sentences) > 1 else 0,
        "scale": f"linear-gradient(to right, rgb{low}, #fff, rgb{high})",
        "cards": [_card(result, d, placed[d], groups[d], headers) for d in range(len(result.documents))],
        "scope": result.scope,
        "other_score": fmt_score(result.other_score),
        "citations": _citations(result),
        "thresholds": _thresholds(result),
        "hidden_removal": _hidden(result),
        "tables": [t for t in (_leave_one_out(result), _word_documents(result), _shapley(result)) if t is not None],
        "retrieval": _retrieval(result),
        "data": _data(result, row_spans, groups, headers),
    }


# ----------------------------------------------------------------------------------------------------------------
# Where things are in the explanation's text


def _row_spans(result: "RagExplanation") -> list[Span]:
    """Characters of each row of the scores in `explanation.text` (empty for a special token with no text)."""
    exp = result.explanation
    text = exp.text
    start = result.answer_sentence_spans[0][0] if result.answer_sentence_spans else len(text) - len(result.answer)
    if result.granularity == "sentence":
        return [tuple(s) for s in result.answer_sentence_spans]
    if result.granularity != "token":  # the whole answer
        return [(start, len(text))]
    spans, cursor = [], len(text) - len(result.answer)
    for r in range(len(exp.target_tokens)):
        j = exp.n_prompt_tokens + r
        if j < len(exp.input_offsets):
            a, b = exp.input_offsets[j]
            a = max(a, cursor)
            spans.append((a, b) if b > a else (cursor, cursor))
        else:  # the last target is no input: it runs to the end of the text
            rest = text[cursor:]
            a = cursor + len(rest) - len(rest.lstrip())
            spans.append((a, len(text)))
        cursor = max(cursor, spans[-1][1])
    return spans


def _place_document(result: "RagExplanation", d: int) -> int | None:
    """Where document d's text starts in `explanation.text`, or None when it cannot be found there."""
    text, doc = result.explanation.text, result.documents[d].text
    sentences = result.sentence_spans[d] if d < len(result.sentence_spans) else []
    if sentences:  # sentences are trimmed: the first starts at the text's first non-space character
        start = sentences[0][0] - (len(doc) - len(doc.lstrip()))
        if start >= 0 and text[start:start + len(doc)] == doc:
            return start
    if d < len(result.document_spans):
        a, b = result.document_spans[d]
        found = text.rfind(doc, a, b)
        if found >= 0:
            return found
    return None


def _token_groups(result: "RagExplanation", d: int, start: int) -> list[tuple[int, int, list[int]]]:
    """The prompt tokens inside document d's text (which starts at `start`) as (start, end, input indices), clipped
    to the text; tokens whose characters overlap (byte pieces of one character) share a group."""
    exp = result.explanation
    end = start + len(result.documents[d].text)
    groups: list[tuple[int, int, list[int]]] = []
    for j, (a, b) in enumerate(exp.input_offsets[: exp.n_prompt_tokens]):
        a, b = max(a, start), min(b, end)
        if b <= a:
            continue
        if groups and a < groups[-1][1]:
            ga, gb, js = groups[-1]
            groups[-1] = (ga, max(gb, b), js + [j])
        else:
            groups.append((a, b, [j]))
    return groups


def _header_scores(result: "RagExplanation") -> torch.Tensor:
    """(rows, documents): what each document's span holds outside its sentences (its header "Document 1 (title):"
    and the gaps between sentences), so that header and sentences add up to the document's score."""
    documents = result.document_scores.detach().float().cpu().nan_to_num(0.0)
    sentences = [s.detach().float().cpu().nan_to_num(0.0).sum(1) for s in result.sentence_scores]
    if not sentences:
        return documents
    return documents - torch.stack(sentences, 1)


def _header_text(result: "RagExplanation", d: int, start: int | None) -> str:
    """The document's header as the prompt shows it ("Document 1 (Mount Fuji):"), or its name when not found."""
    doc = result.documents[d]
    if start is not None and d < len(result.document_spans):
        shown = " ".join(result.explanation.text[result.document_spans[d][0]:start].split())
        if shown:
            return shown
    return f"Document {d + 1}" + (f" ({doc.title})" if doc.title else "")


# ----------------------------------------------------------------------------------------------------------------
# Sections


def _style(value: float) -> str:
    """The inline style of a shaded element: the scale's colour for a normalised score, white ink when dark."""
    value = value if math.isfinite(value) else 0.0
    return f"background-color:rgb{score_rgb(value)}" + (";color:#fff" if is_dark(value) else "")


def _worst_error(result: "RagExplanation") -> float:
    errors = result.explanation.completeness_error.detach().float().reshape(-1).tolist()
    finite = [v for v in errors if math.isfinite(v)]
    return max(finite) if finite else math.nan


def _header(result: "RagExplanation") -> dict[str, Any]:
    exp = result.explanation
    n_rows = len(exp.target_tokens)
    params = []
    for key in ("reading", "n_steps", "quadrature", "baseline", "layers"):
        value = exp.params.get(key)
        if value is not None:
            params.append((key, value if not isinstance(value, list) or len(value) <= 6 else f"{min(value)}..{max(value)}"))
    if _hidden(result):
        params.append(("removal", result.removal))
    tolerance = exp.params.get("tolerance")
    limit = f" (tolerance {fmt_error(float(tolerance))})" if isinstance(tolerance, (int, float)) else ""
    return {
        "question": result.question,
        "answer": result.answer.strip(),
        "method": exp.method,
        "space": exp.space,
        "granularity": result.granularity,
        "n_rows": n_rows,
        "params": params,
        "converged": exp.converged,
        "worst": fmt_error(_worst_error(result)) + limit,
        "cost": cost_line(result.cost or exp.cost),
        "seconds": fmt_seconds((result.cost or exp.cost or {}).get("seconds", 0.0)),
        "model": exp.model_name,
        "model_short": _short(short_model_name(exp.model_name), 40),
        "notes": [str(n) for n in getattr(exp, "notes", None) or []],
        "truncated": bool(result.truncated),
    }


def _short(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else "…" + text[-(n - 1):] if "/" in text else text[: n - 1] + "…"


def _answer_runs(result: "RagExplanation", row_spans: list[Span]) -> list[dict[str, Any]]:
    """The answer as runs: plain text between rows, and one run per row (a special token shows its name)."""
    exp = result.explanation
    text = exp.text
    errors = exp.completeness_error.detach().float().reshape(-1).tolist()
    out, cursor = [], row_spans[0][0] if row_spans else len(text)
    for r, (a, b) in enumerate(row_spans):
        a = max(a, cursor)
        if a > cursor:
            out.append({"row": None, "text": text[cursor:a]})
        prob = exp.target_probs[r] if r < len(exp.target_probs) else math.nan
        error = errors[r] if r < len(errors) else math.nan
        tip = f"row {r + 1}: p = {prob:.3f} · completeness error {fmt_error(error)}"
        if b > a:
            out.append({"row": r, "text": text[a:b], "tip": tip, "special": False})
            cursor = b
        else:  # a special token without text
            out.append({"row": r, "text": visible(exp.target_tokens[r]), "tip": tip, "special": True})
    if cursor < len(text):
        out.append({"row": None, "text": text[cursor:]})
    return out


def _card(result: "RagExplanation", d: int, start: int | None, groups, headers: torch.Tensor) -> dict[str, Any]:
    doc = result.documents[d]
    scores = result.answer_document_scores
    rank = result.ranking.index(d) + 1
    header = float(headers[:, d].sum())
    peak = _sentence_peak(result, headers)
    return {
        "d": d,
        "rank": rank,
        "top": rank == 1 and float(scores[d]) > 0,
        "name": f"Document {d + 1}" + (f": {doc.title}" if doc.title else ""),
        "id": doc.id,
        "score": fmt_score(float(scores[d])),
        "header": _header_text(result, d, start),
        "header_style": _style(header / peak),
        "header_score": fmt_score(header),
        "text": doc.text if start is None else None,
        "runs": None if start is None else _document_runs(result, d, start, groups, peak),
    }


def _sentence_peak(result: "RagExplanation", headers: torch.Tensor) -> float:
    """The shared scale of a card's parts: the largest |score| of any sentence or header for the whole answer."""
    every = [v for scores in result.answer_sentence_scores for v in scores.tolist()] + headers.sum(0).tolist()
    return max((abs(v) for v in every if math.isfinite(v)), default=0.0) or 1.0


def _document_runs(result: "RagExplanation", d: int, start: int, groups, peak: float) -> list[dict[str, Any]]:
    """The document's text as runs: plain text, tokens (data-k) and sentences (data-s) holding token runs."""
    text = result.explanation.text
    end = start + len(result.documents[d].text)
    sentence_scores = result.answer_sentence_scores[d].tolist()

    def tokens(lo: int, hi: int) -> list[dict[str, Any]]:
        out, pos = [], lo
        for k, (a, b, _) in enumerate(groups):
            if b <= pos or a >= hi:
                continue
            a, b = max(a, pos), min(b, hi)
            if a > pos:
                out.append({"k": None, "text": text[pos:a]})
            out.append({"k": k, "text": text[a:b]})
            pos = b
        if pos < hi:
            out.append({"k": None, "text": text[pos:hi]})
        return out

    out, pos = [], start
    for s, (a, b) in enumerate(result.sentence_spans[d]):
        a, b = max(a, pos), min(b, end)
        if b <= a:
            continue
        out += [{"s": None, **run} for run in tokens(pos, a)]
        out.append({"s": s, "style": _style(sentence_scores[s] / peak),
                    "title": f"sentence score {fmt_score(sentence_scores[s])}", "tokens": tokens(a, b)})
        pos = b
    out += [{"s": None, **run} for run in tokens(pos, end)]
    return out


def _sentence_text(result: "RagExplanation", d: int, s: int, limit: int = 110) -> str:
    a, b = result.sentence_spans[d][s]
    text = " ".join(result.explanation.text[a:b].split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _verdict(verdict) -> dict[str, Any] | None:
    """A verdict for display; an uncalibrated one keeps a neutral colour: its margin, not a label, is the result."""
    if verdict is None:
        return None
    calibrated = getattr(verdict, "calibrated", True) and verdict.label != "uncalibrated"
    return {
        "label": verdict.label if calibrated else "uncalibrated",
        "calibrated": calibrated,
        "color": _VERDICT_COLORS.get(verdict.label, _NEUTRAL) if calibrated else _NEUTRAL,
        "drop_cited": f"{verdict.drop_cited:.2f}",
        "drop_other": f"{verdict.drop_other:.2f}",
        "margin": f"{verdict.margin:+.2f}",
        "drop_all": None if verdict.drop_all is None else f"{verdict.drop_all:.2f}",
    }


def _citations(result: "RagExplanation") -> list[dict[str, Any]]:
    citations = result.citations
    if not citations:
        return []
    n_sentences = max(len(result.answer_sentence_spans), 1)
    rows = []
    for s in range(n_sentences):
        citation = citations[min(s, len(citations) - 1)]
        span = result.answer_sentence_spans[s] if s < len(result.answer_sentence_spans) else citation.span
        verdict = result.verdicts[s] if result.verdicts is not None and s < len(result.verdicts) else None
        rows.append({
            "key": "all" if result.granularity == "answer" else f"s{s}",
            "sentence": result.explanation.text[span[0]:span[1]],
            "documents": [(f"Document {d + 1}" + (f": {result.documents[d].title}" if result.documents[d].title else ""),
                           fmt_score(score)) for d, score in citation.documents],
            "whole": len(citations) == 1 and n_sentences > 1,
            "sentences": [(f"D{d + 1}.{k + 1}", _sentence_text(result, d, k), fmt_score(score))
                          for d, k, score in citation.sentences],
            "verdict": _verdict(verdict),
        })
    return rows


def _thresholds(result: "RagExplanation") -> dict[str, Any] | None:
    if not result.verdicts:
        return None
    calibrated = all(v.calibrated and v.thresholds is not None for v in result.verdicts)
    if not calibrated:  # margins only: no thresholds to state
        return {"low": None, "high": None, "calibrated": False}
    low, high = result.verdicts[0].thresholds
    return {"low": f"{low:g}", "high": f"{high:g}", "calibrated": True}


def _hidden(result: "RagExplanation") -> bool:
    """Whether the documents were hidden from the question and answer (removal="hidden"), not removed."""
    return getattr(result, "removal", "rerun") == "hidden"


def _leave_one_out(result: "RagExplanation") -> dict[str, Any] | None:
    return _document_table(
        result, result.leave_one_out, "Leave one out (nats)", "leave-one-out", "loo", "removed",
        "How much each answer sentence's log-probability drops when that document alone is "
        + ("hidden from the question and answer (removal='hidden')" if _hidden(result) else "removed from the prompt")
        + " (red: the sentence needed the document; blue: it became more likely without it).")


def _word_documents(result: "RagExplanation") -> dict[str, Any] | None:
    """The answer words some document carried (leave-one-out per word), a column each, in answer order."""
    columns = result.credited_words()
    if not columns:
        return None
    text = result.explanation.text
    heads = [(text[a:b], text[a:b]) for a, b in (result.answer_words[w] for w in columns)]
    least = result.word_credit
    return _document_table(
        result, result.word_leave_one_out[columns], "Answer words: which document carried each (nats)", "words",
        "loo words", "removed",
        f"How much each answer word's log-probability drops when that document alone is removed, for the words that "
        f"lose at least {least:g} nats without some document (from the verdicts' own removals); a word no single "
        "document carried (the model says it from the question, the answer so far or what it knows) is left out.",
        heads=heads)


def _shapley(result: "RagExplanation") -> dict[str, Any] | None:
    shapley = result.shapley
    if shapley is None:
        return None
    how = (f"exact, from all {shapley.n_subsets} subsets of documents" if shapley.exact else
           f"estimated from {shapley.n_orders} sampled orders over {shapley.n_subsets} subsets, standard error up to "
           f"{float(shapley.stderr.max()):.2f} nats")
    return _document_table(
        result, shapley.values, "Shapley values (nats)", "shapley", "loo shapley", "document",
        "Each document's share of each answer sentence's log-probability, averaged over every order in which the "
        f"documents could be added ({how}); a column sums to the sentence's log-probability with every document "
        "minus without any.")


def _document_table(result: "RagExplanation", table, heading: str, table_id: str, css: str, corner: str,
                    note: str, heads: list[tuple[str, str]] | None = None) -> dict[str, Any] | None:
    """An (answer sentences, documents) table of nats, shown a row per document, shaded by sign and size; `heads`
    (title, label) name other columns than the answer sentences."""
    if table is None or not isinstance(table, torch.Tensor) or table.dim() != 2 or table.numel() == 0:
        return None
    values = table.detach().float().cpu()
    finite = values[torch.isfinite(values)]
    peak = float(finite.abs().max()) if finite.numel() else 1.0
    peak = peak or 1.0
    n_sentences, n_documents = values.shape
    if heads is None:
        heads = []
        for s in range(n_sentences):
            span = result.answer_sentence_spans[s] if s < len(result.answer_sentence_spans) else (0, 0)
            sentence = " ".join(result.explanation.text[span[0]:span[1]].split())
            heads.append((sentence, f"{s + 1}: {_short(sentence, 40)}"))
    rows = []
    for d in range(n_documents):
        doc = result.documents[d] if d < len(result.documents) else None
        name = f"Document {d + 1}" + (f": {doc.title}" if doc is not None and doc.title else "")
        cells = []
        for s in range(n_sentences):
            v = float(values[s, d])
            rgb = score_rgb(v / peak if math.isfinite(v) else 0.0)
            ink = ";color:#fff" if math.isfinite(v) and is_dark(v / peak) else ""
            cells.append((f"background:rgb{rgb}{ink}", f"{v:+.2f}" if math.isfinite(v) else "n/a"))
        rows.append({"name": name, "short": _short(name, 40), "cells": cells})
    return {"heading": heading, "id": table_id, "css": css, "corner": corner, "heads": heads, "rows": rows,
            "note": note}


def _retrieval(result: "RagExplanation") -> list[dict[str, Any]]:
    entries = result.retrieval
    if not isinstance(entries, list) or not entries:
        return []
    by_text = {doc.text: d for d, doc in enumerate(result.documents)}
    shown = [e for e in entries if isinstance(e, dict)]
    shown.sort(key=lambda e: e.get("rank") if isinstance(e.get("rank"), int) else 1 << 30)
    blocks = []
    for entry in shown:
        q_scores, d_scores = _floats(entry.get("query_scores")), _floats(entry.get("document_scores"))
        d = by_text.get(entry.get("document")) if isinstance(entry.get("document"), str) else None
        name = f"Document {d + 1}" + (f": {result.documents[d].title}" if result.documents[d].title else "") \
            if d is not None else "a document"
        facts = []
        for key, label in (("similarity", "similarity"), ("baseline_similarity", "baseline")):
            if isinstance(entry.get(key), (int, float)):
                facts.append(f"{label} {float(entry[key]):.3f}")
        if isinstance(entry.get("completeness_error"), (int, float)):
            facts.append(f"completeness error {fmt_error(float(entry['completeness_error']))}")
        lines = []
        for side, scores in (("query", q_scores), ("document", d_scores)):
            tokens = entry.get(f"{side}_tokens")
            if not isinstance(tokens, list) or not tokens:
                continue
            finite = [v for v in scores if math.isfinite(v)]
            if _held(entry, side, finite):  # the path kept this text real: it carries nothing by construction
                text = entry[side] if isinstance(entry.get(side), str) else " ".join(map(str, tokens))
                lines.append({"label": side, "held": text})
                continue
            peak = max((abs(v) for v in finite), default=0.0) or 1.0
            lines.append({"label": side, "held": None, "runs": _retrieval_tokens(entry, side, tokens, scores, peak),
                          "total": fmt_score(sum(finite)) if finite else None})
        blocks.append({"rank": entry["rank"] if isinstance(entry.get("rank"), int) else None, "name": name,
                       "facts": facts, "unconverged": entry.get("converged") is False, "lines": lines})
    return blocks


def _held(entry: dict, side: str, scores: list[float]) -> bool:
    """Whether the retriever's path kept `side` ("query" or "document") at its real embeddings."""
    params = entry.get("params")
    move = params.get("move") if isinstance(params, dict) else None
    if move in ("query", "document", "both"):
        return move not in (side, "both")
    return bool(scores) and all(v == 0 for v in scores)


def _floats(values: Any) -> list[float]:
    if not isinstance(values, list):
        return []
    return [float(v) if isinstance(v, (int, float)) else math.nan for v in values]


def _retrieval_tokens(entry: dict, side: str, tokens: list, scores: list[float], peak: float) -> list[dict[str, Any]]:
    """A retriever input as runs: its text with tokens shaded (by their offsets when given, else token by token)."""
    text = entry.get(side) if isinstance(entry.get(side), str) else None
    offsets = entry.get(f"{side}_offsets")
    usable = (text is not None and isinstance(offsets, list) and len(offsets) == len(tokens)
              and all(isinstance(o, (list, tuple)) and len(o) == 2 for o in offsets))

    def span(j: int, shown: str, special: bool = False) -> dict[str, Any]:
        v = scores[j] if j < len(scores) else math.nan
        return {"text": shown, "special": special, "style": _style(v / peak if math.isfinite(v) else 0.0),
                "title": f"{visible(str(tokens[j]))} {fmt_score(v)}"}

    out, pos = [], 0
    for j, token in enumerate(tokens):
        if not usable:
            out += [span(j, str(token)), {"text": " ", "style": None}]
            continue
        a, b = (int(x) for x in offsets[j])
        a = max(a, pos)
        if b <= a:
            v = scores[j] if j < len(scores) else math.nan
            if math.isfinite(v) and v != 0:  # special tokens carry nothing by construction; show any that do
                out.append(span(j, visible(str(token)), special=True))
            continue
        if a > pos:
            out.append({"text": text[pos:a], "style": None})
        out.append(span(j, text[a:b]))
        pos = b
    if usable and pos < len(text):
        out.append({"text": text[pos:], "style": None})
    return out


# ----------------------------------------------------------------------------------------------------------------
# The data the page's JS reads


def _data(result: "RagExplanation", row_spans: list[Span], groups, headers: torch.Tensor) -> dict[str, Any]:
    exp = result.explanation
    n_rows = len(exp.target_tokens)
    scores = exp.scores.detach().float().cpu()
    documents = result.document_scores.detach().float().cpu()
    other = (exp.prompt_scores.detach().float().cpu().nan_to_num(0.0).sum(1) - documents.nan_to_num(0.0).sum(1))
    tokens = []
    for d, doc_groups in enumerate(groups):
        if not doc_groups:
            tokens.append([])
            continue
        columns = torch.stack([scores[:, js].nan_to_num(0.0).sum(1) for _, _, js in doc_groups], 1)  # (rows, K)
        tokens.append(_matrix(columns))
    n_sentences = 1 if result.granularity == "answer" else len(result.answer_sentences)
    cited: dict[str, list[str]] = {}
    for s, citation in enumerate(result.citations):
        key = "all" if result.granularity == "answer" else f"s{s}"
        cited[key] = [f"{d}:{k}" for d, k, _ in citation.sentences]
    if result.granularity != "answer":
        cited["all"] = sorted({m for marks in cited.values() for m in marks})
    text = exp.text
    return {
        "levels": _LEVELS,
        "palette": [f"rgb{score_rgb(k / _LEVELS)}" for k in range(-_LEVELS, _LEVELS + 1)],
        "dark": [is_dark(k / _LEVELS) for k in range(-_LEVELS, _LEVELS + 1)],
        "question": result.question,
        "answer": result.answer,
        "granularity": result.granularity,
        "documents": [{"text": doc.text, "title": doc.title, "id": doc.id} for doc in result.documents],
        "rows": [{"label": text[a:b].strip() or visible(exp.target_tokens[r]),
                  "prob": finite_or_none(float(exp.target_probs[r])) if r < len(exp.target_probs) else None}
                 for r, (a, b) in enumerate(row_spans[:n_rows])],
        "sentenceRows": [result.rows_of(s) for s in range(n_sentences)],
        "docScores": _matrix(documents),
        "headScores": _matrix(headers),
        "sentScores": [_matrix(s) for s in result.sentence_scores],
        "tokScores": tokens,
        "otherScores": [finite_or_none(float(v)) for v in other.tolist()],
        "citedSentences": cited,
        "restHeld": result.scope == "documents",
    }


def _matrix(values: torch.Tensor) -> list[list[float | None]]:
    return [[finite_or_none(float(v)) for v in row] for row in values.detach().float().cpu().tolist()]
