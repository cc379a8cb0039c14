"""Terminal rendering with rich: the prompt's words coloured by score, the top words, a legend in plain words,
then the details (settings, cost) short.

Every string that comes from a user, a document or a model (prompt, answer, tokens, titles, questions, file
names) is rendered as a rich `Text`, never as console markup, and with control characters made visible
(`safe`), so `[/INST]` or `[bold]` is shown as written and an escape sequence cannot clear the screen, hide text,
set the window title or write the clipboard.
"""

from __future__ import annotations

import math
import unicodedata
from typing import TYPE_CHECKING

import torch
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..errors import InvalidInputError
from ._colors import fmt_error, fmt_score, fmt_seconds, is_dark, normalise_rows, score_rgb, short_model_name, visible

if TYPE_CHECKING:
    from ..explanation import Explanation

# Characters a terminal acts on rather than shows: C0 controls (but newline and tab), DEL, C1 controls, the
# bidirectional overrides that reorder what is shown, and lone surrogates (which cannot even be written).
_BIDI = {0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}


def _shown(code: int) -> str:
    if code < 0x20:
        return chr(0x2400 + code)  # the Unicode control pictures: ␛ for ESC, ␇ for BEL, ␍ for CR
    if code == 0x7F:
        return "\u2421"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


_CONTROL = {c: _shown(c) for c in (*range(0x20), 0x7F, *range(0x80, 0xA0), *_BIDI) if c not in (0x0A, 0x09)}


def safe(text: str) -> str:
    """`text` with every character a terminal would act on shown instead (ESC as ␛, C1 and bidi controls and
    lone surrogates as escapes); newlines and tabs stay."""
    text = str(text).translate(_CONTROL)
    if any(unicodedata.category(c) == "Cs" for c in text):
        text = "".join(f"\\u{ord(c):04x}" if unicodedata.category(c) == "Cs" else c for c in text)
    return text


def safe_token(token: str) -> str:
    """A token as shown in lists: whitespace made visible, then control characters."""
    return safe(visible(token))


def model_label(name: str) -> str:
    """A model's short name (`short_model_name`), safe for the terminal."""
    return safe(short_model_name(name))


def print_explanation(
    exp: "Explanation",
    target: int | None = None,
    console: Console | None = None,
    top_k: int = 5,
    template_spans: list[tuple[int, int]] | None = None,
    evidence_spans: list[tuple[int, int]] | None = None,
) -> None:
    """Print an explanation: per target, the prompt coloured by score and its top words; then the details.

    Args:
        exp: the explanation to show (`exp.words()` for scores over words).
        target: index of the one target to show (default: every target).
        console: where to print (default: a new `rich.console.Console`).
        top_k: how many top prompt tokens to list per target.
        template_spans: character spans of a fixed template every prompt shares (e.g. a zoo example's
            "template_spans"): dimmed, left out of the top list and reported apart, like chat markup.
        evidence_spans: character spans known to hold the evidence (e.g. a zoo example's "evidence"): underlined,
            so a reader can check where the colour falls.
    """
    console = console or Console()
    console.print(_renderable(exp, target, top_k, template_spans or [], evidence_spans or []))


def explanation_text(exp: "Explanation", target: int | None = None, top_k: int = 5, width: int = 120,
                     **kwargs) -> str:
    """The same rendering as `print_explanation`, as plain text (no colour codes)."""
    console = Console(record=True, width=width, file=_Null(), color_system="truecolor")
    print_explanation(exp, target=target, console=console, top_k=top_k, **kwargs)
    return console.export_text()


class _Null:
    def write(self, _: str) -> int:
        return 0

    def flush(self) -> None:
        pass


def _overlaps(offsets, spans) -> list[bool]:
    return [s < e and any(s < b and a < e for a, b in spans) for s, e in offsets]


