"""ContextCite 0.0.4 source attributions of GIVEN responses to RAG prompts (runs INSIDE the contextcite venv;
no llm_attrib import).

Setup (transformers 4.x; torch first, so pip keeps the CPU wheel on this disk). Checked with exactly these pins
(the versions pip chose for `context-cite==0.0.4 "transformers<5"` on this machine):
    python3 -m venv /work/.venvs/contextcite
    /work/.venvs/contextcite/bin/pip install torch==2.13.0
    /work/.venvs/contextcite/bin/pip install context-cite==0.0.4 transformers==4.57.6 tokenizers==0.22.2 \
        torch==2.13.0 numpy==2.4.6 scikit-learn==1.9.1 pandas==3.1.1 datasets==5.0.1 nltk==3.10.4 spacy==3.8.18
(numpy 2 is fine: ContextCite only needs numpy, scikit-learn's Lasso and datasets' Dataset.from_dict here.
pandas 3 removed `Styler.applymap`, so ContextCite's `as_dataframe=True` display would fail; it is not used.)

Usage:
    /work/.venvs/contextcite/bin/python eval/peers/contextcite_rag.py MODEL_DIR EXAMPLES.jsonl OUT.json \
        [--num-ablations 64] [--ablation-keep-prob 0.5] [--lasso-alpha 0.01] [--limit N] [--threads 1] \
        [--also-ablations 32] [--resume]
--also-ablations K: also ContextCite at K ablations from the same run: the Lasso fit on the first K masks and
their forwards, which are exactly the masks and forwards a run with --num-ablations K makes (mask k is drawn with
RandomState(k), one forward each), so no forward is repeated; its "seconds" are measured, from the start to the
end of the K-th ablation forward plus its own fit (per example under "also": {K: {"scores", "bias", "seconds",
"n_ablations"}}). --resume: keep the examples OUT.json already holds and run the others; OUT.json is rewritten
after every example, so a run cut short keeps what it computed.
EXAMPLES.jsonl: written by `eval/peers/make_contextcite_examples.py` (main python); one line per example:
{"id", "chat", "prompt_template" (with {context} and {query}), "sources" (each document exactly as it appears
in the prompt), "separator" (what joins them into the context), "query", "response" (given, not generated),
"prompt_text" and "response_logprob" (the prompt text and log p(response | prompt) computed by llm_attrib, for
the checks)}.
MODEL_DIR: a folder saved by transformers 4.x or 5.x, e.g. `zoo.path("rag")` or `zoo.path("smollm2")`
(~/.cache/llm-attrib/smollm2-<hash>, built by `zoo.load("smollm2")`). A transformers-5 folder is fixed in
memory, nothing is written (each fix is listed in OUT.json "settings.loading_fixes"):
  * tokenizer_config.json naming `TokenizersBackend` (4.x cannot load it): `PreTrainedTokenizerFast` reads
    tokenizer.json (and chat_template.jinja) directly - the same effect as a copy whose tokenizer_config names
    PreTrainedTokenizerFast, so no sibling folder is needed;
  * config.json `"quantization_config": null` (4.x takes any such key as a quantized model and fails): dropped;
  * config.json `rope_parameters` without `rope_theta`: 4.x ignores rope_parameters and uses its default
    rope_theta 10000; SmolLM2's is 100000, so rope_theta is copied from rope_parameters (rope_type "default"
    only; any other type stops the run). Without this SmolLM2's log-probabilities are wrong.

How ContextCite is run (read from context_cite 0.0.4's source):
  * Sources: a `BaseContextPartitioner` whose sources are exactly the given documents; a mask keeps some, the
    ablated context is the kept ones joined by the separator (so the all-kept context is separator.join(sources)).
  * Prompt: ContextCite's `_get_prompt_ids` formats `prompt_template` with the (ablated) context and the query,
    wraps it as one user message and applies the tokenizer's chat template with tokenize=False,
    add_generation_prompt=True, then encodes that text with add_special_tokens=False - the same as llm_attrib's
    chat prompt (SmolLM2's template also inserts its default system message, in both). For chat=false the
    subclass below uses the formatted text itself, encoded WITH the tokenizer's special tokens (the zoo's
    <bos>), as llm_attrib reads a plain prompt; `_output_tokens` then also tokenises with special tokens so that
    `_response_start` (= len(prompt ids)) indexes the joint tokenisation correctly.
  * Given response: ContextCite generates lazily and caches `_cache["output"]` = full prompt text + generated
    text; every later use (response ids, ablation forwards) reads that cache. We set it to prompt text + the
    given response before anything else, so `generate` is never called. The response ids are ContextCite's
    own: the joint tokenisation of prompt + response after len(prompt ids); they are checked to equal the
    response tokenised alone (what llm_attrib scores), and the prompt part to equal the prompt's ids.
  * Ablations: `num_ablations` masks, mask k drawn with np.random.RandomState(k) (seeds 0..n-1, keep
    probability 0.5): the SAME masks for every example with the same number of sources; one forward each
    (batch size 1, ContextCite's default; left padding with batches > 1 would shift the positions). The
    target of the regression is the response's logit-probability log p - log(1 - p), p = product of the
    response tokens' probabilities.
  * Surrogate (default solver): sklearn Lasso(alpha=0.01) on standardised masks with intercept, target divided
    by the number of response tokens, weights rescaled back (and multiplied by that number). "scores" = those
    weights, one per source = `get_attributions(as_dataframe=False)` for the whole response (computed through
    `_get_attributions_for_ids_range(0, n_response_tokens)`, which is what get_attributions does after
    mapping the whole response's characters to tokens; when that mapping gives the full range the public call
    is made too and must agree). A weight can be exactly 0 (L1).
  * Checks per example, with all sources kept: the prompt text ContextCite builds equals "prompt_text", and the
    response log-probability from ContextCite's own forward code (`utils._get_response_logit_probs` +
    `aggregate_logit_probs(output_type="log_prob")`) equals "response_logprob" within --tolerance (1e-3);
    otherwise the run stops with an error and writes nothing.
  * `import context_cite` calls nltk.download("punkt_tab") (for its default sentence splitter, unused here):
    nltk.download is replaced by a no-op first, so no download is attempted. HF_HUB_OFFLINE=1 is set.

Cost measured (1 thread, 64 ablations, 2 response tokens): zoo rag ~0.2 s CPU per example; SmolLM2-135M on the
real_text RAG prompts (~5 documents) ~32 s CPU per example (~0.5 s per ablation forward), 34-73 s wall on the
shared, loaded machine.

OUT.json: {"model_dir", "settings": {"num_ablations", "ablation_keep_prob", "batch_size", "solver",
"regression_target", "mask_seeds", "threads", "tolerance", "loading_fixes"}, "versions": {context_cite,
transformers, torch, numpy, scikit-learn}, "examples": [{"id", "scores": [per source], "bias", "seconds" (wall time
of the ablation forwards and the fit, model loading and the checks excluded), "cpu_seconds" (process CPU time
of the same; on a shared machine the less load-dependent number), "n_ablations" (forwards run),
"n_response_tokens", "prompt_matches": bool, "response_logprob_contextcite", "response_logprob_given",
"logprob_difference", "response_contextcite" (ContextCite's `response` property: it starts at the first
response token's first character, so a leading space is dropped), "get_attributions_full_range": bool}]}.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # ContextCite's ablation loop shows a tqdm bar per example

import nltk  # noqa: E402

nltk.download = lambda *args, **kwargs: False  # context_cite.utils downloads punkt_tab at import; not needed

import numpy as np  # noqa: E402
import torch  # noqa: E402
from context_cite import ContextCiter  # noqa: E402
from context_cite import utils as cc_utils  # noqa: E402
from context_cite.context_partitioner import BaseContextPartitioner  # noqa: E402
from context_cite.solver import LassoRegression  # noqa: E402
from datasets import Dataset  # noqa: E402

# ContextCite's forward runs under torch.cuda.amp.autocast(), deprecated and a no-op on CPU (float32 stays float32)
warnings.filterwarnings("ignore", message=".*torch.cuda.amp.autocast.*")
warnings.filterwarnings("ignore", message="CUDA is not available or torch_xla is imported. Disabling autocast.")


class SourcesPartitioner(BaseContextPartitioner):
    """The given documents as the sources; an ablated context joins the kept ones with the separator."""

    def __init__(self, sources: list[str], separator: str) -> None:
        super().__init__(separator.join(sources))
        self.parts, self.separator = list(sources), separator

    @property
    def num_sources(self) -> int:
        return len(self.parts)

    def split_context(self) -> None:
        pass

    def get_source(self, index: int) -> str:
        return self.parts[index]

    def get_context(self, mask=None) -> str:
        if mask is None:
            mask = np.ones(self.num_sources, dtype=bool)
        return self.separator.join(part for part, keep in zip(self.parts, mask) if keep)


class GivenResponseCiter(ContextCiter):
    """ContextCiter on a given response; chat=False builds the plain formatted prompt instead of the chat one."""

    def __init__(self, *args, response: str, chat: bool, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.chat = chat
        _, prompt = self._get_prompt_ids(return_prompt=True)
        self._cache["output"] = prompt + response  # what `_output` caches after generating: prompt + response

    def _get_prompt_ids(self, mask=None, return_prompt: bool = False):
        if self.chat:
            return super()._get_prompt_ids(mask=mask, return_prompt=return_prompt)
        prompt = self.prompt_template.format(context=self.partitioner.get_context(mask), query=self.query)
        ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        return (ids, prompt) if return_prompt else ids

    @property
    def _output_tokens(self):
        return self.tokenizer(self._output, add_special_tokens=not self.chat)


def load(model_dir: str):
    """Model (float32, eval) and tokenizer under transformers 4.x, with a transformers-5 folder fixed in memory."""
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    folder, fixes = Path(model_dir), []
    raw = json.loads((folder / "config.json").read_text())
    if "quantization_config" in raw and raw["quantization_config"] is None:
        del raw["quantization_config"]
        fixes.append("config: dropped quantization_config=null")
    rope = raw.get("rope_parameters")
    if rope is not None and "rope_theta" not in raw:
        if rope.get("rope_type", "default") != "default" or set(rope) - {"rope_theta", "rope_type"}:
            raise SystemExit(f"{model_dir}: rope_parameters {rope} cannot be mapped to transformers 4.x here.")
        raw["rope_theta"] = rope["rope_theta"]
        fixes.append(f"config: rope_theta={rope['rope_theta']} from rope_parameters")
    config = CONFIG_MAPPING[raw["model_type"]].from_dict(raw)
    model = AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=torch.float32).eval()
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    if tok_config.get("tokenizer_class") == "TokenizersBackend":
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # the "class you load ... is not the same type" notice
        tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
        hf_logging.set_verbosity_warning()
        fixes.append("tokenizer: TokenizersBackend read as PreTrainedTokenizerFast")
    else:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"  # as ContextCiter.from_pretrained sets it
    return model, tokenizer, fixes


def full_context_logprob(cc: GivenResponseCiter) -> float:
    """log p(response | all sources kept) through ContextCite's own forward and reduction."""
    prompt_ids, response_ids = cc._get_prompt_ids(), cc._response_ids
    ids = prompt_ids + response_ids
    dataset = Dataset.from_dict({"input_ids": [ids], "attention_mask": [[1] * len(ids)],
                                 "labels": [[-100] * len(prompt_ids) + response_ids]})
    logit_probs = cc_utils._get_response_logit_probs(dataset, cc.model, cc.tokenizer, len(response_ids), 1)
    return float(cc_utils.aggregate_logit_probs(logit_probs, output_type="log_prob")[0])


