"""The RAG HTML report: one self-contained page that escapes what documents hold, and whose selection reshades the
documents in a real browser (headless Chromium through selenium)."""

import copy
import dataclasses
import json
import math
import re
import shutil
import warnings
from html.parser import HTMLParser

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import llm_attrib
from llm_attrib import rag
from llm_attrib.render._colors import score_rgb
from llm_attrib.render.rag_html import render_rag_html

# A chat model over real words: role markers are words, so the template's markup is ordinary tokens.
TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} END {% endfor %}"
            "{% if add_generation_prompt %}assistant :{% endif %}")
NASTY = "Odd text </script><b>& \"quoted\" 'single' < > \U0001F600 here. It ends <!-- not a comment --> fine."
DOCUMENTS = [
    {"title": "Mount Fuji", "id": "wiki-1", "text": "Mount Fuji is the highest mountain in Japan. It rises 3776 metres. "
                                                   "It last erupted in 1707."},
    {"title": "Kyoto", "text": "Kyoto was the capital of Japan. It is famous for temples."},
    {"text": NASTY},
]
QUESTION = "What is the highest mountain in Japan?"
ANSWER = "The highest mountain is Mount Fuji. It is 3776 metres tall."


def words_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer (no <bos>) whose vocabulary is every word and punctuation run of `texts`."""
    split = pre_tokenizers.Whitespace()
    words = dict.fromkeys(w for text in texts for w, _ in split.pre_tokenize_str(text))
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<bos>", "<eos>", *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = split
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>",
                                        eos_token="<eos>")
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def tiny_rag_result(shapley: bool = False, show_progress: bool = False) -> rag.RagExplanation:
    """A quick RAG explanation of the chat fixture's example on a one-layer random Llama (for display and file
    tests, where the scores' meaning does not matter)."""
    tokenizer = words_tokenizer([QUESTION, ANSWER, *(d["text"] for d in DOCUMENTS), "user assistant : END",
                                 "Answer the question using the documents. Question: Document 1 (a): Document 3: x"])
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256, pad_token_id=0,
                         bos_token_id=2, eos_token_id=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rag.explain(LlamaForCausalLM(config).eval(), tokenizer, QUESTION, DOCUMENTS, answer=ANSWER,
                           granularity="sentence", shapley=shapley, n_steps=4, show_progress=show_progress)


def test_one_progress_bar_for_the_whole_call(monkeypatch):
    """rag.explain shows one labelled bar through its phases (answer, attribution, removals), not one per phase."""
    from llm_attrib.core import progress

    opened, phases = [], []
    original = progress.Progress.__init__
    monkeypatch.setattr(progress.Progress, "__init__", lambda self, enabled: (opened.append(enabled),
                                                                              original(self, enabled))[-1])
    monkeypatch.setattr(progress.Progress, "phase", lambda self, label, total=None: phases.append(label))
    tiny_rag_result(show_progress=True)
    assert opened == [True]
    assert phases[0] == "reading the answer" and phases[1].startswith("attributing") and phases[-1].startswith("verifying")


@pytest.fixture(scope="module")
def chat():
    tokenizer = words_tokenizer([QUESTION, ANSWER, *(d["text"] for d in DOCUMENTS), "user assistant : END",
                                 "Answer the question using the documents. Question: Document 1 (a): Document 3: x"])
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         initializer_range=0.1, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    model = LlamaForCausalLM(config).eval()
    return {g: rag.explain(model, tokenizer, QUESTION, DOCUMENTS, answer=ANSWER, granularity=g, shapley=g == "sentence",
                           show_progress=False)
            for g in ("sentence", "token", "answer")}


@pytest.fixture(scope="module")
def zoo():
    model, tokenizer = llm_attrib.zoo.load("rag")
    example = llm_attrib.zoo.examples("rag", n=1, seed=0)[0]
    return rag.explain(model, tokenizer, example["question"], example["document_texts"], template="zoo",
                       space="attention", show_progress=False)


