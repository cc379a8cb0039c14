"""What a cheap setting buys on SmolLM2: completeness error and rank agreement against gradient evaluations.

    python eval/smollm2_curve.py --space embeddings --threads 2

The speed benchmark's SmolLM2 workload (the first rag question of the real-text set in its chat template, the
model's 12-token greedy answer), explained as one target (the whole answer's log-probability), so each point
costs one gradient per node. For each rule and budget: uniform Gauss-Legendre (Captum's rule) with n nodes, and
llm-attrib's score-guided rule (tolerance 1%) capped at n gradient evaluations; the completeness error and the
Spearman correlation of the token scores with a 1024-node Gauss-Legendre reference. Writes
eval/results/smollm2_curve_<space>.md and .png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402
from speed import smollm2_workload  # noqa: E402

from llm_attrib import Attributor  # noqa: E402

RESULTS = Path(__file__).parent / "results"
BUDGETS = (16, 32, 64, 128, 256)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="embeddings", choices=["embeddings", "attention"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reference", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    workload = smollm2_workload(12)
    attributor = Attributor(workload.model, workload.tokenizer, show_progress=False)

    def run(**params):
        started = time.perf_counter()
        exp = attributor.explain(workload.request, answer=workload.answer, space=args.space, target="answer", **params)
        return exp, time.perf_counter() - started

    reference, reference_seconds = run(quadrature="gauss-legendre", n_steps=args.reference, tolerance=None)
    rows = []
    for n in BUDGETS:
        for rule, params in (("uniform Gauss-Legendre", {"quadrature": "gauss-legendre", "n_steps": n, "tolerance": None}),
                             ("score-guided (1%)", {"max_steps": n + 1})):
            exp, seconds = run(**params)
            steps = exp.params["n_steps"]
            rows.append({"rule": rule, "budget": n, "evaluations": steps if isinstance(steps, int) else max(steps),
                         "error": float(exp.completeness_error.max()), "seconds": seconds,
                         "spearman": float(spearmanr(exp.scores[0].numpy(), reference.scores[0].numpy())[0])})
            print(rows[-1], flush=True)
    lines = [f"# SmolLM2: completeness and rank agreement against cost ({args.space}, whole answer as one target)", "",
             f"`python eval/smollm2_curve.py --space {args.space} --threads {args.threads}`: {workload.name}; answer "
             f"{workload.tokenizer.decode(workload.answer)!r}. Reference: {args.reference}-node Gauss-Legendre "
             f"({reference_seconds:.0f} s, its own completeness error {float(reference.completeness_error.max()):.1%}).",
             "", "| rule | budget | gradient evaluations | completeness error | Spearman vs reference | seconds |",
             "|:--|--:|--:|--:|--:|--:|"]
    lines += [f"| {r['rule']} | {r['budget']} | {r['evaluations']} | {r['error']:.1%} | {r['spearman']:.3f} | "
              f"{r['seconds']:.1f} |" for r in rows]
    (RESULTS / f"smollm2_curve_{args.space}.md").write_text("\n".join(lines) + "\n")
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for rule in dict.fromkeys(r["rule"] for r in rows):
        mine = [r for r in rows if r["rule"] == rule]
        left.loglog([r["evaluations"] for r in mine], [max(r["error"], 1e-5) for r in mine], "o-", label=rule)
        right.semilogx([r["evaluations"] for r in mine], [r["spearman"] for r in mine], "o-", label=rule)
    left.axhline(0.01, color="grey", linestyle=":", label="1% tolerance")
    left.set(xlabel="gradient evaluations", ylabel="completeness error", title=f"SmolLM2, {args.space}")
    right.set(xlabel="gradient evaluations", ylabel=f"Spearman vs {args.reference}-node reference")
    left.legend()
    figure.tight_layout()
    figure.savefig(RESULTS / f"smollm2_curve_{args.space}.png", dpi=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
