"""Bad input gets the package's own clear error, and the model is left exactly as it was."""

import pytest
import torch

from llm_attrib import Attributor, InvalidInputError, NumericalError, UnknownNameError, UnsupportedModelError
from tiny_models import ARCHITECTURES, BYPASSING, is_encoder, tiny_model
from tiny_tokenizer import tiny_bert, tiny_llama, tiny_tokenizer


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
        (dict(prompt="w1 \ud800 w2", answer="w5"), InvalidInputError, "not valid Unicode"),
        (dict(prompt="w1 w2", answer="w5 zebra"), InvalidInputError, "does not know"),
        (dict(prompt="w1 w2", answer="w5", max_steps=0), InvalidInputError, "max_steps"),
        (dict(prompt="w1 w2", answer="w5", n_probes=0), InvalidInputError, "n_probes"),
        (dict(prompt="w1 w2", answer="w5", max_steps=4), InvalidInputError, "max_steps=4 is below what one path needs"),
        (dict(prompt="w1 w2", answer="w5", method="ig2", n_steps=10, max_steps=40, references=["w3 w4"]),
         InvalidInputError, "41 gradient evaluations per reference"),
        (dict(prompt="w1 w2", answer="w5", quadrature="gauss-legendre", n_steps=10**7), InvalidInputError, "2048"),
        (dict(prompt="w1 w2", answer="w5", method="ig2", n_steps=10**7, references=["w3 w4"]), InvalidInputError, "2048"),
        (dict(prompt="w1 w2", answer="w5", method="rpi", n_steps=10**5), InvalidInputError, "2048"),
        (dict(prompt="w1 w2", answer="w5", target=lambda logits, ids: logits[:, 0, 0]), InvalidInputError, "shape"),
        (dict(prompt="w1 w2", answer="w5", target=lambda logits, ids: 1.0), InvalidInputError, "float"),
        (dict(prompt="w1 w2", answer="w5", target=lambda logits, ids: torch.zeros(len(logits), len(ids))),
         InvalidInputError, "do not depend on the logits"),
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
    answer = {} if is_encoder(arch) else {"answer": "w5"}
    with pytest.raises(UnsupportedModelError, match=type(model).__name__):
        attributor.explain("w1 w2 w3", space="attention", **answer)
    assert_unchanged(model, before)
    exp = attributor.explain("w1 w2 w3", space="embeddings", **answer)
    assert exp.completeness_error.max() < 1e-2
    assert_unchanged(model, before)


MOVED_ONTO_THE_INTERFACE = [arch for arch in ("falcon", "falcon_gqa", "gptj", "codegen") if arch in ARCHITECTURES]


@pytest.mark.skipif(not MOVED_ONTO_THE_INTERFACE, reason="no architecture moved onto the attention interface yet")
@pytest.mark.parametrize("arch", MOVED_ONTO_THE_INTERFACE)
def test_model_moved_onto_attention_interface_explains_in_every_space(arch):
    """Architectures that computed attention in their own code in earlier 5.x releases and route it through the
    interface in the installed one are explained in the attention and mask spaces too (their equality with eager
    attention is tested in test_patching), and left exactly as they were."""
    model, vocab = tiny_model(arch)
    tokenizer = tiny_tokenizer(vocab)  # a start token: the mask space keeps it visible
    before = state(model)
    attributor = Attributor(model, tokenizer, show_progress=False)
    for space in ("attention", "mask"):
        exp = attributor.explain("w1 w2 w3", answer="w5", space=space)  # steps refined to the 1% tolerance
        assert exp.completeness_error.max() < 1e-2, space
        assert_unchanged(model, before)


@pytest.mark.parametrize("kwargs, message", [
    (dict(target_class=True), "class index"),
    (dict(target_class=3), "class index"),
    (dict(answer="w5"), "classifier"),
])
def test_classifier_inputs_are_checked(kwargs, message):
    model, tokenizer = tiny_bert(n_labels=3), tiny_tokenizer(64)
    with pytest.raises(InvalidInputError, match=message):
        Attributor(model, tokenizer, show_progress=False).explain("w1 w2", **kwargs)


def test_an_answer_split_the_prompt_would_not_produce_is_refused():
    """A tokenizer that splits 'Par' + 'is' differently once they are joined: the answer's tokens would be ones
    the model never sees after this prompt."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(["<unk>", "is", "Par", "Paris", "capital"])}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="<unk>", continuing_subword_prefix=""))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="")  # glues pieces: "Par" + "is" reads "Paris"
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    model = tiny_llama(context=32)
    with pytest.raises(InvalidInputError, match="token ids"):
        Attributor(model, tokenizer, show_progress=False).explain("capital is Par", answer="is")


def test_faithfulness_refuses_an_explanation_of_another_model(lm):
    from llm_attrib.metrics import faithfulness

    model, tokenizer = lm
    explanation = Attributor(model, tokenizer, show_progress=False).explain("w1 w2 w3", answer="w5", method="saliency")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(60)][::-1]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<pad>", "<unk>", "<bos>", "<eos>"] + words)},
                                         unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    shuffled = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>")
    for other in (Attributor(tiny_bert(), tiny_tokenizer(64, bos=False)), Attributor(tiny_llama(seed=1), shuffled)):
        with pytest.raises(InvalidInputError, match="another model"):
            faithfulness(other, explanation)
    with pytest.raises(InvalidInputError, match="aggregated"):
        faithfulness(Attributor(model, tokenizer), explanation.words())


def test_saved_explanations_are_strict_json_and_foreign_json_is_refused(lm, tmp_path):
    import json

    from llm_attrib import Explanation

    model, tokenizer = lm
    explanation = Attributor(model, tokenizer, show_progress=False).explain("w1 w2", answer="w5 w6", method="saliency")
    explanation.target_probs[0] = float("nan")
    path = tmp_path / "explanation.json"
    explanation.save(path)
    json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"bare {name} in the JSON"))
    back = Explanation.load(path)
    assert back.target_probs[0] != back.target_probs[0] and torch.equal(back.scores, explanation.scores)
    (tmp_path / "foreign.json").write_text('{"a": 1}')
    with pytest.raises(InvalidInputError, match="not an llm-attrib explanation"):
        Explanation.load(tmp_path / "foreign.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(InvalidInputError, match="not JSON"):
        Explanation.load(tmp_path / "broken.json")
