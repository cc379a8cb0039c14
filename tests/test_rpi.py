"""RPI: baselines follow the diffusion formula, seeding, selection is the arg-best of psi, and the noiseless
single-baseline case is IG from the scaled baseline."""

import math

import pytest
import torch

from llm_attrib import Attributor, SelectionLeakWarning, UnknownNameError
from llm_attrib.methods.rpi import alpha_bar, diffusion_baselines
from tiny_tokenizer import tiny_llama, tiny_tokenizer

PROMPT, ANSWER = "w1 w7 w3 w9 w4 w12", "w5 w6"
FAST = dict(n_baselines=4, n_steps=8)


@pytest.fixture(scope="module")
def attributor():
    return Attributor(tiny_llama(n_layers=3), tiny_tokenizer(64), show_progress=False)


def test_linear_schedule_by_hand():
    abar = alpha_bar("linear", 3)
    betas = [1e-4, (1e-4 + 0.02) / 2, 0.02]
    expected = [1.0, 1 - betas[0], (1 - betas[0]) * (1 - betas[1]), math.prod(1 - b for b in betas)]
    torch.testing.assert_close(abar, torch.tensor(expected, dtype=torch.float64))
    assert abs(alpha_bar("linear", 500)[-1].item() - math.prod(1 - (1e-4 + i * (0.02 - 1e-4) / 499) for i in range(500))) < 1e-12


def test_cosine_schedule_decreases_to_zero():
    abar = alpha_bar("cosine", 500)
    assert abar[0] == 1 and (abar[1:] <= abar[:-1]).all() and abar[-1] < 1e-3


@pytest.mark.parametrize("noise_scale", ["paper", "code"])
@pytest.mark.parametrize("t", [500, 50])
def test_baseline_statistics_match_the_diffusion_formula(noise_scale, t):
    x = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
    draws, times = diffusion_baselines(x, 20000, torch.Generator().manual_seed(0), t=t, noise_scale=noise_scale)
    abar = alpha_bar("linear", 500)[t].item()
    std = math.sqrt(1 - abar) if noise_scale == "paper" else 1 - abar
    assert (times == t).all()
    torch.testing.assert_close(draws.mean(0), math.sqrt(abar) * x, atol=4 * std / math.sqrt(20000), rtol=0)
    torch.testing.assert_close(draws.std(0), torch.full_like(x, std), atol=0.02 * std, rtol=0)


def test_a_range_of_t_draws_each_baselines_time():
    _, times = diffusion_baselines(torch.zeros(3), 500, torch.Generator().manual_seed(1), t=(100, 200))
    assert times.min() >= 100 and times.max() <= 200 and len(times.unique()) > 50


def test_same_seed_same_result_other_seed_differs(attributor):
    a = attributor.explain(PROMPT, answer=ANSWER, method="rpi", space="attention", seed=3, **FAST)
    b = attributor.explain(PROMPT, answer=ANSWER, method="rpi", space="attention", seed=3, **FAST)
    c = attributor.explain(PROMPT, answer=ANSWER, method="rpi", space="attention", seed=4, **FAST)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.extra["candidates"], b.extra["candidates"])
    assert not torch.equal(a.extra["candidates"], c.extra["candidates"])


@pytest.mark.parametrize("psi, better", [("aopc_sufficiency", "min"), ("aopc_comprehensiveness", "max")])
def test_selection_is_the_arg_best_of_psi(attributor, psi, better):
    exp = attributor.explain(PROMPT, answer=ANSWER, method="rpi", space="attention", psi=psi, **FAST)
    psi_scores, candidates = exp.extra["psi"], exp.extra["candidates"]
    expected = psi_scores.argmin(0) if better == "min" else psi_scores.argmax(0)
    assert torch.equal(exp.extra["chosen"], expected)
    for t in range(len(exp.target_ids)):
        assert torch.equal(exp.scores[t], candidates[expected[t], t])


