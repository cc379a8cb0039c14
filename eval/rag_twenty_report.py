"""eval/results/rag_twenty.md from the rows of `eval/rag.py twenty` (no model): top-1 on (a) and (b) at 3-5 and 20
documents, agreement with leave-one-out against cost, the targets; and the earlier 3-5-document rows under the same
counting rule (the rule: eval/results/rag/twenty_docs.md)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np

from rag_data import HERE, RESULTS, read_rows
from rag_peers import load_contextcite
from rag_report import spearman
from rag_twenty_runs import MARGIN, twenty_part

REPORT = RESULTS.parent / "rag_twenty.md"
LOAD_LOGS = {"earlier run": RESULTS / "twenty_load.log", "continuation": RESULTS / "twenty_load_continuation.log"}
EARLIER_COMMIT = "5ce9b2b"  # the earlier run's last commit: its rows and ContextCite results tell the runs apart
RUNS = ("earlier run", "continuation")
METHODS = ["ig_mask", "leave_one_out", "shapley", "contextcite_64", "contextcite_32"]
LABELS = {"ig_mask": "IG over the mask (default)", "leave_one_out": "leave-one-out", "shapley": "Shapley values",
          "contextcite_64": "ContextCite 64", "contextcite_32": "ContextCite 32"}
DOCS = {"source": "3-5", "20": "20"}
TARGETS = {("a", "source"): 0.95, ("b", "source"): 0.9, ("a", "20"): 0.9, ("b", "20"): 0.9}
EARLIER = {"a": ["smollm2_own_heldout_test"], "b": ["smollm2_own", "smollm2_own_replication"]}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def at_earlier_commit(name: str) -> str | None:
    """A results file as the earlier run committed it (None if it had none)."""
    done = subprocess.run(["git", "show", f"{EARLIER_COMMIT}:eval/results/rag/{name}"], cwd=HERE,
                          capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None


def earlier_figures(part: str) -> set[tuple[str, str]]:
    """(row id, method) pairs the earlier run had computed for a part: everything else is the continuation's."""
    rows = at_earlier_commit(f"{part}.jsonl")
    out = set()
    for line in (rows or "").splitlines():
        row = json.loads(line)
        out |= {(row["id"], "leave_one_out")} | {(row["id"], m) for m in row.get("methods", {})}
    cc = at_earlier_commit(f"contextcite_{part}.json")
    for e in json.loads(cc)["examples"] if cc else []:
        out |= {(e["id"], "contextcite_64")} | {(e["id"], f"contextcite_{k}") for k in e.get("also", {})}
    return out


def scored(row: dict, contextcite: dict[str, dict]) -> dict[str, dict]:
    """Every method's scores and cost on one counted row (leave-one-out and ContextCite included)."""
    out = {name: m for name, m in row.get("methods", {}).items() if "scores" in m}
    out["leave_one_out"] = {"scores": row["leave_one_out"], "seconds": row["loo_seconds"],
                            "n_forward": row["loo_forwards"], "n_backward": 0}
    cc = contextcite.get(row["id"])
    if cc is not None:
        out["contextcite_64"] = {"scores": cc["scores"], "seconds": cc["seconds"], "n_forward": cc["n_ablations"],
                                 "n_backward": 0}
        for k, fit in cc.get("also", {}).items():
            out[f"contextcite_{k}"] = {"scores": fit["scores"], "seconds": fit["seconds"],
                                       "n_forward": fit["n_ablations"], "n_backward": 0}
    return out