class Page(HTMLParser):
    """The parsed page: tag balance, the text inside each document card, the JSON blob, every src/href."""

    VOID = {"meta", "link", "br", "hr", "img", "input", "col", "wbr", "source"}

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.urls, self.scripts = [], [], [], []
        self.card_text: dict[int, str] = {}
        self.classes: list[tuple[str, str]] = []  # (class, text) of elements with a class, for labels
        self._card, self._doc_text_depth, self._script = None, None, None
        self._open_text: list[list] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href", "action", "poster"):
            if key in attrs:
                self.urls.append(attrs[key])
        if tag == "script":
            self._script = [attrs.get("type"), ""]
        if tag in self.VOID:
            return
        self.stack.append(tag)
        if attrs.get("id", "").startswith("doc-"):
            self._card = int(attrs["id"][4:])
        if "doc-text" in attrs.get("class", "").split() and self._card is not None:
            self._doc_text_depth = len(self.stack)
            self.card_text[self._card] = ""
        self._open_text.append([attrs.get("class", ""), ""])

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
            return
        if self._doc_text_depth == len(self.stack):
            self._doc_text_depth, self._card = None, None
        self.stack.pop()
        cls, text = self._open_text.pop()
        if cls:
            self.classes.append((cls, text))
        if self._open_text:
            self._open_text[-1][1] += text
        if tag == "script":
            self.scripts.append(tuple(self._script))

    def handle_data(self, data):
        if self._script is not None and self.stack and self.stack[-1] == "script":
            self._script[1] += data
            return
        if self._doc_text_depth is not None:
            self.card_text[self._card] += data
        if self._open_text:
            self._open_text[-1][1] += data


def blob(page: Page) -> dict:
    (text,) = [t for kind, t in page.scripts if kind == "application/json"]
    return json.loads(text)


def test_page_parses_and_holds_every_document_text(chat, zoo):
    for result in (*chat.values(), zoo):
        text = render_rag_html(result)
        page = Page(text)
        assert page.errors == [] and page.stack == []
        assert text.startswith("<!DOCTYPE html>")
        assert sorted(page.card_text) == list(range(len(result.documents)))
        for d, document in enumerate(result.documents):
            assert page.card_text[d] == document.text  # every character, in order, as text


def test_hostile_document_text_round_trips_as_text(chat):
    result = chat["sentence"]
    text = result.to_html()
    page = Page(text)
    assert page.card_text[2] == NASTY
    assert "</script><b>" not in text and "<!-- not" not in text
    assert text.count("</script>") == 2 == len(page.scripts)  # only the page's own two scripts close
    data = blob(page)
    assert data["documents"][2]["text"] == NASTY  # the JSON blob survives too (emoji included)
    assert data["answer"] == result.answer and data["question"] == QUESTION


def test_no_external_resources(chat, zoo):
    for result in (chat["token"], zoo):
        text = render_rag_html(result)
        page = Page(text)
        assert [u for u in page.urls if re.match(r"\s*(https?:|//|data:|file:)", u, re.I)] == []
        assert "http://" not in text.replace(NASTY, "") and "https://" not in text.replace(NASTY, "")
        assert not re.search(r"@import|url\(|<link|<iframe|<img", text)


def test_verdicts_citations_and_leave_one_out_are_shown(chat):
    result = chat["sentence"]
    page = Page(result.to_html())
    labels = [text.strip() for cls, text in page.classes if cls == "verdict"]
    assert labels == [v.label for v in result.verdicts] and len(labels) == 2
    assert set(labels) == {"uncalibrated"}  # the tiny model has no calibrated thresholds: margins only
    table = [text for cls, text in page.classes if cls == "loo"]
    assert len(table) == 1
    for d in range(len(result.documents)):
        for s in range(2):
            assert f"{float(result.leave_one_out[s, d]):+.2f}" in table[0]
    (citations,) = [text for cls, text in page.classes if cls == "t"]
    for citation in result.citations:
        for d, score in citation.documents:
            assert f"Document {d + 1}" in citations and f"{score:+.3g}" in citations


