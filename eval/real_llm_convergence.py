"""Do IG, RPI and IG2 converge on the real model? Reproduces eval/results/real_llm_convergence.md (SmolLM2).

    python eval/real_llm_convergence.py [--threads 2]

Every method with the package defaults (score-guided nodes to a 1% tolerance; at most 512 gradient
evaluations per target for IG, 128 per baseline and target for RPI's 24 baselines, 512 per reference and
target for IG2) on short prompts: a chat prompt (markup kept in the baseline) and the same question as plain
text. IG2's counterfactuals are the same chat asking for other capitals (the model answers "Rome", "Madrid",
...); one IG2 row shortens the GradPath to 10 steps, so the same budget refines fewer pieces.
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
from llm_attrib.core.chat import render_chat

def one_word(country: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": f"What is the capital of {country}?"}]


ONE_WORD = one_word("France")
COUNTERFACTUALS = ["Italy", "Spain", "Germany", "Japan"]  # IG2's references, rendered as chat text
DEFAULT_SYSTEM = [{"role": "user", "content": "What is the capital of France?"}]
PLAIN = "The capital of France is"
CHAT_PARIS = 'chat, "Answer in one word.", forced "Paris"'
CASES = [  # label, prompt, answer (None: the model's own greedy answer, up to 6 tokens), method, parameters
    (CHAT_PARIS, ONE_WORD, "Paris", "ig", {"space": "embeddings"}),
    (CHAT_PARIS, ONE_WORD, "Paris", "ig", {"space": "attention"}),
    ("chat, default system prompt, the model's own answer (6 tokens)", DEFAULT_SYSTEM, None, "ig",
     {"space": "embeddings"}),
    ('plain "The capital of France is", " Paris"', PLAIN, " Paris", "ig", {"space": "attention"}),
    ('plain "The capital of France is", " Paris"', PLAIN, " Paris", "ig", {"space": "embeddings"}),
    (CHAT_PARIS, ONE_WORD, "Paris", "rpi", {}),
    (CHAT_PARIS, ONE_WORD, "Paris", "ig2", {"n_references": len(COUNTERFACTUALS)}),
    (CHAT_PARIS + ", GradPath of 10 steps", ONE_WORD, "Paris", "ig2",
     {"n_references": len(COUNTERFACTUALS), "n_steps": 10}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "real_llm_convergence.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    attributor = Attributor(*llm_attrib.zoo.load("smollm2"), show_progress=False)
    references = [render_chat(attributor.tokenizer, one_word(country))[0] for country in COUNTERFACTUALS]
    lines = ["| method | prompt | space | targets | worst completeness error | converged | gradient evaluations "
             "| backward passes | seconds |", "|---|---|---|---|---|---|---|---|---|"]
    for label, prompt, answer, method, params in CASES:
        if method == "ig2":
            params = {**params, "references": references}
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            exp = attributor.explain(prompt, answer=answer, method=method, max_new_tokens=6, **params)
        lines.append(f"| {method} | {label} | {exp.space} | {len(exp.target_ids)} | "
                     f"{float(exp.completeness_error.max()):.2%} | {exp.converged} | {evaluations(exp)} | "
                     f"{exp.cost['n_backward']} | {time.perf_counter() - started:.0f} |")
        print(lines[-1], flush=True)
    args.output.write_text("# IG, RPI and IG2 convergence on SmolLM2-135M-Instruct\n\n"
                           f"`python eval/real_llm_convergence.py --threads {args.threads}`\n\n" + "\n".join(lines)
                           + "\n\n" + EVALUATIONS + "\n")


EVALUATIONS = ("Gradient evaluations: IG, per target (a range over targets); RPI, the most any one of its 24 "
               "baseline lines took (per baseline and target); IG2, its integrals along every GradPath together "
               "(the GradPath search's gradient steps are in the backward passes, not here).")


def evaluations(exp) -> str:
    """The method's own count of gradient evaluations (see EVALUATIONS)."""
    steps = exp.params.get("gradient_evaluations", exp.params["n_steps"])
    return f"{min(steps)}-{max(steps)}" if isinstance(steps, list) else str(steps)


if __name__ == "__main__":
    main()
