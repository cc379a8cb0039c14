"""The zoo's shipped models load offline, solve their tasks, and their examples carry true evidence."""

import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_attrib import zoo
from llm_attrib.errors import UnknownNameError
from llm_attrib.zoo import _tokenizer, tasks, train

LM_TARGETS = {"recall": 0.95, "rag": 0.90}


@pytest.fixture(scope="module", params=zoo.NAMES)
def loaded(request):
    return request.param, *zoo.load(request.param)


@torch.no_grad()
def _generate(model, tokenizer, prompts):
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    out = model.generate(**enc, max_new_tokens=8, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)
    return out[:, enc["input_ids"].shape[1]:]


def test_loaded_models_are_float32_eval(loaded):
    _, model, _ = loaded
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_held_out_accuracy(loaded):
    name, model, tokenizer = loaded
    exs = zoo.examples(name, n=100, seed=12345)
    if name == "sentiment":
        with torch.no_grad():
            enc = tokenizer([e["prompt"] for e in exs], return_tensors="pt", padding=True)
            pred = model(**enc).logits.argmax(-1).tolist()
        acc = sum(p == e["label"] for p, e in zip(pred, exs)) / len(exs)
        assert model.config.id2label == {0: "negative", 1: "positive"}
        assert acc >= 0.95
    else:
        texts = tokenizer.batch_decode(_generate(model, tokenizer, [e["prompt"] for e in exs]),
                                       skip_special_tokens=True)
        acc = sum(t == e["answer"] for t, e in zip(texts, exs)) / len(exs)
        assert acc >= LM_TARGETS[name]


@pytest.mark.parametrize("name", ["recall", "rag"])
def test_generation_stops_at_eos_and_round_trips(name):
    model, tokenizer = zoo.load(name)
    exs = zoo.examples(name, n=20, seed=7)
    for ex, new in zip(exs, _generate(model, tokenizer, [e["prompt"] for e in exs]).tolist()):
        assert tokenizer.eos_token_id in new
        p = tokenizer(ex["prompt"])["input_ids"]
        full = tokenizer(ex["prompt"] + " " + ex["answer"])["input_ids"]
        assert full[:len(p)] == p and p[0] == tokenizer.bos_token_id
        answer_ids = full[len(p):] + [tokenizer.eos_token_id]
        assert tokenizer.decode(answer_ids, skip_special_tokens=True) == ex["answer"]


@pytest.mark.parametrize("name", ["recall", "rag"])
def test_folder_loads_with_auto_classes(name):
    model = AutoModelForCausalLM.from_pretrained(zoo.path(name))
    assert type(model).__name__ == {"recall": "LlamaForCausalLM", "rag": "Qwen2ForCausalLM"}[name]
    assert AutoTokenizer.from_pretrained(zoo.path(name)).eos_token == "<eos>"


@pytest.mark.parametrize("name", ["recall", "rag"])
def test_folder_tokenizer_matches_load(name):
    """The CLI's loader reads the folder's tokenizer as saved. (transformers 5's AutoTokenizer forces
    Qwen2Tokenizer on any qwen2 folder, which re-tokenises rag's word-level vocabulary.)"""
    from llm_attrib.cli import load_tokenizer

    _, tokenizer = zoo.load(name)
    prompt = zoo.examples(name, n=1)[0]["prompt"]
    assert load_tokenizer(str(zoo.path(name)))(prompt)["input_ids"] == tokenizer(prompt)["input_ids"]


def test_shipped_folders_are_small():
    for name in zoo.NAMES:
        folder = zoo.MODELS_DIR / name
        assert (folder / "README.md").exists()
        assert sum(f.stat().st_size for f in folder.iterdir()) < 8 * 2**20


def test_examples_deterministic_and_seeded():
    for name in zoo.NAMES:
        assert zoo.examples(name, n=20, seed=3) == zoo.examples(name, n=20, seed=3)
        assert zoo.examples(name, n=20, seed=3) != zoo.examples(name, n=20, seed=4)
        assert len(zoo.examples(name, n=5)) == 5


def test_recall_evidence():
    for ex in zoo.examples("recall", n=50, seed=1):
        prompt = ex["prompt"]
        (start, end), (qs, qe) = ex["evidence"]
        query_key = prompt.split()[-2]
        assert prompt[start:end] == f"{query_key} = {ex['answer']}"
        assert prompt[qs:qe] == query_key and qe == len(prompt) - len(" =>")
        assert prompt[slice(*ex["answer_span"])] == ex["answer"]
        template = [prompt[a:b] for a, b in ex["template_spans"]]
        assert template[-1] == "=>" and set(template) == {"=", ",", ".", "=>"}


def test_rag_evidence():
    for ex in zoo.examples("rag", n=50, seed=1):
        prompt = ex["prompt"]
        (ds, de), (as_, ae), (ns, ne) = ex["evidence"]
        assert [ds, de] == ex["documents"][ex["relevant_document"]]
        assert ds <= as_ < ae <= de and prompt[as_:ae] == ex["answer"]
        assert prompt.count(ex["answer"]) == 1
        assert len(ex["answer"].split()) == 2
        name = prompt.split()[-2]  # "... what about <name> ?"
        assert prompt[ns:ne] == name and prompt[ds:de].split()[2] == name
        template = [prompt[a:b] for a, b in ex["template_spans"]]
        assert template[-2:] == ["question : what about", "?"]
        assert set(template[:-2]) == {"doc :", "."}


def test_sentiment_evidence():
    labels = set()
    for ex in zoo.examples("sentiment", n=100, seed=1):
        words = [ex["prompt"][a:b] for a, b in ex["evidence"]]
        sentiment = words[-1]
        assert sentiment in tasks.POSITIVE + tasks.NEGATIVE
        assert all(w in tasks.NEGATIONS for w in words[:-1])
        positive = sentiment in tasks.POSITIVE
        assert ex["label"] == int(positive != (len(words) == 2))
        assert ex["label_name"] == ("negative", "positive")[ex["label"]]
        labels.add(ex["label"])
    assert labels == {0, 1}


def test_unknown_name():
    for call in (zoo.load, zoo.path, zoo.examples):
        with pytest.raises(UnknownNameError, match="recall, rag, sentiment"):
            call("nope")


@pytest.mark.parametrize("name", ["recall", "rag"])
def test_training_batches_teach_copying_only(name):
    """Loss falls only on tokens the context determines: answers copied from the prompt, <eos>, and the
    repeat of a copy sequence (each labelled token equals the input there, as transformers shifts labels)."""
    tok = _tokenizer.build(train.LM_RECIPES[name]["words"])
    ids, mask, labels = train.lm_batch(name, tok, tasks.generate(name, 6, "test"), random.Random(0), 5, 4)
    assert ids.shape[0] == 10
    for row in range(10):
        length = int(mask[row].sum())
        positions = (labels[row] != -100).nonzero().flatten().tolist()
        assert positions and max(positions) < length
        for i in positions:
            token = int(labels[row, i])
            assert token == int(ids[row, i])
            if row >= 6:  # copy sequence <bos> x x: the label repeats the token len(x) positions back
                assert token == int(ids[row, i - (length - 1) // 2])
            elif token != tok.eos_token_id:
                assert token in ids[row, :i].tolist()