def test_document_headers_are_shaded_and_add_up(chat):
    for result in chat.values():
        page = Page(result.to_html())
        heads = [text for cls, text in page.classes if cls == "dochead"]
        assert heads[:2] == ["Document 1 (Mount Fuji):", "Document 2 (Kyoto):"] and heads[2] == "Document 3:"
        data = blob(page)
        for r, row in enumerate(data["docScores"]):
            for d, total in enumerate(row):
                parts = data["headScores"][r][d] + sum(data["sentScores"][d][r])
                assert parts == pytest.approx(total, abs=1e-5)  # the header and sentences make the document


def test_uncalibrated_verdicts_are_neutral_margins(chat):
    result = chat["sentence"]
    verdicts = [dataclasses.replace(v, label="uncalibrated", calibrated=False) for v in result.verdicts]
    text = dataclasses.replace(result, verdicts=verdicts).to_html()
    page = Page(text)
    assert [t.strip() for cls, t in page.classes if cls == "verdict"] == ["uncalibrated", "uncalibrated"]
    assert "#cf222e" not in re.search(r'id="citations".*?</table>', text, re.S).group(0)  # never the red label
    for verdict in verdicts:
        assert f"margin <b class=\"num\">{verdict.margin:+.2f}</b> nats (thresholds not calibrated" in text
    assert "Uncalibrated:" in text and "unsupported</b>" not in text


def test_truncated_answer_is_flagged(chat):
    result = chat["sentence"]
    assert 'id="truncated"' not in result.to_html()
    text = dataclasses.replace(result, truncated=True).to_html()
    assert 'id="truncated"' in text and "Answer truncated." in text


def test_shapley_values_are_shown_beside_leave_one_out(chat):
    result = chat["sentence"]
    page = Page(result.to_html())
    (table,) = [text for cls, text in page.classes if cls == "loo shapley"]
    for d in range(len(result.documents)):
        for s in range(2):
            assert f"{float(result.shapley.values[s, d]):+.2f}" in table
    assert "exact, from all 8 subsets of documents" in result.to_html()
    assert Page(chat["token"].to_html()).classes and "Shapley" not in chat["token"].to_html()
    sampled = dataclasses.replace(result.shapley, exact=False, stderr=torch.full_like(result.shapley.values, 0.25),
                                  n_orders=4, n_subsets=6)
    page = dataclasses.replace(result, shapley=sampled).to_html()
    assert "estimated from 4 sampled orders over 6 subsets, standard error up to 0.25 nats" in page


def test_header_states_how_it_was_explained_and_convergence(chat):
    result = chat["sentence"]
    text = result.to_html(title="My report")
    assert "<title>My report</title>" in text
    for part in ("method <b>ig</b>", "space <b>mask</b>", "granularity <b>sentence</b>", "forwards", "backwards"):
        assert part in text
    converged = copy.copy(result)
    converged.explanation = copy.copy(result.explanation)
    converged.explanation.converged = True
    assert 'id="not-converged"' not in render_rag_html(converged) and "converged · worst" in render_rag_html(converged)
    converged.explanation.converged = False
    shown = render_rag_html(converged)
    assert 'id="not-converged"' in shown and "Not converged." in shown
    worst = float(result.explanation.completeness_error.max())
    assert f"{worst:.2%}" in shown


def test_rows_follow_the_granularity(chat):
    for granularity, result in chat.items():
        page = Page(result.to_html())
        rows = [text for cls, text in page.classes if cls.split()[0] == "row"]
        assert len(rows) == len(result.explanation.target_tokens)
        assert "".join(rows).replace(" ", "") == ANSWER.replace(" ", "")
        data = blob(page)
        assert len(data["docScores"]) == len(rows) and len(data["sentenceRows"]) == (1 if granularity == "answer" else 2)
        assert [len(m[0]) for m in data["sentScores"]] == [len(s) for s in result.sentence_spans]
    assert 'data-key="s1"' in chat["token"].to_html()  # token rows can be selected by answer sentence


