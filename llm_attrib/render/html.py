"""A self-contained HTML page for an `Explanation`: header, answer tokens, highlighted prompt, heatmap matrix.

The markup is the template `templates/explanation.html` (autoescaped), its style and script the package's
`explanation.css` and `explanation.js`; this module only turns the explanation into plain values for them.
Everything is inline (CSS, JS, data): the page opens from disk with no network access.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInputError
from ._colors import fmt_error, fmt_score, fmt_seconds, normalise_rows, score_rgb, short_model_name, visible
from .templating import render

if TYPE_CHECKING:
    from ..explanation import Explanation

_MARKERS = "\u2423\u21b5\u2192\u240d\u2205"


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
    n_targets = len(exp.target_tokens)
    if target is None:
        target = 0
    if not isinstance(target, int) or not (0 <= target < max(n_targets, 1)):
        raise InvalidInputError(f"target must be an index in [0, {n_targets}), got {target!r}.")
    return render("explanation.html", **explanation_view(exp, target, title, top_k))


def explanation_view(exp: "Explanation", target: int = 0, title: str | None = None, top_k: int = 8) -> dict[str, Any]:
    """The plain values the page template shows (strings, numbers, lists): nothing in it is markup."""
    n_targets, n_inputs = len(exp.target_tokens), len(exp.input_tokens)
    is_lm = is_causal(exp)
    norm = normalise_rows(exp.scores)
    raw = exp.scores.detach().float().cpu()
    errors = [float(v) for v in exp.completeness_error.detach().float().cpu().reshape(-1).tolist()]
    errors += [math.nan] * (n_targets - len(errors))
    probs = [float(p) for p in exp.target_probs] + [math.nan] * (n_targets - len(exp.target_probs))
    data = {
        "inputs": [visible(t) for t in exp.input_tokens],
        "targets": [{"token": visible(tok), "prob": f"{p:.3f}", "err": fmt_error(e)}
                    for tok, p, e in zip(exp.target_tokens, probs, errors)],
        "norm": [[round(v, 4) for v in row] for row in norm.tolist()],
        "raw": [[finite_or_none(v) for v in row] for row in raw.tolist()],
        "nPrompt": exp.n_prompt_tokens,
        "lm": is_lm,
        "sel": target,
        "topK": top_k,
        "heads": _head_totals(exp, n_inputs),
    }
    return {
        "title": title or f"llm-attrib: {exp.method} / {exp.space}",
        "model": short_model_name(exp.model_name),
        "method": exp.method,
        "space": exp.space,
        "library_version": exp.library_version,
        "n_prompt": exp.n_prompt_tokens,
        "converged": exp.converged,
        "n_inputs": n_inputs,
        "n_targets": n_targets,
        "is_lm": is_lm,
        "params": [(k, v) for k, v in exp.params.items() if v is not None],
        "cost": cost_line(exp.cost),
        "notes": [str(n) for n in getattr(exp, "notes", None) or []],
        "targets": [{"pieces": pieces(tok), "prob": f"{p:.2f}", "err": fmt_error(e)}
                    for tok, p, e in zip(exp.target_tokens, probs, errors)],
        "text": _text_view(exp, is_lm),
        "has_heads": exp.head_scores is not None,
        "columns": [{"pieces": pieces(tok), "title": f"#{j} {visible(tok)}", "split": _split(exp, j)}
                    for j, tok in enumerate(exp.input_tokens)],
        "rows": _rows(exp, norm, raw, errors, probs, is_lm),
        "data": data,
    }


def is_causal(exp: "Explanation") -> bool:
    """Causal-LM explanations have the earlier targets as inputs; a classifier's inputs are the prompt."""
    return len(exp.input_tokens) > exp.n_prompt_tokens or (
        len(exp.target_tokens) == 1 and len(exp.text) > max((e for _, e in exp.input_offsets), default=0)
    )


