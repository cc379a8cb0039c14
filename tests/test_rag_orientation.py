"""One orientation for a RAG result's tables: documents on the last axis of `document_scores`, `leave_one_out` and
`shapley.values`, proved against forwards computed here without the package (3 documents and 2 answer sentences,
so a transposed table cannot pass); format-1 files (tables documents first) still load into it and render the
numbers they rendered before.

tests/data/rag_explanation_v1.json was saved by the package at commit dc8afb9 (format 1), before the change: the
explanation of tests/test_rag_report.py's QUESTION, DOCUMENTS and ANSWER on its `words_tokenizer` and a one-layer
random Llama (hidden 16, initializer_range 0.2, seed 0), granularity "sentence", shapley=True, n_steps=4.
"""

import io
import itertools
import json
import math
import re
import warnings
from pathlib import Path

import pytest
import torch
from rich.console import Console
from transformers import LlamaConfig, LlamaForCausalLM

from llm_attrib import InvalidInputError, rag
from llm_attrib.render.terminal import print_rag_explanation
from test_rag_report import ANSWER, DOCUMENTS, QUESTION, words_tokenizer

RAG_V1 = Path(__file__).parent / "data" / "rag_explanation_v1.json"
TEMPLATE = rag.Template(prompt="Answer the question using the documents. {documents} Question: {question} Answer:",
                        document="Document {index}: {text}", titled="Document {index} ({title}): {text}",
                        separator=" ", chat=False)

# The tables' cells as commit dc8afb9 rendered RAG_V1 (a row per document, a column per answer sentence), and the
# terminal's Shapley column (the whole answer's, per document).
V1_PAGE = {"leave-one-out": [["-0.09", "+0.52"], ["+0.98", "+0.83"], ["+1.85", "+0.43"]],
           "shapley": [["-0.64", "-0.38"], ["+0.32", "+0.47"], ["+1.43", "+0.07"]]}
V1_TERMINAL_SHAPLEY = {"1 (Mount Fuji)": "-1.02", "2 (Kyoto)": "+0.79", "3": "+1.50"}


@pytest.fixture(scope="module")
def setup():
    tokenizer = words_tokenizer([QUESTION, ANSWER, *(d["text"] for d in DOCUMENTS), TEMPLATE.prompt,
                                 "Document 1 ( ): 3"])
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256, pad_token_id=0,
                         bos_token_id=2, eos_token_id=3, initializer_range=0.2)
    model = LlamaForCausalLM(config).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = rag.explain(model, tokenizer, QUESTION, DOCUMENTS, answer=ANSWER, template=TEMPLATE,
                             shapley=True, n_steps=4, show_progress=False)
    return model, tokenizer, result


def token_log_probs(model, tokenizer, kept: list[int]) -> torch.Tensor:
    """(answer tokens,) log p(token | prompt with only the `kept` documents, earlier answer tokens): the prompt
    written out here and one plain forward."""
    documents = " ".join(f"Document {i + 1}" + (f" ({DOCUMENTS[i]['title']})" if "title" in DOCUMENTS[i] else "")
                         + f": {DOCUMENTS[i]['text']}" for i in kept)
    prompt = f"Answer the question using the documents. {documents} Question: {QUESTION} Answer:"
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + answer_ids])).logits[0].double()
    return logits[len(prompt_ids) - 1:-1].log_softmax(-1)[torch.arange(len(answer_ids)), answer_ids]


def sentence_log_probs(model, tokenizer, kept: list[int], result: rag.RagExplanation) -> torch.Tensor:
    """(answer sentences,) log p(sentence | prompt with only the `kept` documents, earlier sentences)."""
    per_token = token_log_probs(model, tokenizer, kept)
    return torch.stack([per_token[a:b].sum() for a, b in result.answer_sentences])


