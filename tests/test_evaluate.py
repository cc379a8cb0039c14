"""evaluate: rows per example x target x method, summary with intervals, streaming and exact resume."""

import json

import pytest

from llm_attrib import Attributor, InvalidInputError
from llm_attrib.evaluate import evaluate, load_rows, mean_cost
from tiny_tokenizer import tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def attributor():
    return Attributor(tiny_llama(), tiny_tokenizer(64), show_progress=False)


EXAMPLES = [
    {"prompt": f"w{i} w{i + 1} w{i + 2} w{i + 3}", "answer": f"w{i + 4} w{i + 5}", "evidence": [[0, 2 + len(str(i))]]}
    for i in range(10, 16)
]
METHODS = ["random", {"label": "ig_att", "method": "ig", "space": "attention", "n_steps": 8}]


def test_rows_and_summary(attributor, tmp_path):
    result = evaluate(attributor, EXAMPLES, METHODS, output=tmp_path / "rows.jsonl", show_progress=False)
    assert len(result.rows) == len(EXAMPLES) * 2 * 2  # examples x methods x targets
    assert {"aopc_comprehensiveness", "aopc_sufficiency", "log_odds@20", "hit@1", "auprc"} <= set(result.rows.columns)
    summary = result.summary
    assert list(summary.index) == ["random", "ig_att"]
    column = result.rows.loc[result.rows.method == "ig_att", "aopc_comprehensiveness"]
    assert summary.loc["ig_att", ("aopc_comprehensiveness", "mean")] == pytest.approx(column.mean())
    assert summary.loc["ig_att", ("aopc_comprehensiveness", "ci95")] == pytest.approx(1.96 * column.std() / len(column) ** 0.5)
    cost = mean_cost(result.rows)
    assert cost.loc["random", "n_backward"] == 0 and cost.loc["ig_att", "n_backward"] > 0


def test_interrupted_run_resumes_without_duplicates_or_losses(attributor, tmp_path):
    path = tmp_path / "rows.jsonl"
    full = evaluate(attributor, EXAMPLES, METHODS, show_progress=False).rows
    evaluate(attributor, EXAMPLES[:3], METHODS, output=path, show_progress=False)
    with open(path, "a") as f:
        f.write('{"example": 3, "method": "ran')  # a write torn by the interruption
    resumed = evaluate(attributor, EXAMPLES, METHODS, output=path, show_progress=False).rows
    on_disk = load_rows(path)
    assert len(on_disk) == len(full) == len(resumed)
    assert not on_disk.duplicated(["example", "method", "target_index"]).any()
    keys = ["example", "method", "target_index"]
    for frame in (resumed, on_disk.sort_values(keys).reset_index(drop=True)):
        left, right = frame.set_index(keys).sort_index(), full.set_index(keys).sort_index()
        assert left["aopc_sufficiency"].tolist() == pytest.approx(right["aopc_sufficiency"].tolist(), abs=1e-6)
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_accepts_a_datasets_dataset(attributor):
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_list([{"prompt": e["prompt"], "answer": e["answer"]} for e in EXAMPLES[:2]])
    result = evaluate(attributor, data, ["random"], show_progress=False)
    assert len(result.rows) == 4 and "hit@1" not in result.rows.columns


def test_bad_specs(attributor):
    with pytest.raises(InvalidInputError, match="unique"):
        evaluate(attributor, EXAMPLES, ["ig", {"method": "ig"}], show_progress=False)
    with pytest.raises(InvalidInputError, match="prompt"):
        evaluate(attributor, [{"text": "w1"}], ["random"], show_progress=False)
