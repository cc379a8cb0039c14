"""RAG debugging: prompts built with exact spans, document rankings that find the source on the trained rag model,
rows that add up across granularities, verdicts confirmed by ablation, and clear errors for bad input."""

import copy
import dataclasses

import pytest
import torch

import llm_attrib
from llm_attrib import InvalidInputError, UnknownNameError, rag
from llm_attrib.rag.explain import default_space
from llm_attrib.rag.prompt import build_prompt, as_documents
from llm_attrib.rag.sentences import split_sentences
from tiny_tokenizer import tiny_llama, tiny_tokenizer

CHAT = ("{% for m in messages %}w40 {{ 'w41' if m['role'] == 'user' else 'w42' }} {{ m['content'] }} w43 "
        "{% endfor %}{% if add_generation_prompt %}w44{% endif %}")
TINY = rag.Template(prompt="w10 {documents} w11 {question}", document="w12 {text}", titled="w12 {title} w13 {text}",
                    separator=" ")
DOCS = ["w1 w2 w3. w4 w5 w6.", {"text": "w7 w8. w1 w2 w3.", "title": "w9", "id": "b"}, "w20 w21 w22."]
FIXED = dict(quadrature="gauss-legendre", n_steps=12, tolerance=None)


@pytest.fixture(scope="module")
def chat_lm():
    tokenizer = tiny_tokenizer(64, bos=False, extra=(".",))
    tokenizer.chat_template = CHAT
    return tiny_llama(context=96), tokenizer


@pytest.fixture(scope="module")
def zoo():
    return llm_attrib.zoo.load("rag")


def zoo_case(example: dict) -> tuple[str, list[str]]:
    """The zoo example's question and document texts, which the "zoo" template renders back into its prompt."""
    return example["question"], example["document_texts"]


def test_spans_come_from_construction_not_search(chat_lm):
    """A sentence that two documents share gets each document's own span; the chat template's markup (and the
    template's system message, which says the task) is outside."""
    _, tokenizer = chat_lm
    built = build_prompt(tokenizer, "w30 w31", as_documents(DOCS), TINY)
    assert built.text == (f"w40 w42 {rag.SYSTEM} w43 "
                          "w40 w41 w10 w12 w1 w2 w3. w4 w5 w6. w12 w9 w13 w7 w8. w1 w2 w3. w12 w20 w21 w22. w11 w30 w31 w43 w44")
    assert [built.text[a:b] for a, b in built.document_spans] == ["w12 w1 w2 w3. w4 w5 w6.", "w12 w9 w13 w7 w8. w1 w2 w3.",
                                                                   "w12 w20 w21 w22."]
    sentences = [[built.text[a:b] for a, b in spans] for spans in built.sentence_spans]
    assert sentences == [["w1 w2 w3.", "w4 w5 w6."], ["w7 w8.", "w1 w2 w3."], ["w20 w21 w22."]]
    assert built.sentence_spans[0][0] != built.sentence_spans[1][1]
    assert built.text[slice(*built.question_span)] == "w30 w31"
    without_second = build_prompt(tokenizer, "w30 w31", as_documents(DOCS), TINY, kept=[0, 2])
    assert "w12 w20 w21 w22." in without_second.text and "w7 w8" not in without_second.text


def test_a_chat_template_without_a_system_role_gets_no_default_system_message(chat_lm):
    """The default system message is left out where the chat template refuses a system role (as Gemma 2's does); a
    system message the caller asked for is not dropped: the package's error says so."""
    _, tokenizer = chat_lm
    refusing = copy.deepcopy(tokenizer)
    refusing.chat_template = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}" + CHAT
    plain = dataclasses.replace(TINY, system=None)
    assert build_prompt(refusing, "w30 w31", as_documents(DOCS), TINY).text == build_prompt(
        tokenizer, "w30 w31", as_documents(DOCS), plain).text
    with pytest.raises(InvalidInputError, match="refused the system message"):
        build_prompt(refusing, "w30 w31", as_documents(DOCS), TINY, system="w5")


