"""llm-attrib: which input tokens carried each token a HuggingFace transformer produced."""

__version__ = "0.1.0"

from . import zoo  # noqa: E402
from .attributor import Attributor  # noqa: E402
from .errors import (ConvergenceWarning, InvalidInputError, LlmAttribError, MissingPackageError,  # noqa: E402
                     NumericalError, SelectionLeakWarning, UncalibratedWarning, UnknownNameError,
                     UnsupportedModelError)
from .explanation import Explanation  # noqa: E402
from .methods import METHODS  # noqa: E402

__all__ = [
    "Attributor",
    "Explanation",
    "METHODS",
    "LlmAttribError",
    "InvalidInputError",
    "UnknownNameError",
    "UnsupportedModelError",
    "NumericalError",
    "MissingPackageError",
    "ConvergenceWarning",
    "SelectionLeakWarning",
    "UncalibratedWarning",
    "zoo",
]
