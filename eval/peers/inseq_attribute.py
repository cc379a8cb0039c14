"""inseq 0.7.1 attributions of given answers of a causal LM (runs INSIDE the inseq venv; no llm_attrib import).

Setup (transformers 4.x; torch first, so pip keeps the CPU wheel on this disk):
    python3 -m venv /work/.venvs/inseq
    /work/.venvs/inseq/bin/pip install torch==2.13.0
    /work/.venvs/inseq/bin/pip install inseq==0.7.1 "transformers<5" torch==2.13.0

Usage:
    /work/.venvs/inseq/bin/python eval/peers/inseq_attribute.py MODEL_DIR EXAMPLES.jsonl OUT.json \
        [--methods integrated_gradients attention] [--n-steps 50] [--attributed-fn probability] [--logprob]
        [--deltas] [--threads N] [--limit N]

MODEL_DIR: a folder `AutoModelForCausalLM` / `AutoTokenizer` load, e.g. `zoo.path("recall")` or
`zoo.path("rag")` (their tokenizer_config names `PreTrainedTokenizerFast`, which transformers 4.x loads; the
Llama / Qwen2 configs saved by transformers 5 carry `rope_parameters`, which 4.x ignores and replaces by its
default rope_theta 10000 - the same value for the zoo models, so logits are identical; a folder whose rope_theta
differs, e.g. SmolLM2's 100000, is refused rather than run with the wrong positions).
EXAMPLES.jsonl: one {"prompt": str, "answer": str} per line (zoo convention: answer without leading space);
an optional "generated" gives the whole text instead of prompt + " " + answer (where the tokenizer does not
join words with a space).

How inseq is called (decoder-only, constrained decoding):
    model.attribute(prompt, prompt + " " + answer, show_progress=False, n_steps=..., internal_batch_size=...)
inseq tokenises both texts with the tokenizer's special tokens (the zoo tokenizers prepend <bos>, once to
each, so the generated text's ids start with the prompt's ids; this is checked) and attributes every token
of the generated text after the prompt: the answer tokens, without the <eos> the zoo models emit after it.
Attributions cover the prompt (including <bos>) and, for later targets, the earlier answer tokens; only the
prompt columns are written. inseq's IG: baseline = the <unk> embedding at every position (not zeros),
attributed function "probability" of the target token by default, Riemann/Gauss-Legendre as captum's
default (gausslegendre) with n_steps=50. --logprob passes logprob=True to inseq's probability function (the
log-probability, the target llm-attrib and eval/speed.py's Captum explain). inseq drops every token equal to its
pad token from its output after attributing it and then cuts the last target off, misaligning the rest; one
example per call has no padding, so the pad token is unset here and an answer holding <pad> keeps its columns.

OUT.json: {"model_dir", "methods", "settings", "versions", "examples": [{"prompt", "answer", "prompt_tokens",
"target_tokens", "<method>": {"scores_sum": [targets x prompt tokens] (signed: IG summed over the embedding
dimension; attention: mean over layers and heads), "scores_inseq": [targets x prompt tokens] (inseq's own
default aggregation), "seconds": wall time of that example's attribute() call, "peak_gib": the process's peak
resident memory during it (VmHWM reset before; model and libraries included), and with --deltas
"completeness_error": per target, from the convergence delta inseq returns (see completeness_errors)}}]}.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import time
from pathlib import Path

import torch


def prompt_matrix(attribution: torch.Tensor, n_prompt: int) -> list[list[float]]:
    """(all tokens, targets) -> [targets x prompt tokens] as nested lists."""
    return attribution[:n_prompt].T.float().tolist()


def completeness_errors(raw: torch.Tensor, deltas: torch.Tensor) -> list[float]:
    """Per target |sum of attributions - (f(input) - f(baseline))| / |f(input) - f(baseline)|, f being inseq's
    attributed function and the baseline its own. Captum's delta is that numerator, signed; the attributions of a
    target cover every position before it (prompt and earlier answer tokens; later ones are NaN), so their sum
    minus the delta is the function's change."""
    totals = raw.double().nansum(-1).nansum(0)  # (targets,)
    change = totals - deltas.double()
    return (deltas.double().abs() / change.abs().clamp_min(1e-12)).tolist()


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)
    except OSError:
        pass


