"""Evaluate attribution methods over a dataset: one row per example x target x method, streamed to disk.

Rows are appended to a JSON-lines file as each (example, method) pair finishes, in one write, so an
interrupted run resumes where it stopped with no duplicated or lost rows: every row carries the size of its
group (`n_targets`), and a group a kill tore (a torn last line, or a write cut at a line end) is dropped and
computed again.
With several processes (`accelerate launch`, `torchrun`) each takes its share of the examples and writes its own
shard (`<output>.part<rank>`, resumed by the same process count); every process returns all rows, and the main
process writes them to the output.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from . import parallel
from .attributor import Attributor
from .errors import InvalidInputError
from .explanation import Explanation
from .metrics import ERASER_BINS, faithfulness, plausibility
from .metrics.faithfulness import DEFAULT_METRICS, selection_leak

External = Callable[[Attributor, dict[str, Any]], Explanation]


@dataclass
class MethodSpec:
    """A method to evaluate: a registered name with its parameters, or an external callable
    (attributor, example) -> Explanation (a peer library, wrapped), under a label."""

    label: str
    method: str | External = "ig"
    params: dict[str, Any] = field(default_factory=dict)

    def explain(self, attributor: Attributor, example: dict[str, Any]) -> Explanation:
        if callable(self.method):
            return self.method(attributor, example)
        return attributor.explain(example["prompt"], answer=example.get("answer"), method=self.method, **self.params)


def method_specs(methods: Iterable[str | dict | MethodSpec]) -> list[MethodSpec]:
    """Accept "ig", {"label": "ig_attention", "method": "ig", "space": "attention"}, or MethodSpec."""
    specs = []
    for m in methods:
        if isinstance(m, MethodSpec):
            specs.append(m)
        elif isinstance(m, str):
            specs.append(MethodSpec(label=m, method=m))
        elif isinstance(m, dict):
            params = dict(m)
            method = params.pop("method", None)
            if method is None:
                raise InvalidInputError(f"a method given as a dict needs a 'method' key, got {m!r}.")
            label = params.pop("label", method if isinstance(method, str) else getattr(method, "__name__", "external"))
            specs.append(MethodSpec(label=label, method=method, params=params))
        else:
            raise InvalidInputError(f"a method is a name, a dict or a MethodSpec, got {type(m).__name__}.")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise InvalidInputError(f"method labels must be unique, got {labels}; give each a 'label'.")
    if not specs:
        raise InvalidInputError("no method to evaluate.")
    return specs


def example_rows(
    attributor: Attributor,
    example: dict[str, Any],
    index: int,
    spec: MethodSpec,
    metric_options: dict[str, Any],
) -> list[dict[str, Any]]:
    """All rows (one per target) of one example under one method."""
    prompt = example.get("prompt")
    if not isinstance(prompt, str) and not (isinstance(prompt, list) and prompt):
        raise InvalidInputError(f"example {index} has no 'prompt' (a string or chat messages); every example needs one.")
    exp = spec.explain(attributor, example)
    leaked = selection_leak(exp, metric_options["metrics"], metric_options["bins"], metric_options["removal"])
    values = faithfulness(attributor, exp, **metric_options)
    if example.get("evidence"):
        values.update(plausibility(exp, example["evidence"], example.get("template_spans"), k=1))
    rows = []
    for t, token in enumerate(exp.target_tokens):
        row = {
            "example": index,
            "method": spec.label,
            "target_index": t,
            "target_token": token,
            "target_prob": exp.target_probs[t],
            "completeness_error": _number(exp.completeness_error[t]),
            "selected_on_reported_metric": bool(leaked),
            **{key: _number(value[t]) for key, value in values.items()},
            "n_forward": exp.cost.get("n_forward"),
            "n_backward": exp.cost.get("n_backward"),
            "seconds": exp.cost.get("seconds"),
            "n_targets": len(exp.target_tokens),
        }
        rows.append(row)
    return rows


def _number(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def read_rows(path: Path, check_only: bool = False) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a torn last line (an interrupted write) is cut off the file (unless
    `check_only`). A file that is not rows of `evaluate` is a clear error."""
    if not path.exists():
        return []
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise InvalidInputError(f"cannot read {str(path)!r} to resume: {err.strerror or err}.") from err
    good_end = raw.rfind(b"\n") + 1
    if good_end < len(raw) and not check_only:
        with open(path, "r+b") as f:
            f.truncate(good_end)
    rows = []
    for number, line in enumerate(raw[:good_end].split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            row = None
        if not isinstance(row, dict) or not {"example", "method", "target_index"} <= row.keys():
            raise InvalidInputError(
                f"{str(path)!r} line {number} is not a row written by evaluate, so the file cannot be resumed; "
                "give a new --output file (or move this one away)."
            )
        rows.append(row)
    return rows


def complete_groups(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], set[tuple[Any, Any]]]:
    """The rows of whole (example, method) groups, and those groups. A group is whole when it holds the
    `n_targets` rows its writer announced (rows of files from before that field count as whole)."""
    groups: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["example"], row["method"]), []).append(row)
    whole = {key for key, members in groups.items()
             if all(r.get("n_targets", len(members)) == len(members) for r in members)}
    return [r for r in rows if (r["example"], r["method"]) in whole], whole