def test_sentences_split_offline():
    text = "Canberra is the capital of Australia. It was planned by Dr. Griffin in 1912! Was it? J. R. Tolkien.\n\nNext"
    assert [text[a:b] for a, b in split_sentences(text)] == [
        "Canberra is the capital of Australia.", "It was planned by Dr. Griffin in 1912!", "Was it?", "J. R. Tolkien.",
        "Next"]


def test_sentences_split_in_many_languages_with_exact_spans():
    """Japanese and Chinese full stops, German and Spanish abbreviations and decimals: every span indexes the
    original text exactly; the language is detected from the text or given."""
    from llm_attrib.rag.sentences import detect_language

    cases = {
        "ja": ("東京は日本の首都です。富士山は日本で一番高い山です。高さは3776.24メートルです。",
               ["東京は日本の首都です。", "富士山は日本で一番高い山です。", "高さは3776.24メートルです。"]),
        "zh": ("北京是中国的首都。 珠穆朗玛峰高8848.86米。你去过吗？", ["北京是中国的首都。", "珠穆朗玛峰高8848.86米。", "你去过吗？"]),
        "de": ("Dr. Müller wohnt in Berlin.  Der Preis stieg um 3,5 Prozent, d.h. stärker als erwartet.\n\nJa!",
               ["Dr. Müller wohnt in Berlin.", "Der Preis stieg um 3,5 Prozent, d.h. stärker als erwartet.", "Ja!"]),
        "es": ("El Sr. García vive en Madrid. ¿Vienes mañana?", ["El Sr. García vive en Madrid.", "¿Vienes mañana?"]),
    }
    for language, (text, sentences) in cases.items():
        assert detect_language(text) == language
        for given in (None, language):
            spans = split_sentences(text, given)
            assert [text[a:b] for a, b in spans] == sentences
            assert all(b <= c for (_, b), (c, _) in zip(spans, spans[1:]))
    assert split_sentences("") == [] and split_sentences(" \n ") == []


def test_the_generated_answer_ends_at_its_paragraph_or_sentence_budget():
    from llm_attrib.rag.answer import answer_end

    text = "Mount Fuji is the highest mountain in Japan. It is 3,776 m tall. Mount Kilimanjaro is in Africa."
    assert answer_end(text, 1) == text.index(" It") and answer_end(text, 2) == text.index(" Mount K")
    assert answer_end(text, 3) is None and answer_end(text, None) is None  # it may still go on
    assert answer_end("\n\nFuji.\n\nKilimanjaro.", None) == len("\n\nFuji.")
    assert answer_end("The answer is:\n\nFuji.\n\nMore", 3) == len("The answer is:\n\nFuji.")
    assert answer_end("富士山です。高いです。次です。", 2) == len("富士山です。高いです。")


def test_an_answer_cut_by_max_new_tokens_is_flagged_and_the_parts_add_up(tmp_path):
    """A model that can never end (no special token, no full stop, no line break) is cut by max_new_tokens: the
    result says so, and keeps it through a save. Each document's label and sentences add up to its score."""
    tokenizer = tiny_tokenizer(64, bos=False, extra=(".",))
    model = tiny_llama(context=96)
    model.generation_config.suppress_tokens = [0, 1, 2, 3, tokenizer.convert_tokens_to_ids(".")]
    result = rag.explain(model, tokenizer, "w30", DOCS, template=TINY, max_new_tokens=5, method="saliency",
                         verify=False, show_progress=False)
    assert result.truncated and len(result.explanation.target_tokens) >= 1
    assert len(result.answer.split()) == 5
    result.save(tmp_path / "r.json")
    loaded = rag.RagExplanation.load(tmp_path / "r.json")
    assert loaded.truncated
    text = result.explanation.text
    assert [text[a:b].strip() for a, b in result.header_spans] == ["w12", "w12 w9 w13", "w12"]
    parts = result.header_scores + torch.stack([s.sum(1) for s in result.sentence_scores], 1)
    torch.testing.assert_close(parts, result.document_scores, rtol=0, atol=1e-6)
    torch.testing.assert_close(loaded.header_scores, result.header_scores)
    assert not rag.explain(model, tokenizer, "w30", DOCS, answer=" w50", template=TINY, method="saliency",
                           verify=False, show_progress=False).truncated


