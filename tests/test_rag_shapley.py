"""Document Shapley values: the subset formula equals the average over every order, the values keep the game's
axioms (completeness, symmetry, null player, additivity), sampled orders are seeded and complete, and on the
trained rag model the source document gets the answer while the values share forwards with leave-one-out."""

import itertools
import math

import pytest
import torch

import llm_attrib
from llm_attrib import InvalidInputError, rag
from llm_attrib.rag.ablation import DocumentSubsets
from llm_attrib.rag.explain import resolve_template
from llm_attrib.rag.prompt import as_documents
from llm_attrib.rag.shapley import document_shapley, exact_shapley


def game(values: torch.Tensor):
    """log_probs(subsets) over a table of 2^D coalition values, recording every subset asked."""
    calls = []

    def log_probs(subsets):
        calls.extend(subsets)
        return values[[sum(1 << d for d in kept) for kept in subsets]]

    return log_probs, calls


def by_every_order(values: torch.Tensor, n: int) -> torch.Tensor:
    """(S, n) each player's marginal contribution averaged over every order, from (2^n, S) coalition values."""
    out = torch.zeros(values.shape[1], n, dtype=torch.float64)
    for order in itertools.permutations(range(n)):
        mask = 0
        for player in order:
            out[:, player] += values[mask | 1 << player] - values[mask]
            mask |= 1 << player
    return out / math.factorial(n)


