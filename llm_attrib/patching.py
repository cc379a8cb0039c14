"""Every change llm-attrib makes to a model lives here, each one a context manager that restores in `finally`.

Attention is hooked through transformers' own `AttentionInterface`: we register one attention function
(and the eager mask function, without which the function would receive no mask) under our name, select it
for the duration of an attribution, and put the previous implementation back afterwards. What the
function does in a given forward is decided by an `AttentionTap` held in a context variable: record the
post-softmax probabilities of every layer, replace chosen layers' probabilities with given tensors (a path point
of the attention space), or scale how visible each key token is in chosen layers (a path point of the mask space).

Changes to a model are shared by overlapping calls (threads, or an explanation started from inside a target
callable): the first caller applies a change and saves what it replaces, later callers only join, and the last
one to leave restores the saved state. Per-call save/restore would let one call undo another's change and leave
the model frozen or hooked for good.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from .errors import InvalidInputError, UnsupportedModelError

ATTENTION_NAME = "llm_attrib"


@dataclass
class AttentionTap:
    """What the hooked attention does during one forward.

    Layers are numbered by call order within the forward, which is the layer order for every model we hook.

    Attributes:
        replace: layer index -> probabilities (B, H, Lq, Lk) used in place of the computed softmax.
        visibility: layer index -> (B, Lk) weights in [0, 1] on the keys (see `soft_masked`).
        record: keep every layer's probabilities in `recorded` (in call order).
        least_visible: with `visibility`, the smallest visible share of any attention row over the forward
            (0 where a query sees nothing), tracked when set to a tensor before the forward.
    """

    replace: dict[int, torch.Tensor] = field(default_factory=dict)
    visibility: dict[int, torch.Tensor] = field(default_factory=dict)
    least_visible: torch.Tensor | None = None
    record: bool = False
    recorded: list[torch.Tensor] = field(default_factory=list)
    calls: int = 0


_TAP: contextvars.ContextVar[AttentionTap | None] = contextvars.ContextVar("llm_attrib_tap", default=None)


def _repeat_heads(x: torch.Tensor, n_query_heads: int) -> torch.Tensor:
    """Expand grouped key/value heads (B, Hkv, L, D) to the query heads (B, Hq, L, D)."""
    groups = n_query_heads // x.shape[1]
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def attention_probabilities(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Post-softmax attention (B, Hq, Lq, Lk) exactly as the models' eager attention computes it.

    The softmax runs in float32 (Llama-style models do this; GPT-2/BERT do it in the input dtype, which is
    identical for float32 models and slightly less exact for half precision).
    """
    key = _repeat_heads(key, query.shape[1])
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    logits = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    if attention_mask is not None:
        logits = logits + attention_mask[..., : key.shape[-2]]
    sinks = getattr(module, "sinks", None)
    if sinks is not None:
        sink_column = sinks.reshape(1, -1, 1, 1).expand(logits.shape[0], -1, logits.shape[2], 1)
        logits = torch.cat([logits, sink_column.to(logits.dtype)], dim=-1)
        logits = logits - logits.amax(dim=-1, keepdim=True)
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    if sinks is not None:
        probs = probs[..., :-1]
    return probs.to(query.dtype)


