"""A self-contained HTML page for an `Explanation`: header, answer tokens, highlighted prompt, heatmap matrix.

Everything is inline (CSS, JS, data); the page opens from disk with no network access.
"""

from __future__ import annotations

import html
import json
import math
import re
from typing import TYPE_CHECKING

from ..errors import InvalidInputError
from ._colors import fmt_error, fmt_score, normalise_rows, score_rgb, visible

if TYPE_CHECKING:
    from ..explanation import Explanation

_CSS = """
:root { --cell: 18px; --ink: #1f2328; --muted: #656d76; --line: #d0d7de; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       margin: 0; padding: 20px 28px; background: #fff; }
h1 { font-size: 20px; margin: 0 0 6px; }
h2 { font-size: 13px; text-transform: uppercase; letter-spacing: .05em; color: var(--muted); margin: 22px 0 8px; }
.meta { color: var(--muted); margin-bottom: 6px; }
.meta b { color: var(--ink); font-weight: 600; }
.chip { display: inline-block; background: var(--bg); border: 1px solid var(--line); border-radius: 10px;
        padding: 0 8px; margin: 2px 4px 2px 0; font: 12px/18px ui-monospace, SFMono-Regular, Menlo, monospace; }
.legend { display: flex; align-items: center; gap: 8px; color: var(--muted); font-size: 12px; margin-top: 8px; }
.legend .bar { width: 180px; height: 10px; border: 1px solid var(--line);
               background: linear-gradient(to right, rgb(33,102,172), #fff, rgb(178,24,43)); }
.targets { display: flex; flex-wrap: wrap; gap: 6px; }
.tgt { cursor: pointer; border: 1px solid var(--line); border-radius: 6px; padding: 3px 8px; background: #fff;
       font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 13px; text-align: center; }
.tgt small { display: block; color: var(--muted); font-size: 10px; font-family: system-ui, sans-serif; }
.tgt:hover { border-color: #888; }
.tgt.sel { border-color: #0969da; box-shadow: 0 0 0 2px #0969da55; }
.panel { display: grid; grid-template-columns: minmax(0, 1fr) 260px; gap: 18px; align-items: start; }
.text { white-space: pre-wrap; word-break: break-word; font: 14px/1.9 ui-monospace, SFMono-Regular, Menlo, monospace;
        border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; background: #fff; max-height: 420px; overflow: auto; }
.text .tok { border-radius: 3px; padding: 1px 0; }
.text .special { font-size: 11px; border: 1px dashed #999; border-radius: 3px; padding: 0 3px; margin: 0 2px; color: var(--muted); }
.text .answer { text-decoration: underline dotted #999; text-underline-offset: 4px; }
.text .focus { outline: 2px solid #0969da; outline-offset: 1px; background: #ddf4ff !important; color: var(--ink) !important; }
.text .later { color: #b5b5b5; }
.side { border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; background: var(--bg); font-size: 13px; }
.side table { border-collapse: collapse; width: 100%; }
.side td { padding: 2px 4px; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
.side td.num { text-align: right; }
.side .big { font-size: 18px; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
.scroll { display: inline-block; max-width: 100%; vertical-align: top; overflow: auto; max-height: 70vh; border: 1px solid var(--line); border-radius: 6px; }
table.matrix { border-collapse: separate; border-spacing: 0; font-size: 11px; }
.matrix th, .matrix td { padding: 0; }
.matrix thead th { position: sticky; top: 0; background: #fff; z-index: 2; vertical-align: bottom;
                   border-bottom: 1px solid var(--line); }
.matrix thead th.col { width: var(--cell); min-width: var(--cell); max-width: var(--cell); height: 92px;
                       font-weight: 400; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
.matrix thead th.col div { writing-mode: vertical-rl; transform: rotate(180deg); white-space: nowrap;
                           overflow: hidden; text-overflow: ellipsis; max-height: 88px; margin: 0 auto; line-height: var(--cell); }
.matrix .stick { position: sticky; background: #fff; z-index: 1; border-right: 1px solid var(--line);
                 padding: 0 6px; white-space: nowrap; }
.matrix tbody th.stick { text-align: left; font-weight: 400; }
.matrix thead .stick { z-index: 3; text-align: left; color: var(--muted); font-weight: 600; }
.matrix .c0 { left: 0; width: 130px; min-width: 130px; max-width: 130px; overflow: hidden; text-overflow: ellipsis;
              font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
.matrix .c1 { left: 130px; width: 56px; min-width: 56px; text-align: right; }
.matrix .c2 { left: 186px; width: 64px; min-width: 64px; text-align: right; }
.matrix td.cell { width: var(--cell); min-width: var(--cell); height: var(--cell); border-right: 1px solid #fff;
                  border-bottom: 1px solid #fff; cursor: pointer; }
.matrix td.na { background: repeating-linear-gradient(45deg, #f3f3f3, #f3f3f3 3px, #e6e6e6 3px, #e6e6e6 5px); }
.matrix .split { border-left: 2px solid #555 !important; }
.matrix tbody tr { cursor: pointer; }
.matrix tbody tr:hover .stick { background: #f0f6ff; }
.matrix tbody tr.sel .stick { background: #ddf4ff; font-weight: 600; }
.matrix tbody tr.sel td.cell { border-top: 1px solid #0969da; border-bottom: 1px solid #0969da; }
.matrix th.hot { background: #ddf4ff; }
.ws { color: #aab2bb; font-weight: 400; }
.side table.heads { width: auto; border-collapse: separate; border-spacing: 1px; }
.side table.heads td.hc { width: 14px; height: 14px; padding: 0; border: 1px solid #e3e3e3; }
.side table.heads td.lab { font-size: 10px; color: var(--muted); padding: 0 4px 0 0; }
.note { color: var(--muted); font-size: 12px; margin-top: 6px; }
"""