def test_per_example_selection_and_a_callable_psi(attributor):
    def prefers_last(problem, candidates):
        return torch.arange(candidates.shape[0], dtype=torch.float).unsqueeze(1).expand(-1, candidates.shape[1])

    prefers_last.higher_is_better = True
    exp = attributor.explain(PROMPT, answer=ANSWER, method="rpi", psi=prefers_last, select="per_example", **FAST)
    assert exp.extra["chosen"].tolist() == [3, 3]


def test_noiseless_single_baseline_is_ig_from_the_scaled_attention(attributor):
    rpi = attributor.explain(
        PROMPT, answer=ANSWER, method="rpi", space="attention", layers=[0, 2], n_baselines=1, n_steps=16,
        noise_multiplier=0.0, quadrature="gauss-legendre", aggregation="completeness",
    )
    seq = attributor.sequence(PROMPT, answer=ANSWER)
    from llm_attrib.core.spaces import AttentionSpace
    from llm_attrib.patching import attention_hooked

    space = AttentionSpace(layers=[0, 2])
    with attention_hooked(attributor.model):
        x = space.point(attributor.model, seq)
    scaled = torch.where(seq.keep, x, math.sqrt(alpha_bar("linear", 500)[-1].item()) * x)  # markup keys stay
    ig = attributor.explain(PROMPT, answer=ANSWER, method="ig", space="attention", layers=[0, 2], n_steps=16, baseline=scaled,
                            quadrature="gauss-legendre", tolerance=None)
    torch.testing.assert_close(rpi.scores, ig.scores, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(rpi.completeness_error, ig.completeness_error, atol=1e-5, rtol=1e-3)


def test_paper_aggregation_is_the_target_row_of_the_same_integral(attributor):
    """Default in the attention space: the target's own query row, mean over heads; the completeness error is
    the integral's (every row and head), the same as with aggregation="completeness"."""
    runs = {aggregation: attributor.explain(PROMPT, answer=ANSWER, method="rpi", aggregation=aggregation, n_baselines=1,
                                            noise_multiplier=0.0, seed=0)
            for aggregation in (None, "completeness")}
    paper, complete = runs[None], runs["completeness"]
    assert paper.params["aggregation"] == "paper" and paper.converged and complete.converged
    torch.testing.assert_close(paper.completeness_error, complete.completeness_error)
    n_layers, n_heads = paper.head_scores.shape[1:3]
    torch.testing.assert_close(paper.scores, paper.head_scores.mean((1, 2)))
    assert not torch.allclose(paper.scores, complete.scores)


def test_score_guided_candidates_converge_at_the_defaults(attributor):
    exp = attributor.explain(PROMPT, answer=ANSWER, method="rpi", n_baselines=4)
    assert exp.params["quadrature"] == "score-guided" and exp.converged
    assert exp.completeness_error.max() <= 0.01
    assert exp.extra["token_error"].shape == exp.scores.shape  # a per-score error bar beside completeness


def test_selection_uses_a_perturbation_the_evaluation_does_not(attributor):
    """RPI picks its map on replacement at other bins; evaluating it on the default deletion metrics is honest,
    while evaluating it on the selection's own perturbation warns that the number is an in-sample best."""
    import warnings

    from llm_attrib.metrics import faithfulness
    from llm_attrib.methods.rpi import SELECTION

    exp = attributor.explain(PROMPT, answer=ANSWER, method="rpi", selection_bins="as_given", **FAST)
    chosen = exp.extra["selected_on"]
    assert {k: chosen[k] for k in ("metric", "removal", "bins")} == {
        "metric": "aopc_sufficiency", "removal": "replace", "bins": list(SELECTION["bins"])}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        faithfulness(attributor, exp)
    with pytest.warns(SelectionLeakWarning, match="aopc_sufficiency"):
        faithfulness(attributor, exp, removal="replace", bins=SELECTION["bins"])


def test_the_result_says_which_token_counts_selection_shares_with_the_evaluation(attributor):
    """6 removable tokens: the evaluation's bins (1/5/10/20/50%, ceil) hold 1, 2 and 3 tokens, and the fixed
    selection bins (2/15/30/40%) 1, 1, 2, 3: all shared. The default moves them to counts no evaluation bin has."""
    from llm_attrib.methods.rpi import disjoint_bins
    from llm_attrib.metrics._perturb import bin_counts

    shared = attributor.explain(PROMPT, answer=ANSWER, method="rpi", selection_bins="as_given", **FAST)
    assert shared.extra["selected_on"]["counts_shared_with_default_evaluation"] == [1, 2, 3]
    honest = attributor.explain(PROMPT, answer=ANSWER, method="rpi", **FAST)
    chosen = honest.extra["selected_on"]
    assert chosen["selection_bins"] == "disjoint" and chosen["counts_shared_with_default_evaluation"] == []
    assert chosen["token_counts"] == bin_counts(tuple(chosen["bins"]), 6) == [4, 5]
    for n in range(4, 60):  # the returned percentages round to exactly the free counts
        bins, counts = disjoint_bins((2.0, 15.0, 30.0, 40.0), n)
        assert bin_counts(bins, n) == counts and not set(counts) & set(bin_counts((1, 5, 10, 20, 50), n))
    assert disjoint_bins((2.0, 15.0), 3) == ((2.0, 15.0), [1, 1])  # no free count below all 3: as given


def test_defaults_use_the_third_layer_from_the_end(attributor):
    exp = attributor.explain(PROMPT, answer=ANSWER, method="rpi", **FAST)
    assert exp.space == "attention" and exp.params["layers"] == [0]
    exp = attributor.explain(PROMPT, answer=ANSWER, method="rpi", space="attention", **FAST)
    assert exp.params["layers"] == [0]


@pytest.mark.parametrize("aggregation", ["completeness", "paper"])
def test_targets_see_no_later_token_despite_noise(attributor, aggregation):
    exp = attributor.explain(PROMPT, answer=ANSWER, method="rpi", space="attention", aggregation=aggregation, **FAST)
    assert exp.scores[0, exp.n_prompt_tokens:].abs().max() == 0


def test_paper_options_and_embedding_space(attributor):
    paper = attributor.explain(
        PROMPT, answer=ANSWER, method="rpi", space="attention", aggregation="paper", multiply_by="input",
        noise_scale="code", quadrature="riemann-inclusive", **FAST,
    )
    assert torch.isnan(paper.completeness_error).all() and torch.isfinite(paper.scores).all()
    embedded = attributor.explain(PROMPT, answer=ANSWER, method="rpi", space="embeddings", n_baselines=2)
    assert embedded.completeness_error.max() <= 0.01 and embedded.params["aggregation"] == "completeness"
    assert embedded.scores[:, 0].abs().max() == 0  # BOS keeps its embedding in every baseline


def test_rpi_errors(attributor):
    with pytest.raises(UnknownNameError, match="psi"):
        attributor.explain(PROMPT, answer=ANSWER, method="rpi", psi="accuracy", **FAST)
    with pytest.raises(UnknownNameError, match="schedule"):
        attributor.explain(PROMPT, answer=ANSWER, method="rpi", schedule="sigmoid", **FAST)


def test_the_harness_marks_a_method_selected_on_the_metric_it_reports(attributor):
    """The authors' setting (select on the evaluation's own metric) is allowed, warned about, and marked."""
    from llm_attrib.evaluate import evaluate
    from llm_attrib.metrics import ERASER_BINS

    examples = [{"prompt": PROMPT, "answer": ANSWER}]
    in_sample = {"method": "rpi", "label": "rpi-in-sample", "psi_options": {"removal": "delete", "bins": ERASER_BINS},
                 "selection_bins": "as_given", **FAST}
    with pytest.warns(SelectionLeakWarning):
        result = evaluate(attributor, examples, [in_sample, {"method": "rpi", **FAST}], show_progress=False)
    marked = result.rows.groupby("method")["selected_on_reported_metric"].all()
    assert marked["rpi-in-sample"] and not marked["rpi"]
    rows = result.rows.set_index(["method", "target_index"])
    for t in range(2):  # in-sample, the reported value is the best of the candidates: the leak the mark warns of
        chosen = rows.loc[("rpi-in-sample", t), "aopc_sufficiency"]
        assert chosen <= rows.loc[("rpi", t), "aopc_sufficiency"] + 1e-6


SPAN = (3, 11)  # "w7 w3 w9" of "w1 w7 w3 w9 w4 w12"


@pytest.mark.parametrize("options", [
    {},
    {"aggregation": "completeness"},
    {"multiply_by": "input", "quadrature": "riemann-inclusive"},
    {"multiply_by": "input_x_point", "quadrature": "riemann-inclusive", "noise_scale": "code"},
])
def test_tokens_outside_attribute_to_get_exactly_zero(attributor, options):
    """Only what moves is noised: the attention paid to tokens outside the spans (and to markup) stays at its
    value on every baseline, so under every integrand they score exactly 0, as under IG."""
    exp = attributor.explain(PROMPT, answer=ANSWER, method="rpi", attribute_to=[SPAN], **{**FAST, **options})
    inside = torch.tensor([SPAN[0] <= s < SPAN[1] and e > s for s, e in exp.input_offsets])
    inside[exp.n_prompt_tokens:] = False
    assert exp.scores[:, ~inside].abs().max() == 0 and exp.scores[:, inside].abs().max() > 0
    assert (exp.extra["candidates"][..., ~inside] == 0).all()


def test_the_reference_codes_integrand_weighs_each_gradient_by_its_point(attributor):
    """With one node at the explicand (riemann-right, 1 step) every integrand's point is A itself: per layer,
    head and key of the target's row, 'input_x_point' is 'input' times A, and 'input' is A times the gradient."""
    from llm_attrib.core.spaces import AttentionSpace
    from llm_attrib.patching import attention_hooked

    one = dict(n_baselines=1, n_steps=1, quadrature="riemann-right")
    plain = attributor.explain(PROMPT, answer=ANSWER, method="rpi", multiply_by="input", **one)
    weighed = attributor.explain(PROMPT, answer=ANSWER, method="rpi", multiply_by="input_x_point", **one)
    seq = attributor.sequence(PROMPT, answer=ANSWER)
    space = AttentionSpace(layers=plain.params["layers"])
    with attention_hooked(attributor.model):
        x = space.point(attributor.model, seq)
    rows = x[:, :, seq.target_positions, : plain.scores.shape[1]].permute(2, 0, 1, 3)  # (T, layers, H, L)
    torch.testing.assert_close(weighed.head_scores, plain.head_scores * rows, atol=1e-7, rtol=1e-5)
    assert weighed.params["multiply_by"] == "input_x_point" and torch.isnan(weighed.completeness_error).all()


def test_rag_explain_with_rpi_moves_only_the_documents(attributor):
    """rag.explain passes the documents as attribute_to: under RPI the question and template score exactly 0."""
    from llm_attrib import rag

    template = rag.Template(prompt="w10 {documents} w11 {question}", document="w12 {text}", titled="w12 {title} w13 {text}",
                            separator=" ")
    result = rag.explain(attributor.model, attributor.tokenizer, "w30 w31", ["w1 w2 w3", "w7 w8", "w20 w21"],
                         answer=" w50 w51", template=template, method="rpi", granularity="answer", verify=False,
                         show_progress=False, **FAST)
    assert abs(result.other_score) < 1e-6 and result.explanation.prompt_scores.abs().sum() > 0  # was 0.59
