"""The RAG evaluation's data: the zoo variants and SmolLM2 example sets, the row files and how a rerun resumes
(used by `eval/rag.py`)."""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

import llm_attrib
from llm_attrib.rag.prompt import TEMPLATES, as_documents, build_prompt
from llm_attrib.zoo.tasks import RAG_FOOD, RAG_NAMES, RAG_PLACE


HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "rag"
REPORT = HERE / "results" / "rag_debugging.md"
DATASETS = {  # name -> rag examples
    "real_text": HERE / "data" / "real_text.jsonl",
    "heldout": HERE / "data" / "rag_heldout.jsonl",  # fictional entities, written for #15, split into dev and test
    "replication": HERE / "data" / "rag_real_replication.jsonl",  # a second real-text sample, written for #15
}
SMOLLM2_OWN_PARTS = ("smollm2_own", "smollm2_own_heldout_dev", "smollm2_own_heldout_test", "smollm2_own_replication")
OWN_ANSWER_TOKENS = 64  # rag.explain's max_new_tokens default
STANDARD_SEED = 15
CALIBRATION_SEED = 1501
TEST_SEED = 1502


def zoo_standard(n: int, seed: int) -> list[dict]:
    """The zoo's own rag examples as question and document texts."""
    out = []
    for i, ex in enumerate(llm_attrib.zoo.examples("rag", n, seed)):
        text, question, documents = ex["prompt"], ex["question"], ex["document_texts"]
        values = [" ".join(d.split()[2:-1]) for d in documents]
        assert values[ex["relevant_document"]] == ex["answer"]
        out.append({"id": f"standard-{seed}-{i}", "variant": "standard", "cell": "zoo examples",
                    "question": question, "documents": documents, "values": values,
                    "candidates": [ex["relevant_document"]], "prompt": text})
    return out


def zoo_document(rng: random.Random, n_docs: int, relevant: int | None = None, duplicate: bool = False) -> dict:
    """One rag prompt as `llm_attrib.zoo.tasks.rag` builds it, with the number of documents and the relevant
    position chosen; `duplicate` adds a second document about the asked person with another attribute (n_docs
    counts it). No word repeats within a prompt except the asked name in the duplicate."""
    base = n_docs - 1 if duplicate else n_docs
    names = rng.sample(RAG_NAMES, base)
    places = [f"{a} {b}" for a, b in zip(rng.sample(RAG_PLACE[0], n_docs), rng.sample(RAG_PLACE[1], n_docs))]
    foods = [f"{a} {b}" for a, b in zip(rng.sample(RAG_FOOD[0], n_docs), rng.sample(RAG_FOOD[1], n_docs))]
    facts = []
    for i in range(base):
        facts.append((names[i], "visits", places[i]) if rng.random() < 0.5 else (names[i], "likes", foods[i]))
    asked = rng.randrange(base) if relevant is None or duplicate else relevant
    if duplicate:
        verb = "visits" if rng.random() < 0.5 else "likes"
        value = places[base] if verb == "visits" else foods[base]
        facts.insert(rng.randrange(base + 1), (names[asked], verb, value))
    documents = [f"{name} {verb} {value} ." for name, verb, value in facts]
    candidates = [i for i, (name, _, _) in enumerate(facts) if name == names[asked]]
    return {"question": f"what about {names[asked]} ?", "documents": documents,
            "values": [value for _, _, value in facts], "candidates": candidates}


def zoo_cells(n: int) -> list[dict]:
    """Every zoo example of task 1, in cell order."""
    examples = zoo_standard(n, STANDARD_SEED)
    for position in range(5):
        rng = random.Random(f"position-{position}")
        examples += [{"id": f"position-{position}-{i}", "variant": "position", "cell": f"relevant at {position + 1} of 5",
                      **zoo_document(rng, 5, relevant=position)} for i in range(n)]
    for count in range(2, 9):
        rng = random.Random(f"documents-{count}")
        examples += [{"id": f"documents-{count}-{i}", "variant": "documents", "cell": f"{count} documents",
                      **zoo_document(rng, count)} for i in range(n)]
    rng = random.Random("near-duplicate")
    examples += [{"id": f"duplicate-{i}", "variant": "near-duplicate", "cell": "near-duplicate (same subject)",
                  **zoo_document(rng, rng.randint(4, 6), duplicate=True)} for i in range(n)]
    return examples


def done_ids(path: Path) -> set[str]:
    return {row["id"] for row in read_rows(path)} if path.exists() else set()


def pending(examples, path: Path, minutes: float):
    """The examples with no row in `path` yet, in order, until `minutes` of wall time have passed since the first:
    a resumable run on a time budget (the next run starts where this one stopped; no example is skipped)."""
    done = done_ids(path)
    started = time.perf_counter()
    for ex in examples:
        if ex["id"] in done:
            continue
        if time.perf_counter() - started > minutes * 60:
            print(f"budget of {minutes} minutes spent; stopping before {ex['id']}", flush=True)
            return
        yield ex


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def commit() -> str:
    """The code a row was measured with: the checkout's short commit (with "+" if it has uncommitted changes)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+" if dirty else "")


def save_settings(name: str, args: argparse.Namespace, **extra) -> None:
    path = RESULTS / "settings.json"
    settings = json.loads(path.read_text()) if path.exists() else {}
    settings[name] = {**{k: v for k, v in vars(args).items() if k not in ("func", "fresh")}, **extra,
                      "command": " ".join(["python", "eval/rag.py", *sys.argv[1:]]),
                      "torch": torch.__version__, "llm_attrib": llm_attrib.__version__}
    path.write_text(json.dumps(settings, indent=1, default=str))


def smollm2_examples(tokenizer, data: str = "real_text", split: str | None = None) -> list[dict]:
    sys.path.insert(0, str(HERE))
    from real_text import prepare  # noqa: E402  (the same prompt and expected answer as eval/real_text.py)

    rows = [json.loads(line) for line in DATASETS[data].read_text().splitlines() if line.strip()]
    out = []
    for example in rows:
        if example["kind"] != "rag" or (split is not None and example["split"] != split):
            continue
        item = prepare(example, tokenizer)
        built = build_prompt(tokenizer, example["question"], as_documents(example["documents"]), TEMPLATES["default"])
        assert built.prompt == item["prompt"], "rag's default template differs from eval/real_text.py's prompt"
        out.append({**example, "item": item})
    return out


def shard_spec(text: str) -> tuple[int, int]:
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit() and 0 <= int(k) < int(n)):
        raise argparse.ArgumentTypeError(f"--shard takes K/N with 0 <= K < N, got {text!r}")
    return int(k), int(n)


def sharded_runner(sub) -> argparse.ArgumentParser:
    """A `run` subcommand with --shard K/N (every N-th example from the K-th) and --threads (torch's)."""
    runner = sub.add_parser("run")
    runner.add_argument("--shard", type=shard_spec, default=(0, 1), metavar="K/N")
    runner.add_argument("--threads", type=int, default=1)
    return runner


def data_prefix(data: str) -> str:
    """Rows about a dataset's examples as a whole (which the model knows, its closed-book replies)."""
    return "smollm2" if data == "real_text" else f"smollm2_{data}"


def smollm2_part(answer: str, data: str = "real_text", split: str | None = None) -> str:
    """The rows' file name: "smollm2" explains the expected short answer, "smollm2_own" the model's own reply;
    other datasets add their name and split ("smollm2_own_heldout_test")."""
    name = "smollm2" if answer == "expected" else "smollm2_own"
    return name if data == "real_text" else f"{name}_{data}" + (f"_{split}" if split else "")
