"""Saved result files are untrusted input: every loader ends in a valid result or the package's InvalidInputError,
whatever the file holds (a seeded mutator of valid files: wrong types, missing keys, NaN, huge sizes, nested
garbage, non-UTF-8 bytes); unknown keys are kept, a newer format version is refused."""

from __future__ import annotations

import copy
import json
import random
import warnings
from pathlib import Path

import pytest
import torch

from llm_attrib import Explanation, InvalidInputError
from llm_attrib.rag.explanation import RagExplanation
from test_rag_report import tiny_rag_result
from test_render import make_explanation

N_CASES = 300
RAG_V1 = Path(__file__).parent / "data" / "rag_explanation_v1.json"  # see test_rag_orientation.py


@pytest.fixture(scope="module")
def rag_file() -> dict:
    result = tiny_rag_result(shapley=True)
    return result.to_dict()


@pytest.fixture(scope="module")
def explanation_file() -> dict:
    exp = make_explanation()
    exp.cost = {"n_forward": 4, "n_backward": 4, "seconds": 0.1}
    exp.head_scores = torch.randn(3, 1, 2, len(exp.input_tokens))
    return exp.to_dict()


def _paths(tree, prefix=()):
    """Every (path, value) in a JSON tree (long lists sampled at their ends)."""
    yield prefix, tree
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(tree, list):
        for i in sorted({0, 1, len(tree) - 1} & set(range(len(tree)))):
            yield from _paths(tree[i], prefix + (i,))


def _set(tree, path, value):
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


def _garbage(rng: random.Random, depth: int = 0):
    kinds = ["str", "int", "float", "nan", "inf", "none", "bool", "huge", "list", "dict", "surrogate", "markup"]
    kind = rng.choice(kinds if depth < 3 else kinds[:8])
    return {
        "str": lambda: "x" * rng.randint(0, 5), "int": lambda: rng.randint(-5, 5), "float": lambda: rng.uniform(-9, 9),
        "nan": lambda: float("nan"), "inf": lambda: float("-inf") if rng.random() < 0.5 else float("inf"),
        "none": lambda: None, "bool": lambda: rng.random() < 0.5, "huge": lambda: 10 ** rng.randint(10, 40),
        "list": lambda: [_garbage(rng, depth + 1) for _ in range(rng.randint(0, 3))],
        "dict": lambda: {str(rng.randint(0, 9)): _garbage(rng, depth + 1) for _ in range(rng.randint(0, 3))},
        "surrogate": lambda: "a\ud800b", "markup": lambda: "<script>alert(1)</script>",
    }[kind]()


def _mutate(valid: dict, rng: random.Random) -> bytes:
    """One broken variant of a valid file, as the bytes of a file."""
    data = copy.deepcopy(valid)
    for _ in range(rng.randint(1, 3)):
        paths = [p for p, _ in _paths(data) if p]
        path = rng.choice(paths)
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        action = rng.choice(["garbage", "delete", "grow", "shrink", "nest", "unknown", "negate", "ragged"])
        value = parent[path[-1]]
        if action == "garbage":
            _set(data, path, _garbage(rng))
        elif action == "delete":
            del parent[path[-1]]
        elif action == "grow" and isinstance(value, list):
            value.extend(copy.deepcopy(value[-1:]) * rng.choice([1, 5]))
        elif action == "shrink" and isinstance(value, list):
            del value[rng.randrange(len(value) + 1):]
        elif action == "nest":
            _set(data, path, [value])
        elif action == "unknown" and isinstance(value, dict):
            value[f"new_{rng.randint(0, 99)}"] = _garbage(rng)
        elif action == "negate" and isinstance(value, (int, float)) and not isinstance(value, bool):
            _set(data, path, -value - rng.choice([1, 10 ** 6]))
        elif action == "ragged" and isinstance(value, list) and value and isinstance(value[0], list):
            value[0] = value[0][:-1]
    text = json.dumps(data, allow_nan=True).encode()
    byte_action = rng.random()
    if byte_action < 0.05:  # cut short
        text = text[: rng.randrange(len(text))]
    elif byte_action < 0.10:  # invalid UTF-8 inside a string
        at = text.find(b'"', rng.randrange(len(text)))
        text = text[: at + 1] + b"\xff\xfe" + text[at + 1:]
    elif byte_action < 0.12:  # nested far deeper than any result
        text = b"[" * 100_000 + b"]" * 100_000
    return text