_JS = """
(function () {
  var D = JSON.parse(document.getElementById('llm-attrib-data').textContent);
  function rgb(v) {
    if (!isFinite(v)) v = 0;
    v = Math.max(-1, Math.min(1, v));
    var e = v > 0 ? [178, 24, 43] : [33, 102, 172], a = Math.abs(v);
    return 'rgb(' + e.map(function (c) { return Math.round(255 + (c - 255) * a); }).join(',') + ')';
  }
  function fmt(v) {
    if (v === null || !isFinite(v)) return 'nan';
    var a = Math.abs(v), s = (a !== 0 && (a < 1e-3 || a >= 1e5)) ? v.toExponential(2) : String(Number(v.toPrecision(3)));
    return (v >= 0 ? '+' : '') + s;
  }
  function esc(s) { var d = document.createElement('div'); d.textContent = s; return d.innerHTML; }
  function tok(s) { return esc(s).replace(/([\u2423\u21b5\u2192\u240d\u2205])/g, '<span class="ws">$1</span>'); }
  var toks = document.querySelectorAll('#text .tok');
  var chips = document.querySelectorAll('.tgt');
  var rows = document.querySelectorAll('.matrix tbody tr');
  var T = D.targets.length;
  function select(t) {
    if (t < 0 || t >= T) return;
    D.sel = t;
    var norm = D.norm[t];
    toks.forEach(function (el) {
      var j = +el.dataset.j;
      el.classList.remove('focus', 'later');
      if (D.lm && j >= D.nPrompt + t) {
        el.style.background = ''; el.style.color = '';
        el.classList.add(j === D.nPrompt + t ? 'focus' : 'later');
        return;
      }
      var v = norm[j];
      el.style.background = rgb(v);
      el.style.color = Math.abs(v) > 0.55 ? '#fff' : '';
      el.title = D.inputs[j] + '  ' + fmt(D.raw[t][j]);
    });
    var last = document.getElementById('last-target');
    if (last) last.classList.toggle('focus', D.lm && t === T - 1);
    chips.forEach(function (c) { c.classList.toggle('sel', +c.dataset.t === t); });
    rows.forEach(function (r) { r.classList.toggle('sel', +r.dataset.t === t); });
    var tg = D.targets[t];
    document.getElementById('sel-token').innerHTML = tok(tg.token);
    document.getElementById('sel-prob').textContent = tg.prob;
    document.getElementById('sel-err').textContent = tg.err;
    var limit = D.lm ? Math.min(D.nPrompt + t, D.inputs.length) : D.inputs.length;
    var idx = [];
    for (var j = 0; j < limit; j++) if (isFinite(D.raw[t][j])) idx.push(j);
    idx.sort(function (a, b) { return D.raw[t][b] - D.raw[t][a]; });
    var html = '';
    idx.slice(0, D.topK).forEach(function (j) {
      html += '<tr><td>' + tok(D.inputs[j]) + ' <span class="ws">#' + j + '</span></td><td class="num" style="background:' + rgb(norm[j]) +
              (Math.abs(norm[j]) > 0.55 ? ';color:#fff' : '') + '">' + fmt(D.raw[t][j]) + '</td></tr>';
    });
    document.getElementById('sel-top').innerHTML = html;
    if (D.heads) {
      var H = D.heads[t], peak = 1e-12, out = '';
      H.forEach(function (row) { row.forEach(function (v) { peak = Math.max(peak, Math.abs(v)); }); });
      H.forEach(function (row, l) {
        out += '<tr><td class="lab">L' + l + '</td>';
        row.forEach(function (v, h) {
          out += '<td class="hc" style="background:' + rgb(v / peak) + '" title="layer ' + l + ' head ' + h + ': ' + fmt(v) + '"></td>';
        });
        out += '</tr>';
      });
      document.getElementById('sel-heads').innerHTML = out;
    }
  }
  chips.forEach(function (c) { c.addEventListener('click', function () { select(+c.dataset.t); }); });
  rows.forEach(function (r) { r.addEventListener('click', function () { select(+r.dataset.t); }); });
  document.addEventListener('keydown', function (ev) {
    if (ev.key === 'ArrowDown' || ev.key === 'ArrowRight') { select(D.sel + 1); ev.preventDefault(); }
    if (ev.key === 'ArrowUp' || ev.key === 'ArrowLeft') { select(D.sel - 1); ev.preventDefault(); }
  });
  var heads = document.querySelectorAll('.matrix thead th.col');
  document.querySelectorAll('.matrix td.cell').forEach(function (c) {
    c.addEventListener('mouseenter', function () { heads[+c.dataset.j].classList.add('hot'); });
    c.addEventListener('mouseleave', function () { heads[+c.dataset.j].classList.remove('hot'); });
  });
  select(D.sel);
})();
"""