@pytest.mark.parametrize("space", ["embeddings", "attention", "mask"])
def test_the_source_document_comes_first_on_the_rag_model(zoo, space):
    """Ground truth: the answer is copied from one document; the ranking, the citation and leave-one-out find it,
    and removing it is what the verdict measures."""
    model, tokenizer = zoo
    for example in llm_attrib.zoo.examples("rag", n=4, seed=31):
        question, documents = zoo_case(example)
        assert build_prompt(tokenizer, question, as_documents(documents), rag.TEMPLATES["zoo"]).text == example["prompt"]
        result = rag.explain(model, tokenizer, question, documents, template="zoo", space=space, show_progress=False)
        assert result.answer.strip() == example["answer"]
        assert result.top_document == example["relevant_document"]
        citation, = result.citations
        assert citation.documents[0][0] == example["relevant_document"] and citation.verdict.label == "supported"
        assert int(result.leave_one_out[0].argmax()) == example["relevant_document"]
        assert result.explanation.converged
        # the answer in full, without each, without all, and the check of the cache they reuse
        assert result.cost["n_forward_ablation"] == len(documents) + 3
        # fewer tokens than its removals' prompts alone would run in full: each ran after its first removed document
        n_prompt = len(tokenizer(example["prompt"])["input_ids"])
        assert 0 < result.cost["n_tokens_ablation"] < (len(documents) + 2) * n_prompt


def test_an_answer_whose_source_was_removed_is_not_supported(zoo):
    """The same answer, explained after its source document is dropped: no document carries it any more."""
    model, tokenizer = zoo
    for example in llm_attrib.zoo.examples("rag", n=4, seed=32):
        question, documents = zoo_case(example)
        documents.pop(example["relevant_document"])
        result = rag.explain(model, tokenizer, question, documents, answer=" " + example["answer"], template="zoo",
                             space="attention", show_progress=False)
        assert result.verdicts[0].label != "supported", result.verdicts[0]


def test_the_verdict_says_what_the_answer_loses_without_any_document(zoo):
    """drop_all is log p(answer | all documents) - log p(answer | none), the prompt re-rendered without them,
    checked against the model run directly; the zoo's answers are copied from a document, so it is large."""
    model, tokenizer = zoo
    example = llm_attrib.zoo.examples("rag", n=1, seed=33)[0]
    question, documents = zoo_case(example)
    answer = " " + example["answer"]
    result = rag.explain(model, tokenizer, question, documents, answer=answer, template="zoo", space="attention",
                         show_progress=False)
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]

    def log_p(kept):
        text = build_prompt(tokenizer, question, as_documents(documents), rag.TEMPLATES["zoo"], kept=kept).text
        prompt_ids = tokenizer(text)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([prompt_ids + answer_ids])).logits[0].float().log_softmax(-1)
        return sum(float(logits[len(prompt_ids) - 1 + i, a]) for i, a in enumerate(answer_ids))

    expected = log_p(None) - log_p([])
    assert abs(result.verdicts[0].drop_all - expected) < 1e-3
    assert expected > 5
    assert "without any document" in result.to_html()


def test_documents_are_ranked_in_the_mask_space_by_default(chat_lm):
    """rag.explain's default space is the mask for every method that has one, else attention where the method has
    it (raw attention), else the method's own; the default is exactly space="mask"."""
    model, tokenizer = chat_lm
    kwargs = dict(answer=" w50", template=TINY, verify=False, show_progress=False, **FIXED)
    default = rag.explain(model, tokenizer, "w30", DOCS, **kwargs)
    chosen = rag.explain(model, tokenizer, "w30", DOCS, space="mask", **kwargs)
    assert default.explanation.space == "mask"
    torch.testing.assert_close(default.document_scores, chosen.document_scores)
    saliency = rag.explain(model, tokenizer, "w30", DOCS, answer=" w50", template=TINY, verify=False,
                           show_progress=False, method="saliency")
    assert saliency.explanation.space == "mask"
    assert default_space("attention") == "attention"
    assert default_space("ig2") is None  # IG2 works over embeddings only