def _renderable(exp: "Explanation", target: int | None, top_k: int, template_spans, evidence_spans) -> Group:
    n_targets = len(exp.target_tokens)
    if target is not None and (isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < n_targets):
        raise InvalidInputError(f"target must be an index in [0, {n_targets}), got {target!r}.")
    markup = list(exp.input_markup) + [False] * (len(exp.input_tokens) - len(exp.input_markup))
    fixed = torch.tensor([m or t for m, t in zip(markup, _overlaps(exp.input_offsets, template_spans))], dtype=torch.bool)
    evidence = _overlaps(exp.input_offsets, evidence_spans)
    scores = exp.scores.detach().float().cpu()
    content = scores.nan_to_num(0.0).masked_fill(fixed, 0.0)
    norm = normalise_rows(content) if fixed.any() else normalise_rows(scores)
    errors = _errors(exp)
    chosen = range(n_targets) if target is None else [target]
    view = "whole answer" if exp.answer_level else "per answer token" if n_targets > 1 else ""
    header = Text.assemble((model_label(exp.model_name), "bold"), "  ", (f"{exp.method} over {exp.space}", "cyan"),
                           ("  " + view if view else "", "cyan"))
    parts: list = [header, _legend(bool(fixed.any()), any(evidence))]
    for t in chosen:
        what = "answer" if exp.answer_level and n_targets == 1 else f"target {t}"
        title = Text.assemble((f"{what}: ", "bold"), (safe(repr(exp.target_tokens[t])), "bold yellow"),
                              f"  p={exp.target_probs[t]:.3f}")
        top = Text("top words: " if exp.params.get("aggregated") else "top: ", style="bold")
        for i, (j, score) in enumerate(_top(exp, t, top_k, fixed)):
            top.append(("  " if i else "") + safe_token(exp.input_tokens[j]), style=_style(float(norm[t, j])))
            top.append(f" {fmt_score(score)}", style="dim")
        body = [_coloured_text(exp, norm[t].tolist(), fixed.tolist(), evidence, t), top]
        if fixed.any() and _share(scores[t], fixed) >= 0.005:
            body.append(Text(f"fixed template and markup (dimmed, not ranked): {_share(scores[t], fixed):.0%} of the "
                             "total |score|", style="dim"))
        parts.append(Panel(Group(*body), title=title, title_align="left"))
    if len(chosen) > 1:
        parts.append(_table(exp, chosen, errors, top_k, norm, fixed))
    parts.extend(Text("note: " + safe(note), style="bold yellow") for note in exp.notes)
    parts.append(_details(exp, errors, chosen))
    return Group(*parts)


def _share(row: torch.Tensor, fixed: torch.Tensor) -> float:
    magnitude = row.nan_to_num(0.0).abs()
    return float(magnitude[fixed].sum() / magnitude.sum().clamp_min(1e-30))


def _details(exp: "Explanation", errors: list[float], chosen) -> Text:
    """After the result, short: settings, completeness, convergence and cost."""
    settings = " ".join(f"{k}={v}" for k, v in exp.params.items()
                        if v is not None and k not in ("aggregated", "target", "foil", "layers"))
    details = Text("details: ", style="dim")
    details.append(safe(f"{exp.method} {settings}".strip()) + "  ", style="dim")
    finite = [errors[t] for t in chosen if math.isfinite(errors[t])]
    if finite:
        details.append(f"completeness error ≤ {fmt_error(max(finite))}  ", style="dim")
    if exp.converged is False:
        details.append("NOT CONVERGED: some completeness errors are above tolerance; scores are not final.  ",
                       style="bold red")
    elif exp.converged:
        details.append("converged  ", style="dim green")
    if exp.cost:
        details.append(
            f"cost: {exp.cost.get('n_forward', 0)} forward, {exp.cost.get('n_backward', 0)} backward sequence passes"
            + (f" ({exp.cost['n_forward_all']} forwards in all)" if "n_forward_all" in exp.cost else "")
            + f", {fmt_seconds(exp.cost.get('seconds', 0.0))}", style="dim")
    return details


def _errors(exp: "Explanation") -> list[float]:
    values = [float(v) for v in exp.completeness_error.detach().float().cpu().reshape(-1).tolist()]
    return values + [math.nan] * (len(exp.target_tokens) - len(values))


def _visible_inputs(exp: "Explanation", t: int) -> int:
    """Inputs target t can see: the prompt plus the earlier targets (all inputs for a classifier or a whole
    answer's row)."""
    if exp.answer_level:
        return exp.n_prompt_tokens
    return min(exp.n_prompt_tokens + t, len(exp.input_tokens))


