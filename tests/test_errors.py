"""Bad input gets the package's own clear error, and the model is left exactly as it was."""

import pytest
import torch

from llm_attrib import Attributor, InvalidInputError, NumericalError, UnknownNameError, UnsupportedModelError
from tiny_models import BYPASSING, tiny_model
from tiny_tokenizer import tiny_llama, tiny_tokenizer


@pytest.fixture()
def lm():
    return tiny_llama(context=32), tiny_tokenizer(64)


def state(model):
    return (
        model.config._attn_implementation,
        model.training,
        [p.requires_grad for p in model.parameters()],
        {k: v.clone() for k, v in model.state_dict().items()},
    )


def assert_unchanged(model, before):
    after = state(model)
    assert after[:3] == before[:3]
    for key, value in before[3].items():
        assert torch.equal(after[3][key], value), key


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(prompt=""), InvalidInputError, "empty"),
        (dict(prompt="   "), InvalidInputError, "empty"),
        (dict(prompt=" ".join(["w5"] * 40)), InvalidInputError, "context"),
        (dict(prompt="w1 w2", max_new_tokens=40), InvalidInputError, "context"),
        (dict(prompt="w1 w2", method="shap"), UnknownNameError, "choose one of"),
        (dict(prompt="w1 w2", space="logits"), UnknownNameError, "choose one of"),
        (dict(prompt="w1 w2", space="attention", layers=7), InvalidInputError, "2 attention layers"),
        (dict(prompt="w1 w2", answer=[5, 10**6]), InvalidInputError, "outside the model's vocabulary"),
        (dict(prompt="w1 w2", target="contrastive", foil=10**6), InvalidInputError, "foil"),
        (dict(prompt="w1 w2", target="contrastive"), InvalidInputError, "foil"),
        (dict(prompt="w1 w2", target="entropy"), UnknownNameError, "target"),
        (dict(prompt="w1 w2", method="attention", space="embeddings"), InvalidInputError, "attention"),
        (dict(prompt="w1 w2", quadrature="simpson"), UnknownNameError, "quadrature"),
        (dict(prompt="w1 w2", baseline="noise"), InvalidInputError, "baseline"),
        (dict(prompt="w1 w2", baseline=torch.zeros(3, 3)), InvalidInputError, "shape"),
        (dict(prompt="w1 w2", n_steps=0), InvalidInputError, "n_steps"),
        (dict(prompt="w1 w2", steps=8), InvalidInputError, "unexpected parameters"),
        (dict(prompt="w1 w2", internal_batch_size=0), InvalidInputError, "internal_batch_size"),
        (dict(prompt="w1 w2", target_class=1), InvalidInputError, "classifier"),
        (dict(prompt=[{"content": "hi"}]), InvalidInputError, "chat"),
    ],
)
def test_bad_input_is_refused_clearly(lm, kwargs, error, message):
    model, tokenizer = lm
    before = state(model)
    with pytest.raises(error, match=message):
        Attributor(model, tokenizer, show_progress=False).explain(**kwargs)
    assert_unchanged(model, before)


def test_model_in_training_mode_is_refused_and_left_training(lm):
    model, tokenizer = lm
    model.train()
    before = state(model)
    with pytest.raises(InvalidInputError, match="eval"):
        Attributor(model, tokenizer).explain("w1 w2", answer="w3")
    assert_unchanged(model, before)


def test_nan_in_model_output_is_refused(lm):
    model, tokenizer = lm
    with torch.no_grad():
        model.lm_head.weight[5, 0] = float("nan")
    before = state(model)
    for space in ("embeddings", "attention"):
        with pytest.raises(NumericalError, match="NaN"):
            Attributor(model, tokenizer, show_progress=False).explain("w1 w2", answer="w5", space=space)
    after = state(model)
    assert after[:3] == before[:3]


@pytest.mark.skipif(not BYPASSING, reason="every architecture uses the attention interface")
@pytest.mark.parametrize("arch", BYPASSING)
def test_model_bypassing_attention_interface(arch):
    model, vocab = tiny_model(arch)
    tokenizer = tiny_tokenizer(vocab, bos=False)
    before = state(model)
    attributor = Attributor(model, tokenizer, show_progress=False)
    with pytest.raises(UnsupportedModelError, match=type(model).__name__):
        attributor.explain("w1 w2 w3", answer="w5", space="attention")
    assert_unchanged(model, before)
    exp = attributor.explain("w1 w2 w3", answer="w5", space="embeddings")
    assert exp.completeness_error.max() < 1e-2
    assert_unchanged(model, before)
