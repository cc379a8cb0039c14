"""The attention hook (llm_attrib.patching) against every tiny architecture.

With no path applied the hooked attention must reproduce the model's own eager attention exactly (float32,
<= 1e-5), recording must return what `output_attentions=True` returns, replacement must really take effect, a
visibility of 0 must be exactly the model run with those tokens masked by its own attention mask,
and every change to the model must be undone on exit, also on exceptions and KeyboardInterrupt.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

import llm_attrib.patching as patching
from llm_attrib.errors import InvalidInputError, UnsupportedModelError
from llm_attrib.patching import (
    ATTENTION_NAME,
    AttentionTap,
    attention_hooked,
    frozen,
    prepared,
    supports_attention_hook,
    tapped,
)
from tiny_models import ARCHITECTURES, BYPASSING, is_encoder, tiny_model

TOL = 1e-5
SEQ_LEN = 11
N_PAD = 4  # left padding of the second sequence (causal LMs); right padding for encoders


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny matmuls are ~100x slower with two threads on a busy 2-core machine; restore for other modules.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _inputs(model, vocab: int, arch: str, pad: bool):
    """Batch of 2 sequences of length 11; the second one padded (left for causal LMs) when `pad`."""
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(3, vocab, (2, SEQ_LEN), generator=g)
    mask = torch.ones_like(ids)
    if pad:
        if is_encoder(arch):
            mask[1, SEQ_LEN - N_PAD :] = 0
        else:
            mask[1, :N_PAD] = 0
        pad_id = getattr(model.config, "pad_token_id", None)
        ids[mask == 0] = pad_id if pad_id is not None else 0
    kwargs = dict(input_ids=ids, attention_mask=mask)
    if not is_encoder(arch):
        kwargs["use_cache"] = False
    return kwargs, mask.bool()


def _max_diff(arch: str, a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor) -> float:
    """Max |a - b| over logits; for causal LMs only at non-pad positions (encoders: sequence-level logits)."""
    d = (a - b).abs()
    if not is_encoder(arch):
        d = d[valid]
    return d.max().item()


def _forward(model, kwargs, **extra):
    with torch.no_grad():
        return model(**kwargs, **extra)


def _uniform_like(probs: torch.Tensor) -> torch.Tensor:
    return torch.full_like(probs, 1.0 / probs.shape[-1])


# --------------------------------------------------------------------------------------------- equality


@pytest.mark.parametrize("pad", [False, True], ids=["nopad", "pad"])
@pytest.mark.parametrize("tap", [None, "empty"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_hooked_logits_equal_eager(arch, tap, pad):
    model, vocab = tiny_model(arch)
    assert supports_attention_hook(model)
    kwargs, valid = _inputs(model, vocab, arch, pad)
    reference = _forward(model, kwargs).logits
    with attention_hooked(model):
        assert model.config._attn_implementation == ATTENTION_NAME
        if tap is None:
            hooked = _forward(model, kwargs).logits
        else:
            with tapped(AttentionTap()) as t:
                hooked = _forward(model, kwargs).logits
            assert t.calls == model.config.num_hidden_layers
            assert t.recorded == []
    assert model.config._attn_implementation == "eager"
    assert _max_diff(arch, reference, hooked, valid) <= TOL


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_record_equals_output_attentions(arch):
    model, vocab = tiny_model(arch)
    kwargs, _ = _inputs(model, vocab, arch, pad=True)
    reference = _forward(model, kwargs, output_attentions=True).attentions
    with attention_hooked(model), tapped(AttentionTap(record=True)) as tap:
        _forward(model, kwargs)
    n_layers = model.config.num_hidden_layers
    n_heads = model.config.num_attention_heads
    assert len(reference) == n_layers
    assert len(tap.recorded) == n_layers
    for ref, rec in zip(reference, tap.recorded):
        assert rec.shape == (2, n_heads, SEQ_LEN, SEQ_LEN)  # grouped kv heads expanded to query heads
        assert (ref - rec).abs().max().item() <= TOL
        # Rows are distributions (GPT-OSS: the sink keeps a share), and far from uniform: otherwise the
        # equality tests would prove little.
        if getattr(model.config, "model_type", "") != "gpt_oss":
            assert torch.allclose(rec.sum(-1), torch.ones(()), atol=1e-5)
        else:
            assert (rec.sum(-1) < 1).all()
        allowed = (rec[0] > 0).float()
        uniform = allowed / allowed.sum(-1, keepdim=True)
        assert 0.5 * (rec[0] - uniform).abs().sum(-1).mean().item() > 0.1  # total variation from uniform


@pytest.mark.parametrize(("arch", "window"), [("mistral_gqa", 4), ("gemma2", 4), ("gpt_oss", 4)])
def test_sliding_window_reaches_the_hooked_function(arch, window):
    model, vocab = tiny_model(arch)
    kwargs, _ = _inputs(model, vocab, arch, pad=False)
    with attention_hooked(model), tapped(AttentionTap(record=True)) as tap:
        _forward(model, kwargs)
    i = torch.arange(SEQ_LEN)
    outside = (i[:, None] - i[None, :]) >= window  # keys too far back for a sliding layer
    layer_types = getattr(model.config, "layer_types", None) or ["sliding_attention"] * len(tap.recorded)
    for kind, probs in zip(layer_types, tap.recorded):
        far = probs[..., outside]
        if kind == "sliding_attention":
            assert far.abs().max().item() == 0.0
        else:
            assert far.abs().min().item() > 0.0


def _without_softcap(module, query, key, mask, scaling, softcap=None):
    return ORIGINAL_PROBABILITIES(module, query, key, mask, scaling, None)


def _without_sinks(module, query, key, mask, scaling, softcap=None):
    return ORIGINAL_PROBABILITIES(types.SimpleNamespace(), query, key, mask, scaling, softcap)


def _default_scaling(module, query, key, mask, scaling, softcap=None):
    return ORIGINAL_PROBABILITIES(module, query, key, mask, None, softcap)


ORIGINAL_PROBABILITIES = patching.attention_probabilities


@pytest.mark.parametrize(
    ("arch", "ablation"),
    [
        ("gemma2", _without_softcap),
        ("gpt_oss", _without_sinks),
        ("opt", _default_scaling),
        ("gpt2_layerscaled", _default_scaling),
        ("gemma2", _default_scaling),
    ],
    ids=["gemma2-softcap", "gpt_oss-sinks", "opt-scaling", "gpt2_layerscaled-scaling", "gemma2-scaling"],
)
def test_equality_tests_are_sensitive(arch, ablation, monkeypatch):
    """Leaving out one model-specific detail (softcap, sinks, the passed scaling) must break equality."""
    model, vocab = tiny_model(arch)
    kwargs, valid = _inputs(model, vocab, arch, pad=True)
    reference = _forward(model, kwargs).logits
    monkeypatch.setattr(patching, "attention_probabilities", ablation)
    with attention_hooked(model):
        ablated = _forward(model, kwargs).logits
    assert _max_diff(arch, reference, ablated, valid) > 1e-3


# ------------------------------------------------------------------------------------------- replacement


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_replacement_takes_effect(arch):
    model, vocab = tiny_model(arch)
    kwargs, valid = _inputs(model, vocab, arch, pad=True)
    n_layers = model.config.num_hidden_layers
    with attention_hooked(model):
        with tapped(AttentionTap(record=True)) as rec:
            base = _forward(model, kwargs).logits
        recorded = [p.clone() for p in rec.recorded]

        # The recorded probabilities put back (each layer alone, then all together) change nothing.
        for replace in [{layer: recorded[layer]} for layer in range(n_layers)] + [dict(enumerate(recorded))]:
            with tapped(AttentionTap(replace=replace)):
                same = _forward(model, kwargs).logits
            assert _max_diff(arch, base, same, valid) <= TOL

        # Anything else changes the logits, and lands in the chosen layer only.
        for layer in range(n_layers):
            other = _uniform_like(recorded[layer])
            with tapped(AttentionTap(replace={layer: other}, record=True)) as tap:
                changed = _forward(model, kwargs).logits
            assert _max_diff(arch, base, changed, valid) > 1e-3
            assert torch.equal(tap.recorded[layer], other)
            for earlier in range(layer):
                assert (tap.recorded[earlier] - recorded[earlier]).abs().max().item() <= TOL

        # Gradients flow to a replaced probability tensor (the attention space's input), not to parameters.
        point = recorded[0].clone().requires_grad_(True)
        with frozen(model), tapped(AttentionTap(replace={0: point})):
            out = model(**kwargs).logits
            out[valid].sum().backward() if not is_encoder(arch) else out.sum().backward()
        assert point.grad is not None and point.grad.abs().sum().item() > 0
        assert all(p.grad is None for p in model.parameters())


# Count positions (OPT) or ALiBi distances (Falcon with ALiBi) over the attention mask, so a masked token shifts the rest.
POSITIONS_FROM_MASK = {"opt", "falcon_alibi"}


@pytest.mark.parametrize("arch", [a for a in ARCHITECTURES if a not in POSITIONS_FROM_MASK])
def test_visibility_zero_is_the_model_with_those_tokens_masked(arch):
    """The mask space's endpoints are real runs of the model: visibility 0 on some tokens (every layer) equals
    the model given an attention mask that hides them, 1 equals the model as it is, and the rows of every point in
    between are attention distributions."""
    model, vocab = tiny_model(arch)
    kwargs, _ = _inputs(model, vocab, arch, pad=False)
    hidden = torch.zeros(SEQ_LEN, dtype=torch.bool)
    hidden[[3, 4, 7]] = True
    masked = _forward(model, {**kwargs, "attention_mask": (~hidden).long().expand(2, -1)}).logits
    everywhere = torch.ones(2, SEQ_LEN, dtype=torch.bool)
    with attention_hooked(model):
        full = _forward(model, kwargs).logits
        n_layers = model.config.num_hidden_layers
        for visible, reference in [((~hidden).float(), masked), (torch.ones(SEQ_LEN), full)]:
            with tapped(AttentionTap(visibility={layer: visible.expand(2, -1) for layer in range(n_layers)})):
                got = _forward(model, kwargs).logits
            assert _max_diff(arch, reference, got, everywhere) <= TOL
        halfway = torch.where(hidden, 0.3, 1.0).expand(2, -1)
        with tapped(AttentionTap(visibility={layer: halfway for layer in range(n_layers)}, record=True)) as tap:
            between = _forward(model, kwargs).logits
    assert _max_diff(arch, full, between, everywhere) > 1e-3
    if arch != "gpt_oss":  # its sink column keeps a share of every row
        for probs in tap.recorded:
            rows = probs.float().sum(-1)
            torch.testing.assert_close(rows, torch.ones_like(rows), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------- restoring


def _model_from(arch: str, start: str):
    try:
        return tiny_model(arch, attn_implementation=start)
    except ValueError as error:  # e.g. Gemma2, GPT-OSS: no SDPA in this transformers version
        pytest.skip(f"{arch} cannot be built with {start}: {error}")


@pytest.mark.parametrize("start", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_implementation_restored(arch, start):
    model, vocab = _model_from(arch, start)
    kwargs, valid = _inputs(model, vocab, arch, pad=True)
    before = _forward(model, kwargs).logits

    with attention_hooked(model):
        assert model.config._attn_implementation == ATTENTION_NAME
        with attention_hooked(model):  # nested: the inner exit puts back the outer hook
            pass
        assert model.config._attn_implementation == ATTENTION_NAME
    assert model.config._attn_implementation == start

    for error in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(error):
            with attention_hooked(model), tapped(AttentionTap(record=True)):
                _forward(model, kwargs)
                raise error("inside the block")
        assert model.config._attn_implementation == start

    after = _forward(model, kwargs).logits
    assert _max_diff(arch, before, after, valid) <= TOL
    assert patching._TAP.get() is None


def _mixed_flags(model) -> list[bool]:
    params = list(model.parameters())
    for i, p in enumerate(params):
        p.requires_grad_(i % 3 != 0)
    return [p.requires_grad for p in params]


@pytest.mark.parametrize("arch", ["llama_gqa", "gpt2", "bert", "gemma2"])
def test_frozen_and_prepared_restore_flags(arch):
    model, _ = tiny_model(arch)
    flags = _mixed_flags(model)

    with frozen(model):
        assert not any(p.requires_grad for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags

    for hook in (True, False):
        with prepared(model, hook_attention=hook):
            assert not any(p.requires_grad for p in model.parameters())
            assert model.config._attn_implementation == (ATTENTION_NAME if hook else "eager")
        assert [p.requires_grad for p in model.parameters()] == flags
        assert model.config._attn_implementation == "eager"

    for error in (ValueError, KeyboardInterrupt):
        with pytest.raises(error):
            with prepared(model, hook_attention=True):
                raise error("inside the block")
        assert [p.requires_grad for p in model.parameters()] == flags
        assert model.config._attn_implementation == "eager"


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_frozen_rejects_training_mode(arch):
    model, _ = tiny_model(arch)
    model.train()
    flags = _mixed_flags(model)
    for context in (lambda: frozen(model), lambda: prepared(model, hook_attention=True)):
        with pytest.raises(InvalidInputError, match=type(model).__name__):
            with context():
                pytest.fail("the block must not run")
        assert model.training
        assert [p.requires_grad for p in model.parameters()] == flags
        assert model.config._attn_implementation == "eager"


# ------------------------------------------------------------------------------------------- bypassing


def test_architecture_lists_are_disjoint():
    assert not set(ARCHITECTURES) & set(BYPASSING)


def _architectures_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "eval" / "architectures.py"
    spec = importlib.util.spec_from_file_location("eval_architectures", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass resolves annotations through sys.modules
    spec.loader.exec_module(module)
    return module, path.parent.parent / "docs" / "guides" / "models.md"


def test_architecture_table_matches_the_checks():
    """The guide's architecture table is what `eval/architectures.py` checks on the installed transformers: every
    hookable architecture equal to eager attention, every other one refused clearly; on the transformers version the
    table was generated with, row for row (a newer release that moves an architecture is reported, not hidden)."""
    import transformers

    script, guide = _architectures_script()
    checks = script.check_all()
    assert [c.arch for c in checks if c.hooks] == ARCHITECTURES
    assert all(c.equal for c in checks if c.hooks), [c for c in checks if c.hooks and not c.equal]
    assert all(c.refused_clearly for c in checks if not c.hooks), [c for c in checks if not c.hooks]
    documented = script.generated_table(guide.read_text())
    assert documented is not None, f"{guide} lost its generated architectures table"
    checked = script.table(checks)
    if documented.splitlines()[0] != checked.splitlines()[0]:
        changed = sorted(set(checked.splitlines()[2:]) ^ set(documented.splitlines()[2:]))
        pytest.skip(f"the guide's table was generated with another transformers version than "
                    f"{transformers.__version__}; regenerate it (python eval/architectures.py --write {guide.name}). "
                    f"Rows that differ: {changed or 'none'}")
    assert documented == checked


@pytest.mark.parametrize("arch", BYPASSING)
def test_bypassing_models_are_refused(arch):
    model, vocab = tiny_model(arch)
    assert not supports_attention_hook(model)
    kwargs, valid = _inputs(model, vocab, arch, pad=False)
    before = _forward(model, kwargs).logits
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = _mixed_flags(model)
    name = type(model).__name__

    with pytest.raises(UnsupportedModelError, match=name):
        with attention_hooked(model):
            pytest.fail("the block must not run")
    with pytest.raises(UnsupportedModelError, match=name):
        with prepared(model, hook_attention=True):
            pytest.fail("the block must not run")

    assert model.config._attn_implementation == "eager"
    assert not model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert _max_diff(arch, before, _forward(model, kwargs).logits, valid) == 0.0

    # The embedding space needs no hook: preparing without it works.
    with prepared(model, hook_attention=False):
        assert not any(p.requires_grad for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags


# ------------------------------------------------------------------------------------------- other threads


def test_other_threads_run_the_model_as_loaded():
    """A thread that runs plain forwards and `generate` on the zoo model as loaded (sdpa) while another thread
    explains in the attention and mask spaces gets exactly the logits it gets alone, 300 of 300: only the
    package's own forwards go through the hook. (Switching the model-wide implementation made nearly every one of
    them differ: eager instead of sdpa arithmetic, and bidirectional attention for a forward straddling a switch.)"""
    import threading

    import llm_attrib
    from llm_attrib import Attributor

    model, tokenizer = llm_attrib.zoo.load("rag")
    assert model.config._attn_implementation == "sdpa"
    example = llm_attrib.zoo.examples("rag", n=1, seed=0)[0]
    ids = tokenizer(example["prompt"], return_tensors="pt").input_ids

    def generated() -> torch.Tensor:
        out = model.generate(ids, max_new_tokens=2, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
        return torch.stack(out.logits)

    with torch.no_grad():
        alone = {"forward": model(ids).logits, "generate": generated()}

    explaining, done, failures, explained = threading.Event(), threading.Event(), [], [0]

    def explain() -> None:
        attributor = Attributor(model, tokenizer, show_progress=False)
        try:
            while not done.is_set():
                for space in ("attention", "mask"):
                    explaining.set()
                    exp = attributor.explain(example["prompt"], answer=example["answer"], space=space,
                                             method="saliency")
                    explaining.clear()
                    explained[0] += 1
                    assert exp.params["attention_implementation"] == "eager (hooked; the model as loaded runs sdpa)"
        except BaseException as error:  # reported by the main thread
            failures.append(error)
            explaining.clear()

    explainer = threading.Thread(target=explain)
    explainer.start()
    wrong, overlapped = [], 0
    try:
        for i in range(300):
            during = explaining.is_set()
            kind = "generate" if i % 3 == 0 else "forward"
            with torch.no_grad():
                got = generated() if kind == "generate" else model(ids).logits
            overlapped += during or explaining.is_set()
            if not torch.equal(got, alone[kind]):
                wrong.append((i, kind, (got - alone[kind]).abs().max().item()))
    finally:
        done.set()
        explainer.join()
    assert not failures, failures
    assert overlapped >= 100 and explained[0] >= 4  # the explanations really ran beside the forwards
    assert wrong == [], f"{len(wrong)} of 300 forwards differ from the model alone: {wrong[:5]}"
    assert model.config._attn_implementation == "sdpa"


def test_hooked_attention_without_a_mask_stays_causal():
    """Handed no mask (as transformers does where SDPA's `is_causal` flag replaces one), the hooked function attends
    causally for a causal module, exactly as with the explicit causal mask, and fully for a bidirectional one."""
    g = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 4, 6, 8, generator=g) for _ in range(3))
    causal = torch.zeros(6, 6).masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(), torch.finfo(torch.float32).min)
    module = torch.nn.Module().eval()
    out, probs = patching.hooked_attention(module, query, key, value, None, scaling=0.3)
    expected, expected_probs = patching.hooked_attention(module, query, key, value, causal, scaling=0.3)
    assert torch.equal(out, expected) and torch.equal(probs, expected_probs)
    assert probs[..., 0, 1:].abs().max().item() == 0.0
    module.is_causal = False
    _, probs = patching.hooked_attention(module, query, key, value, None, scaling=0.3)
    assert probs[..., 0, 1:].min().item() > 0.0
    _, probs = patching.hooked_attention(module, query, key, value, None, scaling=0.3, is_causal=True)
    assert torch.equal(probs, expected_probs)


def test_counting_forwards_counts_only_the_calling_threads_forwards():
    """The cost counter of a call counts its own forwards, not those another thread runs on the same model
    meanwhile (each thread's counter sees exactly its own, nested counters in one thread both count)."""
    import threading

    from llm_attrib.attributor import counting_forwards

    model, vocab = tiny_model("llama")
    kwargs, _ = _inputs(model, vocab, "llama", pad=False)  # a batch of 2 sequences
    started, done, counts, overlap = threading.Barrier(2), threading.Event(), {}, [0]

    def other() -> None:
        with counting_forwards(model) as count:
            started.wait()
            while not done.is_set():
                _forward(model, kwargs)
                overlap[0] += 1
        counts["other"] = (count[0], overlap[0])

    thread = threading.Thread(target=other)
    thread.start()
    with counting_forwards(model) as outer:
        started.wait()
        for _ in range(20):
            with counting_forwards(model) as inner:
                _forward(model, kwargs)
    done.set()
    thread.join()
    assert (outer[0], inner[0]) == (40, 2)
    with counting_forwards(model, tokens=True) as tokens:
        _forward(model, kwargs)
    assert tokens[0] == kwargs["input_ids"].numel()  # or the tokens they ran
    assert counts["other"][0] == 2 * counts["other"][1] and counts["other"][1] > 0


# ------------------------------------------------------------------------------------------- interrupts


class Interrupt(BaseException):
    """Stands for a KeyboardInterrupt arriving at one point of applying or undoing a change."""


def _model_state(model) -> tuple:
    owners = {patching._owner(config) for config in patching._configs(model)}
    return (
        [p.requires_grad for p in model.parameters()],
        model.config._attn_implementation,
        {owner: vars(owner)["_attn_implementation"] for owner in owners},
    )


def _raising_on_call(param, n: int):
    """Make the n-th call of `param.requires_grad_` (1: while freezing, 2: while restoring) raise `Interrupt` once
    its flag is set: an interrupt arriving between two steps."""
    calls, original = [0], param.requires_grad_

    def requires_grad_(flag=True):
        calls[0] += 1
        original(flag)
        if calls[0] == n:
            raise Interrupt
        return param

    param.requires_grad_ = requires_grad_
    return calls


@pytest.mark.parametrize("when", ["applying", "undoing"])
def test_an_interrupt_while_freezing_or_unfreezing_leaves_every_flag_restored(when):
    model, _ = tiny_model("llama")
    flags = _mixed_flags(model)
    before = _model_state(model)
    params = list(model.parameters())
    calls = _raising_on_call(params[len(params) // 2], 1 if when == "applying" else 2)
    with pytest.raises(Interrupt):
        with prepared(model, hook_attention=True):
            assert when == "undoing", "the block must not run when freezing was interrupted"
    assert calls[0] == 2  # frozen, then put back despite the interrupt
    assert _model_state(model) == before and [p.requires_grad for p in params] == flags
    assert patching._CHANGES.get(model, {}) == {}
    with prepared(model, hook_attention=True):  # and the next call works normally
        assert not any(p.requires_grad for p in model.parameters())
    assert _model_state(model) == before


@pytest.mark.parametrize("step", ["registering the undo", "entering the context"])
def test_an_interrupt_between_applying_and_registering_leaves_nothing_applied(step, monkeypatch):
    """An interrupt after a change is applied but before its undo is registered (or before the calling context is
    marked) puts the change back at once."""
    model, vocab = tiny_model("llama_gqa")
    flags = _mixed_flags(model)
    before = _model_state(model)
    kwargs, _ = _inputs(model, vocab, "llama_gqa", pad=True)
    reference = _forward(model, kwargs).logits

    def interrupt(*args, **kwargs):
        raise Interrupt

    monkeypatch.setattr(patching, "_Change" if step == "registering the undo" else "_context_set", interrupt)
    for hook in (False, True) if step == "registering the undo" else (True,):
        with pytest.raises(Interrupt):
            with prepared(model, hook_attention=hook):
                pytest.fail("the block must not run")
        assert _model_state(model) == before and [p.requires_grad for p in model.parameters()] == flags
    monkeypatch.undo()
    with attention_hooked(model), tapped(AttentionTap(record=True)) as tap:
        assert torch.equal(_forward(model, kwargs).logits, reference)
    assert len(tap.recorded) == model.config.num_hidden_layers
    assert _model_state(model) == before


@pytest.mark.parametrize("when", ["applying", "undoing"])
def test_ctrl_c_while_changing_the_model_is_delivered_after_it(when):
    """A real SIGINT raised in the middle of freezing (or unfreezing) the parameters arrives as KeyboardInterrupt
    once the change is whole: applied and undone, or undone, never half."""
    import signal

    model, _ = tiny_model("gpt2")
    flags = _mixed_flags(model)
    before = _model_state(model)
    params = list(model.parameters())
    target, original, calls = params[len(params) // 2], params[len(params) // 2].requires_grad_, [0]

    def requires_grad_(flag=True):
        calls[0] += 1
        if calls[0] == (1 if when == "applying" else 2):
            signal.raise_signal(signal.SIGINT)
        return original(flag)

    target.requires_grad_ = requires_grad_
    ran = []
    with pytest.raises(KeyboardInterrupt):
        with prepared(model, hook_attention=True):
            ran.append(True)
    assert ran == ([] if when == "applying" else [True])
    assert _model_state(model) == before and [p.requires_grad for p in params] == flags
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
