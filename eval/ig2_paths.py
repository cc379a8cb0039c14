"""Why IG2's left-point sum does not converge, and what does: completeness per rule along GradPath, and how
GradPath moves (recall zoo model, the seed-5 example, references: 8 prompts of seed 6).

    python eval/ig2_paths.py          # writes eval/results/ig2_paths.md
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import torch

import llm_attrib
from llm_attrib import Attributor
from llm_attrib.core.spaces import make_space
from llm_attrib.core.targets import resolve_target
from llm_attrib.methods.base import Problem
from llm_attrib.methods.ig2 import grad_path, read_references, representation_fn
from llm_attrib.patching import prepared

OUTPUT = Path(__file__).parent / "results" / "ig2_paths.md"
RULES = {
    "paper, left point, 50 steps": dict(quadrature="riemann-left", segment_steps=1, tolerance=None),
    "paper, left point, 200 steps": dict(quadrature="riemann-left", segment_steps=1, tolerance=None, n_steps=200),
    "2 Gauss-Legendre nodes per step": dict(quadrature="gauss-legendre", segment_steps=2, tolerance=None),
    "4 Gauss-Legendre nodes per step": dict(quadrature="gauss-legendre", segment_steps=4, tolerance=None),
    "score-guided (default)": dict(),
}


def path_statistics(attributor: Attributor, prompt: str, answer: str, references: list[str], target: int,
                    n_steps: int) -> tuple[float, float]:
    """(share of GradPath steps that increase the representation distance, total variation of the target's
    score along the path / its net change), averaged over the target's references."""
    model, tokenizer = attributor.model, attributor.tokenizer
    seq = attributor.sequence(prompt, answer=answer)
    space = make_space("embeddings", None)
    with prepared(model, hook_attention=False), torch.enable_grad():
        problem = Problem(model, tokenizer, seq, space, resolve_target("log_prob", None, attributor.vocab_size), 16, False)
        x = space.point(model, seq)
        neutral = space.baseline(None, model, tokenizer, seq, x)
        represent = representation_fn(model, seq, None)
        position = int(seq.target_positions[target])

        def rep(embeddings: torch.Tensor, at: int = position) -> torch.Tensor:
            return represent(embeddings, at).float()

        goals = torch.stack([r.representation for r in read_references(problem, references, rep, 20)
                             if r.outcome != int(seq.target_ids[target])])
        movable = ((torch.arange(seq.length) <= position) & ~seq.keep)[:, None].to(x)
        weight = model.get_input_embeddings().weight
        vertices = grad_path(x, rep, goals, n_steps, 2 * float((x - neutral).norm()) / n_steps, movable=movable,
                             clip=(float(weight.min()), float(weight.max())))
        with torch.no_grad():
            distance = torch.stack([(rep(vertices[:, j]) - goals).norm(dim=-1) for j in range(n_steps + 1)], 1)
            score = torch.stack([problem.scores(vertices[:, j])[:, target] for j in range(n_steps + 1)], 1)
    rising = (distance.diff(dim=1) > 0).float().mean().item()
    variation = (score.diff(dim=1).abs().sum(1) / (score[:, -1] - score[:, 0]).abs()).mean().item()
    return rising, variation


def main() -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    model, tokenizer = llm_attrib.zoo.load("recall")
    attributor = Attributor(model, tokenizer, show_progress=False)
    example = llm_attrib.zoo.examples("recall", n=1, seed=5)[0]
    references = [e["prompt"] for e in llm_attrib.zoo.examples("recall", n=8, seed=6)]
    lines = [
        "# IG2 along GradPath: which rule converges, and why the paper's does not",
        "",
        f"recall zoo model, prompt `{example['prompt']}`, answer `{example['answer']}`, references: 8 recall "
        "prompts of seed 6. `python eval/ig2_paths.py` (1 thread).",
        "",
        "| rule along GradPath | completeness error per target | backward passes | seconds |",
        "|:--|:--|--:|--:|",
    ]
    for label, params in RULES.items():
        started = time.perf_counter()
        exp = attributor.explain(example["prompt"], answer=example["answer"], method="ig2", references=references,
                                 **params)
        errors = ", ".join(f"{e:.2%}" for e in exp.completeness_error.tolist())
        lines.append(f"| {label} | {errors} | {exp.cost['n_backward']} | {time.perf_counter() - started:.1f} |")
    lines += ["", "How GradPath moves (second target):", "",
              "| GradPath steps | steps that increase the distance | score's total variation / net change |",
              "|--:|--:|--:|"]
    for n_steps in (50, 200):
        rising, variation = path_statistics(attributor, example["prompt"], example["answer"], references, 1, n_steps)
        lines.append(f"| {n_steps} | {rising:.0%} | {variation:.1f}x |")
    OUTPUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
