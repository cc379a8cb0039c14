"""Terminal rendering with rich: the text with token backgrounds coloured by score, and a summary table."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..errors import InvalidInputError
from ._colors import fmt_error, fmt_score, is_dark, normalise_rows, score_rgb, visible

if TYPE_CHECKING:
    from ..explanation import Explanation


def print_explanation(
    exp: "Explanation",
    target: int | None = None,
    console: Console | None = None,
    top_k: int = 5,
) -> None:
    """Print an explanation: per target, the prompt coloured by score and the top tokens; then a table.

    Args:
        exp: the explanation to show.
        target: index of the one target to show (default: every target).
        console: where to print (default: a new `rich.console.Console`).
        top_k: how many top prompt tokens to list per target.
    """
    console = console or Console()
    console.print(_renderable(exp, target, top_k))


def explanation_text(exp: "Explanation", target: int | None = None, top_k: int = 5, width: int = 120) -> str:
    """The same rendering as `print_explanation`, as plain text (no colour codes)."""
    console = Console(record=True, width=width, file=_Null(), color_system="truecolor")
    print_explanation(exp, target=target, console=console, top_k=top_k)
    return console.export_text()


class _Null:
    def write(self, _: str) -> int:
        return 0

    def flush(self) -> None:
        pass


def _renderable(exp: "Explanation", target: int | None, top_k: int) -> Group:
    n_targets = len(exp.target_tokens)
    if target is not None and (not isinstance(target, int) or not 0 <= target < n_targets):
        raise InvalidInputError(f"target must be an index in [0, {n_targets}), got {target!r}.")
    norm = normalise_rows(exp.scores)
    errors = _errors(exp)
    chosen = range(n_targets) if target is None else [target]
    header = Text.assemble(
        ("llm-attrib ", "bold"), (f"{exp.method} / {exp.space}", "bold cyan"),
        f"  model {exp.model_name or 'unknown'}  ",
        (" ".join(f"{k}={v}" for k, v in exp.params.items() if v is not None), "dim"),
    )
    parts: list = [header, _legend()]
    for t in chosen:
        title = Text.assemble(
            (f"target {t}: ", "bold"), (repr(exp.target_tokens[t]), "bold yellow"),
            f"  p={exp.target_probs[t]:.3f}  completeness error={fmt_error(errors[t])}",
        )
        top = Text("top: ", style="dim")
        for i, (tok, score) in enumerate(_top(exp, t, top_k)):
            top.append(("  " if i else "") + visible(tok), style=_style(score / _peak(exp, t)))
            top.append(f" {fmt_score(score)}", style="dim")
        parts.append(Panel(Group(_coloured_text(exp, norm[t].tolist(), t), top), title=title, title_align="left"))
    parts.append(_table(exp, chosen, errors, top_k))
    parts.append(_status(exp))
    return Group(*parts)


def _status(exp: "Explanation") -> Text:
    """Whether the integral converged, and what it cost."""
    status = Text()
    if exp.converged is False:
        status.append("NOT CONVERGED: some completeness errors are above tolerance; scores are not final.  ",
                      style="bold red")
    elif exp.converged:
        status.append("converged  ", style="green")
    if exp.cost:
        status.append(
            f"cost: {exp.cost.get('n_forward', 0)} forward, {exp.cost.get('n_backward', 0)} backward sequence passes"
            + (f" ({exp.cost['n_forward_all']} forwards in all)" if "n_forward_all" in exp.cost else "")
            + f", {exp.cost.get('seconds', 0.0):.1f} s", style="dim")
    return status


def _errors(exp: "Explanation") -> list[float]:
    values = [float(v) for v in exp.completeness_error.detach().float().cpu().reshape(-1).tolist()]
    return values + [math.nan] * (len(exp.target_tokens) - len(values))


def _peak(exp: "Explanation", t: int) -> float:
    row = exp.scores[t].detach().float().nan_to_num(0.0).abs()
    return max(float(row.max()) if row.numel() else 0.0, 1e-12)


def _visible_inputs(exp: "Explanation", t: int) -> int:
    """Inputs target t can see: the prompt plus the earlier targets (all inputs for a classifier)."""
    return min(exp.n_prompt_tokens + t, len(exp.input_tokens))


def _top(exp: "Explanation", t: int, k: int) -> list[tuple[str, float]]:
    """The top content tokens (markup such as chat-template role markers is reported apart)."""
    n = _visible_inputs(exp, t)
    row = exp.scores[t, :n].detach().float().nan_to_num(float("-inf"))
    if exp.input_markup:
        row[torch.tensor(exp.input_markup[:n], dtype=torch.bool)] = float("-inf")
        k = min(k, int(torch.isfinite(row).sum()))
    values, index = row.topk(min(k, n))
    return [(exp.input_tokens[j], float(exp.scores[t, j])) for j in index.tolist()]


def _style(v: float) -> str:
    r, g, b = score_rgb(v)
    return f"{'#ffffff' if is_dark(v) else '#000000'} on rgb({r},{g},{b})"


def _legend() -> Text:
    legend = Text("scale: ", style="dim")
    for v in (-1.0, -0.5, 0.0, 0.5, 1.0):
        legend.append(f" {v:+.1f} ", style=_style(v))
    legend.append("  (score / max |score| of the target)", style="dim")
    return legend


def _coloured_text(exp: "Explanation", norm_row: list[float], t: int) -> Text:
    """The prompt (and answer so far) with each token's background coloured by its score for target t."""
    text, out, cursor = exp.text, Text(), 0
    n_seen = _visible_inputs(exp, t)
    for j, (tok, (start, end)) in enumerate(zip(exp.input_tokens[:n_seen], exp.input_offsets[:n_seen])):
        start = max(start, cursor)
        if end <= start:
            if tok.strip():  # a special token: shown on its own, spaced from its neighbours
                if out.plain and not out.plain[-1].isspace():
                    out.append(" ")
                out.append(tok, style=_style(norm_row[j]))
                out.append(" ")
            continue
        out.append(text[cursor:start])
        out.append(text[start:end], style=_style(norm_row[j]))
        cursor = end
    out.append("  → ", style="dim")
    out.append(visible(exp.target_tokens[t]), style="bold underline yellow")
    return out