def _top(exp: "Explanation", t: int, k: int, fixed: torch.Tensor) -> list[tuple[int, float]]:
    """The top content inputs (template and markup are reported apart) as (index, score)."""
    n = _visible_inputs(exp, t)
    row = exp.scores[t, :n].detach().float().nan_to_num(float("-inf"))
    row[fixed[:n]] = float("-inf")
    k = min(k, int(torch.isfinite(row).sum()))
    values, index = row.topk(k)
    return [(j, float(exp.scores[t, j])) for j in index.tolist()]


def _style(v: float) -> str:
    r, g, b = score_rgb(v)
    return f"{'#ffffff' if is_dark(v) else '#000000'} on rgb({r},{g},{b})"


def _legend(has_fixed: bool, has_evidence: bool) -> Text:
    """One line in plain words: what the colours (and the dimming) mean."""
    legend = Text()
    legend.append(" red ", style=_style(0.8))
    legend.append(" made the answer likelier ")
    legend.append(" blue ", style=_style(-0.8))
    legend.append(" less likely")
    if has_fixed:
        legend.append("  grey", style="dim")
        legend.append(": fixed template")
    if has_evidence:
        legend.append("  underlined", style="underline")
        legend.append(": the evidence")
    return legend


def _coloured_text(exp: "Explanation", norm_row: list[float], fixed: list[bool], evidence: list[bool],
                   t: int) -> Text:
    """The prompt (and answer so far) with each token's background coloured by its score for target t;
    template and markup dimmed, evidence underlined."""
    text, out, cursor = exp.text, Text(), 0
    n_seen = _visible_inputs(exp, t)

    def style(j: int) -> str:
        base = "dim" if fixed[j] else _style(norm_row[j])
        return base + (" underline" if evidence[j] else "")

    for j, (tok, (start, end)) in enumerate(zip(exp.input_tokens[:n_seen], exp.input_offsets[:n_seen])):
        start = max(start, cursor)
        if end <= start:
            if tok.strip():  # a special token: shown on its own, spaced from its neighbours
                if out.plain and not out.plain[-1].isspace():
                    out.append(" ")
                out.append(safe(tok), style="dim" if fixed[j] else _style(norm_row[j]))
                out.append(" ")
            continue
        out.append(safe(text[cursor:start]))
        out.append(safe(text[start:end]), style=style(j))
        cursor = end
    out.append("  → ", style="dim")
    target = exp.target_tokens[t]  # a row of the answer is text; a token shows its spaces
    out.append(safe(target.strip()) if exp.answer_level else safe_token(target), style="bold underline yellow")
    return out


