"""Removal forwards (leave-one-out, Shapley subsets) today against from shared prefixes, in tokens and seconds.

    nice -n 5 python eval/rag_removal_cache.py [--rows 2] [--documents 5 10 20]
    python eval/rag_removal_cache.py --report   # the tables of removal_cache.md from the rows

SmolLM2 on the first real-text rag rows, each with 5, 10 and 20 documents (its own, then distractors from other
rows, in a seeded order), its own greedy answer; the rule and the tables are in eval/results/rag/removal_cache.md,
the rows in eval/results/rag/removal_cache.jsonl (written as they come).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import time
from pathlib import Path

import torch

import llm_attrib
from llm_attrib import Attributor
from llm_attrib.attributor import counting_forwards
from llm_attrib.rag.ablation import DocumentSubsets
from llm_attrib.rag.answer import generate_answer
from llm_attrib.rag.explain import answer_sentences, resolve_template
from llm_attrib.rag.prompt import as_documents, build_prompt
from llm_attrib.rag.shapley import document_shapley

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "real_text.jsonl"
ROWS = HERE / "results" / "rag" / "removal_cache.jsonl"
REPORT = HERE / "results" / "rag" / "removal_cache.md"
MODES = {"today": False, "cached": True}  # mode -> reuse_prefix


def documents_for(rows: list[dict], index: int, n: int) -> list[str]:
    """Row `index`'s own documents, then distractors from the other rows, shuffled; seeded by the index."""
    rng = random.Random(index)
    own = list(rows[index]["documents"])[:n]
    others = [d for j, row in enumerate(rows) if j != index for d in row["documents"] if d not in own]
    docs = own + rng.sample(others, n - len(own))
    rng.shuffle(docs)
    return docs


def measure(attributor, question, docs, template, answer_ids, runs, mode: str, what: str):
    """(values, tokens, forwards, seconds) of one run of removals in one mode."""
    subsets = DocumentSubsets(attributor, question, docs, template, answer_ids, runs, reuse_prefix=MODES[mode])
    everyone = list(range(len(docs)))
    with counting_forwards(attributor.model) as count, counting_forwards(attributor.model, tokens=True) as tokens:
        started = time.perf_counter()
        if what == "verify":
            values = subsets.stack([everyone, *([d for d in everyone if d != k] for k in everyone), []])
        else:
            values = document_shapley(subsets.stack, len(docs)).values
        seconds = time.perf_counter() - started
    return values.double(), tokens[0], count[0], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--documents", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--report", action="store_true", help="write the tables from the rows, run nothing")
    args = parser.parse_args()
    if args.report:
        write_report()
        return
    torch.set_num_threads(1)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    model, tokenizer = llm_attrib.zoo.load("smollm2")
    attributor = Attributor(model, tokenizer, show_progress=False)
    template = resolve_template(None, tokenizer)
    rows = [json.loads(line) for line in DATA.open()]
    rows = [row for row in rows if row["kind"] == "rag"]
    with ROWS.open("a") as out:
        for index in range(args.rows):
            for n in args.documents:
                docs = as_documents(documents_for(rows, index, n))
                question = rows[index]["question"]
                built = build_prompt(tokenizer, question, docs, template)
                answer_ids, _ = generate_answer(attributor, built.prompt, 128, 3)
                seq = attributor.sequence(built.prompt, answer=answer_ids)
                runs, _ = answer_sentences(seq)
                for what in ("verify", "shapley"):
                    modes = list(MODES) if (index + n) % 2 == 0 else list(MODES)[::-1]
                    result = {mode: measure(attributor, question, docs, template, answer_ids, runs, mode, what)
                              for mode in modes}
                    (today, *rest_today), (cached, *rest_cached) = result["today"], result["cached"]
                    row = {"id": rows[index]["id"], "documents": n, "run": what, "prompt_tokens": seq.n_prompt,
                           "answer_tokens": seq.n_targets, "first": modes[0],
                           "tokens": {"today": rest_today[0], "cached": rest_cached[0]},
                           "forwards": {"today": rest_today[1], "cached": rest_cached[1]},
                           "seconds": {"today": round(rest_today[2], 2), "cached": round(rest_cached[2], 2)},
                           "max_abs_difference": float((today - cached).abs().max()),
                           "max_abs_value": float(today.abs().max()),
                           "commit": commit, "load_average": round(os.getloadavg()[0], 1)}
                    out.write(json.dumps(row) + "\n")
                    out.flush()
                    print(json.dumps(row), flush=True)


def write_report() -> None:
    """Replace everything after the rule in removal_cache.md with the tables of the rows written so far."""
    rows = [json.loads(line) for line in ROWS.open()]
    lines = ["## Results", "",
             f"Rows: {len(rows)} (commit {', '.join(sorted({r['commit'] for r in rows}))}; load average "
             f"{min(r['load_average'] for r in rows)}-{max(r['load_average'] for r in rows)} on 2 shared cores, so "
             "seconds are comparable only as ratios within a row). Sums over the rows of each size:", "",
             "| run | documents | prompts | prompt tokens | tokens today | tokens cached | today / cached | "
             "seconds today | seconds cached | today / cached | largest difference (relative) |",
             "|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for what in ("verify", "shapley"):
        for n in sorted({r["documents"] for r in rows}):
            group = [r for r in rows if r["run"] == what and r["documents"] == n]
            if not group:
                continue
            tokens = {mode: sum(r["tokens"][mode] for r in group) for mode in MODES}
            seconds = {mode: sum(r["seconds"][mode] for r in group) for mode in MODES}
            prompts = "-".join(sorted({str(r["prompt_tokens"]) for r in group}))
            lines.append(f"| {what} | {n} | {len(group)} | {prompts} | {tokens['today']} | {tokens['cached']} | "
                         f"{tokens['today'] / tokens['cached']:.2f}x | {seconds['today']:.1f} | "
                         f"{seconds['cached']:.1f} | {seconds['today'] / seconds['cached']:.2f}x | "
                         f"{max(r['max_abs_difference'] for r in group):.1e} "
                         f"({max(r['max_abs_difference'] / r['max_abs_value'] for r in group):.0e}) |")
    lines += ["", "Forwards (today / cached, the cached count includes the one check): "
              + "; ".join(f"{r['id']} {r['run']} {r['documents']} documents {r['forwards']['today']} / "
                          f"{r['forwards']['cached']}" for r in rows) + ".", ""]
    text = REPORT.read_text()
    head = text.split("## Results")[0].rstrip() + "\n\n"
    REPORT.write_text(head + "\n".join(lines))


if __name__ == "__main__":
    main()
