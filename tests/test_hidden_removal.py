"""removal="hidden": each subset of documents is hidden from the readers (the tokens after the last document)
instead of rerunning the prompt without it. Checked against the model's own attention with those keys masked out
by a plain 2-D attention mask over the prompt's cache, on every causal architecture whose attention can be hooked;
refused clearly where it cannot run; on the zoo's rag model it finds the source document as the rerun does."""

import copy

import pytest
import torch

import llm_attrib
from llm_attrib import rag
from llm_attrib.errors import UnknownNameError, UnsupportedModelError
from llm_attrib.patching import supports_attention_hook
from llm_attrib.rag.ablation import DocumentSubsets
from test_rag import zoo, zoo_case  # noqa: F401 (a fixture)
from test_removal_cache import DOCUMENTS, EVERY_SUBSET, SEGMENTS, TEMPLATE, lengths_run
from tiny_models import ARCHITECTURES, BYPASSING, is_encoder, tiny_model
from tiny_tokenizer import tiny_tokenizer

ANSWER = "w30 w31 w32"


def hidden_subsets(model, tokenizer, removal="hidden", internal_batch_size=None):
    attributor = llm_attrib.Attributor(model, tokenizer, internal_batch_size=internal_batch_size, show_progress=False)
    answer_ids = tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
    attributor.sequence("w40", answer=answer_ids)  # its one-time causality probe runs here, not among the removals
    return DocumentSubsets(attributor, "w40 w41", DOCUMENTS, TEMPLATE, answer_ids, SEGMENTS, removal=removal)


def masked_by_hand(model, subsets, kept) -> torch.Tensor:
    """(S,) the segments' log-probabilities with the readers run over the prompt's cache (the model's own attention)
    and the removed documents' keys zeroed in a 2-D attention mask, positions as in the whole prompt."""
    hidden = subsets.hidden
    ids, start = hidden.seq.input_ids, hidden.reader_length
    with torch.no_grad():
        cache = copy.deepcopy(model(input_ids=ids[:, :start], use_cache=True).past_key_values)
        mask = torch.ones(1, ids.shape[1] - 1, dtype=torch.long)
        for d, tokens in enumerate(hidden.documents):
            if d not in kept:
                mask[0, tokens[: ids.shape[1] - 1]] = 0
        logits = model(input_ids=ids[:, start:-1], attention_mask=mask, past_key_values=cache, use_cache=True,
                       position_ids=torch.arange(start, ids.shape[1] - 1)[None]).logits[0]
    n_answer = hidden.seq.n_targets
    tokens = logits[-n_answer:].float().log_softmax(-1).gather(-1, hidden.seq.target_ids[:, None])[:, 0]
    return tokens @ subsets.members


def uses_sliding_window(model) -> bool:
    types = getattr(model.config, "layer_types", None) or []
    return getattr(model.config, "sliding_window", None) is not None and (not types or "sliding_attention" in types)


@pytest.mark.parametrize("arch", [a for a in ARCHITECTURES + BYPASSING if not is_encoder(a)])
def test_hiding_equals_masking_the_documents_out_of_the_readers_attention(arch):
    """Every subset, one per forward and five per forward, equals the model run with those documents' keys masked
    out of the readers' view; with every document kept it is the rerun's value (the same prompt); removing any
    document gives another number than rerunning without it (a different quantity, not an approximation bug).
    Models it cannot serve are refused with the way out, and left unpatched."""
    model, vocab = tiny_model(arch)
    tokenizer = tiny_tokenizer(vocab, extra=(".",))
    if not supports_attention_hook(model) or uses_sliding_window(model) or arch == "gpt_oss":
        with pytest.raises(UnsupportedModelError, match="removal='rerun'"):
            hidden_subsets(model, tokenizer).stack(EVERY_SUBSET)
        assert supports_attention_hook(model) == (arch not in BYPASSING)  # nothing left hooked
        return
    one, five = (hidden_subsets(model, tokenizer, internal_batch_size=b) for b in (None, 5))
    values = one.stack(EVERY_SUBSET)
    torch.testing.assert_close(five.stack(EVERY_SUBSET), values, rtol=0, atol=1e-5)
    alibi_from_mask = arch == "falcon_alibi"  # its ALiBi counts the mask's ones, so the hand-made mask moves them
    if not alibi_from_mask:
        by_hand = torch.stack([masked_by_hand(model, one, kept) for kept in EVERY_SUBSET])
        torch.testing.assert_close(values, by_hand, rtol=0, atol=2e-5)
    rerun = hidden_subsets(model, tokenizer, removal="rerun")
    torch.testing.assert_close(values[-1], rerun.full, rtol=0, atol=2e-5)
    assert (values[:-1] - rerun.stack(EVERY_SUBSET[:-1])).abs().max() > 1e-3


def test_each_subset_runs_only_the_readers():
    """The prompt runs once (and once more for the cache's check); each subset then runs the tokens after the
    last document."""
    model, vocab = tiny_model("llama")
    tokenizer = tiny_tokenizer(vocab, extra=(".",))
    subsets = hidden_subsets(model, tokenizer)
    _, lengths = lengths_run(model, lambda: subsets.evaluate(EVERY_SUBSET))
    seq, start = subsets.hidden.seq, subsets.hidden.reader_length
    readers = seq.length - start
    assert lengths[-16:] == [readers] * 16
    assert sum(lengths[:-16]) < 3 * seq.length  # building and checking the cache, and counting the hooked layers


def test_an_unknown_removal_is_refused_before_any_work(zoo):  # noqa: F811
    model, tokenizer = zoo
    question, documents = zoo_case(llm_attrib.zoo.examples("rag", n=1, seed=31)[0])
    with pytest.raises(UnknownNameError, match="'rerun', 'hidden'"):
        rag.explain(model, tokenizer, question, documents, removal="masked", show_progress=False)


def test_hidden_removal_finds_the_source_document_on_the_rag_model(zoo):  # noqa: F811
    """Ground truth as for the rerun: the zoo's answer is copied from one document, and hiding that document costs
    the answer most; the result says how its removals were made, the verdicts give margins (the thresholds are
    the rerun's) unless thresholds are passed, and the file keeps the removal."""
    model, tokenizer = zoo
    for example in llm_attrib.zoo.examples("rag", n=4, seed=31):
        question, documents = zoo_case(example)
        result = rag.explain(model, tokenizer, question, documents, template="zoo", removal="hidden",
                             show_progress=False)
        assert int(result.leave_one_out[0].argmax()) == example["relevant_document"]
        assert result.removal == "hidden" and result.verdicts[0].label == "uncalibrated"
        assert any("removal='hidden'" in note for note in result.explanation.notes)
        n_prompt = len(tokenizer(example["prompt"])["input_ids"])
        # the whole prompt about twice (its cache and check), then only the readers per removal
        assert result.cost["n_tokens_ablation"] < 3 * n_prompt + (len(documents) + 3) * 20
    given = rag.explain(model, tokenizer, question, documents, template="zoo", removal="hidden", thresholds=(1, 2),
                        show_progress=False)
    assert given.verdicts[0].label == "supported"
    again = rag.RagExplanation.from_dict(given.to_dict())
    page = again.to_html()
    assert again.removal == "hidden" and "hidden from the question and answer" in page
    assert "with every document hidden" in page and "without any document" not in page  # calibrated by the caller