def test_documents_are_the_last_axis_of_every_table(setup):
    """leave_one_out[:, d] is what each sentence loses without document d, and shapley.values[:, d] document d's
    mean marginal contribution over every order, both from forwards computed here; document_scores[:, d] sums
    document d's tokens."""
    model, tokenizer, result = setup
    n_docs, n_sentences = len(DOCUMENTS), len(result.answer_sentences)
    assert (n_sentences, n_docs) == (2, 3) and result.granularity == "sentence"
    coalition = {kept: sentence_log_probs(model, tokenizer, list(kept), result)
                 for r in range(n_docs + 1) for kept in itertools.combinations(range(n_docs), r)}
    everyone = tuple(range(n_docs))
    torch.testing.assert_close(result.shapley.full, coalition[everyone], rtol=0, atol=1e-4)  # the same game
    for d in range(n_docs):
        without = coalition[tuple(i for i in everyone if i != d)]
        torch.testing.assert_close(result.leave_one_out[:, d].double(), coalition[everyone] - without,
                                   rtol=0, atol=1e-4)
        marginal = torch.zeros(n_sentences, dtype=torch.float64)
        for order in itertools.permutations(everyone):
            before = tuple(sorted(order[:order.index(d)]))
            marginal += coalition[tuple(sorted(before + (d,)))] - coalition[before]
        torch.testing.assert_close(result.shapley.values[:, d], marginal / math.factorial(n_docs), rtol=0, atol=1e-4)
        start, end = result.document_spans[d]
        tokens = [t for t, (a, b) in enumerate(result.explanation.input_offsets) if b > a and start <= a < end]
        torch.testing.assert_close(result.document_scores[:, d], result.explanation.scores[:, tokens].sum(1))
    torch.testing.assert_close(result.sentence_document_scores(), result.document_scores)  # sentence rows


def test_each_answer_word_is_credited_to_the_document_whose_removal_costs_it_most(setup, tmp_path):
    """word_leave_one_out[w, d] is what answer word w (its tokens, punctuation left out) loses without document d,
    from forwards computed here; word_documents names, for each word losing at least 0.1 nats, that document; both
    survive a save and load."""
    model, tokenizer, result = setup
    text = result.explanation.text
    assert [text[a:b] for a, b in result.answer_words] == re.findall(r"\w+", ANSWER)  # "Fuji", not "Fuji."
    answer_ids = tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
    words = [tokenizer.decode([i]) for i in answer_ids]
    everyone = list(range(len(DOCUMENTS)))
    full = token_log_probs(model, tokenizer, everyone)
    for d in everyone:
        drops = full - token_log_probs(model, tokenizer, [i for i in everyone if i != d])
        expected = torch.stack([drops[t] for t, word in enumerate(words) if re.fullmatch(r"\w+", word)])
        torch.testing.assert_close(result.word_leave_one_out[:, d].double(), expected, rtol=0, atol=1e-4)
    credited = result.word_documents()
    best = result.word_leave_one_out.max(1)
    assert credited == [(text[a:b], int(d), float(drop)) for (a, b), drop, d in zip(result.answer_words, *best)
                        if drop >= 0.1]
    assert credited, "this random model's answer words must depend on some document"
    assert len(result.word_documents(min_drop=-math.inf)) == len(result.answer_words)
    result.save(tmp_path / "r.json")
    again = rag.RagExplanation.load(tmp_path / "r.json")
    assert again.answer_words == result.answer_words and again.word_documents() == credited
    data = json.loads((tmp_path / "r.json").read_text())
    data["word_leave_one_out"] = data["word_leave_one_out"][1:]
    with pytest.raises(InvalidInputError, match="word_leave_one_out must be"):
        rag.RagExplanation.from_dict(data)