def test_the_subset_formula_is_the_mean_over_every_order():
    values = torch.randn(1 << 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    shapley = exact_shapley(values)
    torch.testing.assert_close(shapley, by_every_order(values, 5), rtol=0, atol=1e-12)
    torch.testing.assert_close(shapley.sum(1), values[-1] - values[0], rtol=0, atol=1e-12)  # completeness


def test_symmetric_players_share_null_players_get_nothing_and_additive_games_are_leave_one_out():
    n = 4
    masks = torch.arange(1 << n)
    has = lambda d: ((masks >> d) & 1).double()  # noqa: E731
    # 0 and 1 are interchangeable (either one gives 5, both 7), 2 adds 3 on its own, 3 is a null player
    values = (5 * torch.maximum(has(0), has(1)) + 2 * has(0) * has(1) + 3 * has(2))[:, None]
    shapley = exact_shapley(values)[0]
    assert shapley[0] == pytest.approx(shapley[1]) and shapley[0] == pytest.approx(3.5)
    assert shapley[2] == pytest.approx(3.0) and shapley[3] == pytest.approx(0.0)
    weights = torch.tensor([1.5, -2.0, 0.25, 4.0], dtype=torch.float64)
    additive = (torch.stack([has(d) for d in range(n)], 1) @ weights)[:, None]
    leave_one_out = additive[-1, :, None] - torch.stack([additive[((1 << n) - 1) ^ (1 << d)] for d in range(n)], 1)
    torch.testing.assert_close(exact_shapley(additive), leave_one_out)
    torch.testing.assert_close(exact_shapley(additive)[0], weights)


def test_exact_within_budget_sampled_beyond_it():
    values = torch.randn(1 << 4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    log_probs, calls = game(values)
    exact = document_shapley(log_probs, 4, budget=16)
    assert exact.exact and exact.n_subsets == 16 == len(calls) and exact.n_orders == 24
    torch.testing.assert_close(exact.values, by_every_order(values, 4))
    assert torch.equal(exact.stderr, torch.zeros_like(exact.values))
    torch.testing.assert_close(exact.full, values[-1]) and torch.testing.assert_close(exact.empty, values[0])

    log_probs, calls = game(values)
    sampled = document_shapley(log_probs, 4, budget=10, seed=3)
    assert not sampled.exact and sampled.n_subsets < 16 and sampled.n_orders % 2 == 0
    assert len(calls) == len({tuple(kept) for kept in calls}) == sampled.n_subsets  # each subset asked once
    torch.testing.assert_close(sampled.values.sum(1), values[-1] - values[0])  # every order telescopes
    assert (sampled.stderr > 0).any()
    again = document_shapley(game(values)[0], 4, budget=10, seed=3)
    assert torch.equal(sampled.values, again.values)  # seeded

    # with 3 documents any two pairs of orders visit all 8 subsets: the values are then computed exactly
    visited_all = document_shapley(game(values[:8])[0], 3, budget=6)
    assert visited_all.exact and visited_all.n_subsets == 8 and visited_all.n_orders == 6
    torch.testing.assert_close(visited_all.values, exact_shapley(values[:8]))


def test_bad_budgets_and_games_are_refused():
    with pytest.raises(InvalidInputError, match="at least 2"):
        document_shapley(game(torch.zeros(4, 1))[0], 2, budget=1)
    with pytest.raises(InvalidInputError, match="at least one document"):
        document_shapley(game(torch.zeros(1, 1))[0], 0)
    with pytest.raises(InvalidInputError, match="2\\^D coalition values"):
        exact_shapley(torch.zeros(6, 1))


@pytest.fixture(scope="module")
def zoo():
    return llm_attrib.zoo.load("rag")


def test_the_source_document_carries_the_answer_on_the_rag_model(zoo, tmp_path):
    """Ground truth on the trained model: the document the answer is copied from gets nearly all of it; the values
    add up to the answer's log-probability with all documents minus with none, computed apart; leave-one-out and
    the verdicts reuse the same subsets (2^D forwards in all); the values survive save and load."""
    model, tokenizer = zoo
    for example in llm_attrib.zoo.examples("rag", n=3, seed=41):
        question, documents = example["question"], example["document_texts"]
        result = rag.explain(model, tokenizer, question, documents, template="zoo", granularity="answer",
                             shapley=True, show_progress=False)
        values = result.shapley.values[0]
        assert result.shapley.exact and int(values.argmax()) == example["relevant_document"]
        others = torch.cat([values[:example["relevant_document"]], values[example["relevant_document"] + 1:]])
        assert values.max() > 5 and others.abs().max() < 0.2 * values.max()
        answer_ids = tokenizer(result.answer, add_special_tokens=False)["input_ids"]
        forwards = []
        subsets = DocumentSubsets(llm_attrib.Attributor(model, tokenizer, show_progress=False), question,
                                  as_documents(documents), resolve_template("zoo"), answer_ids, result.answer_sentences,
                                  on_forward=forwards.append)
        torch.testing.assert_close(values.sum(), (subsets.full - subsets(()))[0].double(), rtol=0, atol=1e-4)
        loo = subsets.full[0] - torch.stack([subsets.without([d])[0] for d in range(len(documents))])
        torch.testing.assert_close(result.leave_one_out[0], loo)
        assert len(forwards) == len(subsets.values) == len(documents) + 2  # each subset run once (full twice asked)
        assert result.cost["n_forward_ablation"] == 2 ** len(documents) + 1  # and the reused cache's check
    result.save(tmp_path / "r.json")
    loaded = rag.RagExplanation.load(tmp_path / "r.json")
    assert torch.equal(loaded.shapley.values, result.shapley.values) and loaded.shapley.exact
    assert rag.RagExplanation.load(tmp_path / "r.json").to_html().count("Shapley") >= 1


@pytest.mark.parametrize("arch, attention", [(arch, attention) for arch in ("llama", "gpt2", "opt", "mistral_gqa")
                                              for attention in ("eager", "sdpa")] + [("gemma2", "eager")])
def test_batched_removals_equal_one_subset_per_forward(arch, attention):
    """One subset per forward by default; with internal_batch_size, subsets known in advance share left-padded
    forwards, and every value equals its own forward's (prompts of different lengths, so rows carry padding;
    absolute and rotary positions, a sliding window)."""
    from tiny_models import tiny_model
    from tiny_tokenizer import tiny_tokenizer

    model, vocab_size = tiny_model(arch, attn_implementation=attention)
    tokenizer = tiny_tokenizer(vocab_size, extra=(".",))
    template = rag.Template(prompt="w10 {documents} w11 {question}", document="w12 {text}", separator=" ")
    documents = as_documents(["w1 w2 w3 w4 w5 w6 w7.", "w8 w9.", "w20 w21 w22 w23.", "w24."])
    answer_ids = tokenizer("w30 w31 w32", add_special_tokens=False)["input_ids"]
    everyone = [[d for d in range(4) if mask >> d & 1] for mask in range(16)]

    def evaluated(internal_batch_size):
        rows = []  # subsets per forward, as the progress bar is told
        attributor = llm_attrib.Attributor(model, tokenizer, internal_batch_size=internal_batch_size,
                                           show_progress=False)
        subsets = DocumentSubsets(attributor, "w40 w41", documents, template, answer_ids, [(0, 1), (1, 3)],
                                  on_forward=rows.append)
        subsets.evaluate(everyone)
        return torch.stack([subsets(kept) for kept in everyone]), rows

    alone, n_alone = evaluated(None)
    batched, n_batched = evaluated(16)
    capped, n_capped = evaluated(5)
    assert (n_alone, n_batched, n_capped) == ([1] * 16, [16], [5, 5, 5, 1])  # asked again afterwards: no forward
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(capped, alone, rtol=0, atol=1e-5)
    assert batched.shape == (16, 2) and torch.isfinite(batched).all()


def test_rag_explain_batches_its_removals_when_asked(zoo):
    """internal_batch_size reaches the removal forwards (sampled orders included: 7 documents at a budget of 40),
    and the values, leave-one-out and forward count stay those of one subset per forward."""
    model, tokenizer = zoo
    example = llm_attrib.zoo.examples("rag", n=1, seed=43)[0]
    question, documents = example["question"], example["document_texts"]
    documents = documents + [d for d in llm_attrib.zoo.examples("rag", n=2, seed=44)[1]["document_texts"]
                             if d not in documents][:7 - len(documents)]
    runs, rows = {}, {}
    for batch in (None, 16):
        rows[batch] = []  # sequences per model call
        hook = model.register_forward_pre_hook(
            lambda module, args, kwargs, seen=rows[batch]: seen.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
        try:
            runs[batch] = rag.explain(model, tokenizer, question, documents, template="zoo", granularity="answer",
                                      shapley=True, shapley_budget=40, internal_batch_size=batch, show_progress=False,
                                      method="attention")
        finally:
            hook.remove()
    one, batched = runs[None], runs[16]
    assert max(rows[None]) == 1 and max(rows[16]) == 16
    assert len(documents) == 7 and not one.shapley.exact and one.shapley.n_subsets == batched.shapley.n_subsets
    torch.testing.assert_close(batched.shapley.values, one.shapley.values, rtol=0, atol=1e-4)
    torch.testing.assert_close(batched.leave_one_out, one.leave_one_out, rtol=0, atol=1e-4)
    assert batched.cost["n_forward_ablation"] == one.cost["n_forward_ablation"]
