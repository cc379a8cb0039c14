"""Many documents: coarse to fine (rank documents, then sentences of the top ones) equals the full run where both
run and costs a number of forwards that does not grow with the documents; reading="answer" runs only the tokens
after the documents along the path, and its scores add up to a brute-force forward with the documents hidden from
those readers."""

import warnings

import pytest
import torch

from llm_attrib import Attributor, ConvergenceWarning, InvalidInputError, UnknownNameError, rag
from llm_attrib.attributor import counting_forwards
from llm_attrib.rag.prompt import as_documents, build_prompt
from test_rag import CHAT, DOCS, FIXED, TINY
from tiny_tokenizer import tiny_llama, tiny_tokenizer

QUESTION, ANSWER = "w30 w31", "w32 w33. w34 w35."
MORE = ["w23 w24. w25 w26.", "w27 w28 w29.", "w36 w37. w38.", "w39 w45 w46.", "w47. w48 w49.", "w50 w51 w52."]


@pytest.fixture(scope="module")
def lm():
    tokenizer = tiny_tokenizer(64, bos=False, extra=(".",))
    tokenizer.chat_template = CHAT
    return tiny_llama(context=128), tokenizer


def run(lm, documents, **kwargs):
    model, tokenizer = lm
    return rag.explain(model, tokenizer, QUESTION, documents, ANSWER, template=TINY, show_progress=False,
                       **FIXED, **kwargs)


def test_coarse_to_fine_equals_the_full_run_where_both_run(lm):
    """With as many fine documents as documents, the result is the full run's exactly; with fewer, the ranking is
    the full run's (the whole answer's integral is the sum of the sentence rows' integrals: IG is linear in the
    target) and every document is still removed once: the leave-one-out table is the full run's."""
    documents = DOCS + MORE[:2]
    full = run(lm, documents, sentence_documents=None)
    same = run(lm, documents, sentence_documents=len(documents))
    assert torch.equal(same.explanation.scores, full.explanation.scores)
    assert torch.equal(same.leave_one_out, full.leave_one_out)
    assert same.verdicts == full.verdicts and same.ranking_scores is None and same.sentence_documents is None
    top = run(lm, documents, sentence_documents=2)
    torch.testing.assert_close(top.ranking_scores, full.answer_document_scores, rtol=1e-4, atol=1e-5)
    assert top.ranking == full.ranking and top.sentence_documents == sorted(full.ranking[:2])
    fine = top.sentence_documents
    # the rows are the top documents' sentence rows, the same answer sentences: the removals are the same forwards
    torch.testing.assert_close(top.leave_one_out, full.leave_one_out)
    assert all(d in fine for citation in top.citations for d, _ in citation.documents)
    back = rag.RagExplanation.from_dict(top.to_dict())
    assert torch.equal(back.ranking_scores, top.ranking_scores) and back.sentence_documents == fine


def test_coarse_to_fine_forwards_do_not_grow_with_the_documents(lm):
    """A coarse-to-fine run's path forwards and backwards (ranking and sentence rows) are the same for 3, 5 and 9
    documents, and everything else the model runs (checks, memory probes, the static prefix) is a few forwards
    besides the removals, which grow by one forward per document (each document removed once), as in the full run:
    the cost grows linearly with the number of documents."""
    model, _ = lm
    work = ("n_forward", "n_backward", "ranking_n_forward", "ranking_n_backward")

    def cost(documents, k):
        with counting_forwards(model) as count:
            result = run(lm, documents, sentence_documents=k)
        assert count[0] - result.cost["n_forward"] - result.cost["n_forward_ablation"] <= 25
        return result.cost

    sizes = (DOCS, DOCS + MORE[:2], DOCS + MORE)
    coarse = [cost(documents, 2) for documents in sizes]
    assert len({tuple(c[key] for key in work) for c in coarse}) == 1
    for removals in ([c["n_forward_ablation"] for c in coarse], [cost(documents, None)["n_forward_ablation"] for documents in sizes]):
        assert removals[1] - removals[0] == 2 and removals[2] - removals[1] == 4


