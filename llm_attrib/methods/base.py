"""What every method shares: the problem it is given, the result it returns, and the registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..core.engine import Integral
from ..core.guided import Run
from ..core.sequence import Sequence
from ..core.spaces import SPACES, AttentionSpace, EmbeddingSpace, MaskSpace
from ..core.static_prefix import StaticPrefix, prefix_length, static_prefix, unmoved
from ..core.targets import Target
from ..errors import InvalidInputError, UnknownNameError, UnsupportedModelError
from ..patching import own_attention


@dataclass
class Problem:
    """Everything a method needs: the model (prepared), the sequence, the space and the target."""

    model: Any
    tokenizer: Any
    seq: Sequence
    space: EmbeddingSpace | AttentionSpace | MaskSpace
    target: Target
    internal_batch_size: int = 16
    show_progress: bool = True
    reader_length: int = 0  # reading="answer": the first tokens' keys and values stay at the explicand (see below)

    _point: torch.Tensor | None = field(default=None, init=False, repr=False)
    _static_prefix: StaticPrefix | None = field(default=None, init=False, repr=False)
    _prefix_checked: bool = field(default=False, init=False, repr=False)

    def point(self) -> torch.Tensor:
        """The explicand x in the space, read once (the attention space's is a forward and a large tensor)."""
        if self._point is None:
            self._point = self.space.point(self.model, self.seq)
        return self._point

    def scores(self, points: torch.Tensor) -> torch.Tensor:
        """Target scores (B, T) at a batch of points of the space; (B, S) summed over answer segments."""
        return self.scores_of(self.seq, points, self.prefix_for(points))

    def scores_of(self, seq: Sequence, points: torch.Tensor, prefix: StaticPrefix | None = None) -> torch.Tensor:
        """Target scores of another sequence of this problem's shape (a prefix, a shorter prompt)."""
        scores = self.target(self.space.logits(self.model, seq, points, prefix), seq.target_ids)
        return scores @ seq.segment_matrix() if seq.answer_level else scores

    def first_scores(self, points: torch.Tensor, n_targets: int) -> torch.Tensor:
        """Scores (B, n_targets) of the first targets only, from a forward over the positions they depend on:
        a node serving an early target need not run the rest of the answer."""
        seq = self.seq
        if seq.is_classifier or seq.answer_level or n_targets >= seq.n_targets:
            return self.scores(points)
        short = seq.prefix(n_targets)
        return self.scores_of(short, self.space.prefix(points, short.length), self.prefix_for(points))

    def prefix_for(self, points: torch.Tensor) -> StaticPrefix | None:
        """The sequence's static prefix where these points leave it as it is, else None. Built (three forwards)
        the first time a batch does, so a method whose points never do (RPI's noisy baselines) never pays.

        With `reader_length` (reading="answer"), the first `reader_length` tokens are always run from their cache at
        the explicand, whatever the points say about them: only the tokens after them see the points (in the mask
        space, how visible each earlier key is to them), so the path measures what those readers take from the
        earlier tokens. The cache is built once with the model's own attention (no tap is needed on it)."""
        if self.reader_length:
            return self.readers()
        if not self._prefix_checked:
            length = prefix_length(self.seq)
            if length and not unmoved(self.space, points, self.point(), length):
                return None
            self._prefix_checked = True
            if length:
                self._static_prefix = static_prefix(self.model, self.seq, self.space, self.point(), length)
        prefix = self._static_prefix
        return prefix if prefix is not None and prefix.fits(self.space, points) else None

    def readers(self) -> StaticPrefix:
        """reading="answer": the first `reader_length` tokens as a static prefix at the explicand, built once (with
        the model's own attention: no tap is needed on it) and handed to the space, whose visibility check then runs
        only the readers too."""
        if self._static_prefix is None:
            x = self.point()  # first: reading the point in the mask space counts the hooked layers
            with own_attention():
                prefix = static_prefix(self.model, self.seq, self.space, x, self.reader_length)
            if prefix is None:
                raise UnsupportedModelError(
                    f"reading='answer' runs the prompt's first {self.reader_length} tokens once from a cache of keys "
                    f"and values, but {type(self.model).__name__} takes no such cache or its cached forward does not "
                    "reproduce its logits here; use reading='full'.")
            self._static_prefix = self.space.readers = prefix
        return self._static_prefix

    @property
    def run(self) -> Run:
        """How the engine evaluates this problem (for score-guided integrals)."""
        return Run(self.scores, self.space.reduce, self.internal_batch_size, self.show_progress, self.first_scores)


@dataclass
class MethodResult:
    """A method's output before it becomes an `Explanation`.

    Attributes:
        scores: (T, L) attribution per target and token.
        completeness_error: (T,), NaN for methods without a completeness property.
        detail: (T, layers, heads, L) for attention-space methods, else None.
        extra: method-specific results (e.g. RPI's candidate maps), JSON-friendly or tensors. Score-guided
            integrals put "token_error" here: (T, L) |Boole - nested Simpson| per token, an estimate of each
            score's quadrature error (in score units) beside the completeness error, which bounds only the sum.
        settings: settings the method decided itself (e.g. the steps an adaptive run used), recorded with
            the explanation's parameters.
        n_forward / n_backward: sequences run forward / backward (a batch of B counts B), for cost reports.
    """

    scores: torch.Tensor
    completeness_error: torch.Tensor
    detail: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    n_forward: int = 0
    n_backward: int = 0

    @classmethod
    def from_integral(cls, integral: Integral, **settings: Any) -> "MethodResult":
        """A single-path integral as a result, with its completeness error."""
        return cls(
            scores=integral.tokens[0],
            completeness_error=integral.completeness_error()[0],
            detail=None if integral.detail is None else integral.detail[0],
            settings=settings,
            n_forward=integral.n_forward,
            n_backward=integral.n_backward,
        )


class Method(Protocol):
    """A method: capability flags and `attribute(problem, **params)`."""

    name: str
    spaces: frozenset[str]
    default_space: str
    has_completeness: bool
    needs_references: bool
    uses_gradients: bool  # False: forward passes only (no chunk of path points to fit)

    def attribute(self, problem: Problem, **params: Any) -> MethodResult: ...


METHODS: dict[str, Method] = {}


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator registering a method under `name`; refuses to overwrite an existing one."""

    def register(cls: type) -> type:
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered ({type(METHODS[name]).__name__}).")
        cls.name = name
        METHODS[name] = cls()
        return cls

    return register


def get_method(name: str, space: str | None = None) -> Method:
    if name not in METHODS:
        raise UnknownNameError(f"unknown method {name!r}; choose one of {sorted(METHODS)}.")
    if space is None:
        return METHODS[name]
    if space not in SPACES:
        raise UnknownNameError(f"unknown space {space!r}; choose one of {sorted(SPACES)}.")
    method = METHODS[name]
    if space not in method.spaces:
        raise InvalidInputError(f"method {name!r} works in space {sorted(method.spaces)}, not {space!r}.")
    return method


def reject_unknown(method: str, params: dict[str, Any]) -> None:
    """Methods take their own parameters only: an unknown one is a typo, not something to ignore."""
    if params:
        raise InvalidInputError(f"method {method!r} got unexpected parameters {sorted(params)}.")
