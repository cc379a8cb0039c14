"""The tutorial notebook (docs/tutorial.ipynb) runs from a clean kernel on the zoo models, and says what the
tutorial tells the reader: the explanation converged and the RAG answer's top document is the relevant one."""

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


def test_tutorial_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(ROOT / "docs" / "tutorial.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    printed = "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for output in cell.outputs if output.output_type == "stream" and output.name == "stdout")
    assert "converged: True" in printed
    top = next(line for line in printed.splitlines() if line.startswith("top document:"))
    found, relevant = (int(part.split()[-1]) for part in top.split("|"))
    assert found == relevant
    summary = notebook.cells[-2].outputs[0]["data"]["text/plain"]
    assert "ig_attention" in summary and "random" in summary
