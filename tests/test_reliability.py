"""Reliability: overlapping calls leave the model exactly as it was, and no NaN is ever returned silently."""

import itertools
import threading

import pytest
import torch

from llm_attrib import Attributor, InvalidInputError, NumericalError
from llm_attrib.core.targets import log_probability
from tiny_tokenizer import tiny_llama, tiny_tokenizer

WAIT = 60.0


@pytest.fixture()
def lm():
    return tiny_llama(context=32), tiny_tokenizer(64)


def state(model):
    """Everything an explanation may touch: weights, flags, attention implementation, hooks, and the logits."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[2, 5, 9, 7]])).logits
    hooks = [len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()]
    return (
        model.config._attn_implementation,
        model.training,
        [p.requires_grad for p in model.parameters()],
        hooks,
        {k: v.clone() for k, v in model.state_dict().items()},
        logits,
    )


def assert_unchanged(model, before):
    after = state(model)
    assert after[:4] == before[:4]
    for key, value in before[4].items():
        assert torch.equal(after[4][key], value), key
    assert torch.equal(after[5], before[5])


def pausing_target(entered: threading.Event, resume: threading.Event):
    """The log-probability target, which on its first call says it is inside and waits to be resumed."""
    first = [True]

    def target(logits, ids):
        if first[0]:
            first[0] = False
            entered.set()
            assert resume.wait(WAIT), "the other call never reached its checkpoint"
        return log_probability(logits, ids)

    return target


def explain(attributor, prompt, space, target=None):
    return attributor.explain(prompt, answer="w5 w7", space=space, target=target, quadrature="gauss-legendre",
                              n_steps=8, tolerance=None)


@pytest.mark.parametrize("space_a, space_b", list(itertools.product(["embeddings", "attention"], repeat=2)))
def test_a_call_that_ends_while_another_runs_leaves_the_model_intact(lm, space_a, space_b):
    """A enters and pauses; B enters and pauses; A finishes (it used to restore the model under B); B finishes."""
    model, tokenizer = lm
    before = state(model)
    attributor = Attributor(model, tokenizer, show_progress=False)
    sequential_a = explain(attributor, "w1 w2 w3", space_a).scores
    sequential_b = explain(attributor, "w4 w8 w9 w1", space_b).scores
    a_in, b_in, a_done = threading.Event(), threading.Event(), threading.Event()
    results, errors = {}, []

    def run(name, prompt, space, target, done=None):
        try:
            results[name] = explain(attributor, prompt, space, target).scores
        except BaseException as error:  # reported to the main thread below
            errors.append(error)
        finally:
            if done is not None:
                done.set()

    thread_a = threading.Thread(target=run, args=("a", "w1 w2 w3", space_a, pausing_target(a_in, b_in), a_done))
    thread_b = threading.Thread(target=run, args=("b", "w4 w8 w9 w1", space_b, pausing_target(b_in, a_done)))
    thread_a.start()
    assert a_in.wait(WAIT)
    thread_b.start()
    thread_a.join(WAIT)
    thread_b.join(WAIT)
    assert not errors, errors
    assert torch.allclose(results["a"], sequential_a, atol=1e-5)
    assert torch.allclose(results["b"], sequential_b, atol=1e-5)
    assert_unchanged(model, before)


def test_an_explanation_started_inside_a_target_callable(lm):
    model, tokenizer = lm
    before = state(model)
    attributor = Attributor(model, tokenizer, show_progress=False)
    inner = []

    def target(logits, ids):
        if not inner:
            inner.append(explain(attributor, "w4 w8", "attention").scores)
        return log_probability(logits, ids)

    outer = explain(attributor, "w1 w2 w3", "embeddings", target=target).scores
    assert torch.allclose(outer, explain(attributor, "w1 w2 w3", "embeddings").scores, atol=1e-6)
    assert torch.allclose(inner[0], explain(attributor, "w4 w8", "attention").scores, atol=1e-6)
    assert_unchanged(model, before)


class Interrupt(BaseException):
    """Stands for a KeyboardInterrupt raised at an arbitrary point of a call."""


def test_any_mix_of_successful_failing_and_interrupted_calls_restores_the_model(lm):
    model, tokenizer = lm
    model.model.layers[0].self_attn.q_proj.weight.requires_grad_(False)
    before = state(model)
    attributor = Attributor(model, tokenizer, show_progress=False)
    generator = torch.Generator().manual_seed(0)

    def interrupting(after):
        calls = [0]

        def target(logits, ids):
            calls[0] += 1
            if calls[0] > after:
                raise Interrupt
            return log_probability(logits, ids)

        return target

    outcomes = set()
    for _ in range(12):
        kind = int(torch.randint(3, (1,), generator=generator))
        space = ["embeddings", "attention"][int(torch.randint(2, (1,), generator=generator))]
        try:
            if kind == 0:
                explain(attributor, "w1 w2 w3", space)
            elif kind == 1:
                explain(attributor, "w1 w2 w3", space, target=lambda logits, ids: logits[..., :1])
            else:
                explain(attributor, "w1 w2 w3", space, target=interrupting(int(torch.randint(4, (1,), generator=generator))))
            outcomes.add("ok")
        except InvalidInputError:
            outcomes.add("failed")
        except Interrupt:
            outcomes.add("interrupted")
        assert_unchanged(model, before)
    assert outcomes == {"ok", "failed", "interrupted"}


def test_overflowing_gradients_raise_instead_of_returning_nan(lm):
    model, tokenizer = lm
    with torch.no_grad():
        model.lm_head.weight.mul_(1e37)
    attributor = Attributor(model, tokenizer, show_progress=False)
    with pytest.raises(NumericalError, match="gradient"):
        attributor.explain("w1 w2", answer="w5", space="embeddings")
    try:
        explanation = attributor.explain("w1 w2", answer="w5", space="attention")
    except NumericalError:
        return
    assert torch.isfinite(explanation.scores).all() and torch.isfinite(explanation.completeness_error).all()


@pytest.mark.parametrize("method, broken", [
    *[(method, "model.norm.weight") for method in ("attention", "random", "saliency", "ig", "rpi")],
    ("attention", "model.layers.1.self_attn.q_proj.weight"),  # NaN attention, finite logits under sdpa
])
def test_every_method_checks_its_scores_and_probabilities(lm, method, broken):
    model, tokenizer = lm
    with torch.no_grad():
        model.get_parameter(broken)[0] = float("nan")
    before = [p.requires_grad for p in model.parameters()], model.config._attn_implementation
    with pytest.raises(NumericalError, match="NaN"):
        Attributor(model, tokenizer, show_progress=False).explain("w1 w2", answer="w5", method=method)
    assert ([p.requires_grad for p in model.parameters()], model.config._attn_implementation) == before