def render_html(exp: "Explanation", target: int | None = None, title: str | None = None, top_k: int = 8) -> str:
    """Render an explanation as one self-contained HTML page (inline CSS and JS, no external assets).

    The page shows the provenance (method, space, params, model), the answer tokens with their
    probabilities (click one to select it), the prompt with each token's background coloured by its
    score for the selected target, the top tokens and the completeness error of that target, and the
    full [targets x inputs] heatmap (rows normalised by their max |score|; click a row to select it).

    Args:
        exp: the explanation to show.
        target: index of the target selected when the page opens (default 0).
        title: page title (default: "llm-attrib: <method> / <space>").
        top_k: how many top tokens the side panel lists.

    Returns:
        The HTML document as a string.
    """
    n_targets, n_inputs = len(exp.target_tokens), len(exp.input_tokens)
    if target is None:
        target = 0
    if not isinstance(target, int) or not (0 <= target < max(n_targets, 1)):
        raise InvalidInputError(f"target must be an index in [0, {n_targets}), got {target!r}.")
    is_lm = _is_lm(exp)
    norm = normalise_rows(exp.scores)
    raw = exp.scores.detach().float().cpu()
    errors = [float(v) for v in exp.completeness_error.detach().float().cpu().reshape(-1).tolist()]
    errors += [math.nan] * (n_targets - len(errors))
    title = title or f"llm-attrib: {exp.method} / {exp.space}"

    data = {
        "inputs": [visible(t) for t in exp.input_tokens],
        "targets": [
            {"token": visible(tok), "prob": f"{p:.3f}", "err": fmt_error(e)}
            for tok, p, e in zip(exp.target_tokens, exp.target_probs, errors)
        ],
        "norm": [[round(v, 4) for v in row] for row in norm.tolist()],
        "raw": [[_finite_or_none(v) for v in row] for row in raw.tolist()],
        "nPrompt": exp.n_prompt_tokens,
        "lm": is_lm,
        "sel": target,
        "topK": top_k,
        "heads": _head_totals(exp, n_inputs),
    }
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        _header(exp, n_inputs, n_targets),
        '<div class="legend"><span>−max |score| of the row</span><span class="bar"></span>'
        "<span>+max |score| of the row</span></div>",
        "<h2>Answer " + ("tokens" if is_lm else "class") + " (click to select)</h2>",
        _target_chips(exp, errors),
        "<h2>Prompt, coloured by attribution to the selected target</h2>",
        '<div class="panel">',
        _text_view(exp, is_lm),
        _side_panel(exp.head_scores is not None),
        "</div>",
        f"<h2>Heatmap: {n_targets} target{'s' if n_targets != 1 else ''} × {n_inputs} input tokens</h2>",
        _matrix(exp, norm, raw, errors, is_lm),
        '<div class="note">Rows are normalised by their max |score|; hover a cell for its raw score. '
        "Hatched cells are inputs at or after the target (not visible to it). The thick line separates "
        "prompt from answer tokens. Arrow keys move the selection.</div>",
        f'<script type="application/json" id="llm-attrib-data">{_json_for_script(data)}</script>',
        f"<script>{_JS}</script>",
        "</body></html>",
    ]
    return "\n".join(parts)