def run_example(model, tokenizer, ex: dict, args) -> dict:
    sources, separator = ex["sources"], ex["separator"]
    if ex["chat"] and not tokenizer.chat_template:
        raise SystemExit(f"example {ex['id']}: chat=true but the tokenizer has no chat template.")
    cc = GivenResponseCiter(
        model, tokenizer, separator.join(sources), ex["query"], response=ex["response"], chat=ex["chat"],
        num_ablations=args.num_ablations, ablation_keep_prob=args.ablation_keep_prob, batch_size=1,
        solver=LassoRegression(lasso_alpha=args.lasso_alpha), prompt_template=ex["prompt_template"],
        partitioner=SourcesPartitioner(sources, separator),
    )
    prompt_ids, prompt_text = cc._get_prompt_ids(return_prompt=True)
    prompt_matches = prompt_text == ex["prompt_text"]
    if not prompt_matches:
        raise SystemExit(f"example {ex['id']}: ContextCite's prompt differs from prompt_text:\n"
                         f"{prompt_text!r}\n!=\n{ex['prompt_text']!r}")
    joint = cc._output_tokens["input_ids"]
    alone = tokenizer(ex["response"], add_special_tokens=False)["input_ids"]
    if joint[: cc._response_start] != prompt_ids or cc._response_ids != alone:
        raise SystemExit(f"example {ex['id']}: prompt + response tokenised together ({joint}) is not the prompt's "
                         f"ids ({prompt_ids}) followed by the response's ({alone}).")
    logprob = full_context_logprob(cc)
    difference = logprob - ex["response_logprob"]
    if not abs(difference) <= args.tolerance:
        raise SystemExit(f"example {ex['id']}: ContextCite's log p(response) {logprob:.6f} differs from the given "
                         f"{ex['response_logprob']:.6f} by {difference:.2e} (> {args.tolerance}).")

    n_tokens = len(cc._response_ids)
    forward_ends = []
    hook = model.register_forward_hook(lambda *_: forward_ends.append(time.perf_counter()))
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        cc._compute_masks_and_logit_probs()  # the num_ablations forwards
    finally:
        hook.remove()
    scores, bias = cc._get_attributions_for_ids_range(0, n_tokens)  # the Lasso fit
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    also = {}
    for k in args.also_ablations:
        if len(forward_ends) != cc._masks.shape[0] or not 0 < k < len(forward_ends):
            raise SystemExit(f"example {ex['id']}: --also-ablations {k} needs 0 < {k} < the "
                             f"{len(forward_ends)} forwards run, one per ablation.")
        fit_start = time.perf_counter()
        outputs = cc_utils.aggregate_logit_probs(cc._logit_probs[:k, 0:n_tokens])
        weight, intercept = cc.solver.fit(cc._masks[:k], outputs, n_tokens)
        also[k] = {"scores": [float(w) for w in weight], "bias": float(np.asarray(intercept).reshape(-1)[0]),
                   "seconds": forward_ends[k - 1] - start + time.perf_counter() - fit_start, "n_ablations": k}
    full_range = tuple(cc._indices_to_token_indices()) == (0, n_tokens)
    if full_range:
        public = cc.get_attributions(as_dataframe=False, verbose=False)
        if not np.allclose(public, scores):
            raise SystemExit(f"example {ex['id']}: get_attributions() {public} != {scores}.")
    return {"id": ex["id"], "scores": [float(s) for s in scores], "bias": float(np.asarray(bias).reshape(-1)[0]),
            "seconds": seconds, "cpu_seconds": cpu_seconds, "n_ablations": int(cc._masks.shape[0]), "n_response_tokens": n_tokens,
            "prompt_matches": prompt_matches, "response_logprob_contextcite": logprob,
            "response_logprob_given": ex["response_logprob"], "logprob_difference": difference,
            "response_contextcite": cc.response, "get_attributions_full_range": full_range, "also": also}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("examples")
    parser.add_argument("output")
    parser.add_argument("--num-ablations", type=int, default=64)
    parser.add_argument("--ablation-keep-prob", type=float, default=0.5)
    parser.add_argument("--lasso-alpha", type=float, default=0.01)
    parser.add_argument("--tolerance", type=float, default=1e-3)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--also-ablations", type=int, nargs="*", default=[])
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, tokenizer, fixes = load(args.model_dir)
    examples = [json.loads(line) for line in open(args.examples) if line.strip()][: args.limit]
    output = Path(args.output)
    records = json.loads(output.read_text())["examples"] if args.resume and output.exists() else []
    versions = {name: importlib.metadata.version(name)
                for name in ("context-cite", "transformers", "torch", "numpy", "scikit-learn")}
    done = {r["id"] for r in records}
    for ex in examples:
        if ex["id"] in done:
            continue
        records.append(run_example(model, tokenizer, ex, args))
        r = records[-1]
        print(f"{r['id']}: {r['seconds']:.2f} s, {r['n_ablations']} ablations, log p {r['response_logprob_contextcite']:.4f} "
              f"(given {r['response_logprob_given']:.4f}), scores {np.round(r['scores'], 3).tolist()}", flush=True)
        write_output(output, args, fixes, versions, records)
    write_output(output, args, fixes, versions, records)
    print(f"{len(records)} examples -> {args.output}")


def write_output(output: Path, args, fixes: list[str], versions: dict, records: list[dict]) -> None:
    out = {
        "model_dir": str(Path(args.model_dir).resolve()),
        "settings": {"num_ablations": args.num_ablations, "ablation_keep_prob": args.ablation_keep_prob,
                     "batch_size": 1, "solver": f"LassoRegression(lasso_alpha={args.lasso_alpha})",
                     "regression_target": "logit_prob of the whole response (log p - log(1 - p))",
                     "mask_seeds": f"np.random.RandomState(k), k = 0..{args.num_ablations - 1}",
                     "threads": args.threads, "tolerance": args.tolerance, "loading_fixes": fixes,
                     "also_ablations": args.also_ablations},
        "versions": versions,
        "examples": records,
    }
    output.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