@dataclass
class Evaluation:
    """Rows (one per example x target x method) and their summary (mean and 95% interval per method)."""

    rows: pd.DataFrame
    summary: pd.DataFrame


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% normal interval (1.96 standard errors) of every numeric column, per method.

    Targets are the unit: each (example, target) pair counts once.
    """
    ignore = {"example", "target_index", "n_targets"}
    numeric = [c for c in rows.columns if c not in ignore and pd.api.types.is_numeric_dtype(rows[c])]
    grouped = rows.groupby("method", sort=False)[numeric]
    mean, sem, count = grouped.mean(), grouped.sem(), grouped.count()
    out = {}
    for column in numeric:
        out[(column, "mean")] = mean[column]
        out[(column, "ci95")] = 1.96 * sem[column]
        out[(column, "n")] = count[column]
    return pd.DataFrame(out)


def evaluate(
    attributor: Attributor,
    examples: Iterable[dict[str, Any]],
    methods: Iterable[str | dict | MethodSpec] = ("ig",),
    *,
    output: str | os.PathLike | None = None,
    metrics=DEFAULT_METRICS,
    bins=ERASER_BINS,
    removal: str = "delete",
    normalisation: str = "bins_plus_one",
    batch_size: int = 32,
    show_progress: bool = True,
) -> Evaluation:
    """Explain every example with every method and score each explanation.

    Args:
        attributor: wraps the model and tokenizer.
        examples: a `datasets.Dataset` or a list of dicts with "prompt" (text or chat messages) and optionally
            "answer" (explained teacher-forced; otherwise the model's greedy generation), "evidence" and
            "template_spans" (character spans, for hit@1 and AUPRC).
        methods: names, dicts with "method", "label" and parameters, or `MethodSpec`s.
        output: JSON-lines file the rows stream to; an existing file is resumed.
        metrics, bins, removal, normalisation, batch_size: passed to `llm_attrib.metrics.faithfulness`.
        show_progress: a progress bar over (example, method) pairs.

    Returns:
        An `Evaluation` with `rows` (DataFrame) and `summary` (mean and 95% interval per method).

    Example:
        >>> model, tokenizer = llm_attrib.zoo.load("recall")
        >>> result = evaluate(Attributor(model, tokenizer), llm_attrib.zoo.examples("recall", n=20), ["ig", "random"])
        >>> result.summary
    """
    if getattr(attributor, "shard_points", False) and parallel.n_processes() > 1:
        raise InvalidInputError(
            "evaluate() already gives each process its own examples; use an Attributor without shard_points=True."
        )
    specs = method_specs(methods)
    data = list(examples)
    options = dict(metrics=metrics, bins=bins, removal=removal, normalisation=normalisation, batch_size=batch_size)
    path = Path(output) if output is not None else None
    shard = _shard_path(path)
    read = read_rows(shard) if shard is not None else []
    done_rows, done = complete_groups(read)
    if len(done_rows) < len(read):  # a torn group: rewritten without it, then computed again
        shard.write_text("".join(json.dumps(r) + "\n" for r in done_rows))
    mine = parallel.my_share(range(len(data)))
    share = set(mine)  # a shard written with another process count may hold other processes' examples
    done_rows = [r for r in done_rows if r["example"] in share]
    work = [(i, spec) for i in mine for spec in specs if (i, spec.label) not in done]
    new_rows: list[dict[str, Any]] = []
    with tqdm(total=len(work), desc="evaluating", disable=not show_progress, delay=1.0) as bar:
        for index, spec in work:
            rows = example_rows(attributor, data[index], index, spec, options)
            if shard is not None:
                with open(shard, "a") as f:
                    f.write("".join(json.dumps(r) + "\n" for r in rows))
            new_rows.extend(rows)
            bar.update()
    # every process gets every row through the process group, so machines need no shared file system
    rows = parallel.gathered(done_rows + new_rows)
    if path is not None and parallel.n_processes() > 1 and parallel.is_main():
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    frame = pd.DataFrame(rows)
    if not frame.empty:
        order = {spec.label: k for k, spec in enumerate(specs)}
        frame = frame.sort_values(
            ["example", "method", "target_index"], kind="stable",
            key=lambda column: column.map(order) if column.name == "method" else column,
        ).reset_index(drop=True)
    return Evaluation(rows=frame, summary=summarise(frame) if not frame.empty else pd.DataFrame())


def _shard_path(path: Path | None) -> Path | None:
    """The file this process writes: the output itself with one process, a per-process shard otherwise."""
    if path is None:
        return None
    if parallel.n_processes() == 1:
        return path
    return path.with_name(f"{path.name}.part{parallel.rank()}")


def load_rows(path: str | os.PathLike) -> pd.DataFrame:
    """Read an evaluation's rows back."""
    return pd.DataFrame(read_rows(Path(path)))


def mean_cost(rows: pd.DataFrame) -> pd.DataFrame:
    """Cost per example and method (forward and backward passes, seconds), averaged over examples."""
    per_example = rows.groupby(["method", "example"], sort=False)[["n_forward", "n_backward", "seconds"]].first()
    return per_example.groupby("method", sort=False).mean()


