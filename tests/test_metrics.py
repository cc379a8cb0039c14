"""llm_attrib.metrics: batched perturbations equal a one-forward-per-perturbation reference; metric definitions
checked by hand; plausibility against brute-force definitions."""

from __future__ import annotations

import math
import random

import pytest
import torch
import transformers as tf
from tiny_tokenizer import tiny_tokenizer

from llm_attrib import Attributor, Explanation
from llm_attrib.errors import InvalidInputError, UnknownNameError
from llm_attrib.metrics import (
    ERASER_BINS,
    FERRET,
    FERRET_BINS,
    METRICS,
    Perturbed,
    average_precision,
    faithfulness,
    perturb,
    plausibility,
    score_candidates,
    sequence_of,
)
from llm_attrib.metrics._perturb import bin_counts, rank_tokens
from llm_attrib.metrics.faithfulness import AopcComprehensiveness, AopcSufficiency, aopc, curve_area

PROMPT = "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11"
ANSWER = [20, 21, 22]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(64)


@pytest.fixture(scope="module")
def lm(tokenizer):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = tf.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=64, initializer_range=0.2, pad_token_id=0,
        bos_token_id=2, eos_token_id=3,
    )
    return Attributor(tf.LlamaForCausalLM(config).eval(), tokenizer, show_progress=False)


@pytest.fixture(scope="module")
def classifier(tokenizer):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = tf.BertConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_labels=3, initializer_range=0.2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        max_position_embeddings=64,
    )
    return Attributor(tf.BertForSequenceClassification(config).eval(), tokenizer, show_progress=False)


@pytest.fixture(scope="module", params=["lm", "classifier"])
def case(request, lm, classifier):
    """(attributor, sequence, random scores (T, N) with ties and a large score on the special token)."""
    attr = lm if request.param == "lm" else classifier
    seq = attr.sequence(PROMPT, answer=ANSWER) if request.param == "lm" else attr.sequence(PROMPT, target_class=1)
    generator = torch.Generator().manual_seed(1)
    scores = torch.randint(-3, 4, (seq.n_targets, seq.n_inputs), generator=generator).float()  # many ties
    scores[:, 0] = 100.0  # BOS: must still never be removed
    return attr, seq, scores


# --- brute-force reference: one unpadded forward per perturbation -------------------------------------------


def top_set(scores_row, removable, count):
    """The `count` removable prompt positions with the highest score, ties by position."""
    candidates = [j for j in range(len(removable)) if removable[j]]
    return set(sorted(candidates, key=lambda j: (-float(scores_row[j]), j))[:count])


def brute_probability(attr, seq, t, keep, removal, replacement):
    ids = seq.input_ids[0].tolist()
    n_prompt = seq.n_prompt
    rest = [] if seq.is_classifier else ids[n_prompt : n_prompt + t]
    prompt = ids[:n_prompt]
    if removal == "delete":
        new, attention = [i for i, k in zip(prompt, keep) if k] + rest, None
    elif removal == "replace":
        new, attention = [i if k else replacement for i, k in zip(prompt, keep)] + rest, None
    else:
        new, attention = prompt + rest, [int(k) for k in keep] + [1] * len(rest)
    inputs = {"input_ids": torch.tensor([new])}
    if attention is not None:
        inputs["attention_mask"] = torch.tensor([attention])
    with torch.no_grad():
        logits = attr.model(**inputs).logits
    logits = logits[0] if seq.is_classifier else logits[0, -1]
    return float(logits.softmax(-1)[seq.target_ids[t]])


def brute_perturbed(attr, seq, scores, bins, removal, replacement):
    """(T, K) probabilities with top-k removed, only top-k kept, top-k replaced."""
    n_prompt = seq.n_prompt
    removable = (~seq.keep[:n_prompt]).tolist()
    n = sum(removable)
    counts = [math.ceil(b * n / 100) for b in bins]
    out = {"removed": [], "kept": [], "replaced": []}
    for t in range(seq.n_targets):
        rows = {key: [] for key in out}
        for count in counts:
            top = top_set(scores[t, :n_prompt], removable, count)
            without = [j not in top for j in range(n_prompt)]
            only = [j in top or not removable[j] for j in range(n_prompt)]
            rows["removed"].append(brute_probability(attr, seq, t, without, removal, replacement))
            rows["kept"].append(brute_probability(attr, seq, t, only, removal, replacement))
            rows["replaced"].append(brute_probability(attr, seq, t, without, "replace", replacement))
        for key in out:
            out[key].append(rows[key])
    return {key: torch.tensor(value) for key, value in out.items()}


