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


@pytest.mark.parametrize("space", ["embeddings", "attention"])
def test_answer_segments_are_the_sums_of_their_tokens(attributor, space, tmp_path):
    """Rows per answer segment (e.g. per sentence): each is its tokens' rows summed, at one backward per segment;
    probabilities, faithfulness and raw attention read each segment's own tokens."""
    parts = attributor.explain(PROMPT, answer=ANSWER, space=space, target="answer", answer_segments=[(0, 1), (1, 3)],
                               **FIXED)
    tokens = attributor.explain(PROMPT, answer=ANSWER, space=space, **FIXED)
    assert parts.target_tokens == ["w5 ", "w6 w8"] and parts.segments() == [(0, 1), (1, 3)]
    torch.testing.assert_close(parts.scores[0], tokens.scores[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(parts.scores[1], tokens.scores[1:].sum(0), atol=1e-5, rtol=1e-4)
    assert parts.target_probs[1] == pytest.approx(tokens.target_probs[1] * tokens.target_probs[2], rel=1e-5)
    assert parts.cost["n_backward"] * 3 == tokens.cost["n_backward"] * 2
    parts.save(tmp_path / "parts.json")
    assert Explanation.load(tmp_path / "parts.json").segments() == [(0, 1), (1, 3)]
    # the whole prompt removed: a segment's probability is the product of its tokens' perturbed probabilities
    full = faithfulness(attributor, parts, ["comprehensiveness"], bins=(100,), removal="replace")["comprehensiveness@100"]
    each = faithfulness(attributor, tokens, ["comprehensiveness"], bins=(100,), removal="replace")["comprehensiveness@100"]
    p = torch.tensor(tokens.target_probs)
    assert float(full[0]) == pytest.approx(float(each[0]), rel=1e-4)
    assert float(full[1]) == pytest.approx(float(p[1] * p[2] - (p[1] - each[1]) * (p[2] - each[2])), rel=1e-4, abs=1e-7)
    raw = attributor.explain(PROMPT, answer=ANSWER, method="attention", target="answer", answer_segments=[(0, 1), (1, 3)])
    raw_tokens = attributor.explain(PROMPT, answer=ANSWER, method="attention")
    torch.testing.assert_close(raw.scores[1], raw_tokens.scores[1:].mean(0))
    for bad in ([(0, 2)], [(0, 2), (1, 3)], [(0, 0), (0, 3)], "x"):
        with pytest.raises(InvalidInputError, match="answer_segments"):
            attributor.explain(PROMPT, answer=ANSWER, target="answer", answer_segments=bad, method="saliency")
    with pytest.raises(InvalidInputError, match="target='answer'"):
        attributor.explain(PROMPT, answer=ANSWER, answer_segments=[(0, 3)], method="saliency")


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
