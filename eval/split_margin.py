"""How far should refinement bisect? The share of the tolerance left to a target's unsplit panels.

    python eval/split_margin.py --threads 1

Score-guided refinement bisects a target's worst panels until the other panels' |errors| sum to
`SPLIT_UNTIL` times its tolerance; the bisected ones are assumed to come out much smaller. A smaller share
bisects more per round (more gradients, fewer rounds), a larger one less (and may need another round). On
held-out zoo examples (seed 2024, 6 per model, 8 generated tokens, not the speed benchmark's), for each
share: gradient evaluations per target, the worst completeness error, backward passes and seconds (1 thread).
Writes eval/results/split_margin.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import llm_attrib
import llm_attrib.core.guided as guided
from llm_attrib import Attributor

RESULTS = Path(__file__).parent / "results" / "split_margin.md"
SHARES = (0.25, 0.5, 1.0)


def rows(name: str, n_examples: int, n_tokens: int) -> list[str]:
    model, tokenizer = llm_attrib.zoo.load(name)
    attributor = Attributor(model, tokenizer, show_progress=False)
    examples = llm_attrib.zoo.examples(name, n=n_examples, seed=2024)
    answers = [attributor.generate(tokenizer(e["prompt"])["input_ids"], n_tokens, min_new_tokens=n_tokens)
               for e in examples]
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
                steps += exp.params["n_steps"]
                worst = max(worst, float(exp.completeness_error.max()))
                backward += exp.cost["n_backward"]
            out.append(f"| {name} | {space} | {share} | {sum(steps) / len(steps):.1f} | {max(steps)} | "
                       f"{100 * worst:.2f}% | {backward} | {seconds:.2f} |")
            print(out[-1], flush=True)
    guided.SPLIT_UNTIL = default
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--examples", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = ["# Score-guided refinement: how much of the tolerance to leave to the unsplit panels", "",
             f"`python eval/split_margin.py --threads {args.threads}`: zoo models, {args.examples} examples of seed "
             f"2024 each, {args.tokens} generated tokens, tolerance 1%, IG at its defaults otherwise. Share: "
             "`llm_attrib.core.guided.SPLIT_UNTIL` (the default is 1.0).", "",
             "| model | space | share | gradient evaluations / target (mean) | max | worst completeness error | "
             "backward passes | seconds (all examples) |",
             "|:--|:--|--:|--:|--:|--:|--:|--:|"]
    for name in ("rag", "recall"):
        lines += rows(name, args.examples, args.tokens)
    RESULTS.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
