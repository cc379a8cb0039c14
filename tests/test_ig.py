"""Properties of IG and the engine on tiny random models: completeness, zero at the baseline, batching
invariance, causality, agreement with Captum, and the attention space's per-head bookkeeping."""

import pytest
import torch

from llm_attrib import Attributor
from llm_attrib.core.spaces import neutral_token_id
from llm_attrib.errors import InvalidInputError
from tiny_tokenizer import tiny_bert, tiny_llama, tiny_tokenizer

PROMPT = "w1 w7 w3 w9 w4 w12"


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(), tiny_tokenizer(64)


@pytest.fixture(scope="module")
def classifier():
    return tiny_bert(), tiny_tokenizer(64)


def explain(model_and_tokenizer, **kwargs):
    model, tokenizer = model_and_tokenizer
    kwargs.setdefault("show_progress", False)
    attributor = Attributor(model, tokenizer, show_progress=kwargs.pop("show_progress"))
    return attributor.explain(PROMPT, **kwargs)


@pytest.mark.parametrize("space", ["embeddings", "attention", "mask"])
def test_completeness_with_gauss_legendre(lm, space):
    exp = explain(lm, space=space, max_new_tokens=3, n_steps=32, tolerance=1e-4)
    assert exp.scores.shape == (3, 6 + 1 + 2)
    assert exp.completeness_error.max() < 1e-3


def test_completeness_improves_with_steps(lm):
    errors = [
        explain(lm, answer="w5 w6", quadrature="riemann-left", n_steps=n, tolerance=None).completeness_error.mean().item()
        for n in (4, 16, 64)
    ]
    assert errors[0] > errors[1] > errors[2]


def test_adaptive_steps_reach_tolerance_refining_only_what_needs_it(lm):
    exp = explain(lm, answer="w5 w6 w8", quadrature="riemann-middle", n_steps=2, tolerance=1e-3)
    assert exp.completeness_error.max() <= 1e-3
    steps = exp.params["n_steps"]
    steps = steps if isinstance(steps, list) else [steps] * 3
    assert min(steps) > 2
    for t, n in enumerate(steps):  # each target's scores are exactly a fixed-step run at its own count
        fixed = explain(lm, answer="w5 w6 w8", quadrature="riemann-middle", n_steps=n, tolerance=None)
        torch.testing.assert_close(exp.scores[t], fixed.scores[t])


def test_fixed_steps_without_tolerance(lm):
    exp = explain(lm, answer="w5 w6", n_steps=4, tolerance=None, quadrature="gauss-legendre")
    assert exp.params["n_steps"] == 4 and exp.cost["n_forward"] == 4 + 2  # path points and both ends
    guided = explain(lm, answer="w5 w6", n_steps=9, tolerance=None, n_probes=8)
    # probes (both ends among them), then 2 Boole panels per target sharing an edge (9 nodes); one forward
    # per distinct point (the targets' panels share at least their ends), one backward per node
    assert guided.params["n_steps"] == 9 and 9 + 9 <= guided.cost["n_forward"] <= 9 + 2 * 9 - 2
    assert guided.cost["n_backward"] == 2 * 9


@pytest.mark.parametrize("space", ["embeddings", "attention", "mask"])
def test_cost_counts_every_forward_of_the_call(lm, space):
    """n_forward counts the method's path points; n_forward_all every sequence the call ran (set-up reads of
    the space, its baseline check, the memory probe, the target probabilities), checked against a wrapper
    around the model's own forward."""
    model, tokenizer = lm
    attributor = Attributor(model, tokenizer, show_progress=False)

    def run():
        return attributor.explain(PROMPT, answer="w5 w6", space=space, n_steps=4, tolerance=None,
                                  quadrature="gauss-legendre")

    run()  # the once-per-model causality check is not part of later calls
    seen, forward = [], model.forward

    def counted(*args, **kwargs):
        inputs = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]
        seen.append(inputs.shape[0])
        return forward(*args, **kwargs)

    model.forward = counted
    try:
        exp = run()
    finally:
        del model.forward
    assert exp.cost["n_forward"] == 4 + 2
    assert exp.cost["n_forward_all"] == sum(seen) > exp.cost["n_forward"]


def test_input_equal_to_baseline_gives_zero(lm):
    model, tokenizer = lm
    attributor = Attributor(model, tokenizer, show_progress=False)
    seq = attributor.sequence(PROMPT, answer="w5 w6")
    x = model.get_input_embeddings()(seq.input_ids)[0].detach()
    exp = attributor.explain(PROMPT, answer="w5 w6", baseline=x.clone())
    assert exp.scores.abs().max() == 0


def test_batch_size_does_not_change_results(lm):
    a = explain(lm, answer="w5 w6 w8", internal_batch_size=32, n_steps=16)
    b = explain(lm, answer="w5 w6 w8", internal_batch_size=5, n_steps=16)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("space", ["embeddings", "attention", "mask"])
def test_targets_get_nothing_from_later_tokens(lm, space):
    exp = explain(lm, answer="w5 w6 w8", space=space)
    for t in range(2):  # the last target has no later input
        assert exp.scores[t, exp.n_prompt_tokens + t:].abs().max() == 0
        assert exp.scores[t, : exp.n_prompt_tokens + t].abs().max() > 0


def test_attention_heads_sum_to_tokens_and_layers_select(lm):
    exp = explain(lm, answer="w5 w6", space="attention")
    assert exp.head_scores.shape == (2, 2, 4, exp.scores.shape[1])
    torch.testing.assert_close(exp.head_scores.sum((1, 2)), exp.scores, atol=1e-5, rtol=1e-4)
    one = explain(lm, answer="w5 w6", space="attention", layers=-1)
    assert one.head_scores.shape[1] == 1 and one.params["layers"] == [1]
    assert one.completeness_error.max() < 1e-3