@pytest.mark.parametrize("kind", ["explanation", "rag", "rag format 1"])
def test_loaders_end_in_a_result_or_the_package_error(kind, explanation_file, rag_file, tmp_path):
    cls, valid = {"explanation": (Explanation, explanation_file), "rag": (RagExplanation, rag_file),
                  "rag format 1": (RagExplanation, json.loads(RAG_V1.read_text()))}[kind]
    rng = random.Random(0)
    path = tmp_path / "file.json"
    outcomes = {"loaded": 0, "refused": 0}
    for case in range(N_CASES):
        path.write_bytes(_mutate(valid, rng))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = cls.load(path)
        except InvalidInputError as error:
            assert "\n" not in str(error), str(error)  # one line
            outcomes["refused"] += 1
            continue
        except Exception as error:  # noqa: BLE001 - the property under test: nothing else escapes
            pytest.fail(f"case {case}: {type(error).__name__}: {error}")
        outcomes["loaded"] += 1
        result.to_html()  # whatever loads also renders
        repr(result)
    assert outcomes["refused"] > N_CASES / 2 and outcomes["loaded"] > 0, outcomes


def test_valid_files_round_trip(explanation_file, rag_file, tmp_path):
    for cls, data in ((Explanation, explanation_file), (RagExplanation, rag_file)):
        path = tmp_path / "file.json"
        path.write_text(json.dumps(data))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a current file loads without a warning
            loaded = cls.load(path)
        assert loaded.to_dict() == data


def test_unknown_keys_are_kept_with_a_warning(explanation_file, rag_file, tmp_path):
    """Keys a newer version added without changing the others' meaning (same format version) load with a warning
    and are written back."""
    for cls, data in ((Explanation, explanation_file), (RagExplanation, rag_file)):
        newer = {**data, "saliency_maps": {"a": [1, 2]}}
        with pytest.warns(UserWarning, match=r"does not know.*\['saliency_maps'\]"):
            loaded = cls.from_dict(newer)
        assert loaded.newer_fields == {"saliency_maps": {"a": [1, 2]}}
        loaded.save(tmp_path / "again.json")
        assert json.loads((tmp_path / "again.json").read_text())["saliency_maps"] == {"a": [1, 2]}


def test_a_newer_format_version_is_refused(explanation_file, rag_file, tmp_path):
    """A newer format version changed the meaning of known keys (as version 2 of the RAG file did): reading it as
    this version's would misread it, so it is refused with what to do."""
    for cls, data, newer in ((Explanation, explanation_file, 2), (RagExplanation, rag_file, 3)):
        path = tmp_path / "newer.json"
        path.write_text(json.dumps({**data, "format_version": newer}))
        with pytest.raises(InvalidInputError, match=rf"format version {newer} by a newer llm-attrib; this one reads "
                                                    rf"format versions up to {newer - 1}: upgrade llm-attrib"):
            cls.load(path)
    inner = copy.deepcopy(rag_file)
    inner["explanation"]["format_version"] = 2
    with pytest.raises(InvalidInputError, match=r"its explanation is in format version 2, from a newer llm-attrib"):
        RagExplanation.from_dict(inner)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["scores"].pop(), "scores must be 3 rows"),
    (lambda d: d["scores"][0].append(0.5), "scores must be 3 rows"),
    (lambda d: d["input_offsets"].__setitem__(1, [0, 10_000]), "not inside the text"),
    (lambda d: d["target_probs"].__setitem__(0, 2.0), "target_probs.0"),
    (lambda d: d["cost"].__setitem__("n_forward", "<img src=x>"), "cost.n_forward"),
    (lambda d: d.__setitem__("n_prompt_tokens", 99), "n_prompt_tokens 99"),
    (lambda d: d.pop("text"), r"lacks \['text'\]"),
    (lambda d: d["scores"][1].__setitem__(0, None), "scores.1.0"),
])
def test_a_broken_file_is_refused_with_what_is_wrong(explanation_file, change, message):
    data = copy.deepcopy(explanation_file)
    change(data)
    with pytest.raises(InvalidInputError, match=message):
        Explanation.from_dict(data)


def test_rag_file_spans_and_shapes_are_checked(rag_file):
    data = copy.deepcopy(rag_file)
    data["sentence_spans"][0][0] = [0, 10 ** 9]
    with pytest.raises(InvalidInputError, match="sentence_spans has the span"):
        RagExplanation.from_dict(data)
    data = copy.deepcopy(rag_file)
    data["leave_one_out"].pop()
    with pytest.raises(InvalidInputError, match="leave_one_out must be"):
        RagExplanation.from_dict(data)
    with pytest.raises(InvalidInputError, match="not an llm-attrib RAG explanation"):
        RagExplanation.from_dict({**rag_file, "kind": "something else"})
