"""eval/results/rag_debugging.md from the rows of `eval/rag.py` (no model): metrics, tables and each section's text."""

from __future__ import annotations

import json

import numpy as np
import torch

from llm_attrib.rag.shapley import document_shapley
from llm_attrib.rag.verdicts import calibrate as rag_calibrate, judge

from rag_data import (CALIBRATION_SEED, DATASETS, REPORT, RESULTS, SMOLLM2_OWN_PARTS,
                      STANDARD_SEED, TEST_SEED, data_prefix, read_rows, smollm2_part)
from rag_peers import load_contextcite


def calibrate(supported: np.ndarray, unsupported: np.ndarray) -> tuple[float, float]:
    """The rule, written before any verdict row was computed: low = the midpoint between the unsupported margins' 95th
    percentile and the supported margins' 5th percentile; high = the supported margins' 5th percentile (or low,
    if that is lower). Flagged "unsupported": margin < low; "supported": margin >= high; between: uncertain."""
    return rag_calibrate(supported.tolist(), unsupported.tolist())


def batching_section() -> str:
    rows = read_rows(RESULTS / "batching.jsonl")
    if not rows:
        return ""
    lines = ["| documents | rows | subsets | forwards (batched) | seconds, one subset per forward | seconds, batched | "
             "speed-up (median) |", "|---|---|---|---|---|---|---|"]
    for n in sorted({r["n_documents"] for r in rows}):
        group = [r for r in rows if r["n_documents"] == n]
        ratio = np.median([r["seconds_one_per_forward"] / r["seconds_batched"] for r in group])
        lines.append(f"| {n} | {len(group)} | {group[0]['n_subsets']} | {np.mean([r['forwards_batched'] for r in group]):.1f} | "
                     f"{np.mean([r['seconds_one_per_forward'] for r in group]):.2f} | "
                     f"{np.mean([r['seconds_batched'] for r in group]):.2f} | {ratio:.2f}x |")
    return f"""## 3i. Removing documents in batched forwards (SmolLM2)

`python eval/rag.py batching --threads {rows[0]['threads']}` (code {rows[0]['code']}): every subset of the documents
of the real-text rows with 4 or 5 documents, the model's own answers, one subset per forward (`rag.explain`'s
default) and all in one left-padded batch (`internal_batch_size=32`); equal to 1e-3 nats on every row. On this CPU
the batch gains nothing, so the default stays one subset per forward; on a GPU pass internal_batch_size.

{chr(10).join(lines)}"""


def banzhaf(values: list[float]) -> list[float]:
    """Exact Banzhaf values from the 2^D subset values: each player's marginal contribution averaged over every
    subset of the others."""
    n = len(values).bit_length() - 1
    return [float(np.mean([values[m | 1 << i] - values[m] for m in range(len(values)) if not m >> i & 1]))
            for i in range(n)]


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def top2_drop(row: dict, scores) -> float:
    order = np.argsort(-np.asarray(scores), kind="stable")
    if len(order) < 2:
        return float("nan")
    return float(row["pair_drops"][order[0]][order[1]])


def method_scores(row: dict, contextcite: dict[str, dict], banzhaf_too: bool = False) -> dict[str, dict]:
    """Every method's document scores and cost on one row, leave-one-out, the exact Shapley values (and Banzhaf,
    the candidate the dev split turned down, where asked) and ContextCite included."""
    out = {k: v for k, v in row["methods"].items() if "scores" in v}
    out["leave_one_out"] = {"scores": row["leave_one_out"], "seconds": row["loo_seconds"],
                            "n_forward": row["loo_forwards"], "n_backward": 0}
    if "subsets" in row:
        subsets = row["subsets"]
        cost = {"seconds": subsets["seconds"], "n_forward": subsets["n_forward"], "n_backward": 0}
        out["shapley"] = {"scores": subsets["shapley"], **cost}
        if banzhaf_too:
            out["banzhaf"] = {"scores": banzhaf(subsets["values"]), **cost}
    cc = contextcite.get(row["id"])
    if cc is not None:
        out["contextcite"] = {"scores": cc["scores"], "seconds": cc["seconds"], "n_forward": cc["n_ablations"],
                              "n_backward": 0}
    return out


