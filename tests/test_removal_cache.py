"""Removal forwards from shared prefixes: each subset of documents runs only from the first token its prompt does
not share with one run before, with exactly the values of full forwards, on every causal architecture the suite
builds (full forwards instead where a sliding window drops the first keys, or where a cached forward disagrees)."""

import functools

import pytest
import torch

import llm_attrib
from llm_attrib import rag
from llm_attrib.rag import ablation
from llm_attrib.rag.ablation import DocumentSubsets
from llm_attrib.rag.prompt import as_documents, build_prompt
from tiny_models import ARCHITECTURES, BYPASSING, is_encoder, tiny_model
from tiny_tokenizer import tiny_tokenizer

TEMPLATE = rag.Template(prompt="w10 {documents} w11 {question}", document="w12 {text}", separator=" ")
DOCUMENTS = as_documents(["w1 w2 w3 w4 w5 w6 w7.", "w8 w9.", "w20 w21 w22 w23.", "w24."])
EVERY_SUBSET = [[d for d in range(4) if mask >> d & 1] for mask in range(16)]
SEGMENTS = [(0, 1), (1, 3)]


def lengths_run(model, run):
    """The result of `run()` and the token counts of the model's forwards meanwhile (rows times width)."""
    lengths = []
    handle = model.register_forward_pre_hook(lambda _m, _a, kwargs: lengths.append(kwargs["input_ids"].numel()),
                                             with_kwargs=True)
    try:
        return run(), lengths
    finally:
        handle.remove()


def subsets_of(model, tokenizer, internal_batch_size=None, reuse_prefix=True):
    attributor = llm_attrib.Attributor(model, tokenizer, internal_batch_size=internal_batch_size, show_progress=False)
    answer_ids = tokenizer("w30 w31 w32", add_special_tokens=False)["input_ids"]
    attributor.sequence("w40", answer=answer_ids)  # its one-time causality probe runs here, not among the removals
    return DocumentSubsets(attributor, "w40 w41", DOCUMENTS, TEMPLATE, answer_ids, SEGMENTS,
                           reuse_prefix=reuse_prefix)


def sequences(tokenizer, subsets):
    """Each subset's prompt and answer as token ids, as the removal forwards read them."""
    answer = tokenizer("w30 w31 w32", add_special_tokens=False)["input_ids"]
    return [tokenizer(build_prompt(tokenizer, "w40 w41", DOCUMENTS, TEMPLATE, kept).text)["input_ids"] + answer
            for kept in subsets]


@pytest.mark.parametrize("arch", [a for a in ARCHITECTURES + BYPASSING if not is_encoder(a)])
def test_removals_from_shared_prefixes_equal_full_forwards(arch):
    """Rotary, learned and ALiBi positions, grouped queries, softcapping, sinks, local attention: every subset's
    answer log-probabilities equal its full forward's, one subset per forward and five (right-padded suffixes);
    the cache is used wherever every layer keeps every token, and then runs fewer tokens."""
    model, vocab = tiny_model(arch)
    tokenizer = tiny_tokenizer(vocab, extra=(".",))
    values, runs = {}, {}
    for reuse, batch in ((False, None), (True, None), (True, 5)):
        subsets = subsets_of(model, tokenizer, batch, reuse)
        values[reuse, batch], lengths = lengths_run(model, lambda: subsets.stack(EVERY_SUBSET))
        runs[reuse, batch] = sum(lengths), subsets.prefixes and subsets.prefixes.exact
    full = values[False, None]
    torch.testing.assert_close(values[True, None], full, rtol=0, atol=1e-5)
    torch.testing.assert_close(values[True, 5], full, rtol=0, atol=1e-5)
    window = getattr(model.config, "sliding_window", None)
    sliding = window is not None and any(t == "sliding_attention" for t in getattr(model.config, "layer_types", None)
                                         or ["sliding_attention"])
    (tokens, exact), (full_tokens, _) = runs[True, None], runs[False, None]
    if sliding:  # a window of 4 keeps the last 3 keys: no prompt can start from the cache
        assert exact is False and tokens >= full_tokens - 1
    else:
        assert exact is True and tokens < 0.6 * full_tokens


def test_the_forwards_run_exactly_the_prefix_tree_of_the_prompts():
    """Sorted, every subset shares the most it can with the one run before it: the tokens run are the distinct
    prefixes of the sixteen sequences (the last answer token, which predicts nothing asked, left out), plus the
    check's rerun of the first answer. Asked alone afterwards, a removal starts from the prompt with every
    document: it reruns only what follows the removed document."""
    model, vocab = tiny_model("llama")
    tokenizer = tiny_tokenizer(vocab, extra=(".",))
    subsets = subsets_of(model, tokenizer)
    _, lengths = lengths_run(model, lambda: subsets.evaluate(EVERY_SUBSET))
    ids = sequences(tokenizer, EVERY_SUBSET)
    tree = {tuple(seq[:j]) for seq in ids for j in range(1, len(seq))}
    assert sum(lengths) == len(tree) + 3 and len(lengths) == 16 + 1

    later = subsets_of(model, tokenizer)
    later.full  # noqa: B018 (runs the prompt with every document)
    removed = [[d for d in range(4) if d != k] for k in range(4)]
    _, lengths = lengths_run(model, lambda: [later(kept) for kept in removed])
    full, *alone = sequences(tokenizer, [list(range(4)), *removed])
    assert lengths == [len(seq) - 1 - ablation.shared_length(torch.tensor(full), torch.tensor(seq)) for seq in alone]
    torch.testing.assert_close(torch.stack([later(kept) for kept in removed]),
                               subsets_of(model, tokenizer, reuse_prefix=False).stack(removed), rtol=0, atol=1e-5)


def test_a_cache_that_changes_the_logits_is_not_used(monkeypatch):
    """A model whose positions restart at 0 after a cache (the classic slip) fails the check on the first subset:
    the cache is dropped and every other subset runs in full, with the full forwards' values."""
    model, vocab = tiny_model("llama")
    tokenizer = tiny_tokenizer(vocab, extra=(".",))
    reference = subsets_of(model, tokenizer, reuse_prefix=False).stack(EVERY_SUBSET)
    original = model.forward

    @functools.wraps(original)
    def restarting(*args, **kwargs):
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        if cache is not None and cache.get_seq_length() > 0:
            kwargs["position_ids"] = torch.arange(kwargs["input_ids"].shape[1])[None]
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", restarting)
    subsets = subsets_of(model, tokenizer)
    values, lengths = lengths_run(model, lambda: subsets.stack(EVERY_SUBSET))
    ids = sequences(tokenizer, EVERY_SUBSET)
    first = min(range(16), key=lambda i: ids[i])  # the first one run: whole (its last token aside), then checked
    assert subsets.prefixes.exact is False
    assert lengths == [len(ids[first]) - 1, 3] + [len(seq) for i, seq in enumerate(ids) if i != first]
    torch.testing.assert_close(values, reference, rtol=0, atol=1e-5)
