"""IG2: GradPath and its attributions in closed form, completeness, reference selection, no NaN at zero
gradients, and the ablations."""

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
    assert exp.completeness_error.max() < 0.01
    assert (exp.extra["final_distance"] < exp.extra["initial_distance"]).all()
    assert exp.scores[:, 0].abs().max() == 0  # BOS never moves
    assert exp.scores[:, exp.n_prompt_tokens:].abs().max() == 0  # generated tokens do not move either


def test_the_papers_left_point_sum_is_available(lm):
    exp = lm.explain(PROMPT, answer=ANSWER, method="ig2", references=references_for(lm, 4), segment_steps=1)
    assert torch.isfinite(exp.scores).all()


def test_references_with_the_same_outcome_are_skipped(lm):
    seq = lm.sequence(PROMPT, answer=ANSWER)
    model, tokenizer = lm.model, lm.tokenizer
    examples = references_for(lm)
    same = []
    for example in examples:
        ids = tokenizer(example["prompt"])["input_ids"]
        with torch.no_grad():
            if int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()) == int(seq.target_ids[0]):
                same.append(example)
    differ = [e for e in examples if e not in same]
    exp = lm.explain(PROMPT, answer=ANSWER, method="ig2", references=examples, n_references=100, n_steps=4)
    assert exp.params["n_references"] == len(differ)
    exp = lm.explain(PROMPT, answer=ANSWER, method="ig2", references=examples, n_references=3, n_steps=4)
    assert exp.params["n_references"] == 3
    as_given = [e["prompt"] for e in examples[:2]]
    assert lm.explain(PROMPT, answer=ANSWER, method="ig2", references=as_given, n_steps=4).params["n_references"] == 2


def test_no_qualifying_reference_is_a_clear_error(lm):
    with pytest.raises(InvalidInputError, match="no reference qualifies"):  # the explicand's own outcome
        lm.explain(PROMPT, max_new_tokens=2, method="ig2", references=[{"prompt": PROMPT}])
    with pytest.raises(InvalidInputError, match="references"):
        lm.explain(PROMPT, answer=ANSWER, method="ig2")


def test_ablations(lm):
    straight = lm.explain(PROMPT, answer=ANSWER, method="ig2", references=references_for(lm, 4), path="straight")
    assert straight.completeness_error.max() < 0.01
    fixed = lm.explain(PROMPT, answer=ANSWER, method="ig2", toward="baseline")
    assert fixed.params["n_references"] == 1 and fixed.completeness_error.max() < 0.01


def test_classifier_uses_the_head_features():
    attributor = Attributor(tiny_bert(n_labels=2), tiny_tokenizer(64), show_progress=False)
    exp = attributor.explain(PROMPT, method="ig2", references=["w20 w21 w22", "w30 w31"], target_class=1)
    assert exp.completeness_error.max() < 0.01
    layer = attributor.explain(PROMPT, method="ig2", references=["w20 w21 w22"], target_class=1, rep_layer=1, n_steps=8)
    named = attributor.explain(PROMPT, method="ig2", references=["w20 w21 w22"], target_class=1,
                               rep_layer="bert.encoder.layer.1", n_steps=8)
    torch.testing.assert_close(layer.scores, named.scores)
    with pytest.raises(InvalidInputError, match="no module named"):
        attributor.explain(PROMPT, method="ig2", references=["w20"], rep_layer="nope")