# --- the perturbation core ------------------------------------------------------------------------------------


@pytest.mark.parametrize("removal", ["delete", "replace", "mask"])
def test_batched_equals_one_forward_per_perturbation(case, removal):
    attr, seq, scores = case
    bins = (1, 10, 25, 50, 100)
    unk = attr.tokenizer.unk_token_id
    got = perturb(attr, seq, scores[None], ("removed", "kept", "replaced"), bins=bins, removal=removal, batch_size=7)
    want = brute_perturbed(attr, seq, scores, bins, removal, unk)
    for key in want:
        torch.testing.assert_close(getattr(got, key)[0], want[key], atol=2e-5, rtol=1e-4)


def test_batch_size_does_not_change_results(case):
    attr, seq, scores = case
    one = score_candidates(attr, seq, scores[None], list(METRICS), batch_size=1, curve_bins=(10, 50))
    many = score_candidates(attr, seq, scores[None], list(METRICS), batch_size=1000, curve_bins=(10, 50))
    for key in one:
        torch.testing.assert_close(one[key], many[key], atol=2e-6, rtol=1e-5)


def test_candidates_equal_one_explanation_at_a_time(case):
    attr, seq, scores = case
    candidates = torch.stack([scores, -scores, torch.randn_like(scores), scores])  # (R, T, N)
    together = score_candidates(attr, seq, candidates, ["aopc_comprehensiveness", "sufficiency", "insertion_auc"])
    for r in range(candidates.shape[0]):
        alone = faithfulness(attr, (seq, candidates[r]), ["aopc_comprehensiveness", "sufficiency", "insertion_auc"])
        for key, value in alone.items():
            assert together[key].shape == (candidates.shape[0], seq.n_targets)
            torch.testing.assert_close(together[key][r], value, atol=2e-6, rtol=1e-5)


