"""Record ferret 0.4.2's AOPC comprehensiveness / sufficiency on the zoo `sentiment` classifier.

Writes `eval/results/ferret_reference.json`, which `tests/test_ferret_crosscheck.py` compares against
`llm_attrib.metrics` (the test needs no ferret). Runs in the project's environment; ferret itself runs in a
separate venv (transformers 4.x, numpy < 2) through `eval/peers/ferret_reference.py`.

Regenerate:
    python3 -m venv /work/.venvs/ferret
    /work/.venvs/ferret/bin/pip install torch==2.13.0          # the CPU wheel on this disk, first
    /work/.venvs/ferret/bin/pip install ferret-xai==0.4.2 "transformers<5" "numpy<2" "pyarrow<20" torch==2.13.0
    python eval/peers/make_ferret_reference.py                 # FERRET_PYTHON=... to use another venv

Inputs: 30 examples `zoo.examples("sentiment", n=30, seed=11)`; attributions = our IG (embeddings, default
settings) explanation of the gold label, `Attributor(model, tok).explain(prompt, target_class=label)`,
stored with the inputs so the comparison never depends on re-running IG.

ferret 0.4.2's conventions (read from its source, `ferret/evaluators/faithfulness_measures.py` and
`utils_from_soft_to_discrete.py`):
  * p = softmax probability of the target class; comprehensiveness = p - p(rationale removed), sufficiency
    = p - p(only the rationale kept).
  * special tokens: `remove_first_last=True` drops the first and last input id ([CLS], [SEP]) and, when
    `tokens[0]` is the CLS token, the first and last score; they are never removed, and they come back
    when the perturbed text is tokenised again.
  * bins: `removal_args={"based_on": "perc", "thresholds": np.arange(0.1, 1.1, 0.1)}`; the rationale at
    threshold t is the top int(t * n) tokens (FLOOR, our bins use ceil), n = non-special tokens; a
    threshold with int(t * n) == 0 is skipped, and so is one whose rationale equals the previous one's.
    AOPC = plain mean over the thresholds that remain (not over all 10). If none remains, it returns 0
    (comprehensiveness) and 1 (sufficiency).
  * `only_pos=True` (default): only tokens with score > 0 can be in a rationale (top-k filtered to
    positive scores, so a bin holds min(k, #positive) tokens). `only_pos=False` crashes in ferret 0.4.2
    with numpy 1.26 (`id_top_k == []` on an ndarray of length >= 2 raises ValueError), so the
    "rank every token" setting is obtained by passing scores shifted to be all positive (same ranking).
  * ranking: numpy argsort (quicksort, ties in no defined order); our ranking breaks ties by position.
    The scores here have no ties.
  * removal: `remove_tokens=True` (default) deletes the ids, `False` replaces them with [MASK]; in both cases
    ferret DECODES the perturbed ids to a string and tokenises that string again (batches of 8, padding
    "longest"). Decoding is not the inverse of tokenising for word pieces: deleting "med" from
    "quite med ##io ##cre" gives "quiteiocre" (a different word), and "[MASK] ##io" becomes "[MASK]io".
    So ferret's deletion equals our id-level `removal="delete"` only when that round trip is exact.

Configs recorded (all with ferret's default thresholds):
  * "default": ferret defaults on the IG scores (only positive tokens can be removed).
  * "delete_all_tokens": default args on the shifted (all-positive) scores: every token ranked, deletion.
  * "mask_all_tokens": `removal_args={"remove_tokens": False}` on the shifted scores: replacement by [MASK].

Matching settings in llm_attrib.metrics: the `FERRET` preset (bins 10..100%, floor rounding, only positive
scores removable, AOPC as the mean over distinct non-empty bins) with `removal="delete"` (or "replace", whose
default replacement is the mask token). The JSON's "comparison" also records how far plain `FERRET_BINS` with
ERASER's ceil rule and `normalisation="mean"` is from ferret.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from llm_attrib import Attributor, zoo
from llm_attrib.metrics import FERRET, FERRET_BINS, faithfulness

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "eval" / "results" / "ferret_reference.json"
FERRET_PYTHON = os.environ.get("FERRET_PYTHON", "/work/.venvs/ferret/bin/python")
N_EXAMPLES, SEED = 30, 11
THRESHOLDS = np.arange(0.1, 1.1, 0.1)  # ferret 0.4.2's default removal_args["thresholds"]

CONFIGS = [
    {"name": "default", "evaluation_args": {}, "scores_key": "scores", "removal": "delete"},
    {"name": "delete_all_tokens", "evaluation_args": {}, "scores_key": "scores_positive", "removal": "delete"},
    {"name": "mask_all_tokens", "evaluation_args": {"removal_args": {"remove_tokens": False}},
     "scores_key": "scores_positive", "removal": "replace"},
]


def ferret_sizes(scores: list[float], only_pos: bool = True, thresholds=THRESHOLDS) -> list[int]:
    """Sizes of ferret's distinct non-empty rationales (its "perc" rule) for scores of [CLS] tokens [SEP]."""
    inner = scores[1:-1]
    n, n_pos = len(inner), sum(s > 0 for s in inner)
    sizes = []
    for t in thresholds:
        v = int(t * n)
        if not 0 < v <= n:
            continue
        k = min(v, n_pos) if only_pos else v
        if k > 0 and (not sizes or sizes[-1] != k):
            sizes.append(k)
    return sizes


