"""The default RAG prompt (system message and instruction), chosen on real-text data, not the mountain example (rule:
eval/results/rag/calibration.md, "The default answer on the mountain example", written before any row).

    python eval/rag_default_prompt.py run --shard 0/2     # rows -> eval/results/rag/default_prompt.jsonl (resumable)
    python eval/rag_default_prompt.py report              # the table and the decision's counts (Markdown)

Per example and candidate: the answer generated as `rag.explain`'s default does, and leave-one-out over the whole
answer (one forward per removed document). Grounded-correct: the answer holds the expected answer and
leave-one-out's top document is the relevant one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llm_attrib import Attributor, zoo  # noqa: E402
from llm_attrib.rag.ablation import DocumentSubsets  # noqa: E402
from llm_attrib.rag.answer import generate_answer  # noqa: E402
from llm_attrib.rag.prompt import Template, as_documents, build_prompt  # noqa: E402
from rag_data import sharded_runner  # noqa: E402

DATA = ROOT / "eval/data/real_text.jsonl"
N_EXAMPLES = 40  # its first 40 "rag" rows in file order (the amendment of 13:12: the machine's load)
ROWS = ROOT / "eval/results/rag/default_prompt.jsonl"
SYSTEM = "You are an assistant for question-answering tasks. Answer from the documents you are given."
TODAY = "Answer the question in one sentence, using the documents.\n\n{documents}\n\nQuestion: {question}"
ONE = "Answer the question in one sentence, using the document that answers it.\n\n{documents}\n\nQuestion: {question}"
CANDIDATES = {"P0": (None, TODAY), "P1": (SYSTEM, TODAY), "P2": (None, ONE)}  # P3 dropped by the amendment


def examples() -> list[dict]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    return [r for r in rows if r["kind"] == "rag"][:N_EXAMPLES]


def run(args) -> None:
    torch.set_num_threads(args.threads)
    k, n = args.shard
    done = {(r["id"], r["candidate"]) for r in map(json.loads, ROWS.read_text().splitlines())} if ROWS.exists() else set()
    model, tokenizer = zoo.load("smollm2")
    attributor = Attributor(model, tokenizer, show_progress=False)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    for i, ex in enumerate(examples()):
        if i % n != k:
            continue
        docs = as_documents(ex["documents"])
        for name, (system, layout) in CANDIDATES.items():
            if (ex["id"], name) in done:
                continue
            started = time.perf_counter()
            template = Template(prompt=layout, system=system)  # P0 and P2: no system message (the chat template's own)
            prompt = build_prompt(tokenizer, ex["question"], docs, template).prompt
            ids, truncated = generate_answer(attributor, prompt, 128, 3)
            subsets = DocumentSubsets(attributor, ex["question"], docs, template, ids, [(0, len(ids))])
            everyone = list(range(len(docs)))
            full, *alone = subsets.stack([everyone, *([d for d in everyone if d != left] for left in everyone)])
            drops = (full[None] - torch.stack(alone))[:, 0]
            answer = tokenizer.decode(ids)
            row = {"id": ex["id"], "candidate": name, "answer": answer, "relevant": ex["relevant_document"],
                   "correct": ex["answer"].lower() in answer.lower(), "top": int(drops.argmax()),
                   "leave_one_out": drops.tolist(), "truncated": truncated, "commit": commit,
                   "seconds": time.perf_counter() - started}
            with ROWS.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(ex["id"], name, row["correct"], row["top"] == row["relevant"], repr(answer[:70]), flush=True)


def report(args) -> None:
    ids = {ex["id"] for ex in examples()}
    rows = [r for r in map(json.loads, ROWS.read_text().splitlines()) if r["id"] in ids]
    print("| data | candidate | answers | correct | grounded-correct | leave-one-out top = relevant | truncated |")
    print("|---|---|---|---|---|---|---|")
    for data in (f"real_text, first {N_EXAMPLES}",):
        for name in CANDIDATES:
            part = [r for r in rows if r["candidate"] == name]
            grounded = sum(r["correct"] and r["top"] == r["relevant"] for r in part)
            print(f"| {data} | {name} | {len(part)} | {sum(r['correct'] for r in part)} | {grounded} | "
                  f"{sum(r['top'] == r['relevant'] for r in part)} | {sum(r['truncated'] for r in part)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sharded_runner(sub)
    sub.add_parser("report")
    args = parser.parse_args()
    run(args) if args.command == "run" else report(args)


if __name__ == "__main__":
    main()
