"""IG2: GradPath and its attributions in closed form, completeness, reference selection, no NaN at zero
gradients, and the ablations."""

import json

import pytest
import torch

from llm_attrib import Attributor, InvalidInputError
from llm_attrib.core.engine import integrate
from llm_attrib.core.paths import PolylinePaths
from llm_attrib.methods.ig2 import grad_path
from tiny_tokenizer import tiny_bert, tiny_llama, tiny_tokenizer

PROMPT, ANSWER = "w1 w7 w3 w9 w4 w12", "w5 w6"


@pytest.fixture(scope="module")
def lm():
    return Attributor(tiny_llama(), tiny_tokenizer(64), show_progress=False)


def identity(points):
    return points.flatten(1)


def test_grad_path_on_the_identity_walks_straight_at_constant_speed():
    x, reference = torch.tensor([3.0, 4.0]), torch.zeros(1, 2)
    vertices = grad_path(x, identity, reference, n_steps=4, step_size=1.0)
    direction = x / x.norm()  # the normalised gradient of ||gamma - 0||^2 points along gamma
    expected = torch.stack([x - j * direction for j in range(5)])
    torch.testing.assert_close(vertices[0], expected)


def test_l1_normalisation_makes_steps_of_unit_l1_length():
    x, reference = torch.tensor([3.0, -1.0, 2.0]), torch.zeros(1, 3)
    vertices = grad_path(x, identity, reference, n_steps=3, step_size=0.5, norm="l1")
    steps = (vertices[0, 1:] - vertices[0, :-1]).abs().sum(-1)
    torch.testing.assert_close(steps, torch.full((3,), 0.5))


def test_zero_gradient_gives_no_nan_and_no_move():
    x = torch.tensor([1.0, 2.0])
    vertices = grad_path(x, lambda p: torch.zeros(p.shape[0], 1) + 0 * p.sum(), torch.ones(1, 1), n_steps=3, step_size=1.0)
    assert torch.isfinite(vertices).all() and (vertices == x).all()


def test_movable_mask_and_clipping():
    x, reference = torch.tensor([[1.0, 1.0], [1.0, 1.0]]), torch.full((1, 4), -5.0)
    movable = torch.tensor([[0.0], [1.0]])
    vertices = grad_path(x, identity, reference, n_steps=10, step_size=1.0, movable=movable, clip=(-2.0, 2.0))
    assert (vertices[0, :, 0] == 1).all()
    assert vertices[0, -1, 1].tolist() == [-2.0, -2.0]


def test_attribution_of_a_linear_function_is_exact_in_closed_form():
    x, reference = torch.tensor([2.0, -1.0, 0.5]), torch.zeros(2, 3)
    reference[1] = torch.tensor([0.0, 1.0, 0.0])
    c = torch.tensor([1.0, 2.0, -3.0])
    vertices = grad_path(x, identity, reference, n_steps=5, step_size=0.3)
    integral = integrate(
        lambda points: (points * c).sum(-1, keepdim=True), PolylinePaths(vertices), x,
        lambda contribution, target: (contribution, None), internal_batch_size=4, show_progress=False,
    )
    expected = c * (x - vertices[:, -1])  # (refs, 3): F linear, so the left sum is exact
    torch.testing.assert_close(integral.tokens[:, 0], expected)
    assert integral.completeness_error().max() < 1e-5


def references_for(attributor, n=30):
    return [{"prompt": f"w{i} w{i + 3} w{i + 5} w{i + 1} w9 w12"} for i in range(4, 4 + n)]


def test_completeness_against_gradcf_on_a_tiny_lm(lm):
    exp = lm.explain(PROMPT, answer=ANSWER, method="ig2", references=references_for(lm))
    assert exp.completeness_error.max() < 0.01 and exp.converged
    assert (exp.extra["final_distance"] < exp.extra["initial_distance"]).all()
    assert exp.scores[:, 0].abs().max() == 0  # BOS never moves
    assert exp.scores[0, exp.n_prompt_tokens:].abs().max() == 0  # the first target does not see the answer
    assert exp.scores[1, exp.n_prompt_tokens].abs() > 0  # the second one sees the first answer token, which moves


