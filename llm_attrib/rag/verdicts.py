"""Verdicts: is an answer sentence supported by the documents the attribution cites?

The attribution names the documents that carried the sentence; ablation confirms it. The statistic is the
margin, in nats, between what the sentence's log-probability loses when the cited documents are removed and what
it loses when one other document is removed (averaged over the others, a gain counted as no loss): a supported
sentence depends on its sources and not on the rest. "Unsupported" means the sentence does not depend on the
documents it cites: the model would say it without them (from its own knowledge, or made up), or it came from
elsewhere. It does not judge whether a document is about the question: an answer copied from the wrong document
is carried by that document and passes.

"Shared" is the case removing one document cannot settle: the sentence depends on the documents (it loses at
least `high` nats, what a supported source carries, when all are removed) and on the cited ones more than on any
other single one, yet removing the cited ones alone costs it too little, because another document states it too
(or its phrasing): several documents carry it between them. Calling that "unsupported" (the model would say it
without the documents) would contradict the documents' own removal.

Margins are nats of one model: a source carries 10-20 nats on the zoo rag model and a few to 30 on SmolLM2. So the
thresholds are looked up by the model's fingerprint (its architecture's sizes and a checksum of its token
embeddings, not a file path); a model with no calibration gets verdicts labelled "uncalibrated" that keep their
margins, unless the caller passes thresholds of their own (`calibrate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import InvalidInputError
from .explanation import Verdict

Fingerprint = tuple[tuple, tuple[float, ...]]


@dataclass(frozen=True)
class Calibration:
    """Verdict thresholds (low, high) in nats for one model, found by its `fingerprint`, and where they come from."""

    name: str
    fingerprint: Fingerprint
    thresholds: tuple[float, float]
    source: str


THRESHOLDS = (6.97, 10.20)  # the zoo rag model, mask-space default (eval/results/rag_debugging.md, section 2)

CALIBRATIONS = (
    Calibration("zoo rag", (("qwen2", 57, 128, 3),
                            (0.05631, 0.06572, 0.07266, 0.07208, 0.07353, 0.07254, 0.05683, 0.05382, 1.278)),
                THRESHOLDS, "eval/results/rag_debugging.md, section 2"),
    Calibration("SmolLM2-135M-Instruct", (("llama", 49152, 576, 30),
                                          (0.09223, 0.0928, 0.09348, 0.09156, 0.09049, 0.09275, 0.09103, 0.09067, 1.814)),
                (2.12, 2.55), "eval/results/rag/calibration.md, third rule"),
)


def fingerprint(model) -> Fingerprint | None:
    """The model's architecture sizes and the mean absolute value of 8 blocks of its first 4096 token embeddings and
    of its last parameter tensor, rounded to 4 significant digits: the same weights agree in float32, bfloat16 or
    float16, another checkpoint of the same architecture does not. None when the weights are not in memory."""
    config = model.config
    sizes = tuple(getattr(config, key, None) for key in ("model_type", "vocab_size", "hidden_size", "num_hidden_layers"))
    embeddings = model.get_input_embeddings()
    last = list(model.parameters())[-1]
    if embeddings is None or any(p.device.type == "meta" for p in (embeddings.weight, last)):
        return None
    blocks = [*embeddings.weight.detach()[:4096].chunk(8), last.detach()]
    return sizes, tuple(float(f"{float(block.double().abs().mean()):.4g}") for block in blocks)


def calibrated_thresholds(model) -> tuple[float, float] | None:
    """The shipped thresholds calibrated for `model`, or None when it has none."""
    found = fingerprint(model)
    if found is None:
        return None
    sizes, signature = found
    for calibration in CALIBRATIONS:
        known_sizes, known = calibration.fingerprint
        if sizes == known_sizes and all(math.isclose(a, b, rel_tol=2e-3) for a, b in zip(signature, known)):
            return calibration.thresholds
    return None


def check_thresholds(thresholds) -> tuple[float, float]:
    """(low, high) as floats, refused unless two finite numbers with low <= high."""
    try:
        low, high = (float(t) for t in thresholds)
    except (TypeError, ValueError):
        raise InvalidInputError(f"thresholds must be two numbers (low, high) in nats, got {thresholds!r}.") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise InvalidInputError(f"thresholds must be finite with low <= high (unsupported below low, supported at or "
                                f"above high), got ({low}, {high}).")
    return low, high


def judge(drop_cited: float, drop_other: float, thresholds: tuple[float, float] | None,
          cited: bool = True, drop_all: float | None = None, drop_alone: float | None = None) -> Verdict:
    """Unsupported below the low threshold (or with nothing cited), supported at or above the high one; with no
    thresholds (None: none calibrated for the model) "uncalibrated", the margin kept. Below low, "shared" instead
    of unsupported when every document's removal (`drop_all`) costs at least `high` and no single other
    document's removal (`drop_alone`, the largest) costs more than the cited ones' (see the module's docstring)."""
    margin = drop_cited - drop_other
    if thresholds is None:
        return Verdict("uncalibrated", drop_cited, drop_other, margin, None, drop_all, calibrated=False)
    low, high = thresholds
    if not cited:
        label = "unsupported"
    elif margin < low:
        carried = drop_all is not None and drop_all >= high  # the documents together carry the sentence
        label = "shared" if carried and (drop_alone is None or drop_cited >= drop_alone) else "unsupported"
    elif margin >= high:
        label = "supported"
    else:
        label = "uncertain"
    return Verdict(label, drop_cited, drop_other, margin, (low, high), drop_all)


def calibrate(supported: list[float], unsupported: list[float]) -> tuple[float, float]:
    """(low, high) from margins of known-supported and known-unsupported sentences, so that each label is precise.

    With s5 the supported margins' 5th percentile and u95 the unsupported ones' 95th: where the two separate
    (u95 < s5), low is their midpoint and high is s5; where they overlap (a small model, whose sources carry a few
    nats), low is s5 and high is u95, so the overlap is "uncertain" and neither "unsupported" nor "supported" is
    given to the other kind's typical margin. Margins are `result.verdicts[i].margin` of your model's own runs
    (see the RAG guide's calibration recipe)."""
    if len(supported) < 2 or len(unsupported) < 2:
        raise InvalidInputError("calibrate needs at least two margins of each kind (supported and unsupported).")
    if not all(math.isfinite(m) for m in (*supported, *unsupported)):
        raise InvalidInputError("calibrate got a margin that is NaN or infinite; pass finite margins in nats.")
    q_supported = float(torch.tensor(supported, dtype=torch.float64).quantile(0.05))
    q_unsupported = float(torch.tensor(unsupported, dtype=torch.float64).quantile(0.95))
    return min(q_supported, (q_unsupported + q_supported) / 2), max(q_supported, q_unsupported)
