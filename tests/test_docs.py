"""The documentation site builds with `mkdocs build --strict`: a broken link, a missing page or an API reference
to a name the package does not have fails the test suite, not only a reader."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_docs_build_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    assert (tmp_path / "site" / "reference" / "attributor" / "index.html").read_text().count("explain") > 0
    assert (tmp_path / "site" / "eval" / "results" / "speed" / "index.html").exists()