def metrics(rows: list[dict], contextcite: dict[str, dict], earlier: set | None = None) -> dict[str, list[dict]]:
    """Per method, one record per counted row it ran on, with the run its figures come from."""
    out: dict[str, list[dict]] = {m: [] for m in METHODS}
    for row in rows:
        loo_top = int(np.argmax(row["leave_one_out"]))
        for name, m in scored(row, contextcite).items():
            scores = np.asarray(m["scores"], dtype=float)
            out.setdefault(name, []).append({
                "top1": int(np.argmax(scores)) == row["relevant"], "top1_loo": int(np.argmax(scores)) == loo_top,
                "spearman": spearman(scores, row["leave_one_out"]), "seconds": m["seconds"],
                "n_forward": m["n_forward"], "n_backward": m["n_backward"],
                "run": RUNS[0] if earlier is None or (row["id"], name) in earlier else RUNS[1]})
    return out


def counted_earlier(group: str) -> tuple[list[dict], dict[str, dict], int]:
    """The earlier runs' correct rows that the rule counts (their own answers, 3-5 documents), their ContextCite
    (64 ablations) and Shapley values in this report's layout, and how many correct answers there were."""
    rows, contextcite, n_correct = [], {}, 0
    for part in EARLIER[group]:
        cc, _ = load_contextcite(part)
        contextcite.update(cc)
        for row in read_rows(RESULTS / f"{part}.jsonl"):
            if not row.get("methods") or not row.get("correct", True):
                continue
            n_correct += 1
            drops = row["leave_one_out"]
            margin = drops[row["relevant"]] - max(v for d, v in enumerate(drops) if d != row["relevant"])
            if group == "a" or margin >= MARGIN:
                methods = {"ig_mask": row["methods"]["ig_mask"]}
                if "subsets" in row:
                    methods["shapley"] = {"scores": row["subsets"]["shapley"], "seconds": row["subsets"]["seconds"],
                                          "n_forward": row["subsets"]["n_forward"], "n_backward": 0}
                rows.append({**row, "methods": methods})
    return rows, contextcite, n_correct


def cell(records: list[dict], key: str = "top1") -> str:
    if not records:
        return "–"
    k = sum(r[key] for r in records)
    return f"{k / len(records):.3f} ({k}/{len(records)})"


def top1_table(cells: dict[tuple[str, str], dict[str, list[dict]]], counts: dict) -> str:
    lines = ["| group | documents | questions reached | correct | counted | " + " | ".join(LABELS[m] for m in METHODS)
             + " |", "|---|---|---|---|---|" + "---|" * len(METHODS)]
    for (group, docs), per in cells.items():
        reached, correct, counted = counts[(group, docs)]
        lines.append(f"| ({group}) | {DOCS[docs]} | {reached} | {correct} | {counted} | "
                     + " | ".join(cell(per.get(m, [])) for m in METHODS) + " |")
    return "\n".join(lines)


def seconds(records: list[dict], run: str) -> str:
    values = [r["seconds"] for r in records if r["run"] == run]
    return f"{np.mean(values):.1f} ({len(values)})" if values else "–"


def agreement_table(cells: dict[tuple[str, str], dict[str, list[dict]]], by_run: bool = False) -> str:
    """Agreement and cost per method; with `by_run`, seconds per run (the runs' machines were loaded differently),
    each with its number of rows."""
    head = " | ".join(f"seconds, {run} (rows)" for run in RUNS) if by_run else "seconds"
    lines = [f"| documents | method | rows | Spearman vs LOO | top-1 = LOO | forwards | backwards | {head} |",
             "|---|---|---|---|---|---|---|" + ("---|---|" if by_run else "---|")]
    for docs in DOCS:
        for m in METHODS:
            records = [r for (g, d), per in cells.items() if d == docs for r in per.get(m, [])]
            if not records:
                continue
            rho = [r["spearman"] for r in records if not math.isnan(r["spearman"])]
            lines.append(f"| {DOCS[docs]} | {LABELS[m]} | {len(records)} | "
                         + (f"{np.mean(rho):.3f}" if rho else "–") + f" | {cell(records, 'top1_loo')} | "
                         f"{np.mean([r['n_forward'] for r in records]):.1f} | "
                         f"{np.mean([r['n_backward'] for r in records]):.1f} | "
                         + (" | ".join(seconds(records, run) for run in RUNS) if by_run
                            else f"{np.mean([r['seconds'] for r in records]):.1f}") + " |")
    return "\n".join(lines)


