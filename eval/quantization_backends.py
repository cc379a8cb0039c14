"""Which quantization backends explain here: each scheme loaded through transformers' quantization config on a
small random Llama (hidden 128, so every backend's block sizes fit), then IG over embeddings and over the mask.

    pip install torchao && pip install --no-deps bitsandbytes optimum-quanto   # --no-deps: keep torch as it is
    python eval/quantization_backends.py

Per backend: the weight class, and per space the worst completeness error (16 Gauss-Legendre nodes, no
refinement) and the largest score difference from the float32 model, or the error raised. A backend that is not
installed is reported as such. Writes eval/results/quantization_backends.md.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tiny_tokenizer import tiny_tokenizer  # noqa: E402

import llm_attrib  # noqa: E402
from llm_attrib import ConvergenceWarning, LlmAttribError  # noqa: E402

OUTPUT = Path(__file__).parent / "results" / "quantization_backends.md"
PROMPT, ANSWER = "w1 w2 w3 w4 w5 w6 w7 w8", "w9 w10"
FIXED = {"n_steps": 16, "quadrature": "gauss-legendre", "tolerance": None}


def configs() -> dict[str, tuple[str, object]]:
    """Backend name -> (package it needs, a factory of its transformers quantization config)."""
    from transformers import BitsAndBytesConfig, QuantoConfig, TorchAoConfig

    def torchao(kind: str):
        from torchao import quantization

        return TorchAoConfig(getattr(quantization, kind)())

    return {
        "torchao int8 weight-only": ("torchao", lambda: torchao("Int8WeightOnlyConfig")),
        "optimum-quanto int8": ("optimum.quanto", lambda: QuantoConfig(weights="int8")),
        "optimum-quanto int4": ("optimum.quanto", lambda: QuantoConfig(weights="int4")),
        "bitsandbytes 8-bit": ("bitsandbytes", lambda: BitsAndBytesConfig(load_in_8bit=True)),
        "bitsandbytes 4-bit (nf4)": ("bitsandbytes", lambda: BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)),
    }


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    plain = LlamaForCausalLM(LlamaConfig(
        vocab_size=64, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, initializer_range=0.05, pad_token_id=0, bos_token_id=2, eos_token_id=3)).eval()
    tokenizer = tiny_tokenizer()
    folder = tempfile.mkdtemp()
    plain.save_pretrained(folder)
    reference = {space: llm_attrib.Attributor(plain, tokenizer, show_progress=False).explain(
        PROMPT, ANSWER, space=space, **FIXED).scores for space in ("embeddings", "mask")}
    rows = []
    for name, (package, make) in configs().items():
        if importlib.util.find_spec(package.split(".")[0]) is None or importlib.util.find_spec(package) is None:
            rows.append((name, "not installed", "", ""))
            continue
        model = AutoModelForCausalLM.from_pretrained(folder, device_map="cpu", quantization_config=make()).eval()
        weight = type(model.model.layers[0].mlp.up_proj).__name__
        cells = []
        for space in ("embeddings", "mask"):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    exp = llm_attrib.Attributor(model, tokenizer, show_progress=False).explain(
                        PROMPT, ANSWER, space=space, **FIXED)
                difference = float((exp.scores - reference[space]).abs().max())
                cells.append(f"completeness {float(exp.completeness_error.max()):.2%}, max diff {difference:.3f}")
            except LlmAttribError as error:
                cells.append(f"refused: {type(error).__name__}: {str(error).split('. ')[0]}")
        rows.append((name, weight, *cells))
        print(rows[-1], flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = ["# Quantization backends on this machine", "",
             f"Command: `python eval/quantization_backends.py` (commit {commit}, {platform.machine()}, "
             f"{os.cpu_count()} CPU cores, torch {torch.__version__}; a random Llama, hidden 128, 2 layers; IG with "
             "16 Gauss-Legendre nodes; max diff: the largest score difference from the float32 model).", "",
             "| backend | layer | embeddings | mask |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    OUTPUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
