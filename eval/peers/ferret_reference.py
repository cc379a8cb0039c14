"""Run ferret 0.4.2's AOPC comprehensiveness and sufficiency on fixed attributions (runs INSIDE the ferret venv).

This script does not import llm_attrib: it runs in a separate virtual environment with transformers 4.x,
numpy < 2 and ferret-xai 0.4.2 (see `make_ferret_reference.py` for how to build that venv and for the
whole regeneration procedure).

Usage:
    /work/.venvs/ferret/bin/python eval/peers/ferret_reference.py INPUT.json OUTPUT.json

INPUT.json:
    {"model_dir": "<folder loadable by AutoModelForSequenceClassification / AutoTokenizer>",
     "configs": [{"name": str, "evaluation_args": {...ferret evaluation args...}, "scores_key": "scores"}],
     "examples": [{"text": str, "tokens": [str, ...], "target": int,
                   "scores": [float, ...], ...other score keys...}]}
`tokens`/`scores` cover every input token including [CLS] and [SEP] (ferret drops the first and last score
when `tokens[0]` is the CLS token and `remove_first_last` is True, its default). Each config names the score
list of the example it evaluates (`scores_key`).

OUTPUT.json: {"versions": {...}, "results": {config name: [per example {"aopc_comprehensiveness",
"aopc_sufficiency", "baseline_prob", "rationales": [[token indices without CLS] per threshold or null],
"roundtrip_ok": bool}]}}. `rationales` are recomputed with ferret's own rationale function, exactly as its
evaluators do; `roundtrip_ok` says whether every perturbed text ferret builds (it decodes the perturbed ids
to a string and tokenises that string again) tokenises back to exactly the perturbed ids. Where it does not
(deleting part of a word-piece split word glues the rest onto the previous word), ferret's perturbation is
not an id-level deletion.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import sys

import numpy as np
import torch


def main(input_path: str, output_path: str) -> None:
    torch.set_num_threads(1)
    import ferret
    import transformers
    from ferret import AOPC_Comprehensiveness_Evaluation, AOPC_Sufficiency_Evaluation
    from ferret.evaluators.utils_from_soft_to_discrete import (
        _check_and_define_get_id_discrete_rationale_function,
        parse_evaluator_args,
    )
    from ferret.explainers.explanation import Explanation
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    spec = json.load(open(input_path))
    model = AutoModelForSequenceClassification.from_pretrained(spec["model_dir"], dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    comp = AOPC_Comprehensiveness_Evaluation(model, tokenizer)
    suff = AOPC_Sufficiency_Evaluation(model, tokenizer)

    def diagnostics(example, scores, args):
        """Ferret's rationales per threshold (its own functions) and the decode/re-tokenise round trip."""
        remove_first_last, only_pos, removal_args, _ = parse_evaluator_args(args)
        ids = tokenizer(example["text"])["input_ids"]
        if remove_first_last:
            ids = ids[1:-1]
            if tokenizer.cls_token == example["tokens"][0]:
                scores = scores[1:-1]
        rationale_of = _check_and_define_get_id_discrete_rationale_function(removal_args["based_on"])
        rationales, last, ok = [], None, True
        for threshold in removal_args["thresholds"]:
            top = rationale_of(scores, threshold, only_pos)
            if top is not None and last is not None and set(top) == last:
                top = None
            rationales.append(None if top is None else [int(i) for i in top])
            if top is None:
                continue
            last = set(top)
            sample = np.array(copy.copy(ids))
            if removal_args["remove_tokens"]:
                removed = np.delete(sample, top).tolist()
                kept = sample[np.sort(top)].tolist()
            else:
                removed, kept = sample.copy(), sample.copy()
                removed[top] = tokenizer.mask_token_id
                not_top = np.ones(sample.size, dtype=bool)
                not_top[top] = False
                kept[not_top] = tokenizer.mask_token_id
                removed, kept = removed.tolist(), kept.tolist()
            for perturbed in (removed, kept):
                again = tokenizer(tokenizer.decode(perturbed))["input_ids"][1:-1]
                ok &= again == perturbed
        return rationales, ok

    results = {}
    for config in spec["configs"]:
        args = config.get("evaluation_args", {})
        if "removal_args" in args and "thresholds" in args["removal_args"]:
            args = {**args, "removal_args": {**args["removal_args"]}}
        rows = []
        for example in spec["examples"]:
            scores = np.asarray(example[config.get("scores_key", "scores")], dtype=np.float64)
            explanation = Explanation(
                text=example["text"], tokens=example["tokens"], scores=scores, explainer="fixed", target=example["target"]
            )
            c = comp.compute_evaluation(explanation, target=example["target"], **args)
            s = suff.compute_evaluation(explanation, target=example["target"], **args)
            with torch.no_grad():
                _, logits = comp.helper._forward(example["text"], output_hidden_states=False)
            rationales, ok = diagnostics(example, scores, args)
            rows.append({
                "aopc_comprehensiveness": float(c.score),
                "aopc_sufficiency": float(s.score),
                "baseline_prob": float(logits.softmax(-1)[0, example["target"]]),
                "rationales": rationales,
                "roundtrip_ok": bool(ok),
            })
        results[config["name"]] = rows
    out = {
        "versions": {"ferret-xai": importlib.metadata.version("ferret-xai"),
                     "ferret.__version__": getattr(ferret, "__version__", None),  # 0.4.2 still says 0.4.1 "transformers": transformers.__version__,
                     "torch": torch.__version__, "numpy": np.__version__},
        "default_removal_args": {k: (v.tolist() if hasattr(v, "tolist") else v)
                                 for k, v in parse_evaluator_args({})[2].items()},
        "results": results,
    }
    json.dump(out, open(output_path, "w"), indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
