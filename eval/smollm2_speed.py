"""IG at its defaults on SmolLM2, against the speed issue's targets (12-token answer <= 5 min, whole answer <= 30 s).

    python eval/smollm2_speed.py embeddings:answer embeddings:tokens --threads 2

Each argument is space:target (target "answer": the whole answer's log-probability as one target; "tokens": each
of the 12 answer tokens its own target), on the SmolLM2 workload of eval/speed.py (first real-text rag question in
its chat template, the model's 12-token greedy answer). Prints seconds, gradient evaluations per target, worst
completeness error, convergence and cost; the session's figures are in eval/results/smollm2_speed.md.
"""

from __future__ import annotations

import argparse
import time

import torch
from speed import smollm2_workload

from llm_attrib import Attributor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="space:target, e.g. embeddings:answer or attention:tokens")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    workload = smollm2_workload(12)
    attributor = Attributor(workload.model, workload.tokenizer, show_progress=False)
    for run in args.runs:
        space, target = run.split(":")
        started = time.perf_counter()
        exp = attributor.explain(workload.request, answer=workload.answer, space=space,
                                 target=None if target == "tokens" else target)
        print(f"{run}: {time.perf_counter() - started:.1f} s, gradient evaluations per target {exp.params['n_steps']}, "
              f"worst completeness error {float(exp.completeness_error.max()):.2%}, converged {exp.converged}, "
              f"cost {exp.cost}", flush=True)


if __name__ == "__main__":
    main()