def test_a_format_1_file_loads_into_todays_layout(setup, tmp_path):
    """The tables of a format-1 file come back transposed (documents last), everything else as saved, and saving
    writes format 2, which loads to the same result."""
    raw = json.loads(RAG_V1.read_text())
    assert raw["format_version"] == 1 and len(raw["leave_one_out"]) == 3 and len(raw["leave_one_out"][0]) == 2
    loaded = rag.RagExplanation.load(RAG_V1)
    assert torch.equal(loaded.leave_one_out, torch.tensor(raw["leave_one_out"]).T)
    assert torch.equal(loaded.shapley.values, torch.tensor(raw["shapley"]["values"], dtype=torch.float64).T)
    assert torch.equal(loaded.shapley.stderr, torch.tensor(raw["shapley"]["stderr"], dtype=torch.float64).T)
    assert loaded.shapley.full.tolist() == raw["shapley"]["full"] and loaded.shapley.exact
    torch.testing.assert_close(loaded.shapley.values.sum(1), loaded.shapley.full - loaded.shapley.empty)
    assert loaded.document_scores.shape == loaded.leave_one_out.shape  # sentence rows, documents last
    loaded.save(tmp_path / "v2.json")
    again = json.loads((tmp_path / "v2.json").read_text())
    assert again["format_version"] == 2 and again["leave_one_out"] == loaded.leave_one_out.tolist()
    assert rag.RagExplanation.load(tmp_path / "v2.json").to_dict() == again
    fresh = setup[2].to_dict()
    assert fresh["format_version"] == 2 and len(fresh["leave_one_out"]) == 2 and len(fresh["leave_one_out"][0]) == 3


def test_a_format_1_file_with_todays_layout_is_refused():
    """A format-1 file must hold its tables documents first: (answer sentences, documents) there is a broken file."""
    raw = json.loads(RAG_V1.read_text())
    raw["leave_one_out"] = [list(column) for column in zip(*raw["leave_one_out"])]
    with pytest.raises(InvalidInputError, match=r"leave_one_out must be \(documents 3, answer sentences 2\)"):
        rag.RagExplanation.from_dict(raw)


def page_tables(result: rag.RagExplanation) -> dict[str, list[list[str]]]:
    """The report's leave-one-out and Shapley tables as shown: a row per document, a cell per answer sentence."""
    page = result.to_html()
    tables = {}
    for table_id in ("leave-one-out", "shapley"):
        body = re.search(rf'<table class="loo[^"]*" id="{table_id}">(.*?)</table>', page, re.S).group(1)
        rows = re.findall(r"<tr><th title=[^>]*>.*?</tr>", body, re.S)
        tables[table_id] = [re.findall(r'<td class="num"[^>]*>([^<]*)</td>', row) for row in rows]
    return tables


def terminal_shapley(result: rag.RagExplanation) -> dict[str, str]:
    """The terminal's Shapley column, by the document label it shows."""
    console = Console(file=io.StringIO(), width=200, color_system=None)
    print_rag_explanation(result, console)
    lines = console.file.getvalue().splitlines()
    header = [c.strip() for c in next(line for line in lines if "Shapley (nats)" in line).split("┃")]
    document, shapley = header.index("document"), header.index("Shapley (nats)")
    rows = [[c.strip() for c in line.split("│")] for line in lines if line.startswith("│")]
    return {cells[document]: cells[shapley] for cells in rows if cells[1].isdigit()}


def test_the_report_and_terminal_show_the_numbers_they_showed_before():
    """The format-1 file renders the same table cells and Shapley column as before the change."""
    result = rag.RagExplanation.load(RAG_V1)
    assert page_tables(result) == V1_PAGE
    assert terminal_shapley(result) == V1_TERMINAL_SHAPLEY


def test_the_report_and_terminal_show_each_document_on_its_own_row(setup):
    """A new result's report row d holds document d's column of each table (proved above against forwards), and the
    terminal's Shapley column document d's total."""
    result = setup[2]
    tables = page_tables(result)
    for table_id, values in (("leave-one-out", result.leave_one_out), ("shapley", result.shapley.values)):
        assert tables[table_id] == [[f"{float(v):+.2f}" for v in values[:, d]] for d in range(len(DOCUMENTS))]
    totals = result.shapley.values.sum(0)
    labels = [f"{d + 1}" + (f" ({doc['title']})" if "title" in doc else "") for d, doc in enumerate(DOCUMENTS)]
    assert terminal_shapley(result) == {label: f"{float(totals[d]):+.2f}" for d, label in enumerate(labels)}
