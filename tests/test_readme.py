"""The README's commands run as written: every code block marked `<!-- runnable -->` is executed in order (the
blocks share one namespace, as a reader's session would), and its printed output must match the `text` block that
follows it, numbers within a small tolerance (they are rounded in the README). The set-up command that runs the
tests is the one `.ci/run` runs."""

import contextlib
import io
import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"<!-- runnable -->\n```python\n(.*?)```\n(?:\n```text\n(.*?)```\n)?", re.S)
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")


def same_output(printed: str, expected: str) -> bool:
    """Equal text; numbers equal within 5% or 0.05 (the README shows them rounded, machines differ in the last digits)."""
    if " ".join(NUMBER.sub("#", printed).split()) != " ".join(NUMBER.sub("#", expected).split()):
        return False
    pairs = zip(NUMBER.findall(printed), NUMBER.findall(expected))
    return all(abs(float(a) - float(b)) <= max(0.05, 0.05 * abs(float(b))) for a, b in pairs)


def test_readme_blocks_run_and_print_what_it_shows(tmp_path, monkeypatch):
    blocks = BLOCK.findall(README)
    assert len(blocks) >= 4, "the README's quick starts are marked runnable"
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict = {"__name__": "__readme__"}
    for number, (code, expected) in enumerate(blocks, 1):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"README block {number}", "exec"), namespace)
        if expected:
            assert same_output(out.getvalue(), expected), f"block {number} printed:\n{out.getvalue()}"


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert README.splitlines()[3] == commands[0] and "llm-attrib explain" in commands[0]
    assert README.splitlines()[7] == commands[1] == ci
