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

from .explanation import Verdict

THRESHOLDS = (1.0, 3.0)


def judge(drop_cited: float, drop_other: float, thresholds: tuple[float, float] = THRESHOLDS,
          cited: bool = True) -> Verdict:
    """Unsupported below the low threshold (or with nothing cited), supported at or above the high one."""
    low, high = thresholds
    margin = drop_cited - drop_other
    if not cited or margin < low:
        label = "unsupported"
    elif margin >= high:
        label = "supported"
    else:
        label = "uncertain"
    return Verdict(label, drop_cited, drop_other, margin, (low, high))
