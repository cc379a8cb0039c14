"""Verdicts: is an answer sentence supported by the documents the attribution cites?

The attribution names the documents that carried the sentence; ablation confirms it. The statistic is the
margin, in nats, between what the sentence's log-probability loses when the cited documents are removed and what
it loses when one other document is removed (averaged over the others, a gain counted as no loss): a supported
sentence depends on its sources and not on the rest. "Unsupported" means the sentence does not depend on the
documents it cites: the model would say it without them (from its own knowledge, or made up), or it came from
elsewhere. It does not judge whether a document is about the question: an answer copied from the wrong document
is carried by that document and passes. Thresholds were calibrated on the rag zoo task (eval/rag.py, calibration seed
apart from the reported one).
"""

from __future__ import annotations

import torch

from .explanation import Verdict

THRESHOLDS = (6.97, 10.20)  # calibrated for the mask-space default (eval/results/rag_debugging.md, section 2)


def judge(drop_cited: float, drop_other: float, thresholds: tuple[float, float] = THRESHOLDS,
          cited: bool = True, drop_all: float | None = None) -> Verdict:
    """Unsupported below the low threshold (or with nothing cited), supported at or above the high one;
    `drop_all` (every document removed) is reported with it, not judged."""
    low, high = thresholds
    margin = drop_cited - drop_other
    if not cited or margin < low:
        label = "unsupported"
    elif margin >= high:
        label = "supported"
    else:
        label = "uncertain"
    return Verdict(label, drop_cited, drop_other, margin, (low, high), drop_all)


def calibrate(supported: list[float], unsupported: list[float]) -> tuple[float, float]:
    """(low, high) from margins of known-supported and known-unsupported sentences: low is the midpoint between the
    unsupported margins' 95th percentile and the supported ones' 5th, high the supported ones' 5th (or low, if
    lower); between the two a verdict is "uncertain"."""
    if len(supported) < 2 or len(unsupported) < 2:
        from ..errors import InvalidInputError

        raise InvalidInputError("calibrate needs at least two margins of each kind (supported and unsupported).")
    q_supported = float(torch.tensor(supported, dtype=torch.float64).quantile(0.05))
    q_unsupported = float(torch.tensor(unsupported, dtype=torch.float64).quantile(0.95))
    low = (q_unsupported + q_supported) / 2
    return low, max(low, q_supported)
