"""Both distributed modes in one launch, for tests/test_sharding.py (run it with one process for the reference).

    accelerate launch --multi_gpu --num_processes 2 tests/distributed_job.py OUT
    torchrun --nnodes 2 --nproc_per_node 1 --node_rank R --master_addr HOST --master_port P tests/distributed_job.py OUT

Writes into OUT (relative to each process's working directory, so machines need not share a disk): `rows.jsonl`,
`evaluate`'s rows over examples split between processes (each process also keeps its shard `rows.jsonl.part<rank>`
in its own OUT), and `<space>.json`, one explanation per space with its path points split between processes
(`shard_points=True`, in chunks of 4 points so that every process has some), saved by the main process, and
`forwards.json`: per space, the sequences each process ran forward (proof that each did only part of the work).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

import llm_attrib
from llm_attrib import Attributor, parallel
from llm_attrib.attributor import counting_forwards
from llm_attrib.evaluate import evaluate

SPACES = ("embeddings", "attention", "mask")
N_EXAMPLES = 3  # split 2 + 1 over two processes: an uneven share
METHODS = ("ig", "saliency")
CHUNK = 4


def run(out: Path) -> None:
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = llm_attrib.zoo.load("rag", device=parallel.device())
    examples = llm_attrib.zoo.examples("rag", n=N_EXAMPLES, seed=7)
    evaluate(Attributor(model, tokenizer, show_progress=False), examples, METHODS, output=out / "rows.jsonl",
             show_progress=False)
    sharded = Attributor(model, tokenizer, show_progress=False, shard_points=True, internal_batch_size=CHUNK)
    forwards = {}
    for space in SPACES:
        with counting_forwards(model) as count:
            explanation = sharded.explain(examples[0]["prompt"], space=space, max_new_tokens=4)
        forwards[space] = parallel.gathered(count)
        if parallel.is_main():
            explanation.save(out / f"{space}.json")
    if parallel.is_main():
        (out / "forwards.json").write_text(json.dumps(forwards))
        print(f"{parallel.n_processes()} process(es) on {parallel.device()}")
    parallel.finish()


if __name__ == "__main__":
    run(Path(sys.argv[1]))
