"""RAG on the real chat LLM SmolLM2-135M-Instruct: the default run answers, stops where its answer ends and is
judged with the thresholds calibrated for this model; Japanese and German documents get per-sentence citations."""

import pytest
import torch

import llm_attrib
from llm_attrib import rag
from llm_attrib.rag.verdicts import judge

SMOLLM2_THRESHOLDS = (2.12, 2.55)  # eval/results/rag/calibration.md, third rule
MOUNTAINS = [
    {"title": "Kilimanjaro", "text": "Mount Kilimanjaro is the highest mountain in Africa. It is a dormant volcano in Tanzania."},
    {"title": "Mount Fuji", "text": "Mount Fuji is the highest mountain in Japan. It last erupted in 1707."},
    {"title": "Mont Blanc", "text": "Mont Blanc is the highest mountain in the Alps. It stands on the border of France and Italy."},
]


@pytest.fixture(scope="module")
def smollm2():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield llm_attrib.zoo.load("smollm2")
    torch.set_num_threads(threads)


def test_the_default_run_is_judged_with_the_thresholds_calibrated_for_smollm2(smollm2):
    """The README's question, no answer given: the prompt says the task in a system message (in place of SmolLM2's
    own default one), the answer is one sentence that ends with the model's turn (not cut by max_new_tokens), its
    top document is the one whose removal costs it most, and its verdict, labelled by the thresholds shipped for
    this model (found by its weights), is not "unsupported". (SmolLM2 answers "The highest mountain in Japan is
    Mount Fuji, not Mount Kilimanjaro.": it knows Fuji, so the Kilimanjaro document, which the answer names, carries
    more of it; #29's "top document is Mount Fuji" is not what this model does, eval/results/rag/calibration.md.)
    The parts of every document (its label and its sentences) add up to its score on this byte-level tokenizer."""
    model, tokenizer = smollm2
    result = rag.explain(model, tokenizer, "What is the highest mountain in Japan?", MOUNTAINS, show_progress=False)
    assert rag.SYSTEM in result.explanation.text and "SmolLM" not in result.explanation.text
    assert "Fuji" in result.answer and len(result.answer_sentences) == 1 and not result.truncated
    assert result.top_document == int(result.leave_one_out[0].argmax())
    thresholds = rag.calibrated_thresholds(model)
    assert thresholds == SMOLLM2_THRESHOLDS and rag.calibrated_thresholds(llm_attrib.zoo.load("rag")[0]) == rag.THRESHOLDS
    for v in result.verdicts:
        assert v.calibrated and v.thresholds == thresholds and v.margin == pytest.approx(v.drop_cited - v.drop_other)
        assert v.label == judge(v.drop_cited, v.drop_other, thresholds).label != "unsupported"
    parts = result.header_scores + torch.stack([s.sum(1) for s in result.sentence_scores], 1)
    torch.testing.assert_close(parts, result.document_scores, rtol=0, atol=1e-5)
    credited = {word: d for word, d, _ in result.word_documents()}  # which document carried which answer word
    assert credited["Kilimanjaro"] == 0 and credited["Fuji"] == 1


def test_an_answer_several_documents_state_is_shared_not_unsupported(smollm2):
    """The documents of examples/rag_documents.py (only the Japan one titled): SmolLM2 answers "Mount Fuji is the
    highest mountain in Japan.", ranks the Japan document first, and the verdict is not "unsupported": the answer
    loses several nats without the documents, and the Kilimanjaro document states the same sentence shape, so
    removing the Japan one alone costs it little ("shared", eval/results/rag/calibration.md)."""
    model, tokenizer = smollm2
    documents = [
        "Mount Kilimanjaro is the highest mountain in Africa. It is a dormant volcano in Tanzania.",
        {"title": "Japan", "text": "Mount Fuji is the highest mountain in Japan. It last erupted in 1707."},
        "Mont Blanc is the highest mountain in the Alps. It lies on the border of France and Italy.",
    ]
    result = rag.explain(model, tokenizer, "What is the highest mountain in Japan?", documents, show_progress=False)
    assert result.answer.strip() == "Mount Fuji is the highest mountain in Japan." and result.top_document == 1
    (verdict,) = result.verdicts
    assert verdict.label == "shared" and verdict.drop_all >= verdict.thresholds[1]
    assert verdict.drop_cited >= float(result.leave_one_out[0, [0, 2]].max())
    assert {word: d for word, d, _ in result.word_documents()}["Fuji"] == 1


JAPANESE = ["東京は日本の首都です。", "人口は約千四百万人です。"], ["富士山は日本で一番高い山です。", "高さは3776メートルです。",
                                                   "最後の噴火は1707年でした。"]
GERMAN = ["Berlin ist die Hauptstadt Deutschlands.", "Dort leben ca. 3,7 Mio. Menschen."], [
    "Die Zugspitze ist der höchste Berg Deutschlands.", "Sie ist 2.962 m hoch.", "Der Gipfel liegt an der Grenze zu Österreich."]


@pytest.mark.parametrize("question, sentences, answer", [
    ("日本で一番高い山は何ですか？", JAPANESE, "富士山です。"),
    ("Wie hoch ist die Zugspitze?", GERMAN, "Die Zugspitze ist 2.962 m hoch."),
], ids=["ja", "de"])
def test_non_english_documents_get_per_sentence_citations(smollm2, question, sentences, answer):
    """Each document is split into its sentences (language detected, exact spans, abbreviations and decimals kept
    inside), and the answer cites a sentence of the document that states it, not the whole document."""
    joiner = "" if "。" in sentences[0][0] else " "
    documents = [joiner.join(doc) for doc in sentences]
    result = rag.explain(*smollm2, question, documents, answer, method="attention", verify=False, show_progress=False)
    text = result.explanation.text
    assert [[text[a:b] for a, b in spans] for spans in result.sentence_spans] == [list(doc) for doc in sentences]
    d, _, _ = result.citations[0].sentences[0]
    assert d == 1 and [len(s) for s in result.answer_sentence_scores] == [2, 3]
