"""Evaluation of attributions: faithfulness (perturbation) metrics and plausibility against ground truth.

`faithfulness(attributor, explanation)` scores one explanation per target; `score_candidates` scores many
candidate maps of one sequence in one batched pass; `plausibility` compares scores to evidence spans.
Defaults follow ERASER; `faithfulness(attr, exp, **FERRET)` follows ferret 0.4.2 (floor-rounded 10..100% bins,
only positively scored tokens removed, AOPC over the distinct non-empty bins).
Definitions, defaults and conventions are in the docstrings of `faithfulness.py` and `plausibility.py`.
"""

from ._perturb import ERASER_BINS, FERRET_BINS
from .faithfulness import FERRET, METRICS, Metric, Perturbed, faithfulness, perturb, score_candidates, sequence_of
from .plausibility import average_precision, plausibility

__all__ = [
    "faithfulness",
    "score_candidates",
    "perturb",
    "plausibility",
    "average_precision",
    "sequence_of",
    "METRICS",
    "Metric",
    "Perturbed",
    "ERASER_BINS",
    "FERRET_BINS",
    "FERRET",
]
