"""inseq's attributions, computed in inseq's own environment (transformers 4.x) by inseq_attribute.py and read
back here as an external method for `llm_attrib.evaluate`.

Score files: eval/results/peers/inseq_<task>.json, as inseq_attribute.py writes them: per example and inseq
method, "scores_sum" [targets x prompt tokens] and "seconds". The metrics perturb prompt tokens only, so the
columns of earlier targets (inputs of later ones) are left at zero.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import torch

from llm_attrib import Attributor, Explanation

SCORES = Path(__file__).parents[1] / "results" / "peers"


def inseq_method(task: str, kind: str) -> Callable[[Attributor, dict], Explanation] | None:
    """An external method serving inseq's recorded `kind` scores for `task`, or None when none were recorded."""
    path = SCORES / f"inseq_{task}.json"
    if not path.exists():
        return None
    records = {r["prompt"]: r for r in json.loads(path.read_text())["examples"] if kind in r}
    if not records:
        return None

    def explain(attributor: Attributor, example: dict) -> Explanation:
        record = records.get(example["prompt"])
        if record is None:
            raise KeyError(f"{path.name} has no {kind} record for this prompt; rerun eval/peers/inseq_attribute.py")
        skeleton = attributor.explain(example["prompt"], answer=example.get("answer"), method="random")
        prompt_scores = torch.tensor(record[kind]["scores_sum"], dtype=torch.float32)
        expected = (skeleton.scores.shape[0], skeleton.n_prompt_tokens)
        if tuple(prompt_scores.shape) != expected:
            raise ValueError(
                f"inseq scores {tuple(prompt_scores.shape)} do not line up with llm-attrib's targets x prompt "
                f"tokens {expected} for prompt {example['prompt'][:40]!r}"
            )
        scores = torch.zeros_like(skeleton.scores)
        scores[:, : expected[1]] = prompt_scores
        return dataclasses.replace(
            skeleton,
            scores=scores,
            method=f"inseq_{kind}",
            params={"recorded_in": path.name},
            cost={"n_forward": None, "n_backward": None, "seconds": record[kind]["seconds"]},
        )

    return explain
