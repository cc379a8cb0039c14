"""Spaces where paths live: the input embeddings, or the attention probabilities of chosen layers.

A space knows how to read its point x for a sequence, how to build a baseline there, how to run the model
at a batch of path points (returning logits at the target positions), and how to reduce an attribution
over the space to one score per input token (a sum, so completeness is preserved).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from einops import reduce

from ..errors import InvalidInputError, NumericalError, UnknownNameError, UnsupportedModelError
from ..patching import AttentionTap, tapped
from .model_kind import head_only_at
from .placement import compute_dtype, embedding_rows
from .sequence import Sequence
from .static_prefix import StaticPrefix, skipped_tokens


COUNTING_TOKENS = 4


def model_logits(model, seq: Sequence, prefix: StaticPrefix | None = None, **inputs) -> torch.Tensor:
    """Logits (B, T, V) at the target positions; the LM head runs only there when the model allows it. With a
    static prefix, `inputs` are the tokens after it and the prefix's keys and values come from its cache."""
    if seq.is_classifier:
        return model(**inputs).logits.unsqueeze(1)
    positions, cache = seq.target_positions, {"use_cache": False}
    if prefix is not None:
        batch = next(iter(inputs.values())).shape[0]
        positions, cache = positions - prefix.length, {"use_cache": True, prefix.argument: prefix.cache(batch)}
    head = head_only_at(model, positions)
    logits = model(**inputs, **cache, **head).logits
    return logits if head else logits[:, positions]


def neutral_token_id(tokenizer, model) -> int:
    """A token that carries no content: pad, else unk, else mask, else eos.

    Tokens whose embedding is the zero vector (an untrained `padding_idx` row) are skipped: with RMSNorm the
    zero vector makes the IG integrand nearly singular near the baseline.
    """
    n_vocab = model.get_input_embeddings().num_embeddings
    for name in ("pad_token_id", "unk_token_id", "mask_token_id", "eos_token_id"):
        token = getattr(tokenizer, name, None)
        if isinstance(token, int) and 0 <= token < n_vocab and embedding_rows(model, torch.tensor(token)).abs().max() > 0:
            return token
    raise InvalidInputError(
        "the tokenizer has no pad, unk, mask or eos token with a non-zero embedding to build the neutral "
        "baseline from; pass baseline=<token id> or baseline='zeros'."
    )


def _custom_baseline(baseline: torch.Tensor, x: torch.Tensor, space: str) -> torch.Tensor:
    if baseline.shape != x.shape:
        raise InvalidInputError(
            f"a custom {space} baseline must have the shape of the space's point {tuple(x.shape)}, "
            f"got {tuple(baseline.shape)}."
        )
    if not torch.isfinite(baseline).all():
        raise InvalidInputError("the custom baseline contains NaN or inf.")
    return baseline.to(x)


def run_tapped(model, seq: Sequence, tap: AttentionTap, prefix: StaticPrefix | None = None) -> None:
    """One forward of the sequence as it is, without gradients, steered by `tap` (to record or count layers); with
    a static prefix only the tokens after it run, over its cached keys and values."""
    with torch.no_grad(), tapped(tap):
        if prefix is not None:
            model(input_ids=seq.input_ids[:, prefix.length:], use_cache=True, **{prefix.argument: prefix.cache(1)})
        else:
            model(input_ids=seq.input_ids, **({} if seq.is_classifier else {"use_cache": False}))


def choose_layers(layers: list[int] | int | Callable[[int], list[int]] | None, n_layers: int) -> list[int]:
    """The attention layers a space moves: all (None), given indices (negative from the end), or a function of the
    number of layers; sorted, each once."""
    if layers is None:
        return list(range(n_layers))
    layers = layers(n_layers) if callable(layers) else layers
    requested = [layers] if isinstance(layers, int) else list(layers)
    if not requested:
        raise InvalidInputError("layers is empty; pass None for all layers, or layer indices.")
    chosen = []
    for layer in requested:
        if not isinstance(layer, int) or not -n_layers <= layer < n_layers:
            raise InvalidInputError(
                f"layer {layer!r} does not exist: the model has {n_layers} attention layers "
                f"(indices 0..{n_layers - 1}, or negative from the end)."
            )
        chosen.append(layer % n_layers)
    return sorted(set(chosen))