def readers_of(lm, documents):
    """The sequence, which of its tokens are in documents, and the first token after the last document."""
    model, tokenizer = lm
    built = build_prompt(tokenizer, QUESTION, as_documents(documents), TINY)
    seq = Attributor(model, tokenizer).sequence(built.prompt, answer=ANSWER)
    in_documents = torch.tensor([j < seq.n_prompt and b > a and any(s <= a < e for s, e in built.document_spans)
                                 for j, (a, b) in enumerate(seq.offsets)])
    return seq, in_documents, int(in_documents.nonzero()[-1]) + 1


def test_reading_the_answer_adds_up_to_the_documents_hidden_from_the_readers(lm):
    """reading="answer": the documents' scores sum to log p(answer) minus that with the documents masked out of the
    attention of the tokens after them only (a brute-force forward with a 4-D mask); every path forward and the
    baseline's check run only those tokens, and the whole prompt runs once (the cache, its check's reference and
    the answer's probability). With coarse to fine the readers still begin after the last document, not after the
    top one."""
    model, _ = lm
    seq, in_documents, readers = readers_of(lm, DOCS)

    def log_p(hidden: bool) -> float:
        allowed = torch.ones(seq.length, seq.length, dtype=torch.bool).tril()
        if hidden:
            allowed[readers:, in_documents] = False
        mask = torch.zeros(1, 1, seq.length, seq.length).masked_fill(~allowed, torch.finfo(torch.float32).min)
        with torch.no_grad():
            log_probs = model(input_ids=seq.input_ids, attention_mask=mask).logits[0].log_softmax(-1)
        return float(log_probs[seq.target_positions, seq.target_ids].sum())

    lengths = []  # (tokens run, with a graph)
    hook = model.register_forward_pre_hook(
        lambda _m, _a, kw: lengths.append((kw["input_ids"].shape[1], torch.is_grad_enabled())), with_kwargs=True)
    try:
        result = run(lm, DOCS, reading="answer", granularity="answer", verify=False)
        assert max(n for n, graph in lengths if graph) == seq.length - readers
        # one forward of the whole prompt builds the cache, is its check's reference and gives the answer's probability
        assert sum(n == seq.length for n, _ in lengths) == 1 and readers not in [n for n, _ in lengths]
        lengths.clear()
        reordered = DOCS[::-1]
        other, _, after = readers_of(lm, reordered)
        assert run(lm, reordered, reading="answer", sentence_documents=1, verify=False).sentence_documents == [0]
        assert max(n for n, graph in lengths if graph) == other.length - after
    finally:
        hook.remove()
    assert result.reading == "answer" and result.explanation.params["reading"] == "answer"
    assert abs(float(result.answer_document_scores.sum()) - (log_p(False) - log_p(True))) < 1e-4
    assert "reading the answer" in repr(result)


def test_reading_and_coarse_to_fine_refuse_what_they_cannot_do(lm):
    with pytest.raises(UnknownNameError, match="reading"):
        run(lm, DOCS, reading="skim")
    with pytest.raises(InvalidInputError, match="space='mask'"):
        run(lm, DOCS, reading="answer", space="embeddings")
    with pytest.raises(InvalidInputError, match="scope='documents'"):
        run(lm, DOCS, reading="answer", scope="prompt")
    with pytest.raises(InvalidInputError, match="scope='documents'"):
        run(lm, DOCS, sentence_documents=1, scope="prompt")
    with pytest.raises(InvalidInputError, match="sentence_documents"):
        run(lm, DOCS, sentence_documents=0)
    model, tokenizer = lm
    with pytest.raises(InvalidInputError, match="reading='answer'"):
        Attributor(model, tokenizer).explain("w1 w2 w3 w4", "w5", space="mask", readers_after=3)


