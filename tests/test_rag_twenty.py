"""The 20-document RAG evaluation set (eval/rag_twenty.py, eval/data/rag_twenty.jsonl): deterministic, each question's
relevant document present once, no drawn distractor holding its answer, no duplicates, positions spread evenly."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "eval" / "rag_twenty.py"


@pytest.fixture(scope="module")
def twenty():
    spec = importlib.util.spec_from_file_location("eval_rag_twenty", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rows(twenty):
    return twenty.build()


def test_the_committed_file_is_what_the_seeded_builder_writes(twenty, rows):
    committed = [json.loads(line) for line in twenty.TWENTY.read_text().splitlines()]
    assert committed == rows == twenty.build()
    assert twenty.build(seed=34) != rows  # the seed does decide the draw


def test_every_question_keeps_its_documents_and_gains_distractors_that_do_not_hold_its_answer(twenty, rows):
    sources = {(ex["source"], ex["id"]): ex for ex in twenty.source_examples()}
    assert len(rows) == len(sources) == 203
    pool_of = {}
    for ex in sources.values():
        for document in ex["documents"]:
            pool_of.setdefault(document, set()).add(twenty.SOURCES[ex["source"]][1])
    for row in rows:
        source = sources[(row["source"], row["id"])]
        documents = row["documents"]
        assert len(documents) == 20 == len(set(documents))
        relevant = source["documents"][source["relevant_document"]]
        assert documents[row["relevant_document"]] == relevant and documents.count(relevant) == 1
        assert [documents[i] for i in row["own_documents"]] == [d for d in documents if d in source["documents"]]
        assert sorted(documents[i] for i in row["own_documents"]) == sorted(source["documents"])
        drawn = [d for i, d in enumerate(documents) if i not in row["own_documents"]]
        assert not any(twenty.holds_answer(d, row["answer"]) for d in drawn)
        assert all(twenty.SOURCES[row["source"]][1] in pool_of[d] for d in drawn)


def test_relevant_positions_are_spread_evenly_in_every_source_and_split(rows):
    groups: dict[tuple, Counter] = {}
    for row in rows:
        groups.setdefault((row["source"], row.get("split")), Counter())[row["relevant_document"]] += 1
    for group, positions in groups.items():
        counts = [positions[p] for p in range(20)]
        assert max(counts) - min(counts) <= 1, (group, counts)


def test_datasets_loads_the_same_rows(twenty, rows):
    loaded = twenty.load()
    assert loaded.num_rows == len(rows)
    assert loaded["documents"] == [row["documents"] for row in rows]
    assert loaded["relevant_document"] == [row["relevant_document"] for row in rows]