def metric_rows(rows: list[dict], contextcite: dict[str, dict], banzhaf_too: bool = False) -> list[dict]:
    out = []
    for row in rows:
        if not row.get("methods"):
            continue
        for label, m in method_scores(row, contextcite, banzhaf_too).items():
            scores = np.asarray(m["scores"], dtype=float)
            out.append({"id": row["id"], "cell": row.get("cell", "smollm2"), "method": label,
                        "top1": float(np.argmax(scores) == row["relevant"]),
                        "top1_loo": float(np.argmax(scores) == int(np.argmax(row["leave_one_out"]))),
                        "spearman": spearman(scores, row["leave_one_out"]), "top2_drop": top2_drop(row, scores),
                        "seconds": m["seconds"], "n_forward": m["n_forward"], "n_backward": m["n_backward"],
                        "converged": m.get("converged"), "completeness_error": m.get("completeness_error")})
    return out


ORDER = ["ig_embeddings", "ig_attention", "ig_mask", "ixg_mask", "ixg_attention", "attention", "random",
         "leave_one_out", "shapley", "banzhaf", "contextcite"]


def pivot(frame, value: str, fmt: str, cells: list[str]) -> str:
    methods = [m for m in ORDER if m in set(frame["method"])]
    lines = ["| cell | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for cell in cells:
        sub = frame[frame["cell"] == cell]
        values = []
        for m in methods:
            v = sub[sub["method"] == m][value].dropna()
            values.append("–" if v.empty else format(v.mean(), fmt))
        lines.append(f"| {cell} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def cmd_report(args) -> None:
    import pandas as pd

    settings = json.loads((RESULTS / "settings.json").read_text()) if (RESULTS / "settings.json").exists() else {}
    parts = [REPORT_HEAD]
    # 1. zoo
    zoo = read_rows(RESULTS / "zoo.jsonl")
    cc_zoo, cc_zoo_data = load_contextcite("zoo")
    if zoo:
        frame = pd.DataFrame(metric_rows(zoo, cc_zoo))
        cells = list(dict.fromkeys(r["cell"] for r in zoo))
        counts = {c: (sum(r["correct"] for r in zoo if r["cell"] == c), sum(r["cell"] == c for r in zoo)) for c in cells}
        labelled = frame.assign(cell=frame["cell"].map(lambda c: f"{c} ({counts[c][0]}/{counts[c][1]})"))
        names = [f"{c} ({counts[c][0]}/{counts[c][1]})" for c in cells]
        parts.append(zoo_section(settings.get("zoo", {}), labelled, names, frame, cc_zoo_data))
    verdicts = read_rows(RESULTS / "verdicts.jsonl")
    if verdicts:
        parts.append(verdict_section(settings.get("verdicts", {}), verdicts))
    for answer in ("own", "expected"):
        part = smollm2_part(answer)
        smol = read_rows(RESULTS / f"{part}.jsonl")
        if smol:
            parts.append(smollm2_section(settings.get(part, {}), smol, read_rows(RESULTS / "smollm2_knows.jsonl"),
                                         *load_contextcite(part), answer=answer))
    for split in ("dev", "test"):
        part = smollm2_part("own", "heldout", split)
        held = read_rows(RESULTS / f"{part}.jsonl")
        if held:
            parts.append(heldout_section(split, settings.get(part, {}), held, *load_contextcite(part)))
    speed = read_rows(RESULTS / "speed.jsonl")
    if speed:
        parts.append(speed_section(settings.get("speed", {}), speed))
    parts.append(sampled_shapley_section())
    parts.append(decompositions_section())
    part = smollm2_part("own", "replication")
    replication = read_rows(RESULTS / f"{part}.jsonl")
    if replication:
        parts.append(smollm2_section(settings.get(part, {}), replication,
                                     read_rows(RESULTS / f"{data_prefix('replication')}_knows.jsonl"),
                                     *load_contextcite(part), answer="own", data="replication"))
        parts.append(pooled_real_text_section())
    parts.append(batching_section())
    parts.append((RESULTS / "notes.md").read_text() if (RESULTS / "notes.md").exists() else "")
    REPORT.write_text("\n\n".join(p.strip() for p in parts if p.strip()) + "\n")
    print(REPORT.read_text())


REPORT_HEAD = """# RAG debugging: `llm_attrib.rag` against leave-one-out, raw attention, random and ContextCite (#15)

Written by `python eval/rag.py report` from the JSON lines in `eval/results/rag/` (one file per part; each row one
example, streamed as it finished). Run on a 2-core CPU shared with other jobs, one thread (`torch.set_num_threads(1)`)
unless stated: seconds are indicative, ratios and step counts are not affected. The code and the exact commands:
`eval/rag.py` (its docstring) and `eval/results/rag/settings.json` (every argument of each run).

Metrics (per example, then averaged): **top-1** = the method's highest-scoring document is the relevant one;
**top-1 = LOO** = it is the document whose removal costs the answer most; **Spearman** = rank correlation of the
method's document scores with the leave-one-out drops (undefined, so left out, where either is constant, e.g.
attention with ties); **top-2 drop** = nats the answer's log-probability loses when the method's top-1 and top-2
documents are removed together; **s/ex** = seconds per example; **fwd/bwd** = forward and backward passes.
Leave-one-out is the reference (1 + documents forwards); its own Spearman is 1 by construction."""


def zoo_shapley_note(frame) -> str:
    if "shapley" not in set(frame["method"]):
        return ""
    return (" Shapley: `rag.explain(..., shapley=True)`'s values at its default budget of 64 forwards (`python "
            "eval/rag.py subsets zoo`): exact from every subset up to 6 documents, sampled orders for 7 and 8.")


def zoo_section(settings: dict, labelled, names, frame, cc_data) -> str:
    cost = frame.groupby("method")[["seconds", "n_forward", "n_backward"]].mean().reindex(
        [m for m in ORDER if m in set(frame["method"])])
    cost_lines = ["| method | s/ex | fwd/ex | bwd/ex |", "|---|---|---|---|"]
    cost_lines += [f"| {m} | {r.seconds:.3f} | {r.n_forward:.1f} | {r.n_backward:.1f} |" for m, r in cost.iterrows()]
    overall = labelled.assign(cell="all cells").groupby("method")
    summary = ["| method | top-1 | top-1 = LOO | Spearman vs LOO | top-2 drop (nats) |", "|---|---|---|---|---|"]
    for m in [m for m in ORDER if m in set(frame["method"])]:
        g = overall.get_group(m)
        summary.append(f"| {m} | {g['top1'].mean():.3f} ({int(g['top1'].sum())}/{len(g)}) | {g['top1_loo'].mean():.3f} | "
                       f"{g['spearman'].mean():.3f} | {g['top2_drop'].mean():.2f} |")
    converged = frame[frame["method"].str.startswith("ig_")].groupby("method").agg(
        converged=("converged", "mean"), worst=("completeness_error", "max"))
    conv = "; ".join(f"{m}: {r.converged:.1%} of examples converged (1% tolerance), worst completeness error "
                     f"{r.worst:.2%}" for m, r in converged.iterrows())
    cc_note = ("ContextCite (`eval/peers/contextcite_rag.py`, its own venv) on the same correctly answered examples, "
               "each document as a source exactly as rendered, the model's answer as the given response: " +
               (f"{cc_data['settings'].get('num_ablations')} ablations per example, Lasso surrogate, "
                + ", ".join(f"{k} {v}" for k, v in cc_data["versions"].items()) + "."
                if cc_data else "no results (not run)."))
    return f"""## 1. Zoo variants (the `rag` zoo model)

Command: `{settings.get('command', 'python eval/rag.py zoo --n 50')}`, then
`python eval/rag.py contextcite zoo`. Every method through `rag.explain(..., template="zoo", granularity="answer",
verify=False)` with the package defaults (IG: score-guided quadrature to 1%, neutral-token / zero baselines);
random draws with a per-example seed. "zoo examples" = `zoo.examples("rag", n, seed={STANDARD_SEED})`; the other
cells are generated by `zoo_cells` (string seeds per cell). n = examples the model answered correctly / generated;
only the correct ones are scored. {conv}. {cc_note}{zoo_shapley_note(frame)}

### Top-1 document accuracy (against the relevant document)

{pivot(labelled, 'top1', '.3f', names)}

### Spearman correlation of the document scores with leave-one-out

{pivot(labelled, 'spearman', '.3f', names)}

### Answer log-probability lost when the method's top-2 documents are removed (nats; higher = the method found what carries the answer)

{pivot(labelled, 'top2_drop', '.2f', names)}

### Top-1 agrees with leave-one-out's top-1

{pivot(labelled, 'top1_loo', '.3f', names)}

### All cells together

{chr(10).join(summary)}

### Cost per example (all cells)

{chr(10).join(cost_lines)}"""


def verdict_section(settings: dict, rows: list[dict]) -> str:
    correct = [r for r in rows if r["correct"]]
    cal = [r for r in correct if r["split"] == "calibration"]
    test = [r for r in correct if r["split"] == "test"]
    s_cal = np.array([r["supported"]["margin"] for r in cal])
    u_cal = np.array([r["unsupported"]["margin"] for r in cal])
    low, high = calibrate(s_cal, u_cal)

    def label(v):
        return judge(v["drop_cited"], v["drop_other"], (low, high), cited=bool(v["cited"])).label

    def pr(rows_):
        truth = [False] * len(rows_) + [True] * len(rows_)
        flags = [label(r["supported"]) == "unsupported" for r in rows_] + \
                [label(r["unsupported"]) == "unsupported" for r in rows_]
        tp = sum(t and f for t, f in zip(truth, flags))
        fp = sum(f and not t for t, f in zip(truth, flags))
        fn = sum(t and not f for t, f in zip(truth, flags))
        precision = tp / (tp + fp) if tp + fp else float("nan")
        recall = tp / (tp + fn) if tp + fn else float("nan")
        return precision, recall, tp, fp, fn

    def labels(rows_, key):
        got = [label(r[key]) for r in rows_ if key in r]
        return {k: got.count(k) for k in ("supported", "uncertain", "unsupported")}, len(got)

    def quant(values):
        return " / ".join(f"{np.quantile(values, q):+.2f}" for q in (0, 0.05, 0.5, 0.95, 1))

    lines = ["| split | case | n | supported | uncertain | unsupported | margin min / q05 / median / q95 / max |",
             "|---|---|---|---|---|---|---|"]
    for name, part in (("calibration", cal), ("test", test)):
        for key in ("supported", "unsupported", "own"):
            got, n = labels(part, key)
            margins = np.array([r[key]["margin"] for r in part if key in r])
            if n:
                lines.append(f"| {name} | {key} | {n} | {got['supported']} | {got['uncertain']} | {got['unsupported']} "
                             f"| {quant(margins)} |")
    p_cal, r_cal, *_ = pr(cal)
    p, r, tp, fp, fn = pr(test)
    own = [x for x in test if "own" in x]
    own_flagged = sum(label(x["own"]) == "unsupported" for x in own)
    copies = [x for x in own if x["own_copied"] is not None]
    copies_flagged = sum(label(x["own"]) == "unsupported" for x in copies)
    others = [x for x in own if x["own_copied"] is None]
    others_flagged = sum(label(x["own"]) == "unsupported" for x in others)
    other_answers = sorted({x["own_answer"] for x in others})
    no_answer = sum(1 for x in test if not x["own_answer"].strip())
    n_cal = sum(1 for x in rows if x["split"] == "calibration")
    n_test = sum(1 for x in rows if x["split"] == "test")
    uncited = sum(not x["unsupported"]["cited"] for x in test)
    return f"""## 2. Unsupported-answer detection (zoo)

Command: `{settings.get('command', 'python eval/rag.py verdicts --n 100')}`. `{settings.get('method', 'rag.explain defaults (ig over embeddings, granularity sentence, verify)')}`:
one row per answer sentence; the statistic is `verdicts[0].margin` (nats lost when
the cited documents are removed, minus the mean loss when one other document is removed). Supported: the model's
correct answer with all documents. Unsupported: the same answer (`answer=`) with its relevant document removed.
Calibration: `zoo.examples("rag", {settings.get('n', 100)}, seed={settings.get('calibration_seed', CALIBRATION_SEED)})`,
{len(cal)}/{n_cal} answered correctly; test: seed {settings.get('test_seed', TEST_SEED)}, {len(test)}/{n_test}.

Rule (written into `calibrate` in eval/rag.py before any verdict row was computed): low = midpoint between the 95th percentile
of the unsupported margins and the 5th percentile of the supported margins; high = the supported margins' 5th
percentile (or low if that is lower). On the calibration set: **thresholds = ({low:.2f}, {high:.2f})** nats.
"Unsupported" = flagged; "uncertain" counts as not flagged.

| | precision (unsupported) | recall (unsupported) |
|---|---|---|
| calibration (in-sample, for reference) | {p_cal:.3f} | {r_cal:.3f} |
| **test** | **{p:.3f}** | **{r:.3f}** (tp {tp}, fp {fp}, fn {fn}) |

Labels with the calibrated thresholds (relabelled from each row's drop_cited / drop_other / cited, so the
thresholds the run used, the package's `rag.THRESHOLDS` of the time, do not matter); "own" = the model's own
greedy answer after the relevant document was removed:

{chr(10).join(lines)}

In the test unsupported case the attribution cited no document (all scores <= 0, so "unsupported" by rule) in
{uncited} of {len(test)} examples.

**The model's own answers without the relevant document (test):** it answered in {len(own)} of {len(test)} cases
({no_answer} empty). It copied another document's value in {len(copies)}: the verdicts flag {copies_flagged} of
{len(copies)} ({copies_flagged / max(len(copies), 1):.1%}) as unsupported. Such an answer is carried by the (wrong)
document it was copied from, so "supported" is the verdict's documented meaning, not a detection failure: the verdict
checks that an answer depends on the documents it cites, not that the right document was retrieved. The other
{len(others)} answers copy no document ({', '.join(repr(a) for a in other_answers[:5])}): {others_flagged} of
{len(others)} flagged. All own answers together: {own_flagged} of {len(own)} ({own_flagged / max(len(own), 1):.1%})
flagged."""


def smollm2_table(frame) -> str:
    methods = [m for m in ORDER if m in set(frame["method"])]
    lines = ["| method | n | top-1 | top-1 = LOO | Spearman vs LOO | top-2 drop (nats) | converged | worst completeness error "
             "| s/ex | fwd/ex | bwd/ex |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in methods:
        g = frame[frame["method"] == m]
        conv = g["converged"].dropna()
        worst = g["completeness_error"].dropna()
        lines.append(f"| {m} | {len(g)} | {g['top1'].mean():.3f} ({int(g['top1'].sum())}/{len(g)}) | "
                     f"{g['top1_loo'].mean():.3f} | {g['spearman'].mean():.3f} | {g['top2_drop'].mean():.2f} | "
                     f"{'–' if conv.empty else f'{conv.astype(float).mean():.0%}'} | "
                     f"{'–' if worst.empty else f'{worst.max():.1%}'} | {g['seconds'].mean():.1f} | "
                     f"{g['n_forward'].mean():.0f} | {g['n_backward'].mean():.0f} |")
    return "\n".join(lines)


def budget_note(minutes) -> str:
    """Why the run stopped early: its time budget, or what the settings say (a run stopped by hand)."""
    return f" ({minutes})" if isinstance(minutes, str) else f" (the time budget of {minutes} minutes ran out there)"


def smollm2_section(settings: dict, rows: list[dict], knows_rows: list[dict], cc: dict, cc_data, answer: str,
                    data: str = "real_text") -> str:
    import pandas as pd

    n_known = sum(r["known"] for r in knows_rows)
    refused = [r for r in rows if "refused" in r]
    ran = [r for r in rows if r.get("methods")]
    frame = pd.DataFrame(metric_rows(ran, cc))
    closed_file = f"{data_prefix(data)}_closed_book.jsonl"
    closed = {r["id"]: r["knows_closed_book"] for r in read_rows(RESULTS / closed_file)}
    needs = [r for r in ran if closed.get(r["id"]) is False]
    split = ""
    if closed and all(r["id"] in closed for r in ran):
        split = f"""

Only the examples the model does **not** answer without documents ({len(needs)} of {len(ran)}; the closed-book reply
is the greedy 24-token reply to the same template with every document removed, `{closed_file}`, decided
by the model alone, before and apart from any attribution or leave-one-out). Where the model knows the answer
without documents, no document carries it and "the relevant document" is not what any faithful method should find:

{smollm2_table(frame[frame["id"].isin({r["id"] for r in needs})])}"""
    lines = [smollm2_table(frame)]
    loo_right = sum(int(np.argmax(r["leave_one_out"])) == r["relevant"] for r in ran)
    refused_text = "; ".join(f"{r['id']} ({r['answer']!r}): {r['refused'][:160]}" for r in refused) or "none"
    explained = (
        "the model's own greedy reply (up to 64 tokens, cut at its end-of-turn token, e.g. \"The capital city of "
        "Australia is Canberra.\"), as `rag.explain` explains it with answer=None, given as `answer=`"
        if answer == "own" else
        "the expected short answer as `answer=` (e.g. \"Canberra\", the whole assistant reply as eval/real_text.py "
        "explains it)")
    heading = ("## 3. SmolLM2-135M-Instruct on the real-text rag set: the model's own answers" if answer == "own" else
               "## 3a. SmolLM2-135M-Instruct on the real-text rag set: the bare expected answer (earlier protocol)")
    if data == "replication":
        heading = ("## 3g. SmolLM2 on a second real-text sample (`eval/data/rag_real_replication.jsonl`): the model's "
                   "own answers")
    part = smollm2_part(answer, data)
    stopped = len(ran) + len(refused) < n_known  # a run that did not reach every correctly answered example
    which = "the first" if stopped else "all"
    budget = budget_note(settings.get("minutes", "?")) if stopped else ""
    return f"""{heading}

Command: `{settings.get('command', 'python eval/rag.py smollm2')}`, then `python eval/rag.py contextcite {part}`.
The model answers {n_known} of {len(knows_rows)} rag examples correctly (eval/real_text.py's `knows`: its greedy
24-token reply contains the expected answer; decided for every example before any attribution). Explained: {which}
{len(ran)} of those, in the set's order, the ones the model cannot answer without documents first{budget}
with {explained}, granularity="answer", IG with max_steps={settings.get('max_steps', '?')} (other settings: package
defaults, i.e. score-guided quadrature to a 1% tolerance). Refused by the answer boundary check: {len(refused)}
({refused_text}). Leave-one-out's own top document is the relevant one in {loo_right} of {len(ran)}.{subsets_note(ran, part, False)}

All explained examples:

{chr(10).join(lines)}{split}"""


def pooled_real_text_section() -> str:
    """The two real-text samples' correctly answered examples together, as the rule in notes.md ("A second
    real-text sample") judges #15's top-1 and agreement targets on them."""
    import pandas as pd

    frames = []
    for data in ("real_text", "replication"):
        part = smollm2_part("own", data)
        known = {r["id"] for r in read_rows(RESULTS / f"{data_prefix(data)}_knows.jsonl") if r["known"]}
        ran = [r for r in read_rows(RESULTS / f"{part}.jsonl") if r.get("methods") and r["id"] in known]
        frames.append(pd.DataFrame(metric_rows(ran, load_contextcite(part)[0])).assign(sample=part))
    in_both = set.intersection(*(set(f["method"]) for f in frames))  # a method run on one sample only is left out
    frame = pd.concat(frames)
    frame = frame[frame["method"].isin(in_both)]
    counts = frame.groupby("sample")["id"].nunique()
    paired = frame[frame["method"].isin(["shapley", "contextcite"])].pivot_table(
        index="id", columns="method", values="spearman").dropna()
    difference = ""
    if {"shapley", "contextcite"} <= set(paired.columns) and len(paired) > 1:
        d = paired["shapley"] - paired["contextcite"]
        difference = (f" Shapley minus ContextCite in Spearman with leave-one-out, per example: mean {d.mean():+.3f} "
                      f"(standard error {d.std(ddof=1) / np.sqrt(len(d)):.3f}, n = {len(d)}; Shapley higher on "
                      f"{int((d > 0).sum())}, lower on {int((d < 0).sum())}, equal on {int((d == 0).sum())}).")
    return f"""## 3h. Both real-text samples together (the rule in notes.md, "A second real-text sample")

The correctly answered examples of section 3 ({counts.get("smollm2_own", 0)}) and section 3g
({counts.get("smollm2_own_replication", 0)}), pooled; the methods run on both.{difference}

{smollm2_table(frame)}"""


def subsets_note(rows: list[dict], part: str, banzhaf_too: bool) -> str:
    if not any("subsets" in r for r in rows):
        return ""
    which = "shapley and banzhaf (the two candidates of the rule in notes.md)" if banzhaf_too else "shapley"
    return (f" Rows {which}: exact values from every subset of documents, one forward each (`python eval/rag.py "
            f"subsets {part}`, 2^D forwards: 8-32 here).")


def heldout_section(split: str, settings: dict, rows: list[dict], cc: dict, cc_data) -> str:
    import pandas as pd

    knows_rows = {r["id"]: r["known"] for r in read_rows(RESULTS / f"{data_prefix('heldout')}_knows.jsonl")}
    examples = (json.loads(line) for line in DATASETS["heldout"].read_text().splitlines() if line.strip())
    split_ids = {ex["id"] for ex in examples if ex["split"] == split}
    in_split = [i for i in knows_rows if i in split_ids]
    ran = [r for r in rows if r.get("methods")]
    frame = pd.DataFrame(metric_rows(ran, cc, banzhaf_too=split == "dev"))
    correct = frame[frame["id"].isin({r["id"] for r in ran if knows_rows[r["id"]]})]
    wrong = [r for r in ran if not knows_rows[r["id"]]]
    loo_right = sum(int(np.argmax(r["leave_one_out"])) == r["relevant"] for r in ran if knows_rows[r["id"]])
    peer = (f" ContextCite (`python eval/rag.py contextcite {smollm2_part('own', 'heldout', split)}`) as in section 3: "
            "64 ablations, each document kept with probability 0.5, Lasso surrogate; its seconds come from its own "
            "stack and a busy machine." if cc else " ContextCite was not run on this split.")
    return f"""## 3{'b' if split == 'dev' else 'c'}. SmolLM2 on the held-out fictional rag set: {split} split

Command: `{settings.get('command', 'python eval/rag.py smollm2 --data heldout')}`. `eval/data/rag_heldout.jsonl`:
invented entities, so the model can only answer from the documents (the rule this split served, and when it was
fixed: `eval/results/rag/notes.md`). SmolLM2 answers {sum(knows_rows[i] for i in in_split)} of {len(in_split)}
{split} questions correctly; it mostly names the entity of another document. Every answer explained is the model's
own greedy reply, granularity="answer", IG with max_steps={settings.get('max_steps', '?')}.{peer}{subsets_note(ran, smollm2_part('own', 'heldout', split), split == "dev")}

Correct answers ({len(correct['id'].unique())}; leave-one-out's own top document is the relevant one in {loo_right}):

{smollm2_table(correct) if len(correct) else "(none)"}

Every answer, right or wrong ({len(ran)}; {len(wrong)} wrong): the wrong ones came from some document too, so
agreement with leave-one-out means the same there; top-1 still counts the relevant document, which a wrong answer
mostly did not use:

{smollm2_table(frame)}"""


def decompositions_section() -> str:
    """IG over the mask and the documents' Shapley values split nearly the same total (the answer with every
    document, minus with none: masked out of attention for IG, removed from the prompt for Shapley); how alike
    are the splits?"""
    lines = ["| rows | n | top document the same | Spearman (mean) | correlation of the totals | median total (nats) | "
             "median difference of the totals (nats) |", "|---|---|---|---|---|---|---|"]
    for part in SMOLLM2_OWN_PARTS:
        rows = [r for r in read_rows(RESULTS / f"{part}.jsonl") if "subsets" in r and "ig_mask" in r["methods"]]
        if not rows:
            continue
        ig = [np.asarray(r["methods"]["ig_mask"]["scores"]) for r in rows]
        shapley = [np.asarray(r["subsets"]["shapley"]) for r in rows]
        totals = np.array([[a.sum(), b.sum()] for a, b in zip(ig, shapley)])
        same = np.mean([a.argmax() == b.argmax() for a, b in zip(ig, shapley)])
        rho = np.nanmean([spearman(a, b) for a, b in zip(ig, shapley)])
        lines.append(f"| {part} | {len(rows)} | {same:.3f} | {rho:.3f} | {np.corrcoef(totals.T)[0, 1]:.3f} | "
                     f"{np.median(totals[:, 1]):.2f} | {np.median(np.abs(totals[:, 0] - totals[:, 1])):.2f} |")
    if len(lines) == 2:
        return ""
    return f"""## 3f. Two decompositions of one total: IG over the mask and the documents' Shapley values

Both split what the documents add to the answer's log-probability: IG over the mask integrates from every document
masked out of attention (a continuous path, tokens' gradients), the Shapley values average the documents'
marginal contributions over every order of removing them from the prompt (discrete, one forward per subset). The
totals nearly coincide (masking a document and removing it do almost the same to this model); how the total is
split differs, and where they differ, interactions between documents decide (the diagonal path sees every document
partly visible at once, the orders see each one added to whole documents).

{chr(10).join(lines)}"""


SAMPLED_BUDGETS = {4: (8, 12), 5: (8, 16, 24)}  # forwards below 2^D, where rag.explain samples orders
SAMPLED_SEEDS = 5


def looked_up(values: torch.Tensor):
    """`document_shapley`'s log_probs from stored coalition values (2^D, S), row m the subset with bits m."""
    return lambda subsets: values[[sum(1 << d for d in kept) for kept in subsets]]


def sampled_shapley_section() -> str:
    """How close sampled orders come to the exact Shapley values, replayed on the stored subset values of the
    SmolLM2 rows with 4 and 5 documents (no forward: each sampled subset is looked up)."""
    from llm_attrib.rag.shapley import exact_shapley

    rows = [r for part in SMOLLM2_OWN_PARTS
            for r in read_rows(RESULTS / f"{part}.jsonl") if "subsets" in r]
    if not rows:
        return ""
    lines = ["| documents | budget (forwards) | examples x seeds | subsets evaluated | orders | Spearman with exact | "
             "same top document | median worst error (nats) | exact within 2 standard errors |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n_documents, budgets in SAMPLED_BUDGETS.items():
        games = [torch.tensor(r["subsets"]["values"], dtype=torch.float64)[:, None] for r in rows
                 if r["n_documents"] == n_documents]
        for budget in budgets:
            stats = []
            for values in games:
                exact = exact_shapley(values)[0]
                for seed in range(SAMPLED_SEEDS):
                    result = document_shapley(looked_up(values), n_documents, budget=budget, seed=seed)
                    estimate, stderr = result.values[0], result.stderr[0]
                    error = (estimate - exact).abs()
                    stats.append((result.n_subsets, result.n_orders, spearman(estimate.numpy(), exact.numpy()),
                                  float(estimate.argmax() == exact.argmax()), float(error.max()),
                                  float((error <= 2 * stderr).double().mean()), result.exact))
            s = np.array(stats, dtype=float)
            lines.append(f"| {n_documents} | {budget} | {len(games)} x {SAMPLED_SEEDS} | {s[:, 0].mean():.1f} | "
                         f"{s[:, 1].mean():.1f} | {np.nanmean(s[:, 2]):.3f} | {s[:, 3].mean():.3f} | "
                         f"{np.median(s[:, 4]):.2f} | {s[:, 5].mean():.2f} |")
    return f"""## 3e. Sampled Shapley values against the exact ones

`rag.explain(..., shapley=True)` evaluates every subset of documents when 2^D fits `shapley_budget` (64: up to 6
documents) and otherwise samples orders, each with its reverse, until the budget's subsets are spent (at least two
pairs). Replayed here on the stored subset values of every SmolLM2 row above with 4 or 5 documents, at budgets below
2^D, {SAMPLED_SEEDS} seeds each (`python eval/rag.py report`; no forward is run). Spearman and the worst error
compare each estimate with the exact values of the same row; the last column is how often the exact value lies
within two of the reported standard errors (0.95 would be a calibrated interval).

{chr(10).join(lines)}

With the two or three pairs of orders such budgets buy, the estimates find the exact top document about nine
times in ten, but their standard errors come from so few orders that they understate the error: treat a sampled
result (`exact=False`) as a rough ranking, or raise `shapley_budget`."""


def speed_section(settings: dict, rows: list[dict]) -> str:
    lines = ["| code | space | answer | prompt tokens | answer tokens | threads | seconds | gradient evaluations (n_steps) | "
             "forwards | backwards | worst completeness error | top document (relevant) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.get('code', 'before 2026-11-26')} | {r.get('space', 'embeddings')} | {'given' if r['answer_given'] else 'generated'}: {r['answer']!r} | {r['n_prompt_tokens']} | "
                     f"{r['n_answer_tokens']} | {r['threads']} | {r['seconds']:.1f} | {r['n_steps']} | "
                     f"{r['cost']['n_forward']} | {r['cost']['n_backward']} | {r['completeness_error']:.2%} | "
                     f"{r['top_document']} ({r['relevant']}) |")
    return f"""## 3d. Speed target: a document ranking on SmolLM2

Command: `{settings.get('command', 'python eval/rag.py speed --threads 2')}`: `rag.explain(model, tokenizer, question,
documents, granularity="answer")` with every other setting at its default (IG, score-guided to 1%, max_steps 512,
verify=True; the space: embeddings before rag.explain's default became attention, then the mask (both on
2026-11-26), `--space` where given; each row says its space), on {rows[0]['id']} (the first real-text rag example with 3 documents, a 110-130 token
prompt, that the model answers correctly), timed end to end (generation, attribution, leave-one-out check), on
{rows[0]['threads']} threads. Target: < 30 s. One row per run and answer, with the code it ran (the commit, where
recorded); repeated runs of the same code and space took the same steps, forwards and backwards each time, so the
time differences between them are load from other jobs on the shared cores.

{chr(10).join(lines)}"""
