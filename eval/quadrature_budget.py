"""How many panels should score-guided IG start with? Cost and accuracy of each start, on held-out examples.

    python eval/quadrature_budget.py --threads 1

The default (`n_steps=5`: one Boole panel per target, then nested bisection where the error is) was chosen
on the speed benchmark's example (zoo seed 123); this checks it on other examples (seed 2024, 4 per model,
8 generated tokens each): for each start, the gradient evaluations per target, the worst completeness error
and the rank agreement (Spearman of each target's token scores) with a 512-node Gauss-Legendre reference.
Writes eval/results/quadrature_budget.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

import llm_attrib
from llm_attrib import Attributor

RESULTS = Path(__file__).parent / "results" / "quadrature_budget.md"
STARTS = (5, 13, 29)


def rows(name: str, n_examples: int, n_tokens: int) -> list[str]:
    model, tokenizer = llm_attrib.zoo.load(name)
    attributor = Attributor(model, tokenizer, show_progress=False)
    examples = llm_attrib.zoo.examples(name, n=n_examples, seed=2024)
    out = []
    for space in ("attention", "embeddings"):
        stats = {n: {"seconds": 0.0, "steps": [], "worst": 0.0, "rho": []} for n in STARTS}
        for example in examples:
            ids = tokenizer(example["prompt"])["input_ids"]
            answer = attributor.generate(ids, n_tokens, min_new_tokens=n_tokens)
            reference = attributor.explain(example["prompt"], answer=answer, space=space, quadrature="gauss-legendre",
                                           n_steps=512, tolerance=None)
            for n in STARTS:
                started = time.perf_counter()
                exp = attributor.explain(example["prompt"], answer=answer, space=space, n_steps=n)
                stat = stats[n]
                stat["seconds"] += time.perf_counter() - started
                steps = exp.params["n_steps"]
                stat["steps"] += steps if isinstance(steps, list) else [steps] * len(answer)
                stat["worst"] = max(stat["worst"], float(exp.completeness_error.max()))
                stat["rho"] += [spearmanr(exp.scores[t].numpy(), reference.scores[t].numpy())[0] for t in range(len(answer))]
        for n in STARTS:
            s = stats[n]
            out.append(f"| {name} | {space} | {n} | {s['seconds'] / len(examples):.2f} | "
                       f"{sum(s['steps']) / len(s['steps']):.1f} | {max(s['steps'])} | {100 * s['worst']:.2f}% | "
                       f"{min(s['rho']):.3f} | {sum(s['rho']) / len(s['rho']):.4f} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--examples", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = ["# Score-guided IG: how many panels to start with", "",
             f"`python eval/quadrature_budget.py --threads {args.threads}`: zoo models, {args.examples} examples of seed "
             f"2024 each (not the speed benchmark's), {args.tokens} generated tokens, tolerance 1%. n_steps = gradient "
             "evaluations per target to start with ((n_steps - 1) // 4 Boole panels sharing edges: 1, 3, 7). Spearman: each target's token "
             "scores against a 512-node Gauss-Legendre reference.", "",
             "| model | space | n_steps | seconds / example | gradient evaluations / target (mean) | max | "
             "worst completeness error | Spearman min | Spearman mean |",
             "|:--|:--|--:|--:|--:|--:|--:|--:|--:|"]
    for name in ("rag", "recall"):
        lines += rows(name, args.examples, args.tokens)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
