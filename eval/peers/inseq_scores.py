"""inseq's attributions, computed in inseq's own environment (transformers 4.x) by inseq_attribute.py and read
back here as an external method for `llm_attrib.evaluate`.

Score files: eval/results/peers/inseq_<task>_<kind>.json, a list of records
{"prompt", "answer", "scores": [targets x inputs], "seconds"}, inputs being the prompt tokens (as our
tokenizer splits them, special tokens included) followed by the earlier targets.
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
    """An external method serving inseq's recorded scores for `task`, or None when none were recorded."""
    path = SCORES / f"inseq_{task}_{kind}.json"
    if not path.exists():
        return None
    records = {r["prompt"]: r for r in json.loads(path.read_text())}

    def explain(attributor: Attributor, example: dict) -> Explanation:
        record = records.get(example["prompt"])
        if record is None:
            raise KeyError(f"{path.name} has no record for this prompt; rerun eval/peers/inseq_attribute.py")
        skeleton = attributor.explain(example["prompt"], answer=example.get("answer"), method="random")
        scores = torch.tensor(record["scores"], dtype=torch.float32)
        if scores.shape != skeleton.scores.shape:
            raise ValueError(
                f"inseq scores {tuple(scores.shape)} do not line up with llm-attrib's inputs and targets "
                f"{tuple(skeleton.scores.shape)} for prompt {example['prompt'][:40]!r}"
            )
        return dataclasses.replace(
            skeleton,
            scores=scores,
            method=f"inseq_{kind}",
            params={"recorded_in": path.name},
            cost={"n_forward": None, "n_backward": None, "seconds": record["seconds"]},
        )

    return explain