def test_retriever_view_renders_what_is_there(chat):
    result = copy.copy(chat["sentence"])
    full = {"query": QUESTION, "document": DOCUMENTS[0]["text"], "query_tokens": ["[CLS]", "What", "is"],
            "query_offsets": [[0, 0], [0, 4], [5, 7]], "query_scores": [0.0, 0.2, -0.1],
            "document_tokens": ["Mount", "Fuji"], "document_offsets": [[0, 5], [6, 10]], "document_scores": [0.5, None],
            "similarity": 0.77, "baseline_similarity": 0.01, "completeness_error": 0.002, "converged": True, "rank": 1}
    partial = {"query_tokens": ["only", "tokens", "</script>"], "query_scores": [1.0, -1.0]}
    result.retrieval = [partial, full, "not a dict"]
    page = Page(result.to_html())
    assert page.errors == []
    text = result.to_html()
    assert "Retriever" in text and "0.770" in text and "Document 1: Mount Fuji" in text
    assert f"background-color:rgb{score_rgb(1.0)}" in text  # the query's top token, on its own scale
    assert "&lt;/script&gt;" in text
    result.retrieval = []
    assert "Retriever" not in result.to_html()


def test_real_retriever_output_renders(chat):
    retriever = pytest.importorskip("llm_attrib.rag.retriever")
    if not hasattr(retriever, "rank_and_explain"):
        pytest.skip("llm_attrib.rag.retriever has no rank_and_explain yet")
    from transformers import AutoModel, AutoTokenizer

    folder = llm_attrib.zoo.encoder_path()
    encoder, encoder_tokenizer = AutoModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    result = copy.copy(chat["sentence"])
    texts = [d["text"] for d in DOCUMENTS[:2]]
    result.retrieval = [r.to_dict() for r in retriever.rank_and_explain(encoder, encoder_tokenizer, QUESTION, texts,
                                                                         n_steps=8)]
    text = result.to_html()
    assert Page(text).errors == []
    assert text.count('class="retr"') == 2 and "Mount" in text and 'class="rtok"' in text
    moved = result.retrieval[0].get("params", {}).get("move")
    if moved == "document":  # the query stayed real along the retriever's path: shown as text, not shaded
        assert text.count("kept at its real value along the path") == 2


# ------------------------------------------------------------------------------------------------------------------
# In a browser


def _browser():
    """A headless Chromium through selenium, or a skip when Chromium (and its driver) is not installed."""
    binary = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip("Chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver)")
    from selenium import webdriver  # a test dependency: pip install selenium
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(flag)
    options.binary_location = binary
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def _sentence_colours(driver) -> dict[tuple[int, int], tuple[int, int, int]]:
    spans = driver.execute_script(
        "return Array.from(document.querySelectorAll('.sent')).map(function (e) {"
        "  return [+e.dataset.d, +e.dataset.s, getComputedStyle(e).backgroundColor]; });")
    out = {}
    for d, s, colour in spans:
        out[(d, s)] = tuple(int(v) for v in re.findall(r"\d+", colour)[:3])
    return out


def _headers(result, rows: list[int]) -> torch.Tensor:
    """(documents,) the selection's score of each document's header: the document's score minus its sentences'."""
    sentences = torch.stack([s[rows].sum(0).sum() for s in result.sentence_scores])
    return result.document_scores[rows].sum(0) - sentences


def _expected(scores: list[torch.Tensor], headers: torch.Tensor) -> dict[tuple[int, int], float]:
    """Sentence -> normalised score in [-1, 1] (by the largest |score| over all documents' sentences and headers:
    one scale for every shaded part of a document)."""
    flat = {(d, s): float(v) for d, row in enumerate(scores) for s, v in enumerate(row.tolist())}
    peak = max([abs(v) for v in flat.values()] + headers.abs().tolist()) or 1.0
    return {key: v / peak for key, v in flat.items()}


def _check_shading(colours, expected):
    """Each sentence's colour is the shared scale's colour of its normalised score (to one 1% step), and the most
    intensely positive colour is the top-scoring sentence's."""
    levels = [-1.0 + k / 100 for k in range(201)]
    for key, value in expected.items():
        nearest = min(levels, key=lambda level: abs(level - value))
        allowed = {score_rgb(nearest + step) for step in (-0.01, 0.0, 0.01)}
        assert colours[key] in allowed, (key, value, colours[key])
    redness = {key: r - b for key, (r, g, b) in colours.items()}  # monotone in the signed score on this scale
    top = max(expected, key=expected.get)
    runner_up = sorted(expected.values())[-2] if len(expected) > 1 else -math.inf
    if expected[top] > 0 and expected[top] - runner_up > 0.02:
        assert max(redness, key=redness.get) == top


