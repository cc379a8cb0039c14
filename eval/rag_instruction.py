"""The default RAG prompt's instruction, chosen on the calibration split of eval/data/rag_calibration.jsonl (rule:
eval/results/rag/instruction.md, written before any row). Generation only (the answers rag.explain would explain).

    python eval/rag_instruction.py        # -> eval/results/rag/instruction.jsonl and a table on stdout
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llm_attrib import Attributor, zoo  # noqa: E402
from llm_attrib.rag.answer import generate_answer  # noqa: E402
from llm_attrib.rag.prompt import Template, as_documents, build_prompt  # noqa: E402
from llm_attrib.rag.sentences import split_sentences  # noqa: E402

DATA = ROOT / "eval/data/rag_calibration.jsonl"
ROWS = ROOT / "eval/results/rag/instruction.jsonl"
CANDIDATES = {
    "A": "Answer the question using the documents.\n\n{documents}\n\nQuestion: {question}",
    "B": "Answer the question in one sentence, using the documents.\n\n{documents}\n\nQuestion: {question}",
}


def main() -> None:
    torch.set_num_threads(1)
    model, tokenizer = zoo.load("smollm2")
    attributor = Attributor(model, tokenizer, show_progress=False)
    examples = [json.loads(line) for line in DATA.read_text().splitlines()]
    rows = []
    for ex in examples:
        for name, layout in CANDIDATES.items():
            started = time.perf_counter()
            built = build_prompt(tokenizer, ex["question"], as_documents(ex["documents"]), Template(prompt=layout))
            ids, truncated = generate_answer(attributor, built.prompt, 128, 3)
            answer = tokenizer.decode(ids)
            rows.append({"id": ex["id"], "split": ex["split"], "candidate": name, "answer": answer,
                         "correct": ex["answer"].lower() in answer.lower(), "truncated": truncated,
                         "n_sentences": len(split_sentences(answer)), "seconds": time.perf_counter() - started})
            print(rows[-1]["id"], name, rows[-1]["correct"], repr(answer[:70]), flush=True)
    ROWS.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print("\n| split | candidate | correct | sentences per answer | truncated |\n|---|---|---|---|---|")
    for split in ("calibration", "report"):
        for name in CANDIDATES:
            part = [r for r in rows if r["split"] == split and r["candidate"] == name]
            print(f"| {split} | {name} | {sum(r['correct'] for r in part)}/{len(part)} | "
                  f"{sum(r['n_sentences'] for r in part) / len(part):.2f} | {sum(r['truncated'] for r in part)} |")


if __name__ == "__main__":
    main()
