"""Verdict thresholds for SmolLM2-135M-Instruct, calibrated on one split of eval/data/rag_calibration.jsonl and
reported on the other (the rule: eval/results/rag/calibration.md, written before any row was computed).

    python eval/rag_calibration.py run --shard 0/2      # rows -> eval/results/rag/calibration.jsonl (resumable)
    python eval/rag_calibration.py report                # thresholds, precision and recall -> stdout (Markdown)

Per example: `rag.explain` at its defaults on SmolLM2 (the model's own answer, generated as the default does). A
correct answer (it holds the expected answer) gives a supported margin: the verdict margin of its first sentence
that holds the expected answer; the same answer tokens with the relevant document removed give an unsupported
margin for the same sentence (the answer is then in no document).
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

from llm_attrib import Attributor, rag, zoo  # noqa: E402
from llm_attrib.rag.answer import generate_answer  # noqa: E402
from llm_attrib.rag.prompt import Template, as_documents, build_prompt  # noqa: E402

DATA = ROOT / "eval/data/rag_calibration.jsonl"
ROWS = ROOT / "eval/results/rag/calibration.jsonl"


def judged_sentence(result, expected: str) -> int | None:
    """The first answer sentence that holds the expected answer."""
    return next((s for s, c in enumerate(result.citations) if expected.lower() in c.sentence.lower()), None)


def margin_row(result, s: int) -> dict:
    verdict = result.verdicts[s]
    return {"margin": verdict.margin, "drop_cited": verdict.drop_cited, "drop_other": verdict.drop_other,
            "drop_all": verdict.drop_all, "cited": [d for d, _ in result.citations[s].documents]}


def run(args) -> None:
    torch.set_num_threads(args.threads)
    k, n = (int(x) for x in args.shard.split("/"))
    examples = [json.loads(line) for line in DATA.read_text().splitlines()]
    examples.sort(key=lambda ex: (ex["split"] != "calibration", ex["id"]))  # the calibration split first
    done = {json.loads(line)["id"] for line in ROWS.read_text().splitlines()} if ROWS.exists() else set()
    model, tokenizer = zoo.load("smollm2")
    attributor = Attributor(model, tokenizer, show_progress=False)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    for i, ex in enumerate(examples):
        if i % n != k or ex["id"] in done:
            continue
        started = time.perf_counter()
        docs = as_documents(ex["documents"])
        built = build_prompt(tokenizer, ex["question"], docs, Template())
        answer_ids, truncated = generate_answer(attributor, built.prompt, 128, 3)
        full = rag.explain(model, tokenizer, ex["question"], ex["documents"], answer_ids, show_progress=False)
        row = {"id": ex["id"], "split": ex["split"], "answer": full.answer, "expected": ex["answer"],
               "truncated": truncated, "n_sentences": len(full.answer_sentences), "commit": commit}
        s = judged_sentence(full, ex["answer"])
        row["correct"] = s is not None
        if s is not None:
            row["sentence"] = s
            row["supported"] = margin_row(full, s)
            kept = [d for j, d in enumerate(ex["documents"]) if j != ex["relevant_document"]]
            removed = rag.explain(model, tokenizer, ex["question"], kept, answer_ids, show_progress=False)
            row["unsupported"] = margin_row(removed, s)
        row["seconds"] = time.perf_counter() - started
        with ROWS.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(ex["id"], row["correct"], repr(row["answer"][:80]), f"{row['seconds']:.0f} s", flush=True)


def label(margin: float, thresholds: tuple[float, float]) -> str:
    return rag.verdicts.judge(margin, 0.0, thresholds).label


def report(args) -> None:
    rows = [json.loads(line) for line in ROWS.read_text().splitlines()]
    correct = {split: [r for r in rows if r["split"] == split and r["correct"]] for split in ("calibration", "report")}
    cal = correct["calibration"]
    thresholds = rag.calibrate([r["supported"]["margin"] for r in cal], [r["unsupported"]["margin"] for r in cal])
    print(f"thresholds = ({thresholds[0]:.2f}, {thresholds[1]:.2f}) nats from {len(cal)} correct calibration answers\n")
    print("| split | examples | correct | unsupported flagged: precision | recall | supported answers: supported / uncertain / unsupported |")
    print("|---|---|---|---|---|---|")
    for split, part in correct.items():
        total = sum(1 for r in rows if r["split"] == split)
        sup = [label(r["supported"]["margin"], thresholds) for r in part]
        uns = [label(r["unsupported"]["margin"], thresholds) for r in part]
        tp, fp = uns.count("unsupported"), sup.count("unsupported")
        precision = tp / (tp + fp) if tp + fp else float("nan")
        recall = tp / len(uns) if uns else float("nan")
        print(f"| {split} | {total} | {len(part)} | {precision:.3f} ({tp}/{tp + fp}) | {recall:.3f} ({tp}/{len(uns)}) | "
              f"{sup.count('supported')} / {sup.count('uncertain')} / {sup.count('unsupported')} |")
    print("\n| id | split | supported margin | unsupported margin | drop_all (supported) | answer |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if r["correct"]:
            print(f"| {r['id']} | {r['split']} | {r['supported']['margin']:+.2f} | {r['unsupported']['margin']:+.2f} | "
                  f"{r['supported']['drop_all']:.2f} | {r['answer'][:70]!r} |")
    wrong = [r for r in rows if not r["correct"]]
    print(f"\nwrong answers ({len(wrong)}): " + "; ".join(f"{r['id']} {r['answer'][:50]!r}" for r in wrong))
    print(f"truncated: {sum(r['truncated'] for r in rows)} of {len(rows)}; sentences per answer: "
          f"{sum(r['n_sentences'] for r in rows) / len(rows):.2f}; seconds per example: "
          f"{sum(r['seconds'] for r in rows) / len(rows):.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    runner = sub.add_parser("run")
    runner.add_argument("--shard", default="0/1")
    runner.add_argument("--threads", type=int, default=1)
    sub.add_parser("report")
    args = parser.parse_args()
    run(args) if args.command == "run" else report(args)


if __name__ == "__main__":
    main()
