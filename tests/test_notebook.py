"""Jupyter display, through a real notebook run (nbclient + ipykernel): an explanation and a RAG explanation shown
as a cell's value give their HTML page inline (in an iframe) and their short text repr."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest

from test_rag_report import tiny_rag_result
from test_render import make_explanation

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


class Frame(HTMLParser):
    """The srcdoc of the one iframe in an output (the parser unescapes it)."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.srcdoc: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag == "iframe":
            self.srcdoc.append(dict(attrs)["srcdoc"])


def test_explanations_display_inline_in_a_notebook(tmp_path):
    result = tiny_rag_result()
    result.save(tmp_path / "rag.json")
    tests = Path(__file__).parent
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(f"import sys\nsys.path.insert(0, {str(tests)!r})\n"
                                  "from test_render import make_explanation\nmake_explanation()"),
        nbformat.v4.new_code_cell("import warnings\nwarnings.simplefilter('ignore')\n"
                                  "from llm_attrib.rag import RagExplanation\n"
                                  f"RagExplanation.load({str(tmp_path / 'rag.json')!r})"),
    ])
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    texts = []
    for cell, expected in zip(notebook.cells, (make_explanation(), result)):
        (output,) = [o for o in cell.outputs if o.output_type == "execute_result"]
        assert output.data["text/plain"] == repr(expected)
        assert Frame(output.data["text/html"]).srcdoc == [expected.to_html()]  # the whole page, escaped in srcdoc
        texts.append(output.data["text/plain"])
    assert texts[0].startswith("Explanation: ig over embeddings of hand-made") and len(texts[0]) < 400
    assert "top document: " in texts[1] and len(texts[1]) < 400