def soft_masked(module: nn.Module, probs: torch.Tensor, visibility: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention with each key's weight scaled by its visibility (B, Lk) and each row renormalised: a soft
    attention mask. Visibility 0 is exactly the model run with those keys masked out, 1 the model as it is, so
    every point in between is a proper attention distribution. A sink column (GPT-OSS) keeps its share.

    Returns the probabilities and each row's visible share before renormalising (0 where a query sees nothing)."""
    p = probs.float()
    seen = visibility[:, None, None, : p.shape[-1]].to(p.device, torch.float32)  # layers may sit on other devices
    kept = (p * seen).sum(-1, keepdim=True)
    if getattr(module, "sinks", None) is not None:
        kept = kept + (1 - p.sum(-1, keepdim=True)).clamp_min(0)
    return (p * seen / kept).to(probs.dtype), kept


def hooked_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention function registered with transformers: eager attention, tapped by the current `AttentionTap`."""
    tap = _TAP.get()
    layer = tap.calls if tap is not None else -1
    if tap is not None and layer in tap.replace:
        probs = tap.replace[layer].to(value.device, value.dtype)  # layers may sit on other devices
    else:
        probs = attention_probabilities(module, query, key, attention_mask, scaling, softcap)
    if tap is not None and layer in tap.visibility:
        probs, kept = soft_masked(module, probs, tap.visibility[layer])
        if tap.least_visible is not None:
            tap.least_visible = torch.minimum(tap.least_visible, kept.amin().to(tap.least_visible.device))
    if tap is not None:
        tap.calls += 1
        if tap.record:
            tap.recorded.append(probs)
    probs_used = nn.functional.dropout(probs, p=dropout, training=module.training)
    output = torch.matmul(probs_used, _repeat_heads(value, query.shape[1]).to(probs_used.dtype))
    return output.transpose(1, 2).contiguous(), probs


def _register() -> None:
    AttentionInterface.register(ATTENTION_NAME, hooked_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)


def supports_attention_hook(model: PreTrainedModel) -> bool:
    """Whether the model routes attention through transformers' AttentionInterface (so we can hook it)."""
    return bool(model._can_set_attn_implementation())


@dataclass
class _Change:
    """One change applied to a model, how many calls hold it, and how to undo it."""

    users: int
    undo: Callable[[], None]


_LOCK = threading.RLock()
_CHANGES: weakref.WeakKeyDictionary[nn.Module, dict[str, _Change]] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def _shared_change(model: nn.Module, kind: str, apply: Callable[[], Callable[[], None]]) -> Iterator[None]:
    """Hold the change `kind` of `model` for the block: applied by the first holder (`apply` returns its undo),
    undone when the last holder leaves, whatever the interleaving of holders."""
    with _LOCK:
        changes = _CHANGES.setdefault(model, {})
        if kind not in changes:
            changes[kind] = _Change(0, apply())
        changes[kind].users += 1
    try:
        yield
    finally:
        with _LOCK:
            change = changes[kind]
            change.users -= 1
            if change.users == 0:
                del changes[kind]
                change.undo()


@contextlib.contextmanager
def attention_hooked(model: PreTrainedModel) -> Iterator[None]:
    """Select llm-attrib's attention function for `model`; the previous one is back when the last caller leaves."""
    if not supports_attention_hook(model):
        raise UnsupportedModelError(
            f"{type(model).__name__} computes attention in its own code instead of transformers' "
            "AttentionInterface, so its attention probabilities cannot be hooked. Use space='embeddings' "
            "(methods ig, ig2, rpi, saliency, input_x_gradient all support it) for this model."
        )

    def apply() -> Callable[[], None]:
        _register()
        previous = model.config._attn_implementation
        model.set_attn_implementation(ATTENTION_NAME)
        return lambda: model.set_attn_implementation(previous)

    with _shared_change(model, "attention", apply):
        yield


@contextlib.contextmanager
def tapped(tap: AttentionTap) -> Iterator[AttentionTap]:
    """Make `tap` steer the hooked attention for the forwards run inside the block."""
    token = _TAP.set(tap)
    try:
        yield tap
    finally:
        _TAP.reset(token)


@contextlib.contextmanager
def frozen(model: PreTrainedModel) -> Iterator[None]:
    """Run with parameters that need no gradient (gradients are taken w.r.t. inputs only, and a frozen graph keeps
    fewer activations); the flags are back when the last caller leaves."""
    if model.training:
        raise InvalidInputError(
            f"{type(model).__name__} is in training mode (dropout is active, so attributions would be random). "
            "Call model.eval() before explaining."
        )

    def apply() -> Callable[[], None]:
        flags = {name: p.requires_grad for name, p in model.named_parameters()}
        for p in model.parameters():
            p.requires_grad_(False)

        def undo() -> None:
            # by name: an offload hook (Accelerate) replaces a module's parameter objects at every forward
            for name, p in model.named_parameters():
                p.requires_grad_(flags.get(name, p.requires_grad))

        return undo

    with _shared_change(model, "frozen", apply):
        yield


@contextlib.contextmanager
def prepared(model: PreTrainedModel, hook_attention: bool) -> Iterator[None]:
    """Everything an attribution needs of the model, undone on exit: frozen parameters, and the attention hook."""
    with frozen(model), (attention_hooked(model) if hook_attention else contextlib.nullcontext()):
        yield
