"""The static prefix: leading tokens no path point moves run once, and the result is the one without it."""

import pytest
import torch

from llm_attrib import Attributor
from llm_attrib.core import static_prefix
from tiny_models import ARCHITECTURES, is_encoder, tiny_model
from tiny_tokenizer import tiny_llama, tiny_tokenizer

PROMPT = "w1 w7 w3 w9 w4 w12 w5 w20 w21 w22 w23 w24 w25 w26"
MOVING = [(len(PROMPT) - 11, len(PROMPT))]  # "w24 w25 w26": the tokens before them never move
PREFIX = 1 + 11  # <bos> and the 11 words before the moving ones


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(), tiny_tokenizer(64)


def explain(lm, **kwargs):
    model, tokenizer = lm
    return Attributor(model, tokenizer, show_progress=False).explain(
        PROMPT, answer="w5 w6 w8", attribute_to=MOVING, **kwargs)


def input_lengths(model, run):
    """The sequence lengths the model's forwards ran on during `run()`."""
    lengths = []

    def record(_module, args, kwargs):
        inputs = kwargs.get("input_ids", kwargs.get("inputs_embeds"))
        lengths.append(inputs.shape[1])

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        result = run()
    finally:
        handle.remove()
    return result, lengths


@pytest.mark.parametrize("space", ["embeddings", "attention", "mask"])
def test_the_prefix_runs_once_and_changes_nothing(lm, space, monkeypatch):
    model, _ = lm
    suffix = 1 + 14 + 3 - PREFIX  # the tokens after the prefix: the rest of the prompt and the answer
    cached, lengths = input_lengths(model, lambda: explain(lm, space=space, tolerance=1e-4))
    # the prefix's cache is cut from the check's forward of the whole sequence; then the path's chunks run the rest
    assert PREFIX not in lengths and lengths.count(suffix) >= 2
    monkeypatch.setattr(static_prefix, "MIN_LENGTH", 10**6)
    full, lengths = input_lengths(model, lambda: explain(lm, space=space, tolerance=1e-4))
    assert PREFIX not in lengths and suffix not in lengths
    assert cached.params["n_steps"] == full.params["n_steps"]
    torch.testing.assert_close(cached.scores, full.scores, atol=1e-5, rtol=1e-4)
    assert cached.completeness_error.max() < 1e-3


def test_points_that_move_the_prefix_run_in_full(lm, monkeypatch):
    """A custom baseline that moves the leading tokens: no batch leaves the prefix as it is, so it is never even
    built, and every chunk runs whole. RPI's noise leaves the markup as it is (like every other baseline), so its
    batches use the prefix, with the scores of a run without it."""
    model, tokenizer = lm
    seq = Attributor(model, tokenizer).sequence(PROMPT, answer="w5 w6 w8")
    with torch.no_grad():
        baseline = model.get_input_embeddings()(seq.input_ids)[0] * 0.5
    moved, lengths = input_lengths(model, lambda: explain(lm, baseline=baseline, n_steps=8, tolerance=None))
    assert PREFIX not in lengths and seq.length - PREFIX not in lengths

    def rpi():
        return explain(lm, method="rpi", space="attention", n_baselines=2, n_steps=4, max_steps=8, seed=0)

    with_prefix, lengths = input_lengths(model, rpi)
    assert seq.length - PREFIX in lengths
    monkeypatch.setattr(static_prefix, "MIN_LENGTH", 10**6)
    torch.testing.assert_close(moved.scores, explain(lm, baseline=baseline, n_steps=8, tolerance=None).scores,
                               atol=0, rtol=0)
    torch.testing.assert_close(rpi().scores, with_prefix.scores, atol=1e-5, rtol=1e-4)


def test_a_cache_that_changes_the_logits_is_not_used(lm, monkeypatch):
    """Should a model's cache not reproduce its own logits, the prefix is dropped instead of trusted."""
    model, _ = lm
    reference = explain(lm)
    original = static_prefix.StaticPrefix.cache

    def shifted(self, batch):
        cache = original(self, batch)
        for layer in cache.layers:
            layer.keys = layer.keys + 1.0
        return cache

    monkeypatch.setattr(static_prefix.StaticPrefix, "cache", shifted)
    wrong, lengths = input_lengths(model, lambda: explain(lm))
    assert lengths.count(1 + 14 + 3 - PREFIX) == 1  # built, checked, dropped
    torch.testing.assert_close(wrong.scores, reference.scores, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", [a for a in ARCHITECTURES if not is_encoder(a)])
@pytest.mark.parametrize("space", ["embeddings", "attention", "mask"])
def test_every_architecture_gives_the_same_scores_with_the_prefix(arch, space, monkeypatch):
    """Learned and rotary positions, grouped queries, softcapping, sinks: the prefix is used on every hookable
    causal architecture and changes nothing; a sliding window shorter than the prefix keeps it from being used."""
    model, vocab = tiny_model(arch)
    lm = (model, tiny_tokenizer(vocab))
    cached, lengths = input_lengths(model, lambda: explain(lm, space=space, n_steps=4, tolerance=None))
    if getattr(model.config, "sliding_window", None) is None:
        assert PREFIX not in lengths and lengths.count(1 + 14 + 3 - PREFIX) >= 2
    else:  # a window of 4 keeps 3 of the 12 prefix tokens in its cache: not usable, so never used
        assert 1 + 14 + 3 - PREFIX not in lengths
    monkeypatch.setattr(static_prefix, "MIN_LENGTH", 10**6)
    full = explain(lm, space=space, n_steps=4, tolerance=None)
    torch.testing.assert_close(cached.scores, full.scores, atol=1e-4, rtol=1e-3)
