"""Leave-one-out with removal="hidden" against the rerun, on the twenty set's questions: agreement, tokens, seconds.

    nice -n 5 python eval/rag_hidden_removal.py run --until 2005   # rows to eval/results/rag/hidden_removal.jsonl
    nice -n 5 python eval/rag_hidden_removal.py run --sizes long --until 2050   # 20 documents of ~200 tokens
    python eval/rag_hidden_removal.py report                       # the tables of hidden_removal.md

The rule and the tables: eval/results/rag/hidden_removal.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

import llm_attrib
from llm_attrib import Attributor
from llm_attrib.attributor import counting_forwards
from llm_attrib.rag.ablation import DocumentSubsets
from llm_attrib.rag.prompt import TEMPLATES, as_documents, build_prompt

from rag_data import RESULTS, append, commit, read_rows
from rag_long import long_documents, passage_pool, spearman, validation_examples
from rag_twenty_runs import questions, reply

ROWS = RESULTS / "hidden_removal.jsonl"
REPORT = RESULTS / "hidden_removal.md"
SIZES = ("20", "source", "long")
MODES = ("rerun", "hidden")


def leave_one_out(attributor: Attributor, question: str, docs, answer_ids: list[int], removal: str) -> dict:
    """(D,) nats the answer loses without each document, with the tokens, forwards and seconds it took."""
    subsets = DocumentSubsets(attributor, question, docs, TEMPLATES["default"], answer_ids, [(0, len(answer_ids))],
                              removal=removal)
    everyone = list(range(len(docs)))
    with counting_forwards(attributor.model) as forwards, counting_forwards(attributor.model, tokens=True) as tokens:
        started = time.perf_counter()
        values = subsets.stack([everyone, *([d for d in everyone if d != k] for k in everyone)])[:, 0]
        seconds = time.perf_counter() - started
    return {"drops": (values[0] - values[1:]).tolist(), "tokens": tokens[0], "forwards": forwards[0],
            "seconds": seconds}


def tokens_in_full(attributor: Attributor, question: str, docs, answer_ids: list[int]) -> int:
    """The tokens full forwards of the same subsets would run (every subset's whole sequence), counted, not run."""
    everyone = list(range(len(docs)))
    kept = [everyone, *([d for d in everyone if d != k] for k in everyone)]
    prompts = [build_prompt(attributor.tokenizer, question, docs, TEMPLATES["default"], k).prompt for k in kept]
    return sum(attributor.sequence(p, answer=answer_ids).length for p in prompts)


def run_one(attributor: Attributor, row: dict, size: str, group: str, order: int) -> dict:
    documents, relevant = list(row["documents"]), row["relevant_document"]
    if size == "long":  # rag_long's 20 documents of at least 200 tokens each (~4.5k tokens)
        documents, relevant = long_documents(row, passage_pool(row["id"]), 20, attributor.tokenizer, seed=33)
    docs = as_documents(documents)
    built = build_prompt(attributor.tokenizer, row["question"], docs, TEMPLATES["default"])
    _, own = reply(attributor, built)
    out = {"id": row["id"], "group": group, "size": size, "documents": len(docs), "commit": commit(),
           "relevant": relevant, "load_average": round(os.getloadavg()[0], 2), "answer": own}
    if not own.strip():
        return {**out, "skipped": "empty answer"}
    seq = attributor.sequence(built.prompt, answer=own)
    answer_ids, out["prompt_tokens"] = seq.target_ids.tolist(), seq.n_prompt
    modes = MODES if order % 2 == 0 else MODES[::-1]
    out.update({mode: leave_one_out(attributor, row["question"], docs, answer_ids, mode) for mode in modes})
    out["tokens_full"] = tokens_in_full(attributor, row["question"], docs, answer_ids)
    return out


def examples(size: str) -> dict[str, list[dict]]:
    """Each group's questions in their fixed order: the twenty set's (a) and (b), or for "long" rag_long's
    validation examples (fictional and real-text answers a document carries, alternating)."""
    if size == "long":
        rows = [dict(r, relevant_document=r["relevant"]) for r in validation_examples()]
        return {"fictional": [r for r in rows if r["set"] == "fictional"],
                "real": [r for r in rows if r["set"] != "fictional"]}
    return {g: questions(g, size) for g in ("a", "b")}


def cmd_run(args) -> None:
    torch.set_num_threads(1)
    model, tokenizer = llm_attrib.zoo.load("smollm2")
    attributor = Attributor(model, tokenizer, show_progress=False)
    done = {(r["group"], r["size"], r["id"]) for r in read_rows(ROWS)} if ROWS.exists() else set()
    orders = {(g, s): rows for s in args.sizes for g, rows in examples(s).items()}
    steps = [(g, s, k) for k in range(max(map(len, orders.values()))) for s in args.sizes for g in ("a", "b",
             "fictional", "real") if (g, s) in orders and k < len(orders[g, s])]
    for g, s, k in steps:
        row = orders[g, s][k]
        if (g, s, row["id"]) in done:
            continue
        if args.until and time.strftime("%H%M", time.gmtime()) >= args.until:
            print(f"{args.until} UTC reached; stopping before {g} {s} {row['id']}", flush=True)
            return
        out = run_one(attributor, row, s, g, k)
        append(ROWS, out)
        print(json.dumps({key: out.get(key) for key in ("id", "group", "size", "skipped")}), flush=True)


def top(values: list[float]) -> int:
    return int(np.argmax(values))


def cmd_report(args) -> None:
    rows = [r for r in read_rows(ROWS) if "skipped" not in r]
    skipped = [r for r in read_rows(ROWS) if "skipped" in r]
    lines = ["## Results", "",
             f"Rows: {len(rows)} answered, {len(skipped)} skipped (empty answer); commit "
             f"{', '.join(sorted({r['commit'] for r in rows}))}; load average "
             f"{min(r['load_average'] for r in rows)}-{max(r['load_average'] for r in rows)} on 2 cores.", "",
             "| group | documents | questions | prompt tokens | Spearman (mean) | same top document | rerun top = "
             "relevant | hidden top = relevant | tokens today / hidden | tokens rerun / hidden | seconds rerun / "
             "hidden |",
             "|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for size in SIZES:
        for group in ("a", "b", "fictional", "real"):
            part = [r for r in rows if r["group"] == group and r["size"] == size]
            if not part:
                continue
            rho = [spearman(r["rerun"]["drops"], r["hidden"]["drops"]) for r in part]
            same = sum(top(r["rerun"]["drops"]) == top(r["hidden"]["drops"]) for r in part)
            relevant = {m: sum(top(r[m]["drops"]) == r["relevant"] for r in part) for m in MODES}
            tokens = {m: sum(r[m]["tokens"] for r in part) for m in MODES}
            seconds = {m: sum(r[m]["seconds"] for r in part) for m in MODES}
            lengths = [r["prompt_tokens"] for r in part]
            n = len(part)
            lines.append(
                f"| {group} | {'3-5' if size == 'source' else part[0]['documents']} | {n} | {min(lengths)}-{max(lengths)} | "
                f"{np.nanmean(rho):.3f} | {same}/{n} | {relevant['rerun']}/{n} | {relevant['hidden']}/{n} | "
                f"{sum(r['tokens_full'] for r in part) / tokens['hidden']:.1f}x | "
                f"{tokens['rerun'] / tokens['hidden']:.1f}x | {seconds['rerun'] / seconds['hidden']:.1f}x |")
    lines += ["", "Per question (group, documents, id: Spearman; top document rerun / hidden / relevant; seconds "
              "rerun / hidden): " + "; ".join(
                  f"{r['group']} {r['documents']} {r['id']}: "
                  f"{spearman(r['rerun']['drops'], r['hidden']['drops']):.2f}; "
                  f"{top(r['rerun']['drops'])} / {top(r['hidden']['drops'])} / {r['relevant']}; "
                  f"{r['rerun']['seconds']:.1f} / {r['hidden']['seconds']:.1f}" for r in rows) + ".", ""]
    text = REPORT.read_text()
    head, _, tail = text.partition("## Results")
    after = tail.partition("\n## ")[2]
    REPORT.write_text(head.rstrip() + "\n\n" + "\n".join(lines) + ("\n## " + after if after else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--until", default=None, help="HHMM UTC: no question starts later")
    run.add_argument("--sizes", nargs="+", choices=SIZES, default=["20", "source"],
                     help="20 and source: the twenty set's questions at 20 and at their own 3-5 documents; long: "
                          "rag_long's 20 documents of ~200 tokens")
    run.set_defaults(func=cmd_run)
    sub.add_parser("report").set_defaults(func=cmd_report)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