def test_earlier_generated_tokens_carry_later_ones_on_the_recall_model():
    """recall: the second value word follows the first one in the context; the generated first word moves along
    the second target's GradPath and gets attribution, and every target is complete at the defaults."""
    import llm_attrib

    model, tokenizer = llm_attrib.zoo.load("recall")
    attributor = Attributor(model, tokenizer, show_progress=False)
    example = llm_attrib.zoo.examples("recall", n=1, seed=5)[0]
    references = [e["prompt"] for e in llm_attrib.zoo.examples("recall", n=8, seed=6)]
    exp = attributor.explain(example["prompt"], answer=example["answer"], method="ig2", references=references)
    assert exp.target_tokens == example["answer"].split()[: len(exp.target_tokens)]
    assert exp.completeness_error.max() <= 0.01 and exp.converged
    first_answer_token = exp.n_prompt_tokens
    assert exp.scores[1, first_answer_token].abs() > 0.01 * exp.scores[1].abs().max()
    assert exp.scores[0, first_answer_token:].abs().max() == 0


def test_the_papers_left_point_sum_is_available(lm):
    exp = lm.explain(PROMPT, answer=ANSWER, method="ig2", references=references_for(lm, 4),
                     quadrature="riemann-left", segment_steps=1, tolerance=None)
    assert torch.isfinite(exp.scores).all() and exp.params["quadrature"] == "riemann-left"


def test_each_target_uses_only_references_with_another_outcome(lm):
    seq = lm.sequence(PROMPT, answer=ANSWER)
    model, tokenizer = lm.model, lm.tokenizer
    examples = references_for(lm)
    outcomes = []
    for example in examples:
        ids = tokenizer(example["prompt"])["input_ids"]
        with torch.no_grad():
            outcomes.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    expected = [sum(o != t for o in outcomes) for t in seq.target_ids.tolist()]
    exp = lm.explain(PROMPT, answer=ANSWER, method="ig2", references=examples, n_references=100, n_steps=4)
    assert exp.params["n_references"] in (expected, expected[0]) and len(set(expected)) >= 1
    owners = exp.extra["reference_target"].tolist()
    assert [owners.count(t) for t in range(len(expected))] == expected
    exp = lm.explain(PROMPT, answer=ANSWER, method="ig2", references=examples, n_references=3, n_steps=4)
    assert exp.params["n_references"] == 3


def test_a_reference_with_the_targets_own_outcome_is_rejected(lm):
    with pytest.raises(InvalidInputError, match="no reference qualifies for target 0"):  # the explicand itself
        lm.explain(PROMPT, max_new_tokens=2, method="ig2", references=[PROMPT])
    with pytest.raises(InvalidInputError, match="references"):
        lm.explain(PROMPT, answer=ANSWER, method="ig2")


def test_ablations(lm):
    straight = lm.explain(PROMPT, answer=ANSWER, method="ig2", references=references_for(lm, 4), path="straight")
    assert straight.completeness_error.max() < 0.01
    fixed = lm.explain(PROMPT, answer=ANSWER, method="ig2", toward="baseline")
    assert fixed.params["n_references"] == 1 and fixed.completeness_error.max() < 0.01


def test_classifier_uses_the_head_features():
    attributor = Attributor(tiny_bert(n_labels=2), tiny_tokenizer(64), show_progress=False)
    references = ["w20 w21 w22", "w30 w31"]
    with torch.no_grad():
        classes = {int(attributor.model(**attributor.tokenizer(r, return_tensors="pt")).logits.argmax()) for r in references}
    assert len(classes) == 1
    other = 1 - classes.pop()  # the class the references are counterfactuals for
    exp = attributor.explain(PROMPT, method="ig2", references=references, target_class=other)
    assert exp.completeness_error.max() < 0.01
    with pytest.raises(InvalidInputError, match="no reference qualifies"):
        attributor.explain(PROMPT, method="ig2", references=references, target_class=1 - other)
    layer = attributor.explain(PROMPT, method="ig2", references=references[:1], target_class=other, rep_layer=1, n_steps=8)
    named = attributor.explain(PROMPT, method="ig2", references=references[:1], target_class=other,
                               rep_layer="bert.encoder.layer.1", n_steps=8)
    torch.testing.assert_close(layer.scores, named.scores)
    with pytest.raises(InvalidInputError, match="no module named"):
        attributor.explain(PROMPT, method="ig2", references=["w20"], rep_layer="nope")


