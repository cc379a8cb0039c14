"""Why IG over attention does not converge on SmolLM2: the score and its gradient along the path.

    python eval/smollm2_integrand.py --threads 2            # both parts; or `windows` / `scan` alone

The speed benchmark's SmolLM2 workload (208-token rag chat prompt, 12-token answer), the whole answer's
log-probability F along IG's straight path in each space (pad / zero-attention baseline, markup kept). Prints
F's total variation over its net change at 129 points, and, on three windows of the path, the exact change
F(b) - F(a) against the integral of the gradient with 4 and 16 Gauss-Legendre nodes (eval/results/
smollm2_integrand.md); `scan` reads F itself over attention at a resolution of 0.0005 near alpha = 0, from
the zero and the uniform attention baselines (eval/results/smollm2_attention_scan.md).
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
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
SCAN_RESULTS = Path(__file__).parent / "results" / "smollm2_attention_scan.md"
WINDOWS = ((0.0, 0.002), (0.002, 0.01), (0.01, 0.05), (0.5, 0.55), (0.95, 1.0))
SCAN = torch.cat([torch.linspace(0, 0.02, 41), torch.linspace(0.03, 1, 33)])  # fine where 1/128 saw nothing


@contextmanager
def path_score(workload, attributor: Attributor, seq, space_name: str, baseline: str | None):
    """Yields score(alpha, grad=False) -> F at alpha along the straight path (with grad: dF/dalpha), while
    the model is prepared for the space."""
    space = make_space(space_name)
    with prepared(workload.model, hook_attention=space.uses_attention_hook), torch.enable_grad():
        problem = Problem(workload.model, workload.tokenizer, seq, space,
                          resolve_target("log_prob", None, attributor.vocab_size), 16, False)
        x = space.point(workload.model, seq)
        start = space.baseline(baseline, workload.model, workload.tokenizer, seq, x)

        def score(alpha: float, grad: bool = False):
            point = (start + alpha * (x - start)).unsqueeze(0).requires_grad_(grad)
            value = problem.scores(point)[0].sum()
            if not grad:
                return float(value)
            (gradient,) = torch.autograd.grad(value, point)
            return float((gradient[0] * (x - start)).sum())

        yield score


def windows(workload, attributor: Attributor, seq, threads: int) -> None:
    lines = ["# SmolLM2: the whole answer's score and its gradient along IG's path", "",
             f"`python eval/smollm2_integrand.py windows --threads {threads}`: {workload.name}. F = log p(answer | "
             "prompt) along the straight path from the default baseline.", "",
             "| space | F's total variation / net change (129 points) | window | exact F(b) - F(a) | 4 GL nodes | 16 GL nodes |",
             "|:--|--:|:--|--:|--:|--:|"]
    for name in ("embeddings", "attention"):
        with path_score(workload, attributor, seq, name, None) as score:
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


def scan(workload, attributor: Attributor, seq, threads: int) -> None:
    """F over attention at a resolution of 0.0005 on [0, 0.02] (0.03 beyond), from the zero and the uniform
    attention baselines: where the score itself jumps, not only its gradient."""
    lines = ["# SmolLM2: the whole answer's score along the attention path, finely", "",
             f"`python eval/smollm2_integrand.py scan --threads {threads}`: {workload.name}. F = log p(answer | "
             "prompt) at 41 points on [0, 0.02] and 33 on [0.03, 1], forward only; markup keys keep their attention "
             "in both baselines.", "",
             "| baseline | F(0) | F(1) | total variation / net change | the same on [0, 0.02] | largest steps between "
             "neighbouring points (alpha: change) |",
             "|:--|--:|--:|--:|--:|:--|"]
    curves = []
    for baseline in ("zeros", "uniform"):
        with path_score(workload, attributor, seq, "attention", baseline) as score:
            curve = torch.tensor([score(float(a)) for a in SCAN])
        steps = curve.diff()
        variation = float(steps.abs().sum() / (curve[-1] - curve[0]).abs())
        near = float(steps[:40].abs().sum() / (curve[40] - curve[0]).abs())
        largest = steps.abs().argsort(descending=True)[:4].sort().values.tolist()
        jumps = ", ".join(f"{float(SCAN[i]):.4g}-{float(SCAN[i + 1]):.4g}: {float(steps[i]):+.1f}" for i in largest)
        lines.append(f"| {baseline} | {float(curve[0]):.2f} | {float(curve[-1]):.2f} | {variation:.2f} | {near:.1f} | {jumps} |")
        curves.append(f"F from {baseline}: " + " ".join(f"{float(a):.4g}:{float(f):.2f}" for a, f in zip(SCAN, curve)))
        print(lines[-1], flush=True)
    SCAN_RESULTS.write_text("\n".join(lines + [""] + curves) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", default=["windows", "scan"], choices=["windows", "scan"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    workload = smollm2_workload(12)
    attributor = Attributor(workload.model, workload.tokenizer, show_progress=False)
    seq = attributor.sequence(workload.request, answer=workload.answer)
    for part in args.parts:
        {"windows": windows, "scan": scan}[part](workload, attributor, seq, args.threads)


if __name__ == "__main__":
    main()