def pieces(token: str) -> list[tuple[str, bool]]:
    """A token's visible text as (text, is_whitespace_marker) runs, so a template can dim the ␣ ↵ → ∅ markers."""
    out: list[tuple[str, bool]] = []
    for char in visible(token):
        marker = char in _MARKERS
        if out and not marker and not out[-1][1]:
            out[-1] = (out[-1][0] + char, False)
        else:
            out.append((char, marker))
    return out


def finite_or_none(v: float):
    return round(v, 6) if math.isfinite(v) else None


def number(value: Any, spec: str = "g") -> str:
    """A cost or count for display: formatted when it is a number, else its text (shown escaped, never run)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, spec)
    return str(value)


def cost_line(cost: dict[str, Any] | None) -> dict[str, str] | None:
    """The cost counters as display strings, or None when the explanation has none."""
    if not cost:
        return None
    return {"n_forward": number(cost.get("n_forward", 0), "g"), "n_backward": number(cost.get("n_backward", 0), "g"),
            "seconds": fmt_seconds(cost.get("seconds", 0.0))}


def _split(exp: "Explanation", j: int) -> bool:
    return j == exp.n_prompt_tokens and j > 0


def _text_view(exp: "Explanation", is_lm: bool) -> list[dict[str, Any]]:
    """The text as runs: plain gaps, one run per input token (`j`), special tokens, and the last target."""
    out: list[dict[str, Any]] = []
    cursor, text = 0, exp.text
    for j, (tok, (start, end)) in enumerate(zip(exp.input_tokens, exp.input_offsets)):
        answer = j >= exp.n_prompt_tokens
        start = max(start, cursor)
        if end <= start:  # special token, or a span already shown (byte pieces of one character)
            if tok.strip():
                out.append({"kind": "special", "j": j, "text": tok, "answer": answer})
            continue
        if start > cursor:
            out.append({"kind": "plain", "text": text[cursor:start]})
        out.append({"kind": "token", "j": j, "text": text[start:end], "answer": answer})
        cursor = end
    if is_lm and cursor < len(text):
        gap = len(text[cursor:]) - len(text[cursor:].lstrip())
        out.append({"kind": "plain", "text": text[cursor:cursor + gap]})
        out.append({"kind": "last", "text": text[cursor + gap:]})
    elif cursor < len(text):
        out.append({"kind": "plain", "text": text[cursor:]})
    if is_lm and exp.target_tokens and cursor >= len(text):
        out.append({"kind": "last-special", "text": exp.target_tokens[-1]})
    return out


def _head_totals(exp: "Explanation", n_inputs: int) -> list | None:
    """(T, layers, heads) sums of the per-head scores over the inputs, or None without head scores."""
    if exp.head_scores is None or exp.head_scores.dim() != 4:
        return None
    totals = exp.head_scores.detach().float().cpu().nan_to_num(0.0)[..., :n_inputs].sum(-1)  # (T, L, H)
    return [[[round(v, 6) for v in row] for row in layer] for layer in totals.tolist()]


def _rows(exp: "Explanation", norm, raw, errors: list[float], probs: list[float], is_lm: bool) -> list[dict[str, Any]]:
    """The heatmap's rows: one per target, a cell per input (hidden for inputs at or after the target)."""
    rows = []
    for t, tok in enumerate(exp.target_tokens):
        cells = []
        for j in range(len(exp.input_tokens)):
            cell = {"j": j, "split": _split(exp, j), "hidden": is_lm and j >= exp.n_prompt_tokens + t}
            if not cell["hidden"]:
                cell["rgb"] = score_rgb(float(norm[t, j]))
                cell["tip"] = f"{visible(tok)} ← {visible(exp.input_tokens[j])} (#{j}): {fmt_score(float(raw[t, j]))}"
            cells.append(cell)
        rows.append({"t": t, "pieces": pieces(tok), "title": visible(tok), "prob": f"{probs[t]:.3f}",
                     "err": fmt_error(errors[t]), "cells": cells})
    return rows


def inline_html(page: str, title: str, height: int = 640) -> str:
    """A page for a notebook's output cell: inside an iframe (its document in `srcdoc`, escaped), so the page's
    style and script stay apart from the notebook's own."""
    return render("inline.html", page=page, title=title, height=height)