@pytest.mark.parametrize("heads, key_heads, visibility_rows", [(4, 2, 3), (3, 3, 1)])
def test_shared_past_attention_equals_eager_attention_and_its_gradients(heads, key_heads, visibility_rows):
    """Attention over a cached past every point shares (read once for the batch, grouped heads unrepeated) gives
    eager soft-mask attention's output over the concatenated keys, and the same gradients for the queries, the
    points' own keys and values, and the visibility (some of it exactly 0, as at the baseline), under a mask."""
    from llm_attrib.core.reader_attention import shared_past_attention
    from llm_attrib.patching import attention_probabilities, soft_masked

    torch.manual_seed(0)
    batch, n_past, n_new, dim = 3, 7, 4, 8
    query = torch.randn(batch, heads, n_new, dim, dtype=torch.float32, requires_grad=True)
    own_key, own_value = (torch.randn(batch, key_heads, n_new, dim, dtype=torch.float32, requires_grad=True)
                          for _ in range(2))
    past_key, past_value = (torch.randn(1, key_heads, n_past, dim, dtype=torch.float32).expand(batch, -1, -1, -1)
                            for _ in range(2))
    key, value = torch.cat([past_key, own_key], -2), torch.cat([past_value, own_value], -2)
    visibility = torch.rand(visibility_rows, n_past + n_new, dtype=torch.float32)
    visibility[:, 2:4] = 0
    visibility.requires_grad_(True)
    allowed = torch.ones(n_new, n_past + n_new + 2, dtype=torch.bool).tril(n_past)  # causal; the mask runs longer
    allowed[:, 0] = False  # a key the mask forbids to every query
    mask = torch.zeros(1, 1, n_new, n_past + n_new + 2, dtype=torch.float32).masked_fill(
        ~allowed, torch.finfo(torch.float32).min)
    module = torch.nn.Module().eval()
    probs, _ = soft_masked(module, attention_probabilities(module, query, key, mask, 0.3), visibility)
    eager = torch.matmul(probs, value.repeat_interleave(heads // key_heads, dim=1))
    shared = shared_past_attention(query, key, value, n_past, visibility, mask, 0.3)
    torch.testing.assert_close(shared, eager)
    weights = torch.randn_like(eager)
    inputs = (query, own_key, own_value, visibility)
    for mine, theirs in zip(torch.autograd.grad((shared * weights).sum(), inputs),
                            torch.autograd.grad((eager * weights).sum(), inputs)):
        torch.testing.assert_close(mine, theirs)


def test_reading_the_answer_over_the_shared_cache_equals_the_eager_run(lm, monkeypatch):
    """reading="answer"'s path forwards read the documents' cache once per batch (`core.reader_attention`); the
    scores, the completeness error and the gradients spent are those of eager attention over per-point copies."""
    from llm_attrib import patching

    calls = []
    shared = patching.shared_past_attention
    monkeypatch.setattr(patching, "shared_past_attention", lambda *args: calls.append(1) or shared(*args))
    fast = run(lm, DOCS, reading="answer", granularity="answer", verify=False).explanation
    assert calls
    monkeypatch.setattr(patching, "_reads_shared_past", lambda *args: False)
    eager = run(lm, DOCS, reading="answer", granularity="answer", verify=False).explanation
    torch.testing.assert_close(fast.scores, eager.scores, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.completeness_error, eager.completeness_error, rtol=0, atol=1e-5)
    assert fast.cost["n_backward"] == eager.cost["n_backward"] and fast.converged == eager.converged


def test_a_long_prompt_read_in_full_says_what_it_costs_and_what_is_faster():
    """Beyond 1024 prompt tokens, reading="full" warns before the work (minutes per gradient on a CPU there) and
    names reading="answer"; reading="answer" and short prompts run without the warning."""
    tokenizer = tiny_tokenizer(64, bos=False, extra=(".",))
    model = tiny_llama(context=1400)
    documents = [" ".join(f"w{1 + (i + k) % 60}" for k in range(110)) + "." for i in range(10)]
    settings = dict(template=TINY, show_progress=False, granularity="answer", verify=False, space="mask",
                    quadrature="gauss-legendre", n_steps=1, tolerance=None)
    with pytest.warns(UserWarning, match="reading='answer' ranks the documents"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        rag.explain(model, tokenizer, QUESTION, documents, ANSWER, **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)  # one path point: not the subject here
        rag.explain(model, tokenizer, QUESTION, documents, ANSWER, reading="answer", **settings)
        rag.explain(model, tokenizer, QUESTION, documents[:2], ANSWER, **settings)
