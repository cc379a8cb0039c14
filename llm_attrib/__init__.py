"""llm-attrib: which input tokens carried each token a HuggingFace transformer produced.

The public names are imported on first use (PEP 562), so `import llm_attrib.errors` or `llm-attrib --help` does
not load torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the submodule that defines it
_LAZY = {
    "zoo": None,
    "Attributor": "attributor",
    "Explanation": "explanation",
    "METHODS": "methods",
    **{name: "errors" for name in (
        "ConvergenceWarning", "InvalidInputError", "LlmAttribError", "MissingPackageError", "NumericalError",
        "SelectionLeakWarning", "UnknownNameError", "UnsupportedModelError")},
}

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
    "zoo",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'llm_attrib' has no attribute {name!r}")
    module = importlib.import_module(f".{_LAZY[name] or name}", __name__)
    value = module if _LAZY[name] is None else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from . import zoo
    from .attributor import Attributor
    from .errors import (ConvergenceWarning, InvalidInputError, LlmAttribError, MissingPackageError, NumericalError,
                         SelectionLeakWarning, UnknownNameError, UnsupportedModelError)
    from .explanation import Explanation
    from .methods import METHODS