def peak_gib() -> float:
    status = Path("/proc/self/status")
    lines = status.read_text().splitlines() if status.exists() else []
    return next((int(line.split()[1]) for line in lines if line.startswith("VmHWM")), 0) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("examples")
    parser.add_argument("output")
    parser.add_argument("--methods", nargs="+", default=["integrated_gradients", "attention"])
    parser.add_argument("--n-steps", type=int, default=50)
    parser.add_argument("--internal-batch-size", type=int, default=50)
    parser.add_argument("--attributed-fn", default="probability")
    parser.add_argument("--logprob", action="store_true", help="attribute the log-probability (probability fn only)")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--deltas", action="store_true",
                        help="IG: also record each target's completeness error from Captum's convergence delta")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import inseq
    import transformers
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM, AutoTokenizer

    # checked from the file, before loading: transformers 4 fails on SmolLM2's folder in other ways first
    saved = json.loads((Path(args.model_dir) / "config.json").read_text())
    theta = (saved.get("rope_parameters") or {}).get("rope_theta")
    read = saved.get("rope_theta", getattr(CONFIG_MAPPING[saved["model_type"]](), "rope_theta", theta))
    if theta is not None and theta != read:
        raise SystemExit(f"{args.model_dir}: rope_theta {theta} (transformers 5's rope_parameters) would be read by "
                         f"transformers 4 as {read}; the logits would be wrong.")
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(
        args.model_dir, dtype=torch.float32, attn_implementation="eager"  # eager: attention weights
    ).eval()
    examples = [json.loads(line) for line in open(args.examples) if line.strip()][: args.limit]

    records = [{"prompt": ex["prompt"], "answer": ex["answer"]} for ex in examples]
    for method in args.methods:
        attribution_model = inseq.load_model(model, method, tokenizer=tokenizer)
        attribution_model.pad_token = None  # see the docstring: otherwise an answer's <pad> misaligns the targets
        kwargs = {"attributed_fn": args.attributed_fn} | ({"logprob": True} if args.logprob else {})
        if method == "integrated_gradients":
            kwargs.update(n_steps=args.n_steps, internal_batch_size=args.internal_batch_size,
                          return_convergence_delta=args.deltas)
        for ex, record in zip(examples, records):
            generated = ex.get("generated") or ex["prompt"] + " " + ex["answer"]
            prompt_ids = tokenizer(ex["prompt"])["input_ids"]
            full_ids = tokenizer(generated)["input_ids"]
            if full_ids[: len(prompt_ids)] != prompt_ids:
                raise ValueError(f"the prompt's tokens are not a prefix of prompt + answer's: {ex['prompt']!r}")
            reset_peak()
            started = time.perf_counter()
            out = attribution_model.attribute(ex["prompt"], generated, show_progress=False, **kwargs)
            seconds = time.perf_counter() - started
            peak = peak_gib()
            seq = out.sequence_attributions[0]
            n_prompt = seq.attr_pos_start
            if n_prompt != len(prompt_ids) or seq.attr_pos_end != len(full_ids):
                raise ValueError(f"inseq attributed positions {seq.attr_pos_start}..{seq.attr_pos_end}, expected "
                                 f"{len(prompt_ids)}..{len(full_ids)}")
            raw = seq.target_attributions  # (all tokens, targets, ...): embedding dim, or layers/heads
            signed = raw.sum(-1) if method == "integrated_gradients" else raw.reshape(*raw.shape[:2], -1).mean(-1)
            record["prompt_tokens"] = [t.token for t in seq.target[:n_prompt]]
            record["target_tokens"] = [t.token for t in seq.target[n_prompt:]]
            record[method] = {
                "scores_sum": prompt_matrix(signed, n_prompt),
                "scores_inseq": prompt_matrix(seq.aggregate().target_attributions, n_prompt),
                "raw_shape": list(raw.shape),
                "seconds": seconds,
                "peak_gib": peak,
            }
            if method == "integrated_gradients" and args.deltas:
                record[method]["completeness_error"] = completeness_errors(raw, seq.step_scores["deltas"])
    json.dump({
        "model_dir": args.model_dir,
        "methods": args.methods,
        "settings": {"n_steps": args.n_steps, "internal_batch_size": args.internal_batch_size,
                     "attributed_fn": args.attributed_fn, "logprob": args.logprob,
                     "baseline": "inseq default (<unk> embedding)", "threads": args.threads},
        "versions": {"inseq": importlib.metadata.version("inseq"), "transformers": transformers.__version__, "torch": torch.__version__},
        "examples": records,
    }, open(args.output, "w"), indent=1)


if __name__ == "__main__":
    main()