def ours(model, tok, seq, scores, removal, preset=True):
    """Our AOPC comprehensiveness and sufficiency: with the FERRET preset, or plain FERRET_BINS and the mean."""
    options = {**FERRET} if preset else {"bins": FERRET_BINS, "normalisation": "mean"}
    values = faithfulness(
        (model, tok), (seq, torch.tensor([scores])), ["aopc_comprehensiveness", "aopc_sufficiency"],
        removal=removal, **options,
    )
    return float(values["aopc_comprehensiveness"][0]), float(values["aopc_sufficiency"][0])


def model_folder(tmp: Path) -> Path:
    """The sentiment folder, copied; a transformers-5 tokenizer class is renamed so 4.x can load it."""
    dst = tmp / "sentiment"
    shutil.copytree(zoo.path("sentiment"), dst)
    config_file = dst / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    if config.get("tokenizer_class") not in ("BertTokenizer", "BertTokenizerFast"):
        config["tokenizer_class"] = "BertTokenizerFast"
        config_file.write_text(json.dumps(config))
    return dst


def main() -> None:
    torch.set_num_threads(1)
    model, tok = zoo.load("sentiment")
    attr = Attributor(model, tok, show_progress=False)
    examples = []
    for ex in zoo.examples("sentiment", n=N_EXAMPLES, seed=SEED):
        exp = attr.explain(ex["prompt"], target_class=ex["label"])
        scores = [float(s) for s in exp.scores[0].tolist()]
        inner = np.array(scores[1:-1], dtype=np.float64)
        if len(set(inner.tolist())) != len(inner):
            raise RuntimeError(f"tied scores in {ex['prompt']!r}: the two rankings could differ")
        shifted = inner - inner.min() + 1.0
        if not (np.argsort(-shifted, kind="stable") == np.argsort(-inner, kind="stable")).all():
            raise RuntimeError("shifting changed the ranking")
        examples.append({
            "text": ex["prompt"], "target": ex["label"], "tokens": exp.input_tokens, "input_ids": exp.input_ids,
            "scores": scores, "scores_positive": [0.0, *shifted.tolist(), 0.0],
        })

    with tempfile.TemporaryDirectory() as tmp:
        folder = model_folder(Path(tmp))
        spec = {"model_dir": str(folder), "configs": CONFIGS, "examples": examples}
        (Path(tmp) / "in.json").write_text(json.dumps(spec))
        started = time.perf_counter()
        subprocess.run([FERRET_PYTHON, str(Path(__file__).with_name("ferret_reference.py")),
                        str(Path(tmp) / "in.json"), str(Path(tmp) / "out.json")], check=True)
        ferret_seconds = time.perf_counter() - started
        out = json.loads((Path(tmp) / "out.json").read_text())

    # Our values: the FERRET preset, and plainly FERRET_BINS, to record how much ferret's conventions matter.
    comparison = {}
    for config in CONFIGS:
        name, removal = config["name"], config["removal"]
        matched, plain, skipped = [], [], []
        for i, (ex, ref) in enumerate(zip(examples, out["results"][name])):
            scores = ex[config["scores_key"]]
            sizes = ferret_sizes(scores)
            got = [len(r) for r in ref["rationales"] if r is not None]
            if got != sizes:
                raise RuntimeError(f"{name} example {i}: ferret's rationale sizes {got} != emulated {sizes}")
            seq = attr.sequence(ex["text"], target_class=ex["target"])
            ref_values = (ref["aopc_comprehensiveness"], ref["aopc_sufficiency"])
            if not sizes:
                skipped.append(i)
                continue
            c, s = ours(model, tok, seq, scores, removal)
            matched.append((i, ref["roundtrip_ok"], abs(c - ref_values[0]), abs(s - ref_values[1])))
            c2, s2 = ours(model, tok, seq, scores, removal, preset=False)
            plain.append((abs(c2 - ref_values[0]), abs(s2 - ref_values[1])))
        exact = [m for m in matched if m[1]]
        broken = [m for m in matched if not m[1]]
        comparison[name] = {
            "ferret_preset_max_abs_diff_roundtrip_ok": {
                "comprehensiveness": max(m[2] for m in exact), "sufficiency": max(m[3] for m in exact),
                "n_examples": len(exact)},
            "ferret_preset_max_abs_diff_roundtrip_broken": {
                "comprehensiveness": max((m[2] for m in broken), default=None),
                "sufficiency": max((m[3] for m in broken), default=None),
                "examples": [m[0] for m in broken]},
            "plain_FERRET_BINS_max_abs_diff": {
                "comprehensiveness": max(p[0] for p in plain), "sufficiency": max(p[1] for p in plain),
                "mean_abs_comprehensiveness": sum(p[0] for p in plain) / len(plain),
                "mean_abs_sufficiency": sum(p[1] for p in plain) / len(plain)},
            "no_rationale_examples": skipped,
        }

    record = {
        "description": __doc__.strip().splitlines()[0],
        "regenerate": "python eval/peers/make_ferret_reference.py (see its docstring for the ferret venv)",
        "task": "sentiment", "n_examples": N_EXAMPLES, "seed": SEED,
        "attribution": "llm_attrib IG (embeddings, default settings), explain(prompt, target_class=label)",
        "ferret": out["versions"], "ferret_default_removal_args": out["default_removal_args"],
        "ferret_seconds": ferret_seconds,
        "configs": CONFIGS,
        "matching_llm_attrib_settings": {
            "preset": "llm_attrib.metrics.FERRET",
            "removal": {c["name"]: c["removal"] for c in CONFIGS}, "replacement": "default (mask token)"},
        "comparison": comparison,
        "examples": [
            {**ex, "ferret": {c["name"]: out["results"][c["name"]][i] for c in CONFIGS}}
            for i, ex in enumerate(examples)
        ],
    }
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(comparison, indent=1))
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    sys.exit(main())
