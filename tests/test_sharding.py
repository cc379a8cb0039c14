"""Both distributed modes, run by the real launchers, equal one process: `evaluate`'s examples split between
processes (the same rows, none duplicated or lost), and one explanation's path points split between processes
(`shard_points=True`: the same scores in every space, each process doing only part of the work).

Launchers: `accelerate launch --multi_gpu` with 2 processes (without a GPU it starts them over gloo on the CPU;
with GPUs the same command gives each process its own GPU) and `torchrun` with 2 nodes on this machine (two
launches that meet at a rendezvous, each in its own working directory, so nothing relies on a shared disk).
The job both run is tests/distributed_job.py; the reference is the same job in this process. Also: the GPU check
(eval/gpu_check.py --cpu) split over 2 processes, and failing with exit code 1; the sharded example as one process.
"""

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import llm_attrib
from llm_attrib import Attributor, Explanation
from llm_attrib.evaluate import load_rows

JOB = Path(__file__).with_name("distributed_job.py")
EXAMPLE = Path(__file__).parent.parent / "examples" / "sharded_explanation.py"
GPU_CHECK = Path(__file__).parent.parent / "eval" / "gpu_check.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
KEY = ["example", "method", "target_index"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def script(path: Path):
    """A script's module, imported from its file (its `main` runs in this process: one process)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def launched(*commands: list[str], cwds: list[Path]) -> list[str]:
    """Run the launches at once (the nodes of one job), wait for all; their standard outputs."""
    running = [subprocess.Popen(c, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for c, cwd in zip(commands, cwds)]
    try:
        outputs = [p.communicate(timeout=600) for p in running]
    finally:
        for p in running:
            p.kill()
    for p, (_, err) in zip(running, outputs):
        assert p.returncode == 0, err[-3000:]
    return [out for out, _ in outputs]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "out"
    script(JOB).run(out)
    return out


def rows_of(path: Path) -> pd.DataFrame:
    return load_rows(path).drop(columns="seconds").sort_values(KEY).reset_index(drop=True)


def assert_equal_to_one_process(main: Path, shards: list[Path], single: Path) -> None:
    merged, reference = rows_of(main / "rows.jsonl"), rows_of(single / "rows.jsonl")
    pd.testing.assert_frame_equal(merged, reference, check_exact=True)
    examples = [set(load_rows(shard)["example"]) for shard in shards]
    assert all(examples) and set.union(*examples) == set(reference["example"])  # each process had a share
    assert sum(map(len, examples)) == len(set.union(*examples))  # and no example was done twice
    forwards = json.loads((main / "forwards.json").read_text())
    alone = json.loads((single / "forwards.json").read_text())
    for space in ("embeddings", "attention", "mask"):
        sharded, one = Explanation.load(main / f"{space}.json"), Explanation.load(single / f"{space}.json")
        assert sharded.target_ids == one.target_ids
        torch.testing.assert_close(sharded.scores, one.scores, atol=1e-5, rtol=1e-5)
        assert sharded.cost["n_backward"] == one.cost["n_backward"]  # the same work, split, not repeated
        assert len(forwards[space]) == 2 and max(forwards[space]) < alone[space][0]  # each did only a part


def test_accelerate_launch_equals_one_process(tmp_path, single):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), str(JOB), "out"]
    (out,) = launched(command, cwds=[tmp_path])
    assert "2 process(es)" in out
    main = tmp_path / "out"
    assert_equal_to_one_process(main, [main / "rows.jsonl.part0", main / "rows.jsonl.part1"], single)


def test_torchrun_on_two_nodes_equals_one_process(tmp_path, single):
    port = str(free_port())
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for node in nodes:
        node.mkdir()
    commands = [torchrun("--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(rank),
                         "--master_addr", "127.0.0.1", "--master_port", port, str(JOB), "out")
                for rank in range(2)]
    out, _ = launched(*commands, cwds=nodes)
    assert "2 process(es)" in out
    assert not (nodes[1] / "out" / "rows.jsonl").exists()  # only the main process writes the merged rows
    shards = [node / "out" / f"rows.jsonl.part{rank}" for rank, node in enumerate(nodes)]
    assert_equal_to_one_process(nodes[0] / "out", shards, single)


def test_the_sharded_example_runs(monkeypatch, capsys):
    """Its launched form is the job's above; here it runs as one process (a pass-through), over the mask."""
    monkeypatch.setattr(sys, "argv", ["sharded_explanation.py", "--space", "mask"])
    script(EXAMPLE).main()
    out = capsys.readouterr().out
    assert "1 process(es)" in out
    assert float(out.split("worst completeness error ")[1].split("%")[0]) < 1.0


def test_a_shard_left_by_another_process_count_is_not_counted_twice(tmp_path, monkeypatch):
    """Process 1 of 2 (examples 2 and 3 of 4) resumes from a shard whose last run gave it examples 1 and 2: it
    reports its own examples once each, with example 1's rows left to process 0, and computes example 3."""
    from llm_attrib import parallel
    from llm_attrib.evaluate import evaluate

    model, tokenizer = llm_attrib.zoo.load("rag")
    attributor = Attributor(model, tokenizer, show_progress=False)
    examples = llm_attrib.zoo.examples("rag", n=4, seed=7)
    alone = evaluate(attributor, examples, ["saliency"], show_progress=False).rows
    stale = alone[alone["example"].isin([1, 2])]
    (tmp_path / "rows.jsonl.part1").write_text("".join(json.dumps(r) + "\n" for r in stale.to_dict("records")))
    monkeypatch.setattr(parallel, "n_processes", lambda: 2)
    monkeypatch.setattr(parallel, "rank", lambda: 1)
    monkeypatch.setattr(parallel, "is_main", lambda: False)
    monkeypatch.setattr(parallel, "my_share", lambda items: list(items)[2:])
    monkeypatch.setattr(parallel, "gathered", list)  # this process's rows only
    mine = evaluate(attributor, examples, ["saliency"], output=tmp_path / "rows.jsonl", show_progress=False).rows
    expected = alone[alone["example"].isin([2, 3])].reset_index(drop=True)
    pd.testing.assert_frame_equal(mine.drop(columns="seconds"), expected.drop(columns="seconds"), check_exact=True)


def test_evaluate_refuses_an_attributor_that_shards_points(monkeypatch):
    from llm_attrib import InvalidInputError, parallel
    from llm_attrib.evaluate import evaluate

    model, tokenizer = llm_attrib.zoo.load("rag")
    monkeypatch.setattr(parallel, "n_processes", lambda: 2)
    with pytest.raises(InvalidInputError, match="shard_points"):
        evaluate(Attributor(model, tokenizer, shard_points=True), [{"prompt": "x"}], ["ig"])


def test_the_gpu_check_passes_split_over_two_processes(tmp_path):
    (out,) = launched(torchrun("--nproc_per_node", "2", "--master_port", str(free_port()), str(GPU_CHECK),
                               "--cpu", "--model", "rag"), cwds=[tmp_path])
    assert "2 process(es)" in out and out.rstrip().endswith("every check passed")
    differences = [float(line.split("max difference ")[1].split()[0]) for line in out.splitlines()
                   if "split vs one process" in line]
    assert len(differences) == 3 and max(differences) <= 1e-5  # every space, compared with one process
    assert "rag.explain (ranking)" in out


def test_the_gpu_check_fails_with_exit_code_1(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--cpu", "--model", "rag", "--max-error", "0"])
    assert script(GPU_CHECK).main() == 1
    failed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 4 and all("completeness error" in line for line in failed)  # 3 spaces and the RAG run