@pytest.mark.parametrize("space", ["embeddings", "attention", "mask"])
def test_only_the_documents_move_by_default(chat_lm, space):
    """scope="documents": the question and instructions stay real along the path, so in every space they get
    exactly zero and the documents' scores add up to f(input) - f(documents at their baseline)."""
    model, tokenizer = chat_lm
    scoped = rag.explain(model, tokenizer, "w30 w31", DOCS, answer=" w50 w51", template=TINY, space=space,
                         granularity="answer", verify=False, show_progress=False, **FIXED)
    whole = rag.explain(model, tokenizer, "w30 w31", DOCS, answer=" w50 w51", template=TINY, space=space,
                        granularity="answer", scope="prompt", verify=False, show_progress=False, **FIXED)
    scores = scoped.explanation.prompt_scores[0]
    inside = scoped.explanation.aggregate(scoped.document_spans).scores.sum()
    assert abs(scoped.other_score) < 1e-6 and whole.other_score != 0
    assert float(inside) == pytest.approx(float(scores.sum()), abs=1e-5)
    assert not torch.allclose(scoped.answer_document_scores, whole.answer_document_scores)
    with pytest.raises(UnknownNameError, match="scope"):
        rag.explain(model, tokenizer, "w30", ["w1"], answer=" w50", template=TINY, scope="everything")


