"""Why IG over attention does not converge on SmolLM2: the score is smooth along the path, its gradient is not.

    python eval/smollm2_integrand.py --threads 2

The speed benchmark's SmolLM2 workload (208-token rag chat prompt, 12-token answer), the whole answer's
log-probability F along IG's straight path in each space (pad / zero-attention baseline, markup kept). Prints
F's total variation over its net change at 129 points, and, on three windows of the path, the exact change
F(b) - F(a) against the integral of the gradient with 4 and 16 Gauss-Legendre nodes. Writes
eval/results/smollm2_integrand.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from speed import smollm2_workload

from llm_attrib import Attributor
from llm_attrib.core.quadrature import gauss_legendre
from llm_attrib.core.spaces import make_space
from llm_attrib.core.targets import resolve_target
from llm_attrib.methods import Problem
from llm_attrib.patching import prepared

RESULTS = Path(__file__).parent / "results" / "smollm2_integrand.md"
WINDOWS = ((0.0, 0.002), (0.002, 0.01), (0.01, 0.05), (0.5, 0.55), (0.95, 1.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    workload = smollm2_workload(12)
    attributor = Attributor(workload.model, workload.tokenizer, show_progress=False)
    seq = attributor.sequence(workload.request, answer=workload.answer)
    lines = ["# SmolLM2: the whole answer's score and its gradient along IG's path", "",
             f"`python eval/smollm2_integrand.py --threads {args.threads}`: {workload.name}. F = log p(answer | prompt) "
             "along the straight path from the default baseline.", "",
             "| space | F's total variation / net change (129 points) | window | exact F(b) - F(a) | 4 GL nodes | 16 GL nodes |",
             "|:--|--:|:--|--:|--:|--:|"]
    for name in ("embeddings", "attention"):
        space = make_space(name)
        with prepared(workload.model, hook_attention=space.uses_attention_hook), torch.enable_grad():
            problem = Problem(workload.model, workload.tokenizer, seq, space,
                              resolve_target("log_prob", None, attributor.vocab_size), 16, False)
            x = space.point(workload.model, seq)
            start = space.baseline(None, workload.model, workload.tokenizer, seq, x)

            def score(alpha: float, grad: bool = False):
                point = (start + alpha * (x - start)).unsqueeze(0).requires_grad_(grad)
                value = problem.scores(point)[0].sum()
                if not grad:
                    return float(value)
                (gradient,) = torch.autograd.grad(value, point)
                return float((gradient[0] * (x - start)).sum())

            with torch.no_grad():
                curve = torch.tensor([score(float(a)) for a in torch.linspace(0, 1, 129)])
            variation = float(curve.diff().abs().sum() / (curve[-1] - curve[0]).abs())
            for a, b in WINDOWS:
                exact = score(b) - score(a)
                quadratures = []
                for n in (4, 16):
                    nodes, weights = gauss_legendre(n)
                    quadratures.append(sum(float(w) * (b - a) * score(a + (b - a) * float(t), grad=True)
                                           for t, w in zip(nodes, weights)))
                lines.append(f"| {name} | {variation:.1f} | [{a}, {b}] | {exact:.3f} | {quadratures[0]:.3f} | "
                             f"{quadratures[1]:.3f} |")
                print(lines[-1], flush=True)
    RESULTS.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