def test_mask_space_scores_sum_to_what_masking_the_tokens_costs(lm):
    """In the mask space the tokens' scores add up to log p(target) minus log p(target) with the moving tokens
    masked out of attention by the model's own attention mask: the baseline is a real run of the model."""
    model, tokenizer = lm
    spans = [(3, 8), (12, 14)]  # "w7 w3", "w4"
    exp = explain(lm, answer="w5 w6", space="mask", attribute_to=spans, tolerance=1e-4)
    seq = Attributor(model, tokenizer).sequence(PROMPT, answer="w5 w6")
    moving = torch.tensor([any(a < end and start < b for a, b in spans) for start, end in seq.offsets])
    assert moving.sum() == 3 and not moving[0]
    with torch.no_grad():
        runs = [model(input_ids=seq.input_ids, attention_mask=mask[None].long()).logits[0].log_softmax(-1)
                for mask in (torch.ones_like(moving), ~moving)]
    positions = torch.arange(seq.n_prompt - 1, seq.length - 1)
    full, masked = (run[positions, seq.target_ids] for run in runs)
    torch.testing.assert_close(exp.scores.sum(1), full - masked, atol=2e-4, rtol=1e-3)
    assert exp.scores[:, ~moving[: exp.scores.shape[1]]].abs().max() == 0


def test_mask_space_refuses_a_baseline_that_hides_every_key(lm):
    """A query that sees nothing at the baseline has no attention distribution: refused, model unchanged."""
    model, tokenizer = lm
    before = model.config._attn_implementation
    length = Attributor(model, tokenizer).sequence(PROMPT, answer="w5").length
    with pytest.raises(InvalidInputError, match="at least one visible token"):
        explain(lm, answer="w5", space="mask", baseline=torch.zeros(2, length))
    assert model.config._attn_implementation == before


def test_special_tokens_keep_their_embedding_in_the_baseline(lm):
    exp = explain(lm, answer="w5 w6")
    assert exp.input_tokens[0] == "<bos>"
    assert exp.scores[:, 0].abs().max() == 0


def test_matches_captum_layer_integrated_gradients(lm):
    captum = pytest.importorskip("captum.attr")
    model, tokenizer = lm
    exp = explain(lm, answer="w5 w6", n_steps=24, tolerance=None, quadrature="gauss-legendre")
    attributor = Attributor(model, tokenizer, show_progress=False)
    seq = attributor.sequence(PROMPT, answer="w5 w6")
    ids = seq.input_ids
    baseline_ids = torch.where(seq.keep, ids[0], torch.full_like(ids[0], neutral_token_id(tokenizer, model)))[None]
    for t in range(2):
        position = seq.n_prompt - 1 + t
        target = int(ids[0, position + 1])

        def forward(input_ids):
            return model(input_ids=input_ids).logits[:, position].log_softmax(-1)[:, target]

        lig = captum.LayerIntegratedGradients(forward, model.get_input_embeddings())
        reference = lig.attribute(ids, baselines=baseline_ids, n_steps=24, method="gausslegendre").sum(-1)[0]
        torch.testing.assert_close(exp.scores[t], reference[: seq.n_inputs].float(), atol=1e-5, rtol=1e-4)


def test_contrastive_target_is_the_logit_difference(lm):
    model, tokenizer = lm
    exp = explain(lm, answer="w5", target="contrastive", foil=9, n_steps=48)
    seq = Attributor(model, tokenizer).sequence(PROMPT, answer="w5")
    neutral = neutral_token_id(tokenizer, model)
    base_ids = torch.where(seq.keep, seq.input_ids[0], torch.full_like(seq.input_ids[0], neutral))[None]
    w5 = tokenizer.convert_tokens_to_ids("w5")
    with torch.no_grad():
        at_input, at_baseline = (model(input_ids=i).logits[0, -2] for i in (seq.input_ids, base_ids))
    gap = (at_input[w5] - at_input[9]) - (at_baseline[w5] - at_baseline[9])
    assert abs(exp.scores.sum().item() - gap.item()) < 1e-3 * max(1.0, abs(gap.item()))


@pytest.mark.parametrize("space", ["embeddings", "attention", "mask"])
def test_classifier_explains_a_class_with_completeness(classifier, space):
    exp = explain(classifier, space=space, target_class=2, tolerance=1e-3)
    assert exp.scores.shape == (1, len(exp.input_tokens))
    assert exp.target_ids == [2]
    assert exp.completeness_error.max() < 1e-3


def test_comparison_methods_share_the_engine(lm):
    saliency = explain(lm, answer="w5 w6", method="saliency")
    ixg = explain(lm, answer="w5 w6", method="input_x_gradient")
    attention = explain(lm, answer="w5 w6", method="attention", space="attention")
    assert (saliency.scores >= 0).all() and saliency.scores.abs().sum() > 0
    assert torch.isnan(ixg.completeness_error).all()
    rows = attention.scores.sum(1)
    torch.testing.assert_close(rows, torch.ones_like(rows), atol=1e-5, rtol=0)


def test_model_is_left_as_it_was(lm):
    model, _ = lm
    before = model.config._attn_implementation
    flags = [p.requires_grad for p in model.parameters()]
    explain(lm, answer="w5", space="attention")
    assert model.config._attn_implementation == before
    assert [p.requires_grad for p in model.parameters()] == flags
