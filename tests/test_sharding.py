"""One explanation split across 2 CPU processes (torchrun, gloo) equals the same explanation in one process."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import llm_attrib
from llm_attrib import Attributor, Explanation

SCRIPT = Path(__file__).parent.parent / "examples" / "sharded_explanation.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("space, quadrature", [("embeddings", "gauss-legendre"), ("attention", "score-guided")])
def test_two_processes_equal_one(tmp_path, space, quadrature):
    output = tmp_path / "sharded.json"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
         str(SCRIPT), "--space", space, "--quadrature", quadrature, "--output", str(output)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stdout
    sharded = Explanation.load(output)
    model, tokenizer = llm_attrib.zoo.load("rag")
    prompt = llm_attrib.zoo.examples("rag", n=1, seed=123)[0]["prompt"]
    fixed = {"tolerance": None} if quadrature != "score-guided" else {}
    single = Attributor(model, tokenizer, show_progress=False).explain(
        prompt, space=space, max_new_tokens=4, quadrature=quadrature, n_steps=32, **fixed)
    assert sharded.target_ids == single.target_ids
    torch.testing.assert_close(sharded.scores, single.scores, atol=1e-5, rtol=1e-5)
    assert sharded.cost["n_backward"] == single.cost["n_backward"]  # the same work, split, not repeated
    # every forward of every process is counted: the set-up reads and target probabilities run in each
    assert sharded.cost["n_forward_all"] > single.cost["n_forward_all"]


def test_evaluate_refuses_an_attributor_that_shards_points(monkeypatch):
    from llm_attrib import InvalidInputError, parallel
    from llm_attrib.evaluate import evaluate

    model, tokenizer = llm_attrib.zoo.load("rag")
    monkeypatch.setattr(parallel, "n_processes", lambda: 2)
    with pytest.raises(InvalidInputError, match="shard_points"):
        evaluate(Attributor(model, tokenizer, shard_points=True), [{"prompt": "x"}], ["ig"])
