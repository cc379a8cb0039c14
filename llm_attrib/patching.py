"""Every change llm-attrib makes to a model lives here, each one a context manager that restores in `finally`.

Attention is hooked through transformers' own `AttentionInterface`: we register one attention function (and the
eager mask function, without which the function would receive no mask) under our name. Only the package's own
forwards run it: inside `attention_hooked(model)` the model's configs answer `_attn_implementation` with our name in
the calling context (its thread, or asyncio task) and with the model's own implementation in every other one.
transformers reads that name once per forward to build the mask and once per layer to pick the attention function,
so in every forward the two agree, and a forward that another thread runs meanwhile (a plain forward, `generate`)
runs exactly as the model was loaded. Switching the model-wide implementation instead (`set_attn_implementation`)
made other threads run our function, and a forward that straddled the switch got the mask of the other
implementation (sdpa: none, so its attention was bidirectional).

What the function does in a given forward is decided by an `AttentionTap` held in a context variable: record the
post-softmax probabilities of every layer, replace chosen layers' probabilities with given tensors (a path point
of the attention space), or scale how visible each key token is in chosen layers (a path point of the mask space).

Long prompts run under `recomputed(model)`: attention goes through torch's fused kernel (the mask space's soft mask
through `core.soft_mask_attention`, whose backward recomputes the probabilities a block at a time), and each
decoder layer keeps only its inputs for the backward and runs again during it (activation checkpointing), so a
path point holds a few (L x hidden) tensors per layer instead of every layer's (heads x L x L) attention.

Changes are shared by overlapping calls (threads, or an explanation started from inside a target callable): the
first caller applies a change and saves what it replaces, later callers only join, and the last one to leave
restores the saved state. Per-call save/restore would let one call undo another's change. Applying and undoing are
atomic with respect to exceptions: a step that fails part-way puts back what was already done, an undo runs every
step before it raises, and Ctrl-C arriving in the main thread meanwhile is held until the model is whole again.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import signal
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AttentionInterface, Cache, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.modeling_layers import GradientCheckpointingLayer

from .core.reader_attention import shared_past_attention
from .core.soft_mask_attention import soft_mask_attention, visible_share
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
        shared_past: how many leading keys of every layer come from a cache that every sequence of the batch
            shares (a static prefix, or reading="answer"'s documents): with `visibility`, attention then reads them
            once for the whole batch (see `core.reader_attention`).
    """

    replace: dict[int, torch.Tensor] = field(default_factory=dict)
    visibility: dict[int, torch.Tensor] = field(default_factory=dict)
    least_visible: torch.Tensor | None = None
    record: bool = False
    recorded: list[torch.Tensor] = field(default_factory=list)
    calls: int = 0
    shared_past: int = 0


_TAP: contextvars.ContextVar[AttentionTap | None] = contextvars.ContextVar("llm_attrib_tap", default=None)

# The configs whose attention implementation reads as ours in this context (see `attention_hooked`).
_HOOKED: contextvars.ContextVar[tuple[object, ...]] = contextvars.ContextVar("llm_attrib_hooked", default=())

# Whether forwards in this context recompute (see `recomputed`), and, while memory is measured, what receives each
# checkpointed layer's run instead (see `layer_probe`).
_RECOMPUTE: contextvars.ContextVar[bool] = contextvars.ContextVar("llm_attrib_recompute", default=False)
LayerRun = Callable[[Callable, tuple, dict], object]  # (the layer's forward, args, kwargs) -> its output
_LAYER_PROBE: contextvars.ContextVar[LayerRun | None] = contextvars.ContextVar("llm_attrib_layer_probe", default=None)


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


