"""The whole answer as one target: log p(answer | prompt), explained at the cost of one target."""

import pytest
import torch

import llm_attrib
from llm_attrib import Attributor, Explanation, InvalidInputError
from llm_attrib.metrics import faithfulness
from tiny_tokenizer import tiny_bert, tiny_llama, tiny_tokenizer

PROMPT, ANSWER = "w1 w7 w3 w9 w4 w12", "w5 w6 w8"
FIXED = dict(quadrature="gauss-legendre", n_steps=16, tolerance=None)


@pytest.fixture(scope="module")
def attributor():
    return Attributor(tiny_llama(), tiny_tokenizer(64), show_progress=False)


@pytest.mark.parametrize("space", ["embeddings", "attention"])
def test_the_answer_is_the_sum_of_its_tokens_at_a_fraction_of_the_cost(attributor, space):
    """IG is linear in the target: with the same nodes and baseline, the whole answer's row is the sum of the
    token rows, computed with one backward per path point instead of one per token."""
    whole = attributor.explain(PROMPT, answer=ANSWER, space=space, target="answer", **FIXED)
    tokens = attributor.explain(PROMPT, answer=ANSWER, space=space, **FIXED)
    assert whole.answer_level and whole.scores.shape == (1, tokens.scores.shape[1])
    assert whole.target_tokens == ["w5 w6 w8"] and whole.target_ids == tokens.target_ids
    torch.testing.assert_close(whole.scores[0], tokens.scores.sum(0), atol=1e-5, rtol=1e-4)
    assert whole.target_probs[0] == pytest.approx(float(torch.tensor(tokens.target_probs).prod()), rel=1e-5)
    assert whole.cost["n_backward"] * 3 == tokens.cost["n_backward"]


def test_the_answer_converges_by_default_on_the_rag_model():
    model, tokenizer = llm_attrib.zoo.load("rag")
    example = llm_attrib.zoo.examples("rag", n=1, seed=123)[0]
    exp = Attributor(model, tokenizer, show_progress=False).explain(example["prompt"], answer=example["answer"],
                                                                    target="answer")
    assert exp.converged and exp.completeness_error.item() <= 0.01


def test_faithfulness_of_the_whole_answer_is_the_answers_probability(attributor):
    """comprehensiveness@20 of the whole answer = p(answer) - p(answer with the top 20% of the prompt deleted),
    computed by hand."""
    exp = attributor.explain(PROMPT, answer=ANSWER, target="answer", method="saliency")
    values = faithfulness(attributor, exp)
    assert all(v.shape == (1,) for v in values.values())
    prompt_ids = exp.input_ids[: exp.n_prompt_tokens]
    removable = [j for j in range(1, len(prompt_ids))]  # BOS stays
    k = -(-len(removable) * 20 // 100)
    top = set(sorted(removable, key=lambda j: (-float(exp.scores[0, j]), j))[:k])
    kept = [i for j, i in enumerate(prompt_ids) if j not in top]
    with torch.no_grad():
        logits = attributor.model(input_ids=torch.tensor([kept + exp.target_ids])).logits[0]
    log_p = logits[len(kept) - 1:-1].float().log_softmax(-1).gather(-1, torch.tensor(exp.target_ids)[:, None]).sum()
    assert values["comprehensiveness@20"][0].item() == pytest.approx(exp.target_probs[0] - log_p.exp().item(), abs=1e-6)


def test_other_methods_give_one_row_and_the_ones_that_cannot_say_so(attributor, tmp_path):
    for method in ("attention", "random", "saliency", "rpi"):
        exp = attributor.explain(PROMPT, answer=ANSWER, target="answer", method=method,
                                 **({"n_baselines": 2} if method == "rpi" else {}))
        assert exp.scores.shape[0] == 1 and torch.isfinite(exp.scores).all()
    exp.save(tmp_path / "whole.json")
    assert Explanation.load(tmp_path / "whole.json").answer_level
    with pytest.raises(InvalidInputError, match="IG2"):
        attributor.explain(PROMPT, answer=ANSWER, target="answer", method="ig2", references=["w20 w21"])
    with pytest.raises(InvalidInputError, match="aggregation='paper'"):
        attributor.explain(PROMPT, answer=ANSWER, target="answer", method="rpi", aggregation="paper")
    with pytest.raises(InvalidInputError, match="classifier"):
        Attributor(tiny_bert(), tiny_tokenizer(64)).explain(PROMPT, target="answer")
