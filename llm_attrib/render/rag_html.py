"""A self-contained HTML report for a `RagExplanation`: which documents and sentences carried each part of an answer.

The page shows the question, the answer split into its rows (tokens, sentences or the whole answer), every document
as a card with its sentences shaded by their score for the selected rows, the citations with their verdicts, the
leave-one-out table and, when present, the retriever's view. Hovering an answer row previews it, clicking pins it;
the whole answer is selected when the page opens. Everything is inline (CSS, JS, one JSON blob); the page opens
from disk with no network access.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from ._colors import fmt_error, fmt_score, is_dark, score_rgb, visible
from .html import _e, _finite_or_none, _json_for_script

if TYPE_CHECKING:
    from ..rag.explanation import RagExplanation

Span = tuple[int, int]

# The shared diverging scale, sampled at 0.01 steps of the normalised score in [-1, 1]: the page's JS looks colours
# up here instead of re-implementing the scale.
_LEVELS = 100
_VERDICT_COLORS = {"supported": "#1a7f37", "unsupported": "#cf222e", "uncertain": "#9a6700"}

_CSS = """
:root { --ink: #1f2328; --muted: #59636e; --line: #d0d7de; --bg: #f6f8fa; --sel: #0969da; }
* { box-sizing: border-box; }
body { font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); margin: 0;
       background: #fff; }
main { max-width: 1200px; margin: 0 auto; padding: 16px 24px 40px; }
h1 { font-size: 19px; margin: 0 0 8px; }
h2 { font-size: 12px; text-transform: uppercase; letter-spacing: .06em; color: var(--muted); margin: 24px 0 8px; }
.qa { display: grid; grid-template-columns: 84px minmax(0, 1fr); gap: 2px 10px; margin-bottom: 8px; }
.qa .k { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .05em; padding-top: 2px; }
.qa .v { font-size: 15px; white-space: pre-wrap; word-break: break-word; }
.chip { display: inline-block; background: var(--bg); border: 1px solid var(--line); border-radius: 10px;
        padding: 0 8px; margin: 2px 4px 2px 0; font-size: 12px; line-height: 20px; }
.chip b { font-weight: 600; }
.chip.ok { color: #1a7f37; border-color: #8fd19e; background: #eefbf1; }
.banner { margin: 8px 0; padding: 8px 12px; border: 2px solid #cf222e; border-radius: 6px; background: #fff0ee;
          color: #82071e; }
.bar-sticky { position: sticky; top: 0; z-index: 5; background: #fff; border-bottom: 1px solid var(--line);
              padding: 8px 0 8px; margin: 0 0 4px; }
.answer { font-size: 16px; line-height: 2.1; white-space: pre-wrap; word-break: break-word; max-height: 30vh; overflow: auto; }
.row { cursor: pointer; border: 1px solid var(--line); border-radius: 4px; padding: 2px 3px; background: #fff;
       box-decoration-break: clone; -webkit-box-decoration-break: clone; }
.row:hover { border-color: #57606a; background: #f3f4f6; }
.row.sel { border-color: var(--sel); background: #ddf4ff; box-shadow: 0 0 0 1px var(--sel); }
.row.special { font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; color: var(--muted); border-style: dashed; }
.controls { display: flex; flex-wrap: wrap; align-items: center; gap: 6px 10px; margin-top: 4px; font-size: 13px; }
button { font: inherit; font-size: 13px; cursor: pointer; border: 1px solid var(--line); border-radius: 6px;
         background: var(--bg); padding: 2px 10px; color: var(--ink); }
button:hover { border-color: #57606a; }
button.sel { border-color: var(--sel); background: #ddf4ff; box-shadow: 0 0 0 1px var(--sel); }
.status { color: var(--muted); }
.status b { color: var(--ink); }
.legend { display: inline-flex; align-items: center; gap: 6px; color: var(--muted); font-size: 12px; }
.legend .scale { width: 150px; height: 10px; border: 1px solid var(--line); }
.mode label { margin-right: 8px; color: var(--muted); cursor: pointer; }
.docs { display: flex; flex-direction: column; gap: 10px; }
.card { border: 1px solid var(--line); border-radius: 8px; background: #fff; overflow: hidden; }
.card.top { border-color: #b2182b; box-shadow: 0 0 0 1px #b2182b33; }
.card-head { display: flex; align-items: center; gap: 10px; padding: 6px 12px; background: var(--bg);
             border-bottom: 1px solid var(--line); }
.rank { display: inline-block; min-width: 34px; text-align: center; border-radius: 12px; padding: 0 8px;
        font-weight: 700; font-size: 13px; line-height: 22px; background: #e6e9ed; color: var(--ink); }
.card.top .rank { background: #b2182b; color: #fff; }
.card-title { font-weight: 600; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; min-width: 0; flex: 1; }
.card-title small { font-weight: 400; color: var(--muted); margin-left: 6px; }
.score { font: 13px ui-monospace, SFMono-Regular, Menlo, monospace; white-space: nowrap; min-width: 72px; text-align: right; }
.meter { width: 120px; height: 8px; background: #eef0f2; border-radius: 4px; position: relative; flex: none; }
.meter span { position: absolute; top: 0; bottom: 0; border-radius: 4px; }
.doc-text { padding: 10px 14px; font-size: 15px; line-height: 1.9; white-space: pre-wrap; word-break: break-word; }
.sent { border-radius: 3px; padding: 2px 1px; box-decoration-break: clone; -webkit-box-decoration-break: clone; }
.tok { border-radius: 2px; }
.sent.cited { text-decoration: underline; text-decoration-color: #57606a; text-underline-offset: 5px;
              text-decoration-thickness: 1.5px; }
.other { color: var(--muted); font-size: 12px; margin-top: 6px; }
table.t { border-collapse: collapse; width: 100%; font-size: 13px; }
table.t th { text-align: left; font-weight: 600; color: var(--muted); font-size: 12px; border-bottom: 1px solid var(--line);
             padding: 4px 8px; }
table.t { table-layout: fixed; }
table.t td { border-bottom: 1px solid #eaeef2; padding: 6px 8px; vertical-align: top; }
table.t td > div { margin-bottom: 2px; }
.num.inl { margin-left: 4px; }
table.t tr.pick { cursor: pointer; }
table.t tr.pick:hover td { background: #f6f8fa; }
table.t tr.sel td { background: #ddf4ff; }
.verdict { display: inline-block; border-radius: 10px; padding: 0 9px; font-weight: 600; font-size: 12px; line-height: 20px;
           color: #fff; }
.num { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; text-align: right; white-space: nowrap; }
.small { color: var(--muted); font-size: 12px; }
.quote { color: var(--ink); }
table.loo { border-collapse: separate; border-spacing: 2px; font-size: 13px; }
table.loo th { font-weight: 600; color: var(--muted); font-size: 12px; padding: 2px 8px; text-align: left; max-width: 280px;
               overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
table.loo td { padding: 3px 10px; border-radius: 3px; min-width: 70px; }
.retr { border: 1px solid var(--line); border-radius: 8px; padding: 8px 12px; margin-bottom: 8px; }
.retr .line { margin: 4px 0; line-height: 1.9; word-break: break-word; }
.retr .lab { display: inline-block; width: 76px; color: var(--muted); font-size: 12px; }
.rtok { border-radius: 2px; padding: 1px 0; }
.rtok.mk { font: 11px ui-monospace, SFMono-Regular, Menlo, monospace; color: var(--muted); border: 1px dashed #aaa;
           padding: 0 2px; margin: 0 2px; }
.note { color: var(--muted); font-size: 12px; margin-top: 6px; }
"""

_JS = """
(function () {
  var D = JSON.parse(document.getElementById('rag-data').textContent);
  var R = D.docScores.length, ND = D.documents.length;
  var pinned = {rows: allRows(), label: 'whole answer', key: 'all'}, mode = 'sentence';
  function allRows() { var r = []; for (var i = 0; i < R; i++) r.push(i); return r; }
  function color(v) {
    if (v === null || !isFinite(v)) v = 0;
    var k = Math.round((Math.max(-1, Math.min(1, v)) + 1) * D.levels);
    return [D.palette[k], D.dark[k]];
  }
  function fmt(v) {
    if (v === null || !isFinite(v)) return 'nan';
    var a = Math.abs(v), s = (a !== 0 && (a < 1e-3 || a >= 1e5)) ? v.toExponential(2) : String(Number(v.toPrecision(3)));
    return (v >= 0 ? '+' : '') + s;
  }
  function sumRows(matrix, rows) {
    var out = matrix[rows[0]].map(function () { return 0; });
    rows.forEach(function (r) { matrix[r].forEach(function (v, i) { out[i] += (v === null ? 0 : v); }); });
    return out;
  }
  function peak(lists) {
    var p = 0;
    lists.forEach(function (l) { l.forEach(function (v) { p = Math.max(p, Math.abs(v)); }); });
    return p > 0 ? p : 1;
  }
  function shade(el, v, p, title) {
    var c = color(v / p);
    el.style.backgroundColor = c[0];
    el.style.color = c[1] ? '#fff' : '';
    el.title = title;
  }
  var sents = document.querySelectorAll('.sent'), toks = document.querySelectorAll('.doc-text .tok');
  function show(sel) {
    var rows = sel.rows;
    var docs = sumRows(D.docScores, rows);
    var order = docs.map(function (v, i) { return i; }).sort(function (a, b) { return docs[b] - docs[a]; });
    var top = Math.max.apply(null, docs.map(Math.abs)) || 1;
    order.forEach(function (d, k) {
      var card = document.getElementById('doc-' + d);
      card.querySelector('.rank').textContent = '#' + (k + 1);
      card.classList.toggle('top', k === 0 && docs[d] > 0);
      card.querySelector('.score').textContent = fmt(docs[d]);
      var bar = card.querySelector('.meter span'), w = 50 * Math.abs(docs[d]) / top;
      bar.style.left = (docs[d] >= 0 ? 50 : 50 - w) + '%';
      bar.style.width = w + '%';
      bar.style.background = color(docs[d] >= 0 ? 0.85 : -0.85)[0];
    });
    var sent = D.sentScores.map(function (m) { return sumRows(m, rows); });
    var sp = peak(sent);
    sents.forEach(function (el) {
      var v = sent[+el.dataset.d][+el.dataset.s];
      el.classList.toggle('cited', D.citedSentences[sel.key] !== undefined &&
                          D.citedSentences[sel.key].indexOf(el.dataset.d + ':' + el.dataset.s) >= 0);
      if (mode === 'sentence') shade(el, v, sp, 'sentence score ' + fmt(v));
      else { el.style.backgroundColor = ''; el.style.color = ''; el.title = 'sentence score ' + fmt(v); }
    });
    if (mode === 'token') {
      var tok = D.tokScores.map(function (m) { return m.length ? sumRows(m, rows) : []; });
      var tp = peak(tok);
      toks.forEach(function (el) {
        var v = tok[+el.dataset.d][+el.dataset.k];
        shade(el, v, tp, 'token score ' + fmt(v));
      });
    } else {
      toks.forEach(function (el) { el.style.backgroundColor = ''; el.style.color = ''; el.title = ''; });
    }
    document.querySelectorAll('.row').forEach(function (el) {
      el.classList.toggle('sel', rows.indexOf(+el.dataset.r) >= 0 && sel.key !== 'all');
    });
    document.querySelectorAll('button[data-key]').forEach(function (b) { b.classList.toggle('sel', b.dataset.key === sel.key); });
    document.querySelectorAll('tr[data-key]').forEach(function (tr) { tr.classList.toggle('sel', tr.dataset.key === sel.key); });
    var total = docs.reduce(function (a, b) { return a + b; }, 0);
    var other = rows.reduce(function (a, r) { return a + (D.otherScores[r] || 0); }, 0);
    document.getElementById('status').innerHTML = 'showing <b>' + esc(sel.label) + '</b> · documents ' + fmt(total) +
      (D.restHeld ? '' : ' · outside the documents ' + fmt(other)) + (sel === pinned ? '' : ' · <i>preview</i>');
  }
  function esc(s) { var d = document.createElement('div'); d.textContent = s; return d.innerHTML; }
  function pick(el) {
    var key = el.dataset.key;
    if (key === 'all') return {rows: allRows(), label: 'whole answer', key: 'all'};
    if (key.charAt(0) === 's') {
      var s = +key.slice(1);
      return {rows: D.sentenceRows[s], label: 'answer sentence ' + (s + 1), key: key};
    }
    var r = +key.slice(1);
    return {rows: [r], label: '\u201c' + D.rows[r].label + '\u201d', key: key};
  }
  document.querySelectorAll('[data-key]').forEach(function (el) {
    el.addEventListener('mouseenter', function () { show(pick(el)); });
    el.addEventListener('mouseleave', function () { show(pinned); });
    el.addEventListener('click', function () { pinned = pick(el); show(pinned); });
    el.addEventListener('keydown', function (ev) {
      if (ev.key === 'Enter' || ev.key === ' ') { pinned = pick(el); show(pinned); ev.preventDefault(); }
    });
  });
  document.querySelectorAll('input[name=shade]').forEach(function (el) {
    el.addEventListener('change', function () { mode = el.value; show(pinned); });
  });
  document.addEventListener('keydown', function (ev) {
    if (ev.key !== 'ArrowRight' && ev.key !== 'ArrowLeft') return;
    var cur = pinned.key.charAt(0) === 'r' ? +pinned.key.slice(1) : -1;
    var next = ev.key === 'ArrowRight' ? cur + 1 : cur - 1;
    if (next < 0 || next >= R) return;
    pinned = pick({dataset: {key: 'r' + next}});
    show(pinned);
    ev.preventDefault();
  });
  show(pinned);
})();
"""


def render_rag_html(result: "RagExplanation", title: str | None = None) -> str:
    """Render a RAG explanation as one self-contained HTML report (inline CSS and JS, no external assets).

    The report shows: the question, the answer and how it was explained (method, space, granularity, whether the
    integral converged and its worst completeness error, the cost); the answer split into its rows (hover to
    preview one, click to pin it, "whole answer" for the sum of all rows); each document, in prompt order, as a card
    with its rank and total score for the selection and its sentences shaded by their score (red: supported the
    answer, blue: worked against it; optionally each token instead); the citations of each answer sentence with
    the ablation verdict; the leave-one-out table; the retriever's view when the result has one.

    Args:
        result: the explanation to show (from `llm_attrib.rag.explain`).
        title: page title (default: "RAG attribution report").

    Returns:
        The HTML document as a string.
    """
    title = title or "RAG attribution report"
    row_spans = _row_spans(result)
    placed = [_place_document(result, d) for d in range(len(result.documents))]
    groups = [_token_groups(result, d, start) if start is not None else [] for d, start in enumerate(placed)]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        f"<h1>{_e(title)}</h1>",
        _header(result),
        _answer_bar(result, row_spans),
        f"<h2>Documents, in prompt order ({len(result.documents)})</h2>",
        '<div class="docs">'
        + "".join(_card(result, d, placed[d], groups[d]) for d in range(len(result.documents)))
        + "</div>",
        _rest_note(result),
        _citations(result),
        _leave_one_out(result),
        _shapley(result),
        _retrieval(result),
        f'<script type="application/json" id="rag-data">{_json_for_script(_data(result, row_spans, groups))}</script>',
        f"<script>{_JS}</script>",
        "</main></body></html>",
    ]
    return "\n".join(part for part in parts if part)


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


# ----------------------------------------------------------------------------------------------------------------
# Sections


def _worst_error(result: "RagExplanation") -> float:
    errors = result.explanation.completeness_error.detach().float().reshape(-1).tolist()
    finite = [v for v in errors if math.isfinite(v)]
    return max(finite) if finite else math.nan


def _header(result: "RagExplanation") -> str:
    exp = result.explanation
    qa = (
        '<div class="qa">'
        f'<div class="k">Question</div><div class="v">{_e(result.question)}</div>'
        f'<div class="k">Answer</div><div class="v">{_e(result.answer.strip())}</div>'
        "</div>"
    )
    n_rows = len(exp.target_tokens)
    chips = [f"method <b>{_e(exp.method)}</b>", f"space <b>{_e(exp.space)}</b>",
             f"granularity <b>{_e(result.granularity)}</b> ({n_rows} row{'s' if n_rows != 1 else ''})"]
    for key in ("n_steps", "quadrature", "baseline", "layers"):
        value = exp.params.get(key)
        if value is not None:
            shown = value if not isinstance(value, list) or len(value) <= 6 else f"{min(value)}..{max(value)}"
            chips.append(f"{_e(key)} <b>{_e(shown)}</b>")
    worst = _worst_error(result)
    tolerance = exp.params.get("tolerance")
    limit = f" (tolerance {fmt_error(float(tolerance))})" if isinstance(tolerance, (int, float)) else ""
    html_chips = "".join(f'<span class="chip">{c}</span>' for c in chips)
    banner = ""
    if exp.converged is True:
        html_chips += (f'<span class="chip ok">converged · worst completeness error '
                       f"{_e(fmt_error(worst))}{_e(limit)}</span>")
    elif exp.converged is False:
        banner = (
            f'<div class="banner" id="not-converged"><b>Not converged.</b> The worst completeness error is '
            f"{_e(fmt_error(worst))}{_e(limit)}: the scores are not a converged integral, so rankings and "
            "citations may change. Rerun with more steps (n_steps=) or a looser tolerance.</div>"
        )
    else:
        html_chips += f'<span class="chip">no completeness check for method {_e(exp.method)}</span>'
    cost = result.cost or exp.cost
    if cost:
        html_chips += (f'<span class="chip">cost {_seconds(float(cost.get("seconds", 0.0)))} · '
                       f'{int(cost.get("n_forward", 0))} forwards · {int(cost.get("n_backward", 0))} backwards</span>')
    if exp.model_name:
        html_chips += (f'<span class="chip" title="{_e(exp.model_name)}">model '
                       f"<b>{_e(_short(exp.model_name, 40))}</b></span>")
    return qa + f"<div>{html_chips}</div>" + banner


def _seconds(value: float) -> str:
    return f"{value:.2f} s" if value < 10 else f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min"


def _short(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else "…" + text[-(n - 1):] if "/" in text else text[: n - 1] + "…"


def _answer_bar(result: "RagExplanation", row_spans: list[Span]) -> str:
    exp = result.explanation
    text = exp.text
    errors = exp.completeness_error.detach().float().reshape(-1).tolist()
    out, cursor = [], row_spans[0][0] if row_spans else len(text)
    for r, (a, b) in enumerate(row_spans):
        a = max(a, cursor)
        if a > cursor:
            out.append(_e(text[cursor:a]))
        prob = exp.target_probs[r] if r < len(exp.target_probs) else math.nan
        error = errors[r] if r < len(errors) else math.nan
        tip = f"row {r + 1}: p = {prob:.3f} · completeness error {fmt_error(error)}"
        attrs = f'data-key="r{r}" data-r="{r}" tabindex="0" role="button" title="{_e(tip)}"'
        if b > a:
            out.append(f'<span class="row" {attrs}>{_e(text[a:b])}</span>')
            cursor = b
        else:  # a special token without text
            out.append(f'<span class="row special" {attrs}>{_e(visible(exp.target_tokens[r]))}</span>')
    if cursor < len(text):
        out.append(_e(text[cursor:]))
    buttons = ['<button data-key="all" class="sel" title="the sum of all rows">Whole answer</button>']
    if result.granularity == "token" and len(result.answer_sentences) > 1:
        buttons += [f'<button data-key="s{s}" title="the rows of answer sentence {s + 1}">Sentence {s + 1}</button>'
                    for s in range(len(result.answer_sentences))]
    low, high = score_rgb(-1.0), score_rgb(1.0)
    legend = (f'<span class="legend">against<span class="scale" style="background:linear-gradient(to right, '
              f'rgb{low}, #fff, rgb{high})"></span>supported</span>')
    mode = ('<span class="mode">shade <label><input type="radio" name="shade" value="sentence" checked> sentences</label>'
            '<label><input type="radio" name="shade" value="token"> tokens</label></span>')
    what = {"token": "token", "sentence": "sentence", "answer": "whole answer"}.get(result.granularity, "row")
    return (
        '<div class="bar-sticky">'
        f'<h2 style="margin-top:0">Answer, one row per {_e(what)}: hover to preview, click to pin</h2>'
        f'<div class="answer" id="answer">{"".join(out)}</div>'
        f'<div class="controls">{"".join(buttons)}<span class="status" id="status"></span>'
        f'<span style="flex:1"></span>{legend}{mode}</div>'
        "</div>"
    )


def _rest_note(result: "RagExplanation") -> str:
    if result.scope == "documents":
        return ('<div class="other">Only the documents moved along the integration path; the instructions and the '
                "question kept their real values, so each score is what a document contributed given the question.</div>")
    return (f'<div class="other">The rest of the prompt (instructions, question, template markup) carried '
            f"{_e(fmt_score(result.other_score))} of the whole answer's attribution.</div>")


def _card(result: "RagExplanation", d: int, start: int | None, groups) -> str:
    doc = result.documents[d]
    scores = result.answer_document_scores
    rank = result.ranking.index(d) + 1
    name = f"Document {d + 1}" + (f": {doc.title}" if doc.title else "")
    ident = f"<small>id {_e(doc.id)}</small>" if doc.id else ""
    top = " top" if rank == 1 and float(scores[d]) > 0 else ""
    head = (
        f'<div class="card-head"><span class="rank" title="rank for the selection">#{rank}</span>'
        f'<span class="card-title" title="{_e(name)}">{_e(name)}{ident}</span>'
        '<span class="meter" title="score relative to the top document"><span></span></span>'
        f'<span class="score" title="total attribution for the selection">{_e(fmt_score(float(scores[d])))}</span></div>'
    )
    if start is None:
        body = (f'<div class="doc-text">{_e(doc.text)}</div>'
                '<div class="note" style="padding:0 14px 8px">This text was not found in the prompt; it is shown unshaded.</div>')
    else:
        body = f'<div class="doc-text">{_document_text(result, d, start, groups)}</div>'
    return f'<div class="card{top}" id="doc-{d}" data-d="{d}">{head}{body}</div>'


def _document_text(result: "RagExplanation", d: int, start: int, groups) -> str:
    """The document's text with one span per sentence (data-s) holding one span per token group (data-k)."""
    text = result.explanation.text
    end = start + len(result.documents[d].text)
    sentence_scores = result.answer_sentence_scores[d].tolist()
    every = [v for scores in result.answer_sentence_scores for v in scores.tolist() if math.isfinite(v)]
    peak = max((abs(v) for v in every), default=0.0) or 1.0

    def emit(lo: int, hi: int) -> str:
        out, pos = [], lo
        for k, (a, b, _) in enumerate(groups):
            if b <= pos or a >= hi:
                continue
            a, b = max(a, pos), min(b, hi)
            if a > pos:
                out.append(_e(text[pos:a]))
            out.append(f'<span class="tok" data-d="{d}" data-k="{k}">{_e(text[a:b])}</span>')
            pos = b
        if pos < hi:
            out.append(_e(text[pos:hi]))
        return "".join(out)

    out, pos = [], start
    for s, (a, b) in enumerate(result.sentence_spans[d]):
        a, b = max(a, pos), min(b, end)
        if b <= a:
            continue
        out.append(emit(pos, a))
        value = sentence_scores[s] / peak
        style = f"background-color:rgb{score_rgb(value)}" + (";color:#fff" if is_dark(value) else "")
        out.append(f'<span class="sent" data-d="{d}" data-s="{s}" style="{style}" '
                   f'title="sentence score {_e(fmt_score(sentence_scores[s]))}">{emit(a, b)}</span>')
        pos = b
    out.append(emit(pos, end))
    return "".join(out)


def _sentence_text(result: "RagExplanation", d: int, s: int, limit: int = 110) -> str:
    a, b = result.sentence_spans[d][s]
    text = " ".join(result.explanation.text[a:b].split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _verdict_html(verdict) -> str:
    if verdict is None:
        return '<span class="small">not checked</span>'
    color = _VERDICT_COLORS.get(verdict.label, "#59636e")
    return (
        f'<span class="verdict" style="background:{color}">{_e(verdict.label)}</span>'
        f'<div class="small">drop cited <span class="num">{verdict.drop_cited:.2f}</span> · drop other '
        f'<span class="num">{verdict.drop_other:.2f}</span> · margin <b class="num">{verdict.margin:+.2f}</b> nats'
        + ('' if verdict.drop_all is None else
           f' · without any document <span class="num">{verdict.drop_all:.2f}</span>') + '</div>'
    )


def _citations(result: "RagExplanation") -> str:
    citations = result.citations
    if not citations:
        return ""
    n_sentences = max(len(result.answer_sentence_spans), 1)
    rows = []
    for s in range(n_sentences):
        citation = citations[min(s, len(citations) - 1)]
        span = result.answer_sentence_spans[s] if s < len(result.answer_sentence_spans) else citation.span
        sentence = result.explanation.text[span[0]:span[1]]
        verdict = result.verdicts[s] if result.verdicts is not None and s < len(result.verdicts) else None
        whole = len(citations) == 1 and n_sentences > 1
        docs = "".join(
            f'<div>Document {d + 1}{": " + _e(result.documents[d].title) if result.documents[d].title else ""} '
            f'<span class="num inl">{_e(fmt_score(score))}</span></div>'
            for d, score in citation.documents
        ) or '<span class="small">none: no document has a positive score</span>'
        if whole:
            docs += '<div class="small">(cited by the whole answer)</div>'
        sentences = "".join(
            f'<div><span class="small">D{d + 1}.{k + 1}</span> <span class="quote">{_e(_sentence_text(result, d, k))}</span> '
            f'<span class="num inl">{_e(fmt_score(score))}</span></div>'
            for d, k, score in citation.sentences
        ) or '<span class="small">none</span>'
        key = "all" if result.granularity == "answer" else f"s{s}"
        rows.append(
            f'<tr class="pick" data-key="{key}" tabindex="0"><td>{s + 1}</td><td class="quote">{_e(sentence)}</td>'
            f"<td>{docs}</td><td>{sentences}</td><td>{_verdict_html(verdict)}</td></tr>"
        )
    thresholds = ""
    if result.verdicts and result.verdicts[0].thresholds is not None:  # None: uncalibrated, margins only
        low, high = result.verdicts[0].thresholds
        thresholds = (
            f" A verdict removes the cited documents and compares what the sentence loses (drop cited) with what it "
            f"loses when one other document is removed (drop other, averaged): margin ≥ {high:g} nats is "
            f"<b>supported</b>, below {low:g} <b>unsupported</b>, between <b>uncertain</b>. \"Without any document\" is "
            "what it loses when all are removed: near zero, the model says it from what it knows, and no document "
            "carried it."
        )
    return (
        "<h2>Citations and verdicts</h2>"
        '<table class="t" id="citations"><colgroup><col style="width:32px"><col style="width:22%"><col style="width:20%">'
        '<col><col style="width:21%"></colgroup><thead><tr><th>#</th><th>answer sentence</th><th>cited documents</th>'
        "<th>cited sentences</th><th>verdict</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
        f'<div class="note">Click a row to select its answer sentence. Documents with at least half the top '
        f"score are cited.{thresholds}</div>"
    )


def _leave_one_out(result: "RagExplanation") -> str:
    return _document_table(
        result, result.leave_one_out, "Leave one out (nats)", "leave-one-out", "loo", "removed",
        "How much each answer sentence's log-probability drops when that document alone is removed from the prompt "
        "(red: the sentence needed the document; blue: it became more likely without it).")


def _shapley(result: "RagExplanation") -> str:
    shapley = result.shapley
    if shapley is None:
        return ""
    how = (f"exact, from all {shapley.n_subsets} subsets of documents" if shapley.exact else
           f"estimated from {shapley.n_orders} sampled orders over {shapley.n_subsets} subsets, standard error up to "
           f"{float(shapley.stderr.max()):.2f} nats")
    return _document_table(
        result, shapley.values, "Shapley values (nats)", "shapley", "loo shapley", "document",
        "Each document's share of each answer sentence's log-probability, averaged over every order in which the "
        f"documents could be added ({how}); a column sums to the sentence's log-probability with every document "
        "minus without any.")


def _document_table(result: "RagExplanation", table, heading: str, table_id: str, css: str, corner: str,
                    note: str) -> str:
    """A (documents, answer sentences) table of nats, shaded by sign and size."""
    if table is None or not isinstance(table, torch.Tensor) or table.dim() != 2 or table.numel() == 0:
        return ""
    values = table.detach().float().cpu()
    finite = values[torch.isfinite(values)]
    peak = float(finite.abs().max()) if finite.numel() else 1.0
    peak = peak or 1.0
    heads = []
    for s in range(values.shape[1]):
        span = result.answer_sentence_spans[s] if s < len(result.answer_sentence_spans) else (0, 0)
        sentence = " ".join(result.explanation.text[span[0]:span[1]].split())
        heads.append(f'<th title="{_e(sentence)}">{s + 1}: {_e(_short(sentence, 40))}</th>')
    rows = []
    for d in range(values.shape[0]):
        doc = result.documents[d] if d < len(result.documents) else None
        name = f"Document {d + 1}" + (f": {doc.title}" if doc is not None and doc.title else "")
        cells = []
        for s in range(values.shape[1]):
            v = float(values[d, s])
            rgb = score_rgb(v / peak if math.isfinite(v) else 0.0)
            ink = ";color:#fff" if math.isfinite(v) and is_dark(v / peak) else ""
            shown = f"{v:+.2f}" if math.isfinite(v) else "n/a"
            cells.append(f'<td class="num" style="background:rgb{rgb}{ink}">{shown}</td>')
        rows.append(f'<tr><th title="{_e(name)}">{_e(_short(name, 40))}</th>{"".join(cells)}</tr>')
    return (
        f"<h2>{_e(heading)}</h2>"
        f'<table class="{css}" id="{table_id}"><thead><tr><th>{corner}</th>{"".join(heads)}</tr></thead>'
        f'<tbody>{"".join(rows)}</tbody></table>'
        f'<div class="note">{_e(note)}</div>'
    )


def _retrieval(result: "RagExplanation") -> str:
    entries = result.retrieval
    if not isinstance(entries, list) or not entries:
        return ""
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
        if isinstance(entry.get("rank"), int):
            facts.append(f'<span class="rank">#{entry["rank"]}</span>')
        facts.append(f"<b>{_e(name)}</b>")
        for key, label in (("similarity", "similarity"), ("baseline_similarity", "baseline")):
            if isinstance(entry.get(key), (int, float)):
                facts.append(f'{label} <span class="num">{float(entry[key]):.3f}</span>')
        if isinstance(entry.get("completeness_error"), (int, float)):
            facts.append(f"completeness error {_e(fmt_error(float(entry['completeness_error'])))}")
        if entry.get("converged") is False:
            facts.append('<b style="color:#cf222e">not converged</b>')
        lines = []
        for side, label, scores in (("query", "query", q_scores), ("document", "document", d_scores)):
            tokens = entry.get(f"{side}_tokens")
            if not isinstance(tokens, list) or not tokens:
                continue
            finite = [v for v in scores if math.isfinite(v)]
            if _held(entry, side, finite):  # the path kept this text real: it carries nothing by construction
                shown = _e(entry[side]) if isinstance(entry.get(side), str) else _e(" ".join(map(str, tokens)))
                lines.append(f'<div class="line"><span class="lab">{label}</span>{shown} '
                             '<span class="small">(kept at its real value along the path)</span></div>')
                continue
            peak = max((abs(v) for v in finite), default=0.0) or 1.0
            total = f' <span class="small">(sum <span class="num">{_e(fmt_score(sum(finite)))}</span>)</span>' \
                if finite else ""
            lines.append(f'<div class="line"><span class="lab">{label}</span>'
                         f'{_retrieval_tokens(entry, side, tokens, scores, peak)}{total}</div>')
        blocks.append(f'<div class="retr">{" · ".join(facts)}{"".join(lines)}</div>')
    return (
        "<h2>Retriever: why each document was retrieved</h2>" + "".join(blocks)
        + '<div class="note">Each token\'s attribution to the query-document similarity (red raised it, blue lowered '
          "it); each text is shaded on its own scale (its largest |score|), its sum in brackets.</div>"
    )


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


def _retrieval_tokens(entry: dict, side: str, tokens: list, scores: list[float], peak: float) -> str:
    """A retriever input as text with its tokens shaded (by their offsets when given, else token by token)."""
    text = entry.get(side) if isinstance(entry.get(side), str) else None
    offsets = entry.get(f"{side}_offsets")
    usable = (text is not None and isinstance(offsets, list) and len(offsets) == len(tokens)
              and all(isinstance(o, (list, tuple)) and len(o) == 2 for o in offsets))

    def span(j: int, shown: str, special: bool = False) -> str:
        v = scores[j] if j < len(scores) else math.nan
        value = v / peak if math.isfinite(v) else 0.0
        style = f"background-color:rgb{score_rgb(value)}" + (";color:#fff" if is_dark(value) else "")
        return (f'<span class="rtok{" mk" if special else ""}" style="{style}" '
                f'title="{_e(visible(str(tokens[j])))} {_e(fmt_score(v))}">{_e(shown)}</span>')

    out, pos = [], 0
    for j, token in enumerate(tokens):
        if not usable:
            out.append(span(j, str(token)) + " ")
            continue
        a, b = (int(x) for x in offsets[j])
        a = max(a, pos)
        if b <= a:
            v = scores[j] if j < len(scores) else math.nan
            if math.isfinite(v) and v != 0:  # special tokens carry nothing by construction; show any that do
                out.append(span(j, visible(str(token)), special=True))
            continue
        if a > pos:
            out.append(_e(text[pos:a]))
        out.append(span(j, text[a:b]))
        pos = b
    if usable and pos < len(text):
        out.append(_e(text[pos:]))
    return "".join(out)


# ----------------------------------------------------------------------------------------------------------------
# The data the page's JS reads


def _data(result: "RagExplanation", row_spans: list[Span], groups) -> dict[str, Any]:
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
    citations = result.citations
    cited: dict[str, list[str]] = {}
    for s, citation in enumerate(citations):
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
                  "prob": _finite_or_none(float(exp.target_probs[r])) if r < len(exp.target_probs) else None}
                 for r, (a, b) in enumerate(row_spans[:n_rows])],
        "sentenceRows": [result.rows_of(s) for s in range(n_sentences)],
        "docScores": _matrix(documents),
        "sentScores": [_matrix(s) for s in result.sentence_scores],
        "tokScores": tokens,
        "otherScores": [_finite_or_none(float(v)) for v in other.tolist()],
        "citedSentences": cited,
        "restHeld": result.scope == "documents",
    }


def _matrix(values: torch.Tensor) -> list[list[float | None]]:
    return [[_finite_or_none(float(v)) for v in row] for row in values.detach().float().cpu().tolist()]