def test_granularities_add_up(chat_lm, tmp_path):
    """IG is linear in the target: token rows summed over a sentence are the sentence's row, sentence rows summed
    are the whole answer's; saving and loading keeps every derived score."""
    model, tokenizer = chat_lm
    answer = " w50 w51. w52 w53 w54."
    by = {g: rag.explain(model, tokenizer, "w30 w31", DOCS, answer=answer, template=TINY, granularity=g,
                         show_progress=False, **FIXED) for g in rag.GRANULARITIES}
    assert by["sentence"].answer_sentences == [(0, 3), (3, 7)]
    assert [t.strip() for t in by["sentence"].explanation.target_tokens] == ["w50 w51 .", "w52 w53 w54 ."]
    tokens, sentences = by["token"].document_scores, by["sentence"].document_scores
    torch.testing.assert_close(torch.stack([tokens[:3].sum(0), tokens[3:].sum(0)]), sentences, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(sentences.sum(0), by["answer"].document_scores[0], atol=1e-4, rtol=1e-3)
    for g, result in by.items():
        assert len(result.answer_sentence_scores) == 3 and result.answer_sentence_scores[0].shape == (2,)
        result.save(tmp_path / f"{g}.json")
        loaded = rag.RagExplanation.load(tmp_path / f"{g}.json")
        torch.testing.assert_close(loaded.document_scores, result.document_scores)
        assert loaded.citations == result.citations and loaded.documents[1].title == "w9"
    assert len(by["token"].to_dataframe()) == 7 * 3
    assert by["sentence"].cost["n_backward"] * 7 == by["token"].cost["n_backward"] * 2


def test_bad_input_gets_a_clear_error_and_leaves_the_model_alone(chat_lm):
    model, tokenizer = chat_lm
    before = {name: p.requires_grad for name, p in model.named_parameters()}
    implementation = model.config._attn_implementation
    cases = [
        (dict(documents=[]), "no documents"),
        (dict(documents=["w1 w2", "  "]), r"documents \[1\] are empty"),
        (dict(documents=["w1 w2", "w3", "w1  w2"]), "documents 0 and 2 have the same text"),
        (dict(documents=["w1"], template="w10 {documents}"), r"lacks \{question\}"),
        (dict(documents=["w1"], template="w10 {documents} {question} {extra}"), r"unknown field \{extra\}"),
        (dict(documents=["w1 " * 40, "w2 " * 60]), r"more than the model's context of 96 \(document 1: 60 tokens, document 0: 40"),
        (dict(documents=["w1"], question=" "), "question is empty"),
        (dict(documents=[{"body": "w1"}]), "dict with a 'text' key"),
        (dict(documents=["w1", "w2"], shapley=True, shapley_budget=1), r"shapley_budget=1 forwards .* at least 2"),
    ]
    for kwargs, message in cases:
        args = {"question": "w30", "template": TINY, **kwargs}
        with pytest.raises(InvalidInputError, match=message):
            rag.explain(model, tokenizer, args.pop("question"), args.pop("documents"), answer=" w50",
                        show_progress=False, **args)
    with pytest.raises(UnknownNameError, match="granularity"):
        rag.explain(model, tokenizer, "w30", ["w1"], answer=" w50", template=TINY, granularity="word")
    assert {name: p.requires_grad for name, p in model.named_parameters()} == before
    assert model.config._attn_implementation == implementation


def test_an_answer_tokenised_differently_after_the_prompt_is_refused():
    """'Par' + 'is' becomes 'Paris' once joined: the answer's own tokens are not what the model would read."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<unk>", "is", "Par", "Paris", "capital"])}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="<unk>", continuing_subword_prefix=""))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    layout = rag.Template(prompt="{documents} {question} Par", document="{text}", chat=False)
    with pytest.raises(InvalidInputError, match="tokenises as"):
        rag.explain(tiny_llama(context=32), tokenizer, "capital", ["Paris capital"], answer="is", template=layout,
                    show_progress=False)


def test_thresholds_are_calibrated_from_known_margins():
    """Separated margins: low midway between the unsupported margins' 95th and the supported margins' 5th
    percentile, high the latter; overlapping margins: the overlap between the two is "uncertain"; the verdict
    follows them."""
    supported, unsupported = [float(m) for m in range(10, 31)], [float(m) for m in range(-5, 6)]
    low, high = rag.calibrate(supported, unsupported)
    assert (low, high) == pytest.approx(((4.5 + 11.0) / 2, 11.0))  # linear quantiles of -5..5 and 10..30
    assert rag.calibrate([float(m) for m in range(2, 23)], unsupported) == pytest.approx((3.0, 4.5))  # overlap
    from llm_attrib.rag.verdicts import judge

    assert [judge(m, 0.0, (low, high)).label for m in (2.0, 9.0, 12.0)] == ["unsupported", "uncertain", "supported"]
    assert judge(12.0, 0.0, (low, high), cited=False).label == "unsupported"
    with pytest.raises(InvalidInputError, match="at least two"):
        rag.calibrate([1.0], [0.0, 1.0])


def test_a_sentence_several_documents_carry_is_shared_not_unsupported():
    """Below the low threshold the verdict is "shared" only when the documents together carry the sentence (removing
    all of them costs at least the high threshold) and no other single document's removal costs more than the
    cited ones'; otherwise unsupported, as when nothing is cited. Above low the margin decides as before."""
    from llm_attrib.rag.verdicts import judge

    low, high = 2.0, 3.0
    assert judge(1.5, 0.5, (low, high), drop_all=3.0, drop_alone=1.2).label == "shared"
    assert judge(1.5, 0.5, (low, high), drop_all=2.9, drop_alone=1.2).label == "unsupported"  # documents not needed
    assert judge(1.5, 0.5, (low, high), drop_all=9.0, drop_alone=1.6).label == "unsupported"  # another carries more
    assert judge(1.5, 0.5, (low, high), cited=False, drop_all=9.0).label == "unsupported"
    assert judge(3.5, 0.5, (low, high), drop_all=9.0, drop_alone=0.5).label == "supported"
    assert judge(1.5, 0.5, None, drop_all=9.0, drop_alone=0.5).label == "uncalibrated"


def test_verdicts_are_uncalibrated_on_a_model_without_thresholds(chat_lm, zoo, tmp_path):
    """Margins are nats of one model: a model with no shipped thresholds gets "uncalibrated" verdicts that keep their
    margins (and survive a save), thresholds of one's own label them, the zoo model is found by its weights (not its
    path) in any dtype, and thresholds that are not two finite numbers with low <= high are refused."""
    model, tokenizer = chat_lm
    result = rag.explain(model, tokenizer, "w30", ["w1 w2", "w3"], answer=" w50", template=TINY, method="saliency",
                         show_progress=False)
    verdict = result.verdicts[0]
    assert (verdict.label, verdict.calibrated, verdict.thresholds) == ("uncalibrated", False, None)
    assert verdict.margin == pytest.approx(verdict.drop_cited - verdict.drop_other)
    result.save(tmp_path / "r.json")
    assert rag.RagExplanation.load(tmp_path / "r.json").verdicts[0] == verdict
    own = rag.explain(model, tokenizer, "w30", ["w1 w2", "w3"], answer=" w50", template=TINY, method="saliency",
                      thresholds=(0.5, 1.0), show_progress=False).verdicts[0]
    assert own.calibrated and own.thresholds == (0.5, 1.0) and own.label in ("supported", "unsupported", "uncertain")
    assert own.margin == pytest.approx(verdict.margin)
    for bad in ((20, 1), (float("nan"), 1.0), (0.0, float("inf")), (1.0,), "ab"):
        with pytest.raises(InvalidInputError, match="thresholds"):
            rag.explain(model, tokenizer, "w30", ["w1 w2"], answer=" w50", template=TINY, method="saliency",
                        thresholds=bad, show_progress=False)
    zoo_model, _ = zoo
    assert rag.calibrated_thresholds(zoo_model) == rag.THRESHOLDS
    import copy

    assert rag.calibrated_thresholds(copy.deepcopy(zoo_model).to(torch.bfloat16)) == rag.THRESHOLDS
    assert rag.calibrated_thresholds(model) is None


def test_the_cli_passes_thresholds_and_refuses_bad_ones(tmp_path, capsys):
    """`llm-attrib rag --thresholds LOW HIGH` labels with the given thresholds; (20, 1) is refused with exit code 2
    before any model is loaded; the terminal numbers documents from 1, as the prompt ("Document 1: ...") does."""
    from llm_attrib.cli import main

    assert main(["rag", "--thresholds", "20", "1", "--no-progress"]) == 2
    assert "low <= high" in capsys.readouterr().err
    out = tmp_path / "r.json"
    assert main(["rag", "--space", "attention", "--thresholds", "0.5", "1.5", "--json", str(out), "--no-progress"]) == 0
    result = rag.RagExplanation.load(out)
    assert result.verdicts[0].thresholds == (0.5, 1.5) and result.verdicts[0].calibrated
    printed = capsys.readouterr().out
    top = result.top_document
    assert f"│    1 │ {top + 1} " in printed


def test_memory_budget_and_recompute_reach_the_attribution(chat_lm):
    """rag.explain takes the Attributor's memory settings, so the memory guard's advice ("raise memory_budget")
    can be followed: a budget too small for one point is refused with the figures, a recomputed run equals the
    plain one."""
    model, tokenizer = chat_lm
    ask = dict(question="w30 w31", documents=DOCS, answer="w32 w33", show_progress=False, verify=False, **FIXED)
    with pytest.raises(InvalidInputError, match="memory budget is 0 MiB"):
        rag.explain(model, tokenizer, memory_budget=1, **ask)
    plain = rag.explain(model, tokenizer, recompute=False, **ask)
    recomputed = rag.explain(model, tokenizer, recompute=True, **ask)
    assert recomputed.explanation.cost["recompute"] and not plain.explanation.cost["recompute"]
    torch.testing.assert_close(recomputed.document_scores, plain.document_scores, rtol=1e-5, atol=1e-6)