def target_lines(cells: dict[tuple[str, str], dict[str, list[dict]]]) -> str:
    lines = ["| target (IG over the mask) | measured | Wilson 95% | verdict |", "|---|---|---|---|"]
    for (group, docs), bar in TARGETS.items():
        records = cells.get((group, docs), {}).get("ig_mask", [])
        k, n = sum(r["top1"] for r in records), len(records)
        low, high = wilson(k, n)
        if n == 0:
            verdict = "not measured"
        else:
            verdict = ("met" if k / n >= bar else "not met") + (" (indicative only: n < 10)" if n < 10 else "")
        lines.append(f"| ({group}) at {DOCS[docs]} documents: top-1 >= {bar} | {cell(records)} | "
                     f"{low:.2f}-{high:.2f} | {verdict} |")
    return "\n".join(lines)


def load_line(run: str) -> str:
    """The run's load average, sampled every minute: its first and last samples and the largest 1-minute figure."""
    path = LOAD_LOGS[run]
    load = [" ".join(line.split()[:4]) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    if not load:
        return "Load average: not logged."
    peak = max(float(line.split()[1]) for line in load)
    return (f"Load average (1, 5, 15 min), sampled every minute: {load[0]} ... {load[-1]} (eval/results/rag/"
            f"{path.name}; max 1-min {peak:.1f}, mean 1-min {np.mean([float(l.split()[1]) for l in load]):.1f}).")


def cmd_twenty_report(args) -> None:
    cells, counts, codes, tokens, refusals, runs_rows = {}, {}, {}, {}, {}, {}
    for group in ("a", "b"):
        for docs in DOCS:
            part = twenty_part(group, docs)
            rows = read_rows(RESULTS / f"{part}.jsonl")
            counted = [r for r in rows if r.get("counted")]
            cells[(group, docs)] = metrics(counted, load_contextcite(part)[0], earlier_figures(part))
            counts[(group, docs)] = (len(rows), sum(r["correct"] for r in rows), len(counted))
            for r in rows:
                run = RUNS[1] if "package" in r else RUNS[0]
                codes.setdefault(run, set()).add(r["code"])
                for m in r.get("methods", {}).values():
                    codes.setdefault(RUNS[1] if "package" in m else RUNS[0], set()).add(m["code"])
                runs_rows.setdefault((group, docs), {}).setdefault(run, 0)
                runs_rows[(group, docs)][run] += 1
            if rows:
                tokens[(group, docs)] = [r["n_prompt_tokens"] for r in rows]
            ig = [r["methods"]["ig_mask"] for r in counted if "ig_mask" in r["methods"]]
            refused = refusals.setdefault(DOCS[docs], [0, 0])
            refused[0] += sum(m.get("default_budget_refused") is not None for m in ig)
            refused[1] += len(ig)
    earlier, earlier_counts = {}, {}
    for group in ("a", "b"):
        rows, contextcite, n_correct = counted_earlier(group)
        earlier[(group, "source")] = metrics(rows, contextcite)
        earlier_counts[(group, "source")] = ("all", n_correct, len(rows))
    earlier_settings = json.loads(at_earlier_commit("settings.json") or "{}")
    commands = [earlier_settings[p]["command"] for p in (twenty_part(g, d) for g in "ab" for d in DOCS)
                if p in earlier_settings]
    token_lines = "; ".join(f"({g}) at {DOCS[d]}: {min(t)}-{max(t)} (median {int(np.median(t))})"
                            for (g, d), t in tokens.items())
    new_rows = "; ".join(f"({g}) at {DOCS[d]}: {n.get(RUNS[1], 0)}" for (g, d), n in runs_rows.items())
    text = f"""# RAG at 3-5 and 20 documents, judged where documents carry the answer (#33)

Written by `python eval/rag.py twenty-report` from the rows in eval/results/rag/twenty_*.jsonl and the ContextCite
results beside them. The rule, the data and the sample sizes were fixed before the first counted row:
[rag/twenty_docs.md](rag/twenty_docs.md) (with its amendments, each written before the rows it governs).
SmolLM2-135M-Instruct, its own greedy answers, one thread per process, `nice -n 5`, on 2 CPU cores shared with other
engineers' jobs (load average below): seconds are for comparison within one run only, so the cost table gives them
per run.

Two runs of the same rows, in the same fixed orders, with the same package (main at dc8afb9's llm_attrib; the
continuation imported it exported from commit {EARLIER_COMMIT}, since main's later prompt change would have changed
every prompt; each of its rows records the path as `package`):

- **Earlier run** (13:19-14:42 UTC, two processes at a time): {'; '.join(f'`{c}`' for c in commands) or '–'}; `python
  eval/rag.py twenty a 20 --add shapley` (one row); then `python eval/rag.py contextcite twenty_<group>_<docs>
  --also-ablations 32 --resume`. Code: commits {', '.join(sorted(codes.get(RUNS[0], [])))}. {load_line(RUNS[0])}
- **Continuation** (16:01-17:36 UTC, one process at a time, each row its own process, pausing for other engineers'
  quiet windows): `bash eval/rag_twenty_continue.sh` (each step `python eval/rag.py twenty <group> <docs> --n <k>`,
  `... --add shapley --n <k>` or `python eval/rag.py contextcite twenty_<group>_<docs> --also-ablations 32 --resume
  --limit <k>`, k = the next row). Code: commits {', '.join(sorted(codes.get(RUNS[1], []))) or '–'}. New rows:
  {new_rows}. {load_line(RUNS[1])}

ContextCite: context-cite 0.0.4, transformers 4.57.6, in its own venv (`CONTEXTCITE_PYTHON` names it). Prompt
tokens: {token_lines}.

(a) = the held-out fictional set's test split (invented entities); (b) = real-text questions whose answer
leave-one-out names the relevant document for by at least {MARGIN} nats, decided per row at that document count (so
leave-one-out's top-1 on (b) is 1 by construction). "questions reached" = the prefix of the group's fixed order
that the time budget reached; "counted" = rows the rule counts; every method cell says on how many of those it ran.

## Top-1 (the relevant document ranked first), both runs' rows

{top1_table(cells, counts)}

`rag.explain`'s default memory budget (70% of the host's free memory, page cache excluded) refused the IG
ranking, which then ran with the Attributor's memory_budget at 6 GiB (the rule's amendment):
{"; ".join(f"at {d} documents in {k} of {n} rows" for d, (k, n) in refusals.items())}.

## Targets

{target_lines(cells)}

## Agreement with leave-one-out against cost, both runs' rows (counted rows of (a) and (b) together)

Seconds: wall time per example of one process, per run, with the rows each mean is over (ContextCite 32: to the
end of its 32nd ablation forward plus its own fit, within the 64-ablation run). A backward costs about two forwards.

{agreement_table(cells, by_run=True)}

## The earlier 3-5-document rows under the same counting rule (larger sample, earlier code)

`eval/rag.py smollm2` rows (the held-out test split; the real-text set and its second sample, pooled), written in
sessions before this one, with the default template of then ("Answer the question using the documents.", before
"in one sentence" was added; the twenty runs use dc8afb9's, with it), IG over the mask added by `--add ig_mask`, Shapley
values at 746a885 or unrecorded, ContextCite at 64 ablations only: every correct answer of the sets, counted by
the rule above.

{top1_table(earlier, earlier_counts)}

{agreement_table(earlier)}
"""
    REPORT.write_text(text)
    print(text)
