"""Does IG converge on the real model? The README's table for SmolLM2-135M-Instruct, reproduced.

    python eval/real_llm_convergence.py [--threads 2]

IG with the package defaults (score-guided nodes, tolerance 1%, at most 512 gradient evaluations per
target) on short prompts: a chat prompt (markup kept in the baseline) and the same question as plain text.
Writes eval/results/real_llm_convergence.md.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch

import llm_attrib
from llm_attrib import Attributor, ConvergenceWarning

ONE_WORD = [{"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "What is the capital of France?"}]
DEFAULT_SYSTEM = [{"role": "user", "content": "What is the capital of France?"}]
PLAIN = "The capital of France is"
CASES = [  # label, prompt, answer (None: the model's own greedy answer, up to 6 tokens), space
    ('chat, "Answer in one word.", forced "Paris"', ONE_WORD, "Paris", "embeddings"),
    ('chat, "Answer in one word.", forced "Paris"', ONE_WORD, "Paris", "attention"),
    ("chat, default system prompt, the model's own answer (6 tokens)", DEFAULT_SYSTEM, None, "embeddings"),
    ('plain "The capital of France is", " Paris"', PLAIN, " Paris", "attention"),
    ('plain "The capital of France is", " Paris"', PLAIN, " Paris", "embeddings"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "real_llm_convergence.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    attributor = Attributor(*llm_attrib.zoo.load("smollm2"), show_progress=False)
    lines = ["| prompt | space | targets | worst completeness error | converged | gradient evaluations per target | seconds |",
             "|---|---|---|---|---|---|---|"]
    for label, prompt, answer, space in CASES:
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            exp = attributor.explain(prompt, answer=answer, space=space, max_new_tokens=6)
        steps = exp.params["n_steps"]
        steps = f"{min(steps)}-{max(steps)}" if isinstance(steps, list) else str(steps)
        lines.append(f"| {label} | {space} | {len(exp.target_ids)} | {float(exp.completeness_error.max()):.2%} | "
                     f"{exp.converged} | {steps} | {time.perf_counter() - started:.0f} |")
        print(lines[-1], flush=True)
    args.output.write_text("# IG convergence on SmolLM2-135M-Instruct\n\n"
                           f"`python eval/real_llm_convergence.py --threads {args.threads}`\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