def _no_hook_error(model) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"{type(model).__name__} never called the hooked attention function, so the attention and mask spaces are "
        "not available for it; use space='embeddings'."
    )


@dataclass
class EmbeddingSpace:
    """Paths over the input embeddings (L, D): the output of `model.get_input_embeddings()`."""

    name: str = "embeddings"
    uses_attention_hook: bool = False
    token_axis: ClassVar[int] = -2  # a point's tokens run along this axis (see StaticPrefix)

    def point(self, model, seq: Sequence) -> torch.Tensor:
        return embedding_rows(model, seq.input_ids)[0].float()

    def baseline(self, spec, model, tokenizer, seq: Sequence, x: torch.Tensor) -> torch.Tensor:
        """neutral (default): every non-special token replaced by a neutral token; zeros; a token id; a tensor."""
        if isinstance(spec, torch.Tensor):
            return _custom_baseline(spec, x, self.name)
        if spec in (None, "neutral"):
            token = neutral_token_id(tokenizer, model)
        elif isinstance(spec, int) and not isinstance(spec, bool):
            token = spec
            if not 0 <= token < model.get_input_embeddings().num_embeddings:
                raise InvalidInputError(
                    f"baseline token id {token} is outside the vocabulary [0, {model.get_input_embeddings().num_embeddings})."
                )
        elif spec == "zeros":
            return torch.where(seq.keep[:, None], x, torch.zeros_like(x))
        else:
            raise InvalidInputError(
                f"unknown embeddings baseline {spec!r}; use 'neutral', 'zeros', a token id, or a tensor shaped {tuple(x.shape)}."
            )
        ids = torch.where(seq.keep, seq.input_ids[0], torch.full_like(seq.input_ids[0], token))
        return embedding_rows(model, ids[None])[0].float()

    @staticmethod
    def prefix(points: torch.Tensor, length: int) -> torch.Tensor:
        """Points (B, L, D) restricted to the first `length` tokens."""
        return points[:, :length]

    def logits(self, model, seq: Sequence, points: torch.Tensor, prefix: StaticPrefix | None = None) -> torch.Tensor:
        start = skipped_tokens(prefix)
        return model_logits(model, seq, prefix, inputs_embeds=points[:, start:].to(compute_dtype(model)))

    def reduce(self, contribution: torch.Tensor, target: int = 0) -> tuple[torch.Tensor, None]:
        """(..., L, D) -> per token (..., L), the same for every target."""
        return contribution.sum(-1), None