def _is_lm(exp: "Explanation") -> bool:
    """Causal-LM explanations have the earlier targets as inputs; a classifier's inputs are the prompt."""
    return len(exp.input_tokens) > exp.n_prompt_tokens or (
        len(exp.target_tokens) == 1 and len(exp.text) > max((e for _, e in exp.input_offsets), default=0)
    )


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _tok(token: str) -> str:
    """Escaped token with its whitespace shown as dimmed markers (␣ ↵ → ∅)."""
    return re.sub("([\u2423\u21b5\u2192\u240d\u2205])", r'<span class="ws">\1</span>', _e(visible(token)))


def _finite_or_none(v: float):
    return round(v, 6) if math.isfinite(v) else None


def _json_for_script(data: dict) -> str:
    """JSON that cannot close the <script> element it sits in."""
    text = json.dumps(data, ensure_ascii=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _header(exp: "Explanation", n_inputs: int, n_targets: int) -> str:
    meta = (
        f'<div class="meta">model <b>{_e(exp.model_name or "unknown")}</b> · method <b>{_e(exp.method)}</b> · '
        f"space <b>{_e(exp.space)}</b> · {n_inputs} inputs ({exp.n_prompt_tokens} prompt) × {n_targets} target{'s' if n_targets != 1 else ''}"
        f"{' · llm-attrib ' + _e(exp.library_version) if exp.library_version else ''}</div>"
    )
    chips = "".join(
        f'<span class="chip">{_e(k)}={_e(v)}</span>' for k, v in exp.params.items() if v is not None
    )
    if exp.converged is False:
        chips += ('<span class="chip" style="color:#b00;border-color:#b00"><b>not converged</b>: completeness '
                  "errors above tolerance, scores are not final</span>")
    if exp.cost:
        chips += (f'<span class="chip">cost: {exp.cost.get("n_forward", 0)} forward, {exp.cost.get("n_backward", 0)} '
                  f'backward, {exp.cost.get("seconds", 0.0):.1f} s</span>')
    return meta + (f"<div>{chips}</div>" if chips else "")


def _target_chips(exp: "Explanation", errors: list[float]) -> str:
    chips = [
        f'<div class="tgt" data-t="{t}" title="completeness error {_e(fmt_error(err))}">{_tok(tok)}'
        f"<small>p={p:.2f}</small></div>"
        for t, (tok, p, err) in enumerate(zip(exp.target_tokens, exp.target_probs, errors))
    ]
    return f'<div class="targets">{"".join(chips)}</div>'


def _text_view(exp: "Explanation", is_lm: bool) -> str:
    """The text with one span per input token; gaps between tokens stay plain text."""
    out, cursor = [], 0
    text = exp.text
    for j, (tok, (start, end)) in enumerate(zip(exp.input_tokens, exp.input_offsets)):
        answer = " answer" if j >= exp.n_prompt_tokens else ""
        start = max(start, cursor)
        if end <= start:  # special token, or a span already shown (byte pieces of one character)
            if tok.strip():
                out.append(f'<span class="tok special{answer}" data-j="{j}">{_e(tok)}</span>')
            continue
        if start > cursor:
            out.append(_e(text[cursor:start]))
        out.append(f'<span class="tok{answer}" data-j="{j}">{_e(text[start:end])}</span>')
        cursor = end
    if is_lm and cursor < len(text):
        gap = len(text[cursor:]) - len(text[cursor:].lstrip())
        out.append(_e(text[cursor : cursor + gap]))
        out.append(f'<span class="answer" id="last-target">{_e(text[cursor + gap:])}</span>')
    elif cursor < len(text):
        out.append(_e(text[cursor:]))
    if is_lm and exp.target_tokens and cursor >= len(text):
        out.append(f'<span class="answer special" id="last-target">{_e(exp.target_tokens[-1])}</span>')
    return f'<div class="text" id="text">{"".join(out)}</div>'


def _side_panel(has_heads: bool) -> str:
    heads = (
        '<div style="margin-top:8px" title="each head\'s score summed over the inputs">heads (layer × head)</div>'
        '<table class="heads" id="sel-heads"></table>'
        if has_heads else ""
    )
    return (
        '<div class="side"><div>selected target</div><div class="big" id="sel-token"></div>'
        '<table><tr><td>probability</td><td class="num" id="sel-prob"></td></tr>'
        '<tr><td>completeness error</td><td class="num" id="sel-err"></td></tr></table>'
        f'<div style="margin-top:8px">top tokens</div><table id="sel-top"></table>{heads}</div>'
    )


def _head_totals(exp: "Explanation", n_inputs: int) -> list | None:
    """(T, layers, heads) sums of the per-head scores over the inputs, or None without head scores."""
    if exp.head_scores is None or exp.head_scores.dim() != 4:
        return None
    totals = exp.head_scores.detach().float().cpu().nan_to_num(0.0)[..., :n_inputs].sum(-1)  # (T, L, H)
    return [[[round(v, 6) for v in row] for row in layer] for layer in totals.tolist()]


def _matrix(exp: "Explanation", norm, raw, errors: list[float], is_lm: bool) -> str:
    n_prompt = exp.n_prompt_tokens
    split = lambda j: " split" if j == n_prompt and j > 0 else ""  # noqa: E731
    head = ['<th class="stick c0">target</th><th class="stick c1">p</th><th class="stick c2">compl. err</th>']
    for j, tok in enumerate(exp.input_tokens):
        shown = visible(tok)
        head.append(f'<th class="col{split(j)}" title="#{j} {_e(shown)}"><div>{_tok(tok)}</div></th>')
    body = []
    for t, tok in enumerate(exp.target_tokens):
        cells = []
        for j in range(len(exp.input_tokens)):
            if is_lm and j >= n_prompt + t:
                cells.append(f'<td class="cell na{split(j)}" data-j="{j}"></td>')
                continue
            v, r = float(norm[t, j]), float(raw[t, j])
            r_g, g, b = score_rgb(v)
            tip = f"{visible(tok)} ← {visible(exp.input_tokens[j])} (#{j}): {fmt_score(r)}"
            cells.append(
                f'<td class="cell{split(j)}" data-j="{j}" style="background:rgb({r_g},{g},{b})" title="{_e(tip)}"></td>'
            )
        prob = exp.target_probs[t] if t < len(exp.target_probs) else math.nan
        body.append(
            f'<tr data-t="{t}"><th class="stick c0" title="{_e(visible(tok))}">{t}: {_tok(tok)}</th>'
            f'<td class="stick c1">{prob:.3f}</td><td class="stick c2">{_e(fmt_error(errors[t]))}</td>'
            + "".join(cells) + "</tr>"
        )
    return (
        '<div class="scroll"><table class="matrix"><thead><tr>' + "".join(head) + "</tr></thead><tbody>"
        + "".join(body) + "</tbody></table></div>"
    )
