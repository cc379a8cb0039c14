"""How many panels should score-guided IG start with, and how far should it bisect? On held-out examples.

    python eval/quadrature_budget.py --threads 1            # both parts; or `starts` / `shares` alone

The default (`n_steps=5`: one Boole panel per target, then nested bisection where the error is) was chosen
on the speed benchmark's example (zoo seed 123); this checks it on other examples (seed 2024, 4 per model,
8 generated tokens each): for each start, the gradient evaluations per target, the worst completeness error
and the rank agreement (Spearman of each target's token scores) with a 512-node Gauss-Legendre reference.
Writes eval/results/quadrature_budget.md.

`shares`: refinement bisects a target's worst panels until the other panels' |errors| sum to `SPLIT_UNTIL`
times its tolerance (the bisected ones are assumed to come out much smaller). A smaller share bisects more
per round (more gradients, fewer rounds), a larger one less (and may need another round). For each share, on
6 examples per model: gradient evaluations per target, the worst completeness error, backward passes and
seconds. Writes eval/results/split_margin.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

import llm_attrib
import llm_attrib.core.guided as guided
from llm_attrib import Attributor

RESULTS = Path(__file__).parent / "results" / "quadrature_budget.md"
SHARE_RESULTS = Path(__file__).parent / "results" / "split_margin.md"
STARTS = (5, 13, 29)
SHARES = (0.25, 0.5, 1.0)


def held_out(name: str, n_examples: int, n_tokens: int) -> tuple[Attributor, list[dict], list[list[int]]]:
    """The zoo model's attributor, examples of seed 2024 (not the speed benchmark's 123) and their greedy answers."""
    model, tokenizer = llm_attrib.zoo.load(name)
    attributor = Attributor(model, tokenizer, show_progress=False)
    examples = llm_attrib.zoo.examples(name, n=n_examples, seed=2024)
    answers = [attributor.generate(tokenizer(e["prompt"])["input_ids"], n_tokens, min_new_tokens=n_tokens)
               for e in examples]
    return attributor, examples, answers


def rows(name: str, n_examples: int, n_tokens: int) -> list[str]:
    attributor, examples, answers = held_out(name, n_examples, n_tokens)
    out = []
    for space in ("attention", "embeddings"):
        stats = {n: {"seconds": 0.0, "steps": [], "worst": 0.0, "rho": []} for n in STARTS}
        for example, answer in zip(examples, answers):
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


def share_rows(name: str, n_examples: int, n_tokens: int) -> list[str]:
    attributor, examples, answers = held_out(name, n_examples, n_tokens)
    out = []
    default = guided.SPLIT_UNTIL
    for space in ("embeddings", "attention"):
        for share in SHARES:
            guided.SPLIT_UNTIL = share
            steps, worst, seconds, backward = [], 0.0, 0.0, 0
            for example, answer in zip(examples, answers):
                started = time.perf_counter()
                exp = attributor.explain(example["prompt"], answer=answer, space=space)
                seconds += time.perf_counter() - started
                used = exp.params["n_steps"]
                steps += used if isinstance(used, list) else [used] * len(answer)
                worst = max(worst, float(exp.completeness_error.max()))
                backward += exp.cost["n_backward"]
            out.append(f"| {name} | {space} | {share} | {sum(steps) / len(steps):.1f} | {max(steps)} | "
                       f"{100 * worst:.2f}% | {backward} | {seconds:.2f} |")
            print(out[-1], flush=True)
    guided.SPLIT_UNTIL = default
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", default=["starts", "shares"], choices=["starts", "shares"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--examples", type=int, default=4, help="examples per model for `starts` (shares: 6)")
    parser.add_argument("--tokens", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if "starts" in args.parts:
        lines = ["# Score-guided IG: how many panels to start with", "",
                 f"`python eval/quadrature_budget.py starts --threads {args.threads}`: zoo models, {args.examples} "
                 f"examples of seed 2024 each (not the speed benchmark's), {args.tokens} generated tokens, tolerance "
                 "1%. n_steps = gradient evaluations per target to start with ((n_steps - 1) // 4 Boole panels sharing "
                 "edges: 1, 3, 7). Spearman: each target's token scores against a 512-node Gauss-Legendre reference.", "",
                 "| model | space | n_steps | seconds / example | gradient evaluations / target (mean) | max | "
                 "worst completeness error | Spearman min | Spearman mean |",
                 "|:--|:--|--:|--:|--:|--:|--:|--:|--:|"]
        for name in ("rag", "recall"):
            lines += rows(name, args.examples, args.tokens)
        RESULTS.write_text("\n".join(lines) + "\n")
    if "shares" in args.parts:
        lines = ["# Score-guided refinement: how much of the tolerance to leave to the unsplit panels", "",
                 f"`python eval/quadrature_budget.py shares --threads {args.threads}`: zoo models, 6 examples of seed "
                 f"2024 each, {args.tokens} generated tokens, tolerance 1%, IG at its defaults otherwise. Share: "
                 "`llm_attrib.core.guided.SPLIT_UNTIL` (the default is 1.0).", "",
                 "| model | space | share | gradient evaluations / target (mean) | max | worst completeness error | "
                 "backward passes | seconds (all examples) |",
                 "|:--|:--|--:|--:|--:|--:|--:|--:|"]
        for name in ("rag", "recall"):
            lines += share_rows(name, 6, args.tokens)
        SHARE_RESULTS.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