def _table(exp: "Explanation", chosen, errors: list[float], top_k: int, norm: torch.Tensor,
           fixed: torch.Tensor) -> Table:
    table = Table(title="summary", title_justify="left", show_lines=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("target")
    table.add_column("p", justify="right")
    table.add_column("compl. err", justify="right")
    table.add_column(f"top {top_k}")
    if fixed.any():
        table.add_column("template", justify="right")
    for t in chosen:
        top = Text()
        for i, (j, _) in enumerate(_top(exp, t, top_k, fixed)):
            if i:
                top.append(" ")
            top.append(safe_token(exp.input_tokens[j]), style=_style(float(norm[t, j])))
        row = [Text(str(t)), Text(safe_token(exp.target_tokens[t])), Text(f"{exp.target_probs[t]:.3f}"),
               Text(fmt_error(errors[t])), top]
        share = [Text(f"{_share(exp.scores[t].float(), fixed):.0%}")] if fixed.any() else []
        table.add_row(*row, *share)
    return table


VERDICT_STYLE = {"supported": "green", "unsupported": "bold red", "uncertain": "yellow", "shared": "orange3",
                 "uncalibrated": ""}
WORDS_SHOWN = 8  # answer words credited to documents in the terminal; the report has them all


def _clip(text: str, n: int = 90) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _print_word_documents(result, console: Console) -> None:
    """One line: the answer words that lose most when one document is removed, each with that document."""
    if getattr(result, "word_leave_one_out", None) is None:
        return
    credited = result.word_documents()
    if not credited:
        console.print(Text("answer words: none loses 0.1 nats or more when any one document is removed "
                           "(no single document carried a word)", style="dim"))
        return
    shown = sorted(sorted(range(len(credited)), key=lambda i: -credited[i][2])[:WORDS_SHOWN])
    removal = "hiding" if getattr(result, "removal", "rerun") == "hidden" else "removal"
    line = Text(f"answer words, by the document whose {removal} costs them most (nats): ")
    for n, i in enumerate(shown):
        word, d, drop = credited[i]
        line.append("; " if n else "")
        line.append(safe(word), style="bold")
        line.append(f" \u2190 {d + 1} ({drop:.2f})")
    if len(credited) > len(shown):
        line.append(f"; {len(credited) - len(shown)} more in the report", style="dim")
    console.print(line)


def print_rag_explanation(result, console: Console | None = None) -> None:
    """A RAG explanation in the terminal: the answer, documents ranked by what they carried, and per answer sentence
    the cited documents and sentences with the verdict. Documents are numbered from 1, as in the prompt."""
    console = console or Console()
    exp = result.explanation
    status = {True: "converged", False: "NOT converged (see completeness error)", None: ""}[exp.converged]
    truncated = getattr(result, "truncated", False)
    answer = Text(safe(result.answer.strip()))
    if truncated:
        answer.append("  [cut by max_new_tokens before it ended]", style="bold yellow")
    console.print(Panel(answer, title=Text("answer to: " + safe(result.question)),
                        subtitle=Text(f"{model_label(exp.model_name)} · {exp.method} over {exp.space}"
                                      f"{', reading the answer' * (getattr(result, 'reading', 'full') == 'answer')}, "
                                      f"{result.granularity} rows {status}")))
    ranking = Table(title="documents, by what they carried of the whole answer")
    shapley = None if result.shapley is None else result.shapley.values.sum(0)  # the whole answer's, in nats
    columns = ("rank", "document", "score") + (("Shapley (nats)",) if shapley is not None else ()) + ("text",)
    for column in columns:
        ranking.add_column(column, justify="left" if column in ("document", "text") else "right")
    scores = result.answer_document_scores
    for rank, d in enumerate(result.ranking, 1):
        document = result.documents[d]
        label = f"{d + 1}" + (f" ({document.title})" if document.title else "")
        extra = () if shapley is None else (Text(f"{float(shapley[d]):+.2f}"),)
        ranking.add_row(Text(str(rank)), Text(safe(label)), Text(fmt_score(float(scores[d]))), *extra,
                        Text(safe(_clip(document.text))))
    console.print(ranking)
    fine = getattr(result, "sentence_documents", None)
    citations = Table(title="citations" + (f" (sentences of the top {len(fine)} documents)" if fine is not None else ""))
    for column in ("answer", "cited documents", "top sentence", "verdict"):
        citations.add_column(column)
    hidden = getattr(result, "removal", "rerun") == "hidden"
    without = "with every document hidden" if hidden else "without any document"
    for citation in result.citations:
        docs = ", ".join(f"{d + 1} ({fmt_score(s)})" for d, s in citation.documents) or "none"
        if citation.sentences:
            d, k, _ = citation.sentences[0]
            start, end = result.sentence_spans[d][k]
            sentence = exp.text[start:end]
        else:
            sentence = ""
        verdict = Text("")
        if citation.verdict is not None:
            v = citation.verdict
            alone = "" if v.drop_all is None else f"; {v.drop_all:.1f} lost {without}"
            if getattr(v, "calibrated", True):
                why = ": several documents carry it" if v.label == "shared" else ""
                verdict = Text(f"{v.label} ({v.margin:+.1f} nats{alone}{why})", style=VERDICT_STYLE.get(v.label, ""))
            else:
                verdict = Text(f"uncalibrated: margin {v.margin:+.1f} nats{alone}")
        citations.add_row(Text(safe(citation.sentence.strip())), Text(docs), Text(safe(sentence)), verdict)
    console.print(citations)
    _print_word_documents(result, console)
    for note in getattr(exp, "notes", []):
        console.print(Text("note: " + safe(note), style="bold yellow"))