def implied_mask(
    module: nn.Module, query: torch.Tensor, key: torch.Tensor, is_causal: bool | None = None
) -> torch.Tensor | None:
    """The additive mask (Lq, Lk) that SDPA applies when it is given none: causal (aligned top-left, as
    `torch.nn.functional.scaled_dot_product_attention(is_causal=True)`) for a causal module and several queries.

    transformers skips building a causal mask where SDPA's `is_causal` flag does the job; should our function ever
    be called without one, it must not attend to later tokens."""
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    n_queries, n_keys = query.shape[-2], key.shape[-2]
    if not (is_causal and n_queries > 1):
        return None
    allowed = torch.ones(n_queries, n_keys, dtype=torch.bool, device=query.device).tril()
    return torch.zeros(n_queries, n_keys, dtype=query.dtype, device=query.device).masked_fill(
        ~allowed, torch.finfo(query.dtype).min
    )


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
    """The attention function registered with transformers: eager attention, tapped by the current `AttentionTap`;
    under `recomputed`, the fused kernel wherever no probabilities are read or replaced (see `_fused_attention`)."""
    if attention_mask is None:
        attention_mask = implied_mask(module, query, key, kwargs.get("is_causal"))
    tap = _TAP.get()
    layer = tap.calls if tap is not None else -1
    if _reads_shared_past(module, query, key, softcap, tap, layer):
        output = shared_past_attention(query, key, value, tap.shared_past, tap.visibility[layer].to(query.device),
                                       attention_mask, query.shape[-1] ** -0.5 if scaling is None else scaling)
        tap.calls += 1
        return output.transpose(1, 2).contiguous(), None
    if (_RECOMPUTE.get() and softcap is None and getattr(module, "sinks", None) is None
            and not (tap is not None and (tap.record or layer in tap.replace))):
        return _fused_attention(module, query, key, value, attention_mask, scaling, tap, layer)
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


def _reads_shared_past(module: nn.Module, query: torch.Tensor, key: torch.Tensor, softcap: float | None,
                       tap: AttentionTap | None, layer: int) -> bool:
    """Whether this layer's soft-mask attention reads a shared cached past once for the batch: only where nothing
    else is asked of it (no probabilities recorded or replaced, no visible share tracked) and the arithmetic is
    plain (no softcap, no sink column, no dropout), outside recomputation (which keeps its own fused path)."""
    return (tap is not None and tap.shared_past > 0 and layer in tap.visibility and layer not in tap.replace
            and not tap.record and tap.least_visible is None and softcap is None
            and getattr(module, "sinks", None) is None and not module.training and not _RECOMPUTE.get()
            and key.shape[-2] == tap.shared_past + query.shape[-2])


def _fused_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, scaling: float | None, tap: AttentionTap | None,
                     layer: int) -> tuple[torch.Tensor, None]:
    """Attention through torch's fused kernel, a soft mask's visibility included, without the (L x L) probabilities
    (equal to the eager path up to float rounding). Softcapped (Gemma2) and sink (GPT-OSS) attention keep the eager
    path: the fused kernel has neither."""
    key, value = _repeat_heads(key, query.shape[1]), _repeat_heads(value, query.shape[1])
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    mask = None if attention_mask is None else attention_mask[..., : key.shape[-2]]
    if tap is not None and layer in tap.visibility:
        seen = tap.visibility[layer][:, : key.shape[-2]].to(query.device, torch.float32)
        output = soft_mask_attention(query, key, value, seen, mask, scaling)
        if tap.least_visible is not None:
            least = visible_share(query, key, seen, mask, scaling)
            tap.least_visible = torch.minimum(tap.least_visible, least.to(tap.least_visible.device))
    else:
        output = nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling)
    if tap is not None:
        tap.calls += 1
    return output.transpose(1, 2).contiguous(), None


def _register() -> None:
    AttentionInterface.register(ATTENTION_NAME, hooked_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)


def supports_attention_hook(model: PreTrainedModel) -> bool:
    """Whether the model routes attention through transformers' AttentionInterface (so we can hook it)."""
    return bool(model._can_set_attn_implementation())


def _run_all(steps: Iterable[Callable[[], object]]) -> None:
    """Run every step even when some raise, then raise the first error: an undo is never left half done."""
    error: BaseException | None = None
    for step in steps:
        try:
            step()
        except BaseException as raised:  # noqa: BLE001 - re-raised below, after the other steps
            error = error or raised
    if error is not None:
        raise error


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) that arrives during the block and deliver it when the block is over, so a change to
    a model is never interrupted half applied or half undone. Signals reach only the main thread, so elsewhere (and
    where SIGINT is ignored or left to the system) there is nothing to hold."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.getsignal(signal.SIGINT)
    if not callable(handler):
        yield
        return
    held: list[tuple] = []
    signal.signal(signal.SIGINT, lambda *received: held.append(received))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)
        if held:
            handler(*held[0])