def _table(exp: "Explanation", chosen, errors: list[float], top_k: int) -> Table:
    table = Table(title="summary", title_justify="left", show_lines=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("target")
    table.add_column("p", justify="right")
    table.add_column("compl. err", justify="right")
    table.add_column(f"top {top_k} tokens")
    markup = exp.markup_share if any(exp.input_markup) else None
    if markup is not None:
        table.add_column("markup", justify="right")
    for t in chosen:
        peak = _peak(exp, t)
        top = Text()
        for i, (tok, score) in enumerate(_top(exp, t, top_k)):
            if i:
                top.append(" ")
            top.append(visible(tok), style=_style(score / peak))
        row = [str(t), visible(exp.target_tokens[t]), f"{exp.target_probs[t]:.3f}", fmt_error(errors[t]), top]
        table.add_row(*row, *([] if markup is None else [f"{float(markup[t]):.0%}"]))
    return table


VERDICT_STYLE = {"supported": "green", "unsupported": "bold red", "uncertain": "yellow"}


def print_rag_explanation(result, console: Console | None = None) -> None:
    """A RAG explanation in the terminal: the answer, documents ranked by what they carried, and per answer sentence
    the cited documents and sentences with the verdict."""
    console = console or Console()
    exp = result.explanation
    status = {True: "converged", False: "NOT converged (see completeness error)", None: ""}[exp.converged]
    cut = "; TRUNCATED by max_new_tokens" if result.truncated else ""
    console.print(Panel(Text(result.answer.strip()), title=f"answer to: {result.question}",
                        subtitle=f"{exp.method} over {exp.space}, {result.granularity} rows {status}{cut}"))
    ranking = Table(title="documents, by what they carried of the whole answer")
    shapley = None if result.shapley is None else result.shapley.values.sum(1)  # the whole answer's, in nats
    columns = ("rank", "document", "score") + (("Shapley (nats)",) if shapley is not None else ()) + ("text",)
    for column in columns:
        ranking.add_column(column, justify="left" if column in ("document", "text") else "right")
    scores = result.answer_document_scores
    for rank, d in enumerate(result.ranking, 1):
        document = result.documents[d]
        label = f"{d + 1}" + (f" ({document.title})" if document.title else "")
        text = document.text if len(document.text) <= 90 else document.text[:87] + "..."
        extra = () if shapley is None else (f"{float(shapley[d]):+.2f}",)
        ranking.add_row(str(rank), label, fmt_score(float(scores[d])), *extra, text)
    console.print(ranking)
    citations = Table(title="citations")
    for column in ("answer", "cited documents", "top sentence", "verdict"):
        citations.add_column(column)
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
            alone = "" if v.drop_all is None else f"; {v.drop_all:.1f} lost without any document"
            verdict = Text(f"{v.label} ({v.margin:+.1f} nats{alone})", style=VERDICT_STYLE.get(v.label, ""))
        citations.add_row(citation.sentence.strip(), docs, sentence, verdict)
    console.print(citations)