def test_the_explicand_is_never_its_own_reference(lm):
    """With answer= forcing tokens the model would not produce, the explicand qualifies by outcome; as its own
    GradCF its path has length zero and its zero attribution would scale the map by (n - 1) / n. It is dropped,
    and the result says so."""
    references = references_for(lm, 3)
    alone = lm.explain(PROMPT, answer=ANSWER, method="ig2", references=references, n_steps=8)
    with_self = lm.explain(PROMPT, answer=ANSWER, method="ig2", references=[PROMPT] + references, n_steps=8)
    seq = lm.sequence(PROMPT, answer=ANSWER)
    with torch.no_grad():
        own = int(lm.model(input_ids=seq.input_ids[:, : seq.n_prompt]).logits[0, -1].argmax())
    assert own != seq.target_ids[0]  # the premise: by outcome alone, the prompt is a counterfactual for target 0
    torch.testing.assert_close(with_self.scores[0], alone.scores[0], atol=1e-6, rtol=1e-5)
    # for the second target (predicted after "w5") the prompt is another input, so a true counterfactual
    assert [u["references"] for u in with_self.extra["references_used"]] == [[1, 2, 3], [0, 1, 2, 3]]
    dropped = [d for d in with_self.extra["references_dropped"] if d["target"] == 0]
    assert dropped[0]["reference"] == 0 and dropped[0]["reason"] == "the explicand itself"
    from llm_attrib import Explanation

    loaded = Explanation.from_dict(json.loads(json.dumps(with_self.to_dict())))
    assert loaded.extra["references_dropped"] == with_self.extra["references_dropped"]


def test_a_classifier_class_other_than_the_predicted_one_drops_the_explicand():
    attributor = Attributor(tiny_bert(n_labels=2), tiny_tokenizer(64), show_progress=False)
    with torch.no_grad():
        predicted = int(attributor.model(**attributor.tokenizer(PROMPT, return_tensors="pt")).logits.argmax())
    with pytest.raises(InvalidInputError, match="the explicand itself"):
        attributor.explain(PROMPT, method="ig2", references=[PROMPT], target_class=1 - predicted, n_steps=4)


def test_a_saved_gradpath_reproduces_the_result_without_references(lm):
    first = lm.explain(PROMPT, answer=ANSWER, method="ig2", references=references_for(lm, 3), n_steps=8,
                       keep_gradpath=True)
    path = first.extra["gradpath"]
    assert path["vertices"].shape[:2] == (len(path["target"]), 9)
    again = lm.explain(PROMPT, answer=ANSWER, method="ig2", gradpath=path)
    assert torch.equal(again.scores, first.scores) and again.params["gradpath"] == "given"
    with pytest.raises(InvalidInputError, match="another"):
        lm.explain("w2 w7 w3 w9 w4 w12", answer=ANSWER, method="ig2", gradpath=path)


def test_a_per_token_error_estimate_comes_with_the_scores(lm):
    """Completeness bounds the sum; the estimate (|Boole - nested Simpson| per token, per reference averaged)
    sits beside it, one per score, and is larger than the actual error against a fine reference rule."""
    exp = lm.explain(PROMPT, answer=ANSWER, method="ig2", references=references_for(lm, 2), n_steps=4,
                     keep_gradpath=True)
    fine = lm.explain(PROMPT, answer=ANSWER, method="ig2", gradpath=exp.extra["gradpath"],
                      quadrature="gauss-legendre", segment_steps=16)
    error = exp.extra["token_error"]
    assert error.shape == exp.scores.shape and (error >= 0).all()
    assert ((exp.scores - fine.scores).abs() <= error + 1e-6).all()