@dataclass
class AttentionSpace:
    """Paths over the post-softmax attention probabilities of chosen layers, all heads: (layers, H, L, L).

    All chosen layers move jointly along one path, so one integral serves every layer.
    """

    layers: list[int] | int | Callable[[int], list[int]] | None = None
    name: str = "attention"
    uses_attention_hook: bool = True
    chosen: list[int] = field(default_factory=list)
    token_axis: ClassVar[int] = -2  # query rows: a token's row is what its own state is computed from

    def point(self, model, seq: Sequence) -> torch.Tensor:
        tap = AttentionTap(record=True)
        run_tapped(model, seq, tap)
        if not tap.recorded:
            raise _no_hook_error(model)
        self.chosen = choose_layers(self.layers, len(tap.recorded))
        return torch.stack([tap.recorded[i][0] for i in self.chosen]).float()

    def baseline(self, spec, model, tokenizer, seq: Sequence, x: torch.Tensor) -> torch.Tensor:
        """zeros (default, as Hao et al.); uniform over the keys each query may attend to; a tensor.

        The built-in baselines keep the attention paid to markup keys (special tokens, chat-template role
        markers) at its value, as the embedding baselines keep markup itself: the first token is usually the
        model's attention sink, and removing the sink in every layer at once takes the path far out of
        distribution.
        """
        if isinstance(spec, torch.Tensor):
            return _custom_baseline(spec, x, self.name)
        if spec in (None, "zeros"):
            start = torch.zeros_like(x)
        elif spec == "uniform":
            allowed = self.allowed(x).float()
            start = allowed / allowed.sum(-1, keepdim=True).clamp_min(1)
        else:
            raise InvalidInputError(
                f"unknown attention baseline {spec!r}; use 'zeros', 'uniform', or a tensor shaped {tuple(x.shape)}."
            )
        return torch.where(seq.keep.to(x.device), x, start)

    @staticmethod
    def allowed(x: torch.Tensor) -> torch.Tensor:
        """(layers, H, L, L) bool: the keys each query may attend to in each layer (causality, padding,
        sliding windows), read off the probabilities, which are exactly zero where the mask forbids."""
        return (x > 0).any(dim=1, keepdim=True).expand_as(x)

    @staticmethod
    def prefix(points: torch.Tensor, length: int) -> torch.Tensor:
        """Points (B, layers, H, L, L) restricted to the first `length` queries and keys."""
        return points[..., :length, :length]

    def logits(self, model, seq: Sequence, points: torch.Tensor, prefix: StaticPrefix | None = None) -> torch.Tensor:
        # unbind, not points[:, i] per layer: each indexing's backward fills a zero tensor of all layers, so the
        # backward pass would write layers x the gradient's size (measured: a third of SmolLM2's backward time).
        start = skipped_tokens(prefix)
        tap = AttentionTap(replace=dict(zip(self.chosen, points[..., start:, :].unbind(1))))
        with tapped(tap):
            return model_logits(model, seq, prefix, input_ids=seq.input_ids[:, start:].expand(points.shape[0], -1))

    def reduce(self, contribution: torch.Tensor, target: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., layers, H, Lq, Lk) -> per key token (..., Lk), and per layer and head (..., layers, H, Lk).

        Summing over layers, heads and query rows preserves completeness, for every target alike.
        """
        heads = contribution.sum(-2)
        return reduce(heads, "... layer head key -> ... key", "sum"), heads


@dataclass
class MaskSpace:
    """Paths over a soft attention mask: how visible each key token is, (layers, L), in chosen layers (all heads
    and queries alike). 1 is the model as it is; 0 masks the token out of attention, the rest of each row
    renormalised, which is exactly the model run with that token hidden. Every point in between is a proper
    attention distribution computed live, so the path stays among states the model can be in, and a token's
    score is what the model read from it; the scores sum to log p(target) minus that with the moving tokens
    hidden. The tokens' own embeddings never change.

    With `readers` (set by a problem with reading="answer"), the tokens of that static prefix run once at the input and
    only the later tokens see the visibility: the space then measures what those readers take from each token.
    """

    layers: list[int] | int | Callable[[int], list[int]] | None = None
    name: str = "mask"
    uses_attention_hook: bool = True
    chosen: list[int] = field(default_factory=list)
    readers: StaticPrefix | None = field(default=None, repr=False)
    token_axis: ClassVar[int] = -1

    def point(self, model, seq: Sequence) -> torch.Tensor:
        tap = AttentionTap()  # counts the attention layers, which any few tokens do as well as a long prompt
        run_tapped(model, dataclasses.replace(seq, input_ids=seq.input_ids[:, :COUNTING_TOKENS]), tap)
        if not tap.calls:
            raise _no_hook_error(model)
        self.chosen = choose_layers(self.layers, tap.calls)
        return torch.ones(len(self.chosen), seq.length, device=seq.input_ids.device)

    def baseline(self, spec, model, tokenizer, seq: Sequence, x: torch.Tensor) -> torch.Tensor:
        """masked (default): every moving token hidden, markup (special tokens, chat-template role markers) and
        tokens outside `attribute_to` kept visible; or a tensor. Refused where some query would see no key."""
        if isinstance(spec, torch.Tensor):
            start = _custom_baseline(spec, x, self.name)
        elif spec in (None, "masked"):
            start = torch.where(seq.keep.to(x.device), x, torch.zeros_like(x))
        else:
            raise InvalidInputError(f"unknown mask baseline {spec!r}; use 'masked' or a tensor shaped {tuple(x.shape)}.")
        self._check_visible(model, seq, start)
        return start

    def _check_visible(self, model, seq: Sequence, start: torch.Tensor) -> None:
        """Every query must still see some key at the baseline: a row with nothing visible has no softmax. A
        failure says what happened: a token with no visible key before it, a visible share too small for the
        dtype (underflow), or attention that is NaN or inf on the input itself."""
        least = self._least_visible(model, seq, start)
        if torch.isfinite(least) and least > 0:
            return
        if not bool((start.cummax(-1).values > 0).all()):  # some query has no visible key at or before it
            raise InvalidInputError(
                "space='mask' needs every token to see at least one visible token at the baseline, but some query "
                "sees only tokens that are masked (e.g. the first token of a prompt without a start token). Keep "
                "the first token visible (a BOS or template token, or attribute_to= spans after it), or use "
                "space='attention'."
            )
        dtype = compute_dtype(model)
        if torch.isfinite(self._least_visible(model, seq, torch.ones_like(start))):
            raise NumericalError(
                f"space='mask': every token sees a visible token at the baseline, but the visible share of an "
                f"attention row underflowed to 0 in {dtype} (weights too small to represent), so the renormalised "
                "attention is NaN; use float32 if the model runs in lower precision, or a baseline with larger visibilities."
            )
        raise NumericalError(
            f"space='mask': the model's attention is NaN or inf on the input itself (in {dtype}), so no attribution "
            "can be trusted; check the weights for NaN or inf, and use float32 if the model runs in lower precision."
        )

    def _least_visible(self, model, seq: Sequence, visibility: torch.Tensor) -> torch.Tensor:
        """The smallest visible share of any attention row with `visibility` (layers, L) on the chosen layers; with
        `readers` (reading="answer"), of the rows of the tokens after it, the only ones the visibility reaches."""
        tap = AttentionTap(visibility=dict(zip(self.chosen, visibility[:, None].unbind(0))),
                           least_visible=torch.tensor(1.0, device=visibility.device))
        run_tapped(model, seq, tap, self.readers)
        return tap.least_visible

    @staticmethod
    def prefix(points: torch.Tensor, length: int) -> torch.Tensor:
        """Points (B, layers, L) restricted to the first `length` tokens."""
        return points[..., :length]

    def logits(self, model, seq: Sequence, points: torch.Tensor, prefix: StaticPrefix | None = None) -> torch.Tensor:
        """The visibility stays on every key (the prefix's keys come from its cache); only later tokens run."""
        start = skipped_tokens(prefix)
        tap = AttentionTap(visibility=dict(zip(self.chosen, points.unbind(1))), shared_past=start)
        with tapped(tap):
            return model_logits(model, seq, prefix, input_ids=seq.input_ids[:, start:].expand(points.shape[0], -1))

    def reduce(self, contribution: torch.Tensor, target: int = 0) -> tuple[torch.Tensor, None]:
        """(..., layers, L) -> per token (..., L): a sum over layers, so completeness is preserved."""
        return contribution.sum(-2), None


SPACES = {"embeddings": EmbeddingSpace, "attention": AttentionSpace, "mask": MaskSpace}


def make_space(name: str, layers: list[int] | int | None = None) -> EmbeddingSpace | AttentionSpace | MaskSpace:
    if name not in SPACES:
        raise UnknownNameError(f"unknown space {name!r}; choose one of {sorted(SPACES)}.")
    if name == "embeddings":
        if layers is not None:
            raise InvalidInputError("layers= only applies to space='attention' or 'mask'.")
        return EmbeddingSpace()
    return SPACES[name](layers=layers)
