"""Weight-only int8 (torchao, through transformers' TorchAoConfig) on SmolLM2-135M-Instruct: does it explain,
and does it rank the inputs as the float32 model does?

    python eval/quantization.py --threads 1 [--n 6] [--kinds sentiment rag] [--spaces embeddings mask]

The first n examples of each kind in eval/data/real_text.jsonl (chat prompts: sentiment, rag) that the float32
model answers right (eval/real_text.py's `prepare` and `knows`, decided before any attribution), their expected
answer explained by IG with a fixed rule (32 Gauss-Legendre nodes, tolerance=None), so both models integrate at
the same nodes, with the float32 model and its int8 weight-only copy (every Linear of the decoder; the embedding
and the tied LM head stay float32, as torchao leaves them). Per target: Spearman correlation of the int8 and the
float32 scores over the content inputs the target can see (as eval/real_llm_numerics.py), and each model's
completeness error.

Writes eval/results/quantization.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from datasets import load_dataset
from torchao.quantization import Int8WeightOnlyConfig
from transformers import AutoModelForCausalLM, TorchAoConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_llm_numerics import FIXED_RULE, THRESHOLD, explain, spearman, visible_content  # noqa: E402
from real_text import DATA, knows, prepare  # noqa: E402

import llm_attrib  # noqa: E402
from llm_attrib import Attributor  # noqa: E402
from llm_attrib.zoo.pretrained import pretrained_path  # noqa: E402

OUTPUT = Path(__file__).parent / "results" / "quantization.md"


def int8_copy(folder: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, device_map="cpu",
                                                quantization_config=TorchAoConfig(Int8WeightOnlyConfig())).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n", type=int, default=6)
    parser.add_argument("--kinds", nargs="+", default=["sentiment", "rag"])
    parser.add_argument("--spaces", nargs="+", default=["embeddings", "mask"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    model, tokenizer = llm_attrib.zoo.load("smollm2")
    quantized = int8_copy(pretrained_path("smollm2"))
    linear = quantized.model.layers[0].mlp.up_proj.weight
    attributors = {"float32": Attributor(model, tokenizer, show_progress=False),
                   "int8": Attributor(quantized, tokenizer, show_progress=False)}
    data = load_dataset("json", data_files=str(DATA), split="train")
    rows = []
    for kind in args.kinds:
        chosen = []
        for example in (e for e in data if e["kind"] == kind):
            item = prepare(example, tokenizer)
            if knows(attributors["float32"], item):
                chosen.append((example["id"], item))
            if len(chosen) == args.n:
                break
        for example_id, item in chosen:
            for space in args.spaces:
                reference, base_seconds = explain(attributors["float32"], item, space, FIXED_RULE)
                exp, seconds = explain(attributors["int8"], item, space, FIXED_RULE)
                values = [spearman(exp.scores[t, visible_content(exp, t)],
                                   reference.scores[t, visible_content(reference, t)])
                          for t in range(len(exp.target_ids))]
                rows.append({"id": example_id, "space": space, "n_inputs": len(exp.input_ids), "spearman": values,
                             "float32": reference.completeness_error.tolist(), "int8": exp.completeness_error.tolist(),
                             "seconds": (base_seconds, seconds)})
                print(f"{example_id} {space:10s} {len(exp.input_ids)} tokens: spearman "
                      f"{' '.join(f'{v:.3f}' for v in values)}, completeness float32 "
                      f"{max(rows[-1]['float32']):.2%} int8 {max(rows[-1]['int8']):.2%}, "
                      f"{base_seconds:.0f}s / {seconds:.0f}s", flush=True)
    write(rows, args, type(linear).__name__, commit)


def write(rows: list[dict], args, weight_type: str, commit: str) -> None:
    lines = [
        "# Weight-only int8 (torchao) against float32 on SmolLM2-135M-Instruct",
        "",
        f"Command: `python eval/quantization.py --threads {args.threads} --n {args.n} --kinds {' '.join(args.kinds)} "
        f"--spaces {' '.join(args.spaces)}` (commit {commit}, {platform.machine()}, {os.cpu_count()} CPU cores "
        f"shared, load average {os.getloadavg()[0]:.1f} at the end; torch {torch.__version__}).",
        "",
        f"Quantization: `TorchAoConfig(Int8WeightOnlyConfig())` through `from_pretrained`; decoder Linear weights "
        f"become `{weight_type}`. IG, {FIXED_RULE['n_steps']} Gauss-Legendre nodes, no refinement, the example's "
        "expected answer; Spearman over the content inputs each target can see.",
        "",
        "| example | space | inputs | Spearman per target | completeness float32 | completeness int8 | s float32 / int8 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['id']} | {r['space']} | {r['n_inputs']} | {' '.join(f'{v:.3f}' for v in r['spearman'])} | "
                     f"{max(r['float32']):.2%} | {max(r['int8']):.2%} | {r['seconds'][0]:.0f} / {r['seconds'][1]:.0f} |")
    lines.append("")
    for space in args.spaces:
        converged = [v for r in rows if r["space"] == space for v, e in zip(r["spearman"], r["float32"]) if e <= 0.01]
        every = [v for r in rows if r["space"] == space for v in r["spearman"]]
        if every:
            lines.append(f"- {space}: median Spearman {torch.tensor(every).median():.3f} over {len(every)} targets "
                         f"(minimum {min(every):.3f}); where the float32 integral converged (completeness <= 1%): "
                         f"{sum(v >= THRESHOLD for v in converged)} of {len(converged)} at >= {THRESHOLD}.")
    OUTPUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