class Recorder(torch.nn.Module):
    """Wraps a model and records (input_ids, attention_mask) of every forward."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        self.calls.append((input_ids, attention_mask))
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


@pytest.mark.parametrize("removal", ["delete", "replace", "mask"])
def test_special_tokens_are_never_removed(case, removal):
    attr, seq, scores = case
    recorder = Recorder(attr.model)
    perturb((recorder, attr.tokenizer), seq, scores[None], ("removed", "kept", "deletion"), bins=FERRET_BINS, removal=removal)
    bos = attr.tokenizer.bos_token_id
    batched = recorder.calls[1:]  # the first call is the unperturbed forward
    assert batched
    for ids, attention in batched:
        assert (ids[:, 0] == bos).all()
        assert (attention[:, 0] == 1).all()


def test_ranking_puts_special_tokens_last_and_breaks_ties_by_position():
    scores = torch.tensor([9.0, 1.0, 3.0, 3.0, -math.inf, 2.0])
    removable = torch.tensor([False, True, True, True, True, True])
    rank = rank_tokens(scores, removable)
    assert rank.tolist() == [5, 3, 0, 1, 4, 2]


def test_bin_counts_are_exact_ceilings():
    assert bin_counts((10, 20, 30), 30) == [3, 6, 9]  # 0.1 * 30 = 3.0000000000000004 in floats
    assert bin_counts(ERASER_BINS, 11) == [1, 1, 2, 3, 6]
    assert bin_counts((0.5, 100), 7) == [1, 7]


def test_keeping_everything_gives_zero_sufficiency(case):
    attr, seq, scores = case
    values = faithfulness(attr, (seq, scores), ["sufficiency", "comprehensiveness"], bins=(50, 100))
    assert (values["sufficiency@100"] == 0).all()
    perturbed = perturb(attr, seq, scores[None], ("removed", "deletion"), bins=(100,))
    torch.testing.assert_close(values["comprehensiveness@100"], perturbed.p - perturbed.removed[0, :, 0])
    assert (perturbed.deletion[0, :, 0] == perturbed.p).all()  # nothing removed at x = 0
    torch.testing.assert_close(perturbed.deletion[0, :, -1], perturbed.removed[0, :, 0])  # all removed at x = 1


def test_curves_cover_every_token_by_default(case):
    attr, seq, scores = case
    perturbed = perturb(attr, seq, scores[None], ("deletion", "insertion"))
    n = int((~seq.keep[: seq.n_prompt]).sum())
    assert perturbed.curve_x.tolist() == pytest.approx([i / n for i in range(n + 1)])
    assert perturbed.insertion.shape == (1, seq.n_targets, n + 1)
    assert (perturbed.insertion[0, :, -1] == perturbed.p).all()
    values = faithfulness(attr, (seq, scores), ["deletion_auc", "insertion_auc"])
    torch.testing.assert_close(values["insertion_auc"], curve_area(perturbed.curve_x, perturbed.insertion[0]))


def test_explanation_round_trip(lm, classifier):
    for attr, kwargs in ((lm, {"answer": ANSWER}), (classifier, {"target_class": 2})):
        exp = attr.explain(PROMPT, method="saliency", **kwargs)
        seq = attr.sequence(PROMPT, **kwargs)
        rebuilt = sequence_of(exp, attr.model, attr.tokenizer)
        assert torch.equal(rebuilt.input_ids, seq.input_ids) and torch.equal(rebuilt.keep, seq.keep)
        assert rebuilt.n_prompt == seq.n_prompt and rebuilt.is_classifier == seq.is_classifier
        from_exp = faithfulness(attr, exp)
        from_pair = faithfulness((attr.model, attr.tokenizer), (seq, exp.scores))
        assert from_exp.keys() == from_pair.keys()
        for key in from_exp:
            assert from_exp[key].shape == (seq.n_targets,)
            torch.testing.assert_close(from_exp[key], from_pair[key])


# --- metric definitions on toys -----------------------------------------------------------------------------------


def toy_perturbed():
    p = torch.tensor([0.8, 0.5])
    removed = torch.tensor([[[0.7, 0.6, 0.4, 0.2, 0.1], [0.5, 0.5, 0.5, 0.4, 0.3]]])  # (1, T, 5)
    kept = torch.tensor([[[0.1, 0.2, 0.3, 0.5, 0.8], [0.5, 0.4, 0.3, 0.2, 0.1]]])
    return Perturbed(p=p, bins=ERASER_BINS, n_removable=10, removed=removed, kept=kept)


def test_aopc_normalisations_by_hand():
    perturbed = toy_perturbed()
    # comprehensiveness per bin: target 0 0.1, 0.2, 0.4, 0.6, 0.7 (sum 2.0); target 1 0, 0, 0, 0.1, 0.2 (sum 0.3)
    eraser = AopcComprehensiveness("bins_plus_one").values(perturbed)["aopc_comprehensiveness"][0]
    mean = AopcComprehensiveness("mean").values(perturbed)["aopc_comprehensiveness"][0]
    torch.testing.assert_close(eraser, torch.tensor([2.0 / 6, 0.3 / 6]))
    torch.testing.assert_close(mean, torch.tensor([2.0 / 5, 0.3 / 5]))
    # sufficiency target 1: 0, 0.1, 0.2, 0.3, 0.4 -> sum 1.0
    sufficiency = AopcSufficiency("bins_plus_one").values(perturbed)["aopc_sufficiency"][0]
    torch.testing.assert_close(sufficiency, torch.tensor([(0.7 + 0.6 + 0.5 + 0.3 + 0.0) / 6, 1.0 / 6]))
    torch.testing.assert_close(aopc(torch.ones(3), "bins_plus_one"), torch.tensor(0.75))


def test_aopc_conventions_are_named_by_what_they_compute():
    """The ERASER paper's sum/(|B|+1) is 5/6 of ERASER's released scorer's mean with its 5 bins; the old name
    "eraser", which fitted both, is refused with a pointer to the two."""
    perturbed = toy_perturbed()
    paper = AopcComprehensiveness("bins_plus_one").values(perturbed)["aopc_comprehensiveness"]
    scorer = AopcComprehensiveness("mean").values(perturbed)["aopc_comprehensiveness"]
    torch.testing.assert_close(paper, scorer * 5 / 6)
    assert AopcSufficiency().normalisation == "bins_plus_one"
    with pytest.raises(UnknownNameError, match="'bins_plus_one'.*'mean'"):
        AopcComprehensiveness("eraser")


def test_update_and_compute_average_over_examples():
    metric = AopcComprehensiveness("mean")
    assert metric.higher_is_better and not AopcSufficiency().higher_is_better
    first = metric.update(toy_perturbed())["aopc_comprehensiveness"]
    metric.update(toy_perturbed())
    assert metric.compute()["aopc_comprehensiveness"] == pytest.approx(float(first.mean()))
    metric.reset()
    assert metric.compute() == {}


def test_curve_area_is_trapezoid_over_unit_interval():
    x = torch.tensor([0.0, 0.5, 1.0])
    assert float(curve_area(x, torch.tensor([1.0, 1.0, 1.0]))) == pytest.approx(1.0)
    assert float(curve_area(x, torch.tensor([1.0, 0.0, 0.0]))) == pytest.approx(0.25)


def test_log_odds_definition(lm):
    seq = lm.sequence(PROMPT, answer=ANSWER)
    scores = torch.randn(seq.n_targets, seq.n_inputs)
    values = faithfulness(lm, (seq, scores), ["log_odds"], bins=(20,))
    perturbed = perturb(lm, seq, scores[None], ("replaced",), bins=(20,))
    torch.testing.assert_close(values["log_odds@20"], perturbed.replaced[0, :, 0].log() - perturbed.p.log())


# --- plausibility ---------------------------------------------------------------------------------------------------


def brute_average_precision(scores, labels):
    """sum over distinct thresholds (descending) of (recall gain) x precision."""
    positives = sum(labels)
    total, previous_recall = 0.0, 0.0
    for threshold in sorted(set(scores), reverse=True):
        chosen = [l for s, l in zip(scores, labels) if s >= threshold]
        recall = sum(chosen) / positives
        total += (recall - previous_recall) * sum(chosen) / len(chosen)
        previous_recall = recall
    return total


def test_average_precision_matches_brute_force():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 12)
        scores = [float(rng.randint(-3, 3)) for _ in range(n)]  # ties
        labels = [rng.random() < 0.4 for _ in range(n)]
        got = average_precision(torch.tensor(scores), torch.tensor(labels))
        if not any(labels):
            assert got.isnan()
        else:
            assert float(got) == pytest.approx(brute_average_precision(scores, labels), abs=1e-6)
    batched = average_precision(torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]]), torch.tensor([True, False, False]))
    torch.testing.assert_close(batched, torch.tensor([1.0, 1.0 / 3]))


def toy_explanation(scores):
    """'<bos> w1 w2 w3 =>': evidence w2, template '=>'; one target."""
    text = "w1 w2 w3 => w9"
    offsets = [(0, 0), (0, 2), (3, 5), (6, 8), (9, 11)]
    return Explanation(
        scores=torch.tensor([scores]), input_tokens=["<bos>", "w1", "w2", "w3", "=>"], input_offsets=offsets,
        input_ids=[2, 5, 6, 7, 8], target_tokens=["w9"], target_ids=[13], target_probs=[0.5],
        completeness_error=torch.tensor([float("nan")]), text=text, n_prompt_tokens=5, method="toy", space="embeddings",
    )


def test_hit_at_k_excludes_template_and_special_tokens():
    exp = toy_explanation([9.0, 0.1, 0.5, 0.2, 5.0])  # BOS and the template carry the most
    evidence, template = [(3, 5)], [(9, 11)]
    assert plausibility(exp, evidence)["hit@1"].tolist() == [0.0]  # the template token wins
    values = plausibility(exp, evidence, template)
    assert values["hit@1"].tolist() == [1.0]
    assert values["auprc"].tolist() == [1.0]
    exp = toy_explanation([9.0, 0.6, 0.5, 0.2, 5.0])
    assert plausibility(exp, evidence, template, k=1)["hit@1"].tolist() == [0.0]
    assert plausibility(exp, evidence, template, k=2)["hit@2"].tolist() == [1.0]
    assert plausibility(exp, evidence, template)["auprc"].tolist() == pytest.approx([0.5])
    assert plausibility(exp, [(0, 1)], template)["auprc"].tolist() == pytest.approx([1.0])  # partial overlap counts
    assert plausibility(exp, [(8, 11)], template)["hit@1"].isnan().all()  # only template evidence: undefined


# --- errors ---------------------------------------------------------------------------------------------------------


def test_errors_are_clear(lm):
    seq = lm.sequence(PROMPT, answer=ANSWER)
    scores = torch.randn(seq.n_targets, seq.n_inputs)
    with pytest.raises(UnknownNameError, match="unknown metric 'comprehensivness'"):
        faithfulness(lm, (seq, scores), ["comprehensivness"])
    with pytest.raises(UnknownNameError, match="unknown removal"):
        faithfulness(lm, (seq, scores), removal="drop")
    with pytest.raises(UnknownNameError, match="normalisation"):
        faithfulness(lm, (seq, scores), normalisation="sum")
    for bins in [(0, 10), (10, 101), (), (-5,)]:
        with pytest.raises(InvalidInputError, match="bins"):
            faithfulness(lm, (seq, scores), bins=bins)
    with pytest.raises(InvalidInputError, match=r"shape \(R, 3, N\)"):
        faithfulness(lm, (seq, scores[:, :-1]))
    with pytest.raises(InvalidInputError, match=r"shape \(R, 3, N\)"):
        score_candidates(lm, seq, scores[:2][None])
    with pytest.raises(InvalidInputError, match="NaN"):
        faithfulness(lm, (seq, torch.full_like(scores, float("nan"))))
    with pytest.raises(InvalidInputError, match="batch_size"):
        faithfulness(lm, (seq, scores), batch_size=0)
    with pytest.raises(InvalidInputError, match="replacement"):
        faithfulness(lm, (seq, scores), removal="replace", replacement=10_000)
    with pytest.raises(InvalidInputError, match="evidence span"):
        plausibility(toy_explanation([0.0] * 5), [(5, 100)])


def test_all_perturbations_of_an_example_share_batched_forwards(case):
    attr, seq, scores = case
    recorder = Recorder(attr.model)
    needs = ("removed", "kept", "deletion", "insertion")
    perturb((recorder, attr.tokenizer), seq, torch.stack([scores, -scores]), needs, bins=FERRET_BINS, batch_size=10_000)
    assert len(recorder.calls) == 2  # the unperturbed input, then every perturbation of both candidates at once
    recorder.calls.clear()
    perturb((recorder, attr.tokenizer), seq, scores[None], needs + ("replaced",), batch_size=10_000)
    assert len(recorder.calls) == 3  # log-odds replaces tokens: one more batch for that removal mode


def test_deleting_the_whole_prompt_of_a_language_model_without_bos_is_refused():
    torch.manual_seed(0)
    config = tf.LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=64,
    )
    attr = Attributor(tf.LlamaForCausalLM(config).eval(), tiny_tokenizer(64, bos=False), show_progress=False)
    seq = attr.sequence("w1 w2 w3", answer=[10, 11])
    scores = torch.randn(seq.n_targets, seq.n_inputs)
    assert faithfulness(attr, (seq, scores), ["comprehensiveness"], bins=(50,))["comprehensiveness@50"].shape == (2,)
    with pytest.raises(InvalidInputError, match="deletes every prompt token"):
        faithfulness(attr, (seq, scores), ["comprehensiveness"], bins=(100,))
    assert faithfulness(attr, (seq, scores), ["comprehensiveness"], bins=(100,), removal="replace")


# --- ferret's conventions: floor rounding, only positive tokens, AOPC over distinct non-empty bins ---------------


def test_floor_rounding_counts_by_hand(case):
    assert bin_counts((10, 20, 30, 45, 100), 7, "floor") == [0, 1, 2, 3, 7]
    assert bin_counts((10, 20, 30, 45, 100), 7) == [1, 2, 3, 4, 7]
    assert bin_counts((10, 20, 30), 30, "floor") == [3, 6, 9]  # exact, not 0.30000000000000004 * 30
    assert bin_counts(FERRET_BINS, 9, "floor") == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    attr, seq, scores = case
    n = int((~seq.keep[: seq.n_prompt]).sum())  # 11 words
    perturbed = perturb(attr, seq, scores[None], ("removed",), bins=FERRET_BINS, bin_rounding="floor")
    assert perturbed.sizes.shape == (1, seq.n_targets, 10)
    assert (perturbed.sizes == torch.tensor([int(k * n // 10) for k in range(1, 11)])).all()
    ceil = perturb(attr, seq, scores[None], ("removed",), bins=FERRET_BINS)
    assert (ceil.sizes == torch.tensor([math.ceil(k * n / 10) for k in range(1, 11)])).all()
    with pytest.raises(UnknownNameError, match="bin_rounding"):
        perturb(attr, seq, scores[None], ("removed",), bin_rounding="round")


def test_distinct_normalisation_skips_empty_and_repeated_bins_by_hand():
    p = torch.tensor([0.8, 0.5, 0.6])
    removed = torch.tensor([[[0.8, 0.7, 0.7, 0.4, 0.4], [0.5, 0.5, 0.4, 0.3, 0.2], [0.6, 0.6, 0.6, 0.6, 0.6]]])
    kept = torch.tensor([[[0.2, 0.3, 0.3, 0.6, 0.6], [0.1, 0.2, 0.3, 0.4, 0.5], [0.1, 0.1, 0.1, 0.1, 0.1]]])
    sizes = torch.tensor([[[0, 1, 1, 3, 3], [1, 2, 3, 4, 5], [0, 0, 0, 0, 0]]])  # (1, T, 5)
    perturbed = Perturbed(p=p, bins=FERRET_BINS[:5], n_removable=5, removed=removed, kept=kept, sizes=sizes)
    comp = AopcComprehensiveness("distinct").values(perturbed)["aopc_comprehensiveness"][0]
    suff = AopcSufficiency("distinct").values(perturbed)["aopc_sufficiency"][0]
    # target 0: bins 1 and 3 only (bin 0 empty, 2 and 4 repeat); target 1: all five; target 2: none -> 0 / 1
    torch.testing.assert_close(comp, torch.tensor([(0.1 + 0.4) / 2, (0 + 0 + 0.1 + 0.2 + 0.3) / 5, 0.0]))
    torch.testing.assert_close(suff, torch.tensor([(0.5 + 0.2) / 2, (0.4 + 0.3 + 0.2 + 0.1 + 0.0) / 5, 1.0]))
    mean = AopcComprehensiveness("mean").values(perturbed)["aopc_comprehensiveness"][0]
    torch.testing.assert_close(mean, torch.tensor([1.0 / 5, 0.6 / 5, 0.0]))
    # Without sizes, "distinct" reads the ceil counts of the bins: ERASER bins of 10 tokens are 1, 1, 1, 2, 5.
    toy = toy_perturbed()
    got = AopcComprehensiveness("distinct").values(toy)["aopc_comprehensiveness"][0]
    torch.testing.assert_close(got, torch.tensor([(0.1 + 0.6 + 0.7) / 3, (0.0 + 0.1 + 0.2) / 3]))


def brute_only_positive(attr, seq, scores, bins, removal):
    """(T, K) removed / kept probabilities, with floor counts capped at the positive removable tokens."""
    n_prompt = seq.n_prompt
    removable = (~seq.keep[:n_prompt]).tolist()
    n = sum(removable)
    out = {"removed": [], "kept": []}
    for t in range(seq.n_targets):
        positive = [r and float(scores[t, j]) > 0 for j, r in enumerate(removable)]
        removed, kept = [], []
        for b in bins:
            count = min(math.floor(b * n / 100 + 1e-9), sum(positive))
            top = top_set(scores[t, :n_prompt], positive, count)
            assert all(float(scores[t, j]) > 0 for j in top)
            removed.append(brute_probability(attr, seq, t, [j not in top for j in range(n_prompt)], removal, None))
            kept.append(brute_probability(attr, seq, t, [j in top or not removable[j] for j in range(n_prompt)], removal, None))
        out["removed"].append(removed)
        out["kept"].append(kept)
    return {key: torch.tensor(value) for key, value in out.items()}


@pytest.mark.parametrize("removal", ["delete", "mask"])
def test_only_positive_matches_one_forward_per_perturbation(case, removal):
    attr, seq, scores = case
    got = perturb(attr, seq, scores[None], ("removed", "kept"), bins=FERRET_BINS, removal=removal,
                  bin_rounding="floor", only_positive=True, batch_size=5)
    want = brute_only_positive(attr, seq, scores, FERRET_BINS, removal)
    for key in want:
        torch.testing.assert_close(getattr(got, key)[0], want[key], atol=2e-5, rtol=1e-4)
    n_positive = ((scores[:, : seq.n_prompt] > 0) & ~seq.keep[: seq.n_prompt]).sum(-1)
    assert (got.sizes[0] <= n_positive[:, None]).all() and (got.sizes[0].amax(-1) == n_positive).all()


def test_only_positive_never_removes_a_non_positive_token(case):
    attr, seq, scores = case
    row = scores[0].clone()  # the same map for every target, so each recorded row belongs to this map
    row[1:4] = torch.tensor([0.0, -1.0, -0.5])
    row[4:] = row[4:].abs() + 0.5  # the other words are positive
    same = row.expand(seq.n_targets, -1)
    recorder = Recorder(attr.model)
    unk = attr.tokenizer.unk_token_id
    perturb((recorder, attr.tokenizer), seq, same[None], ("removed", "replaced", "deletion"), bins=(50, 90, 100),
            removal="replace", replacement=unk, only_positive=True)
    positive = (row[: seq.n_prompt] > 0) & ~seq.keep[: seq.n_prompt]
    replaced_any = torch.zeros(seq.n_prompt, dtype=torch.bool)
    for ids, _ in recorder.calls[1:]:
        replaced = ids[:, : seq.n_prompt] == unk  # (B, P)
        assert not (replaced & ~positive).any()
        replaced_any |= replaced.any(0)
    assert (replaced_any == positive).all()  # 100% removes every positive token, and only those


def test_no_positive_score_gives_ferrets_empty_values(case):
    attr, seq, scores = case
    negative = -scores.abs() - 1
    negative[:, 0] = 100.0  # the special token's score does not count
    values = faithfulness(attr, (seq, negative), ["comprehensiveness", "aopc_comprehensiveness", "aopc_sufficiency"],
                          **FERRET)
    assert (values["aopc_comprehensiveness"] == 0).all() and (values["aopc_sufficiency"] == 1).all()
    assert (values["comprehensiveness@100"] == 0).all()  # nothing may be removed


def test_options_with_candidates_equal_one_at_a_time(case):
    attr, seq, scores = case
    candidates = torch.stack([scores, -scores, torch.randn_like(scores), scores.clamp_max(0), scores])  # (R, T, N)
    metrics = ["aopc_comprehensiveness", "aopc_sufficiency", "sufficiency", "deletion_auc"]
    options = dict(FERRET, curve_bins=(10, 30, 60))
    together = score_candidates(attr, seq, candidates, metrics, batch_size=16, **options)
    assert together["aopc_sufficiency"].shape == (candidates.shape[0], seq.n_targets)
    for r in range(candidates.shape[0]):
        alone = faithfulness(attr, (seq, candidates[r]), metrics, **options)
        for key, value in alone.items():
            torch.testing.assert_close(together[key][r], value, atol=2e-6, rtol=1e-5)
    # explicit options == the preset; defaults unchanged (ceil, every token, "bins_plus_one")
    explicit = faithfulness(attr, (seq, scores), metrics, bins=FERRET_BINS, bin_rounding="floor", only_positive=True,
                            normalisation="distinct", curve_bins=(10, 30, 60))
    for key in explicit:
        torch.testing.assert_close(explicit[key], together[key][0], atol=2e-6, rtol=1e-5)
    default = faithfulness(attr, (seq, scores), metrics, bins=FERRET_BINS)
    plain = faithfulness(attr, (seq, scores), metrics, bins=FERRET_BINS, bin_rounding="ceil", only_positive=False,
                         normalisation="bins_plus_one")
    for key in default:
        torch.testing.assert_close(default[key], plain[key])
    with pytest.raises(InvalidInputError, match="only_positive"):
        faithfulness(attr, (seq, scores), metrics, only_positive="yes")


def test_lower_layers_never_import_the_front():
    """Imports run one way: core, metrics and methods never import the attributor (or anything above it), even
    inside a function, so no circle can form."""
    import ast
    from pathlib import Path

    import llm_attrib

    root = Path(llm_attrib.__file__).parent
    upper = {"attributor", "evaluate", "cli", "rag"}
    for folder in ("core", "metrics", "methods"):
        for path in (root / folder).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level >= 2:  # from llm_attrib's own top level
                    names = [node.module] if node.module else [alias.name for alias in node.names]
                    assert not any(name.split(".")[0] in upper for name in names), f"{path.name} imports {names}"
