"""Which space and view make the first picture of `llm-attrib explain` point at the evidence.

hit@1 and hit@3 of the zoo rag evidence among non-template prompt words, for IG in three spaces and two views
(token rows: the first answer word's row; whole answer: one row). The rule is in eval/results/first_picture.md.

    python eval/first_picture.py --n 40 --seed 1
"""

from __future__ import annotations

import argparse
import time

import torch

from llm_attrib import Attributor, zoo
from llm_attrib.metrics import plausibility

SPACES = ("embeddings", "attention", "mask")
VIEWS = {"token rows": {}, "whole answer": {"target": "answer"}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, tokenizer = zoo.load("rag")
    attributor = Attributor(model, tokenizer, show_progress=False)
    examples = zoo.examples("rag", n=args.n, seed=args.seed)
    print("| space | view | hit@1 | hit@3 | converged | seconds / explanation |")
    print("|---|---|---|---|---|---|")
    for space in SPACES:
        for view, params in VIEWS.items():
            hit1, hit3, converged, seconds = [], [], [], []
            for example in examples:
                start = time.perf_counter()
                exp = attributor.explain(example["prompt"], example["answer"], method="ig", space=space, **params)
                seconds.append(time.perf_counter() - start)
                converged.append(bool(exp.converged))
                for k, out in ((1, hit1), (3, hit3)):
                    value = plausibility(exp, example["evidence"], example["template_spans"], k=k)[f"hit@{k}"][0]
                    out.append(float(value))
            n = len(examples)
            print(f"| {space} | {view} | {sum(hit1) / n:.3f} ({int(sum(hit1))}/{n}) | {sum(hit3) / n:.3f} "
                  f"({int(sum(hit3))}/{n}) | {sum(converged)}/{n} | {sum(seconds) / n:.2f} |", flush=True)


if __name__ == "__main__":
    main()