@contextlib.contextmanager
def _context_set(var: contextvars.ContextVar, value: object) -> Iterator[None]:
    """Set a context variable for the block (an interrupt cannot come between setting it and the `finally`)."""
    token = None
    try:
        with _uninterrupted():
            token = var.set(value)
        yield
    finally:
        if token is not None:
            var.reset(token)


@dataclass
class _Change:
    """One change applied to an object, how many calls hold it, and how to undo it."""

    users: int
    undo: Callable[[], None]


_LOCK = threading.RLock()
_CHANGES: weakref.WeakKeyDictionary[object, dict[str, _Change]] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def _shared_change(owner: object, kind: str, apply: Callable[[], Callable[[], None]]) -> Iterator[None]:
    """Hold the change `kind` of `owner` (a model, or a class) for the block: applied by the first holder (`apply`
    returns its undo, and puts back what it did if it fails), undone when the last holder leaves, whatever the
    interleaving of holders."""
    joined = False
    try:
        with _uninterrupted(), _LOCK:
            changes = _CHANGES.setdefault(owner, {})
            if kind not in changes:
                undo = apply()
                try:
                    changes[kind] = _Change(0, undo)
                except BaseException:
                    undo()
                    raise
            changes[kind].users += 1
            joined = True
        yield
    finally:
        if joined:
            with _uninterrupted(), _LOCK:
                change = changes[kind]
                change.users -= 1
                if change.users == 0:
                    del changes[kind]
                    change.undo()


def _configs(model: PreTrainedModel) -> list[object]:
    """The configs `set_attn_implementation` would change: the model's, its sub-configs at any depth, and those of
    sub-models that route attention through the interface (configs are compared by identity: not hashable)."""
    found = [model.config]
    queue = [model.config]
    while queue:
        config = queue.pop()
        for key in getattr(config, "sub_configs", None) or {}:
            sub = getattr(config, key, None)
            if sub is not None and not any(sub is seen for seen in found):
                found.append(sub)
                queue.append(sub)
    for module in model.modules():
        if (isinstance(module, PreTrainedModel) and module._can_set_attn_implementation()
                and not any(module.config is seen for seen in found)):
            found.append(module.config)
    return found


def _owner(config: object) -> type:
    """The class that defines the `_attn_implementation` property `config` answers with."""
    return next(cls for cls in type(config).__mro__ if "_attn_implementation" in vars(cls))


def _resolve_per_context(owner: type) -> Callable[[], None]:
    """Make `owner`'s `_attn_implementation` read as our name for the configs hooked in the current context, and
    as before everywhere else. Returns the undo."""
    original = vars(owner)["_attn_implementation"]

    def get(config: object) -> object:
        if any(config is hooked for hooked in _HOOKED.get()):
            return ATTENTION_NAME
        return original.__get__(config, type(config))

    setattr(owner, "_attn_implementation", property(get, original.fset, original.fdel, original.__doc__))
    return functools.partial(setattr, owner, "_attn_implementation", original)


@contextlib.contextmanager
def own_attention() -> Iterator[None]:
    """Run the forwards inside the block with each model's own attention (e.g. SDPA), also inside
    `attention_hooked`: for forwards that need no tap, such as a cache of keys and values computed once."""
    with _context_set(_HOOKED, ()):
        yield


def loaded_implementation(model: PreTrainedModel) -> str:
    """The attention implementation `model` runs outside llm-attrib's own forwards (e.g. "sdpa"), also when asked
    from inside an attention-space call."""
    with _context_set(_HOOKED, ()):
        return str(model.config._attn_implementation)


@contextlib.contextmanager
def attention_hooked(model: PreTrainedModel) -> Iterator[None]:
    """Run `model`'s forwards in the calling context (thread, task) through llm-attrib's attention function; every
    other context keeps the model's own implementation, and nothing of it is left when the last caller leaves."""
    if not supports_attention_hook(model):
        raise UnsupportedModelError(
            f"{type(model).__name__} computes attention in its own code instead of transformers' "
            "AttentionInterface, so its attention probabilities cannot be hooked. Use space='embeddings' "
            "(methods ig, ig2, rpi, saliency, input_x_gradient all support it) for this model."
        )
    _register()
    configs = _configs(model)
    owners = list({id(cls): cls for cls in map(_owner, configs)}.values())
    with contextlib.ExitStack() as stack:
        for owner in owners:
            stack.enter_context(_shared_change(owner, "attention", functools.partial(_resolve_per_context, owner)))
        stack.enter_context(_context_set(_HOOKED, _HOOKED.get() + tuple(configs)))
        yield


