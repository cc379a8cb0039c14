"""Long RAG prompts on SmolLM2: reading="answer" against the full mask space and leave-one-out, and seconds and peak
memory of document rankings and top-3 sentence citations at 5, 10 and 20 documents of about 200 tokens.

    python eval/rag_long.py validate   # reading="answer" vs "full" vs leave-one-out on 3-5 document prompts
    python eval/rag_long.py timing     # one subprocess per row, rows appended as they come
    python eval/rag_long.py timing --tasks rank_answer --rows long_speed.jsonl --threads 2 --label after
                                       # the speed rows: a label for the code, torch threads per row
    python eval/rag_long.py report     # the tables in eval/results/rag_long.md from the row files

Rules, decisions and tables: eval/results/rag_long.md (the rules were committed before the first row ran).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROWS = HERE / "results" / "rag"
VALIDATION = ROWS / "long_reading.jsonl"
TIMING = ROWS / "long_timing.jsonl"
SPEED = ROWS / "long_speed.jsonl"  # before/after rows of the reader mode's speed work (see rag_long.md)
REPORT = HERE / "results" / "rag_long.md"
DOCUMENT_TOKENS = 200  # a long document: passages concatenated until it has at least this many tokens
TIMING_EXAMPLES = ("rh-001",)  # a fictional question (the model must read), dev split of the held-out set
TASKS = {  # name -> rag.explain arguments
    "rank_answer": dict(granularity="answer", verify=False, reading="answer", sentence_documents=None),
    "rank_full": dict(granularity="answer", verify=False, reading="full", sentence_documents=None),
    "cite3_answer": dict(granularity="sentence", verify=True, reading="answer", sentence_documents=3),
    "cite3_full": dict(granularity="sentence", verify=True, reading="full", sentence_documents=3),
    "cite3_answer_hidden": dict(granularity="sentence", verify=True, reading="answer", sentence_documents=3,
                                removal="hidden"),
    # the default's ranking, bounded: one panel of 5 gradients, no refinement (seconds per gradient, not the scores)
    "rank_full_5": dict(granularity="answer", verify=False, reading="full", sentence_documents=None, n_steps=5,
                        tolerance=None),
}


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def append(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def carried(row: dict) -> bool:
    """Leave-one-out names the relevant document, by at least 0.5 nats over the next one (issue 33's (b))."""
    loo = np.asarray(row["leave_one_out"], dtype=float)
    order = np.argsort(-loo)
    return int(order[0]) == row["relevant"] and loo[order[0]] - loo[order[1]] >= 0.5


def validation_examples() -> list[dict]:
    """The held-out fictional dev split (15) and the real-text answers that leave-one-out carries (stored rows of
    eval/rag.py's SmolLM2 runs: the model's own answers), first 15 in file order; taken in turns."""
    fictional = [dict(r, set="fictional") for r in read_rows(ROWS / "smollm2_own_heldout_dev.jsonl")]
    real = [dict(r, set="real (carried)") for r in read_rows(ROWS / "smollm2_own.jsonl") if carried(r)][:15]
    return [ex for pair in zip(fictional, real) for ex in pair]  # alternating: a run cut short has both sets


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def cmd_validate(args) -> None:
    import llm_attrib
    from llm_attrib import rag

    torch.set_num_threads(1)
    model, tokenizer = llm_attrib.zoo.load("smollm2")
    done = {row["id"] for row in read_rows(VALIDATION)}
    for ex in validation_examples():
        if ex["id"] in done:
            continue
        row = {"id": ex["id"], "set": ex["set"], "relevant": ex["relevant"], "n_documents": len(ex["documents"]),
               "answer": ex["answer"]}
        for reading in ("full", "answer"):
            result = rag.explain(model, tokenizer, ex["question"], ex["documents"], ex["answer"], reading=reading,
                                 granularity="answer", verify=reading == "full", show_progress=False)
            exp = result.explanation
            row[reading] = {"scores": result.answer_document_scores.tolist(), "seconds": result.cost["seconds"],
                            "n_forward": exp.cost["n_forward"], "n_backward": exp.cost["n_backward"],
                            "completeness_error": float(exp.completeness_error.max()), "converged": exp.converged}
            if reading == "full":
                row["leave_one_out"] = result.leave_one_out[0].tolist()  # (answer sentences, documents): one row
        append(VALIDATION, row)
        print(ex["id"], row["relevant"], int(np.argmax(row["leave_one_out"])), int(np.argmax(row["full"]["scores"])),
              int(np.argmax(row["answer"]["scores"])), f"{row['full']['seconds']:.0f}s {row['answer']['seconds']:.0f}s",
              flush=True)


def long_documents(example: dict, pool: list[str], n_documents: int, tokenizer, seed: int) -> tuple[list[str], int]:
    """`n_documents` documents of at least DOCUMENT_TOKENS tokens: each of the example's own passages opens one,
    every other opens with a passage of another question; each is filled up with passages of other questions
    (drawn without replacement, seeded) until it is long enough. Returns the documents, shuffled (seeded), and
    where the relevant one went."""
    rng = random.Random(seed)
    others = pool[:]
    rng.shuffle(others)
    own = example["documents"]
    openers = own + [others.pop() for _ in range(n_documents - len(own))]
    documents = []
    for opener in openers:
        text = opener
        while len(tokenizer(text, add_special_tokens=False)["input_ids"]) < DOCUMENT_TOKENS:
            text += " " + others.pop()
        documents.append(text)
    order = list(range(n_documents))
    rng.shuffle(order)
    return [documents[i] for i in order], order.index(example["relevant_document"])


def passage_pool(example_id: str) -> list[str]:
    """Every document of every other rag question in eval/data (real-text, replication and held-out sets)."""
    pool = []
    for name in ("real_text.jsonl", "rag_real_replication.jsonl", "rag_heldout.jsonl"):
        for row in read_rows(HERE / "data" / name):
            if row.get("kind") == "rag" and row["id"] != example_id:
                pool += row["documents"]
    return pool


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cmd_row(args) -> None:
    """One timing row, in its own process (its peak memory is its own)."""
    import llm_attrib
    from llm_attrib import Attributor, rag
    from llm_attrib.rag.answer import generate_answer  # the model's own answer, generated before the timed call
    from llm_attrib.rag.explain import resolve_template
    from llm_attrib.rag.prompt import as_documents, build_prompt

    torch.set_num_threads(args.threads)
    model, tokenizer = llm_attrib.zoo.load("smollm2")
    loaded_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    example = next(r for r in read_rows(HERE / "data" / "rag_heldout.jsonl") if r["id"] == args.example)
    documents, relevant = long_documents(example, passage_pool(example["id"]), args.documents, tokenizer, seed=33)
    built = build_prompt(tokenizer, example["question"], as_documents(documents), resolve_template(None, tokenizer))
    answer, _ = generate_answer(Attributor(model, tokenizer, show_progress=False), built.prompt, 64, 3, None)
    row = {"task": args.task, "example": args.example, "n_documents": args.documents, "relevant": relevant,
           "answer": tokenizer.decode(answer), "load": Path("/proc/loadavg").read_text().split()[:3],
           "threads": args.threads, "package": str(Path(llm_attrib.__file__).parent)}
    started, cpu = time.perf_counter(), cpu_seconds()
    try:
        result = rag.explain(model, tokenizer, example["question"], documents, answer, show_progress=False,
                             **TASKS[args.task])
    except llm_attrib.LlmAttribError as error:
        row.update(error=f"{type(error).__name__}: {error}", seconds=time.perf_counter() - started)
    else:
        exp = result.explanation
        row.update(seconds=time.perf_counter() - started, n_tokens=len(exp.input_ids), cost=result.cost,
                   top_document=result.top_document, ranking=result.ranking,
                   scores=result.ranking_scores.tolist() if result.ranking_scores is not None
                   else result.answer_document_scores.tolist(),
                   completeness_error=float(exp.completeness_error.max()), converged=exp.converged,
                   sentence_documents=result.sentence_documents,
                   citations=[[d for d, _ in c.documents] for c in result.citations],
                   verdicts=None if result.verdicts is None else [v.label for v in result.verdicts])
    row["cpu_seconds"] = cpu_seconds() - cpu  # with one thread: what the call costs, whatever else the machine runs
    row.update(peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, loaded_rss_gib=loaded_rss)
    print(json.dumps(row))


def cmd_timing(args) -> None:
    rows = ROWS / args.rows
    for task in args.tasks:
        for n in args.documents:
            for example in args.examples:
                if any((r["task"], r["example"], r["n_documents"], r.get("label"), r.get("threads", 1))
                       == (task, example, n, args.label, args.threads)
                       and not str(r.get("error", "")).startswith("timed out") for r in read_rows(rows)):
                    continue  # read before each row: several of these may run side by side; a timed-out row reruns
                command = [sys.executable, __file__, "row", "--task", task, "--documents", str(n), "--example", example,
                           "--threads", str(args.threads)]
                try:
                    out = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
                    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
                    row = json.loads(lines[-1]) if lines else {"error": out.stderr.strip().splitlines()[-1:]}
                except subprocess.TimeoutExpired:
                    row = {"error": f"timed out after {args.timeout} s"}
                row = {"task": task, "example": example, "n_documents": n, **row,
                       **({"label": args.label} if args.label else {})}
                append(rows, row)
                print(json.dumps({k: row.get(k) for k in ("task", "example", "n_documents", "n_tokens", "seconds", "cpu_seconds",
                                                          "peak_rss_gib", "top_document", "relevant", "label",
                                                          "threads", "error")}),
                      flush=True)


def validation_table(rows: list[dict]) -> str:
    """Per set: how often the readings agree with each other and with leave-one-out, and what they cost."""
    lines = ["| set | n | top-1 answer = full | Spearman answer~full | top-1 = LOO (full / answer) | "
             "Spearman with LOO (full / answer) | top-1 = relevant (full / answer / LOO) | gradients (full / answer) | "
             "seconds (full / answer) |", "|---|---|---|---|---|---|---|---|---|"]
    for name in sorted({r["set"] for r in rows}):
        group = [r for r in rows if r["set"] == name]
        top = {key: np.array([int(np.argmax(r[key]["scores"])) for r in group]) for key in ("full", "answer")}
        loo = np.array([int(np.argmax(r["leave_one_out"])) for r in group])
        relevant = np.array([r["relevant"] for r in group])
        rho = {key: np.mean([spearman(r[key]["scores"], r["leave_one_out"]) for r in group]) for key in top}
        between = np.mean([spearman(r["full"]["scores"], r["answer"]["scores"]) for r in group])
        mean = {key: (np.mean([r[key]["n_backward"] for r in group]), np.mean([r[key]["seconds"] for r in group]))
                for key in top}
        lines.append(f"| {name} | {len(group)} | {np.mean(top['answer'] == top['full']):.2f} | {between:.2f} | "
                     f"{np.mean(top['full'] == loo):.2f} / {np.mean(top['answer'] == loo):.2f} | "
                     f"{rho['full']:.2f} / {rho['answer']:.2f} | {np.mean(top['full'] == relevant):.2f} / "
                     f"{np.mean(top['answer'] == relevant):.2f} / {np.mean(loo == relevant):.2f} | "
                     f"{mean['full'][0]:.0f} / {mean['answer'][0]:.0f} | {mean['full'][1]:.0f} / {mean['answer'][1]:.0f} |")
    return "\n".join(lines)


def note(row: dict) -> str:
    """A row's error in a table cell; a process that died without one printed only its loading bar."""
    error = row.get("error") or ""
    if isinstance(error, list):
        return "the process died without a result (here: the system's out-of-memory killer, see the text)"
    return str(error)[:160]


def timing_table(rows: list[dict]) -> str:
    lines = ["| task | documents | prompt tokens | wall s | CPU s (1 thread) | peak RSS GiB | gradients | forwards "
             "(removal) | top = relevant | converged | load (1 min) | note |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (list(TASKS).index(r["task"]), r["n_documents"])):
        cost = r.get("cost") or {}
        top = "" if "top_document" not in r else "yes" if r["top_document"] == r["relevant"] else "no"
        cpu, wall, rss = r.get("cpu_seconds"), r.get("seconds"), r.get("peak_rss_gib")
        lines.append(f"| {r['task']} | {r['n_documents']} | {r.get('n_tokens', '')} | "
                     f"{'' if wall is None else f'{wall:.0f}'} | {'' if cpu is None else f'{cpu:.0f}'} | "
                     f"{'' if rss is None else f'{rss:.2f}'} | "
                     f"{cost.get('n_backward', '')} | {cost.get('n_forward_ablation', '')} | {top} | "
                     f"{r.get('converged', '')} | {(r.get('load') or [''])[0]} | {note(r)} |")
    return "\n".join(lines)


def speed_table(rows: list[dict]) -> str:
    """Before/after rows: seconds, memory and gradients, and how far the scores moved from the row labelled "before"
    with the same task, documents and threads (largest absolute difference, and relative to the largest score)."""
    before = {(r["task"], r["n_documents"], r.get("threads", 1)): r for r in rows
              if r.get("label") == "before" and "scores" in r}
    lines = ["| code | task | documents | prompt tokens | threads | wall s | CPU s | peak RSS GiB | gradients | "
             "completeness | top = relevant | max score diff vs before (abs / rel) | load (1 min) | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["task"], r["n_documents"], r.get("label") != "before", r.get("threads", 1))):
        cost = r.get("cost") or {}
        top = "" if "top_document" not in r else "yes" if r["top_document"] == r["relevant"] else "no"
        reference, diff = before.get((r["task"], r["n_documents"], r.get("threads", 1))), ""
        if reference is not None and "scores" in r and r is not reference:
            a, b = np.asarray(r["scores"]), np.asarray(reference["scores"])
            diff = f"{np.abs(a - b).max():.1e} / {np.abs(a - b).max() / np.abs(b).max():.1e}"
        cpu, wall, rss, ce = r.get("cpu_seconds"), r.get("seconds"), r.get("peak_rss_gib"), r.get("completeness_error")
        lines.append(f"| {r.get('label', '')} | {r['task']} | {r['n_documents']} | {r.get('n_tokens', '')} | "
                     f"{r.get('threads', 1)} | {'' if wall is None else f'{wall:.1f}'} | "
                     f"{'' if cpu is None else f'{cpu:.1f}'} | {'' if rss is None else f'{rss:.2f}'} | "
                     f"{cost.get('n_backward', '')} | {'' if ce is None else f'{ce:.4f}'} | {top} | {diff} | "
                     f"{(r.get('load') or [''])[0]} | {note(r)} |")
    return "\n".join(lines)


def cmd_report(args) -> None:
    print("## Validation\n\n" + validation_table(read_rows(VALIDATION)) + "\n\n## Timing\n\n"
          + timing_table(read_rows(TIMING)) + "\n\n## Speed\n\n" + speed_table(read_rows(SPEED)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("validate").set_defaults(run=cmd_validate)
    sub.add_parser("report").set_defaults(run=cmd_report)
    timing = sub.add_parser("timing")
    timing.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    timing.add_argument("--documents", nargs="+", type=int, default=[5, 10, 20])
    timing.add_argument("--examples", nargs="+", default=list(TIMING_EXAMPLES))
    timing.add_argument("--timeout", type=float, default=2400)
    timing.add_argument("--rows", default=TIMING.name, help="row file under eval/results/rag/")
    timing.add_argument("--threads", type=int, default=1, help="torch threads in each row")
    timing.add_argument("--label", default=None, help="names the code that ran (e.g. before / after)")
    timing.set_defaults(run=cmd_timing)
    row = sub.add_parser("row")
    row.add_argument("--task", required=True, choices=list(TASKS))
    row.add_argument("--documents", type=int, required=True)
    row.add_argument("--example", required=True)
    row.add_argument("--threads", type=int, default=1)
    row.set_defaults(run=cmd_row)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
