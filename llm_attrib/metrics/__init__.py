"""Evaluation of attributions: faithfulness (perturbation) metrics and plausibility against ground truth.

`faithfulness(attributor, explanation)` scores one explanation per target; `score_candidates` scores many
candidate maps of one sequence in one batched pass; `plausibility` compares scores to evidence spans.
Definitions, defaults and conventions are in the docstrings of `faithfulness.py` and `plausibility.py`.
"""

from ._perturb import ERASER_BINS, FERRET_BINS
from .faithfulness import METRICS, Metric, Perturbed, faithfulness, perturb, score_candidates, sequence_of
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
]