@contextlib.contextmanager
def tapped(tap: AttentionTap) -> Iterator[AttentionTap]:
    """Make `tap` steer the hooked attention for the forwards run inside the block."""
    with _context_set(_TAP, tap):
        yield tap


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

        def undo() -> None:
            # by name: an offload hook (Accelerate) replaces a module's parameter objects at every forward
            _run_all(functools.partial(p.requires_grad_, flags.get(name, p.requires_grad))
                     for name, p in model.named_parameters())

        try:
            for p in model.parameters():
                p.requires_grad_(False)
        except BaseException:
            undo()
            raise
        return undo

    with _shared_change(model, "frozen", apply):
        yield


def _replayed(tap: AttentionTap | None, start: int, forward: Callable, args: tuple, kwargs: dict) -> object:
    """A checkpointed layer's second run, in the backward: steered as its first run was (its layers numbered from
    where they were then), recording and tracking nothing."""
    if tap is None:
        return forward(*args, **kwargs)
    with tapped(dataclasses.replace(tap, calls=start, record=False, recorded=[], least_visible=None)):
        return forward(*args, **kwargs)


def _checkpointed(layer: nn.Module) -> Callable[[], None]:
    """Make `layer` keep only its inputs for the backward and run again during it, in the contexts that recompute
    (every other forward runs it as before). Returns the undo. A layer handed a cache (a static prefix) runs
    plainly: running it again would append its keys to the cache twice."""
    own = vars(layer).get("forward")  # an Accelerate hook's forward, if any
    forward = layer.forward

    def checkpointed_forward(*args, **kwargs):
        if not (_RECOMPUTE.get() and torch.is_grad_enabled()) or any(isinstance(v, Cache) for v in kwargs.values()):
            return forward(*args, **kwargs)
        probe = _LAYER_PROBE.get()
        if probe is not None:
            return probe(forward, args, kwargs)
        tap = _TAP.get()
        start = tap.calls if tap is not None else 0
        context = contextvars.copy_context()  # the backward may run in another thread (CUDA)
        runs: list[None] = []

        def run(*args, **kwargs):
            runs.append(None)
            if len(runs) == 1:  # the forward itself; later runs are the backward's
                return forward(*args, **kwargs)
            return context.run(_replayed, tap, start, forward, args, kwargs)

        return checkpoint(run, *args, use_reentrant=False, preserve_rng_state=False, **kwargs)

    layer.forward = checkpointed_forward

    def undo() -> None:
        if own is None:
            del layer.forward
        else:
            layer.forward = own

    return undo


@contextlib.contextmanager
def recomputed(model: PreTrainedModel) -> Iterator[None]:
    """Run the calling context's forwards with recomputation: fused attention (the mask space's soft mask too)
    and, in every decoder layer transformers marks as checkpointable, activation checkpointing. Results equal a
    plain run up to float rounding; a point keeps a few (L x hidden) tensors per layer and one layer's
    activations at a time."""

    def apply() -> Callable[[], None]:
        undos: list[Callable[[], None]] = []
        try:
            for module in model.modules():
                if isinstance(module, GradientCheckpointingLayer):
                    undos.append(_checkpointed(module))
        except BaseException:
            _run_all(reversed(undos))
            raise
        return functools.partial(_run_all, list(reversed(undos)))

    with _shared_change(model, "recompute", apply), _context_set(_RECOMPUTE, True):
        yield


def recomputing() -> bool:
    """Whether forwards in the calling context run under `recomputed`."""
    return _RECOMPUTE.get()


@contextlib.contextmanager
def layer_probe(run: LayerRun) -> Iterator[None]:
    """While memory is measured under `recomputed`: each checkpointed layer's forward goes to `run` instead."""
    with _context_set(_LAYER_PROBE, run):
        yield


@contextlib.contextmanager
def prepared(model: PreTrainedModel, hook_attention: bool) -> Iterator[None]:
    """Everything an attribution needs of the model, undone on exit: frozen parameters, and the attention hook."""
    with frozen(model), (attention_hooked(model) if hook_attention else contextlib.nullcontext()):
        yield
