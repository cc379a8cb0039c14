"""One explanation, its gradient evaluations split across processes (GPUs, or CPU processes).

    torchrun --nproc_per_node 2 examples/sharded_explanation.py
    accelerate launch --multi_gpu --num_processes 2 examples/sharded_explanation.py --space attention

Every process explains the same prompt on its own device (its GPU, or the CPU); each takes every second chunk of
path points and the sums are added across processes, so a long explanation uses every device. The main process
prints and saves the result. (`accelerate launch --cpu` starts one process: use `--multi_gpu`, which without a
GPU starts the processes on the CPU.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import llm_attrib
from llm_attrib import Attributor, parallel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="rag", help="zoo model (default: rag)")
    parser.add_argument("--space", default="embeddings", choices=["embeddings", "attention", "mask"])
    parser.add_argument("--quadrature", default="score-guided", help="score-guided (default) or a fixed rule")
    parser.add_argument("--n-steps", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--output", type=Path, help="save the explanation as JSON here (main process)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        model, tokenizer = llm_attrib.zoo.load(args.model, device=parallel.device())
    except llm_attrib.MissingPackageError as err:  # an optional model whose package is not installed
        print(f"sharded_explanation.py: {err}", file=sys.stderr)
        sys.exit(2)
    attributor = Attributor(model, tokenizer, show_progress=False, shard_points=True)
    prompt = llm_attrib.zoo.examples(args.model, n=1, seed=123)[0]["prompt"]
    fixed = {"tolerance": None} if args.quadrature != "score-guided" else {}
    explanation = attributor.explain(prompt, space=args.space, max_new_tokens=args.max_new_tokens,
                                     quadrature=args.quadrature, n_steps=args.n_steps, **fixed)
    if parallel.is_main():
        print(f"{parallel.n_processes()} process(es); cost {explanation.cost}; "
              f"worst completeness error {explanation.completeness_error.max():.2%}")
        explanation.print()
        if args.output:
            explanation.save(args.output)
    parallel.finish()


if __name__ == "__main__":
    main()
