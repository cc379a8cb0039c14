"""The package's exceptions: one base class, subclasses that also inherit the matching builtin.

Every message says what was received, what was expected, and what to do instead.
"""


class LlmAttribError(Exception):
    """Base class of every error llm-attrib raises on purpose."""


class InvalidInputError(LlmAttribError, ValueError):
    """An argument or input (prompt, target id, baseline, ...) is not usable."""


class UnknownNameError(LlmAttribError, KeyError):
    """A method, space, quadrature, target, metric or zoo name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnsupportedModelError(LlmAttribError, TypeError):
    """The model cannot be attributed in the requested way (e.g. it bypasses the attention interface)."""


class NumericalError(LlmAttribError, FloatingPointError):
    """The model produced NaN or inf, so no attribution can be trusted."""


class MissingPackageError(LlmAttribError, ImportError):
    """An optional package that a feature needs (e.g. the one shipping a real model's weights) is absent."""


class ConvergenceWarning(UserWarning):
    """A path method's completeness error is above tolerance: its scores are not a converged integral."""


class SelectionLeakWarning(UserWarning):
    """A method chose its map by the very metric (and perturbation) it is evaluated on: the value is an in-sample
    best of its candidates, not an honest measurement."""