def test_selecting_rows_reshades_the_documents_in_a_browser(chat, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    result = chat["sentence"]
    path = tmp_path / "rag_report.html"
    path.write_text(result.to_html(), encoding="utf-8")
    driver = _browser()
    try:
        driver.get(path.as_uri())
        whole = _sentence_colours(driver)
        _check_shading(whole, _expected(result.answer_sentence_scores, _headers(result, [0, 1])))  # the default selection is the whole answer
        rows = driver.find_elements(By.CSS_SELECTOR, ".row")
        assert len(rows) == 2
        rows[1].click()
        second = _sentence_colours(driver)
        assert second != whole
        _check_shading(second, _expected([s[1] for s in result.sentence_scores], _headers(result, [1])))
        assert "sel" in rows[1].get_attribute("class").split()
        ActionChains(driver).move_to_element(rows[0]).perform()  # hovering previews the first row...
        _check_shading(_sentence_colours(driver), _expected([s[0] for s in result.sentence_scores], _headers(result, [0])))
        ActionChains(driver).move_to_element(driver.find_element(By.TAG_NAME, "h1")).perform()
        assert _sentence_colours(driver) == second  # ...and leaving it returns to the pinned row
        ranks = {int(card.get_attribute("data-d")): card.find_element(By.CSS_SELECTOR, ".rank").text
                 for card in driver.find_elements(By.CSS_SELECTOR, ".card")}
        order = result.document_scores[1].argsort(descending=True).tolist()
        assert ranks == {d: f"#{order.index(d) + 1}" for d in range(len(result.documents))}
        driver.find_element(By.CSS_SELECTOR, 'button[data-key="all"]').click()
        assert _sentence_colours(driver) == whole
        driver.find_element(By.CSS_SELECTOR, 'input[value="token"]').click()  # token shading replaces sentences'
        shaded = driver.execute_script(
            "return Array.from(document.querySelectorAll('.doc-text .tok')).filter(function (e) {"
            "  return getComputedStyle(e).backgroundColor !== 'rgba(0, 0, 0, 0)'; }).length")
        assert shaded > 0 and set(_sentence_colours(driver).values()) == {(0, 0, 0)}
        driver.find_element(By.CSS_SELECTOR, 'input[value="sentence"]').click()
        driver.find_element(By.CSS_SELECTOR, '#citations tr[data-key="s0"]').click()  # a citation selects its sentence
        _check_shading(_sentence_colours(driver), _expected([s[0] for s in result.sentence_scores], _headers(result, [0])))
        screenshot = tmp_path / "rag_report.png"
        driver.save_screenshot(str(screenshot))
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000
        severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert severe == []
    finally:
        driver.quit()


def test_crafted_fields_run_no_script_in_a_browser(chat, tmp_path):
    """Stored XSS probe in Chromium: markup in an explanation's cost, params, notes and tokens, and in a RAG
    result's titles, is shown as text and runs nothing (the cost fields once ran)."""
    from llm_attrib import Explanation

    probe = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
    result = chat["sentence"]
    exp = dataclasses.replace(result.explanation, cost={"n_forward": probe, "seconds": probe},
                              params={probe: probe}, notes=[probe], model_name=probe)
    assert isinstance(exp, Explanation)
    documents = [dataclasses.replace(d, title=probe, id=probe) for d in result.documents]
    pages = {"explanation.html": exp.to_html(title=probe),
             "rag.html": dataclasses.replace(result, documents=documents, question=probe).to_html(title=probe)}
    driver = _browser()
    try:
        for name, text in pages.items():
            path = tmp_path / name
            path.write_text(text, encoding="utf-8")
            driver.get(path.as_uri())
            assert driver.execute_script("return window.__xss === undefined")
            assert driver.execute_script("return document.querySelectorAll('img').length") == 0
            assert probe in driver.find_element("tag name", "body").text  # shown, as text
    finally:
        driver.quit()
