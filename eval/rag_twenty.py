"""The 20-document RAG evaluation set (#33): every question of the real-text and fictional rag sets with
distractors drawn from other questions' documents, up to 20 documents.

    python eval/rag_twenty.py            # -> eval/data/rag_twenty.jsonl (deterministic: same file every run)

Per question (in the order of its source file): its own documents (the relevant one and the 2-4 distractors it was
written with) and 20 - n drawn from the documents of the OTHER questions of the same pool, seeded per question
(real-text questions draw from the real-text pool, eval/data/real_text.jsonl and rag_real_replication.jsonl;
fictional ones from eval/data/rag_heldout.jsonl, so every distractor is the same kind of passage). A candidate is
never drawn if it is already in the prompt (same text) or holds the question's expected answer (case-insensitive):
such a document could carry the answer, and the relevant document must be the only one that does as far as the
set can tell. The relevant document's position cycles through 0..19 within each source file and split (a seeded
order per cycle of 20), so positions are spread evenly in every group that is evaluated; the other 19 documents are
shuffled around it. Rows keep the source fields (id, question, answer, split) and add `source`,
`relevant_document` (its new position), `own_documents` (positions of the question's own documents) and
`n_source_documents`.

`load()` reads the file with `datasets.load_dataset("json", ...)`, as the evaluation does.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
TWENTY = HERE / "data" / "rag_twenty.jsonl"
SOURCES = {  # source -> (file, pool)
    "real_text": (HERE / "data" / "real_text.jsonl", "real"),
    "replication": (HERE / "data" / "rag_real_replication.jsonl", "real"),
    "heldout": (HERE / "data" / "rag_heldout.jsonl", "fictional"),
}
N_DOCUMENTS = 20
SEED = 33


def source_examples() -> list[dict]:
    """Every rag question of the source files, tagged with its source."""
    out = []
    for source, (path, _) in SOURCES.items():
        for line in path.read_text().splitlines():
            if line.strip() and (example := json.loads(line))["kind"] == "rag":
                out.append({**example, "source": source})
    return out


def holds_answer(document: str, answer: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(answer.lower())}(?!\w)", document.lower()) is not None


def build(n_documents: int = N_DOCUMENTS, seed: int = SEED) -> list[dict]:
    """The rows of the set (see the module docstring); the same list for the same arguments."""
    examples = source_examples()
    pools: dict[str, list[tuple[str, str]]] = {}  # pool -> (question id, document) over its questions
    for ex in examples:
        pools.setdefault(SOURCES[ex["source"]][1], []).extend((ex["id"], d) for d in ex["documents"])
    groups: dict[tuple, list[dict]] = {}
    for ex in examples:
        groups.setdefault((ex["source"], ex.get("split")), []).append(ex)
    rows = []
    for (source, split), group in groups.items():
        positions = []
        for cycle in range(-(-len(group) // n_documents)):
            order = list(range(n_documents))
            random.Random(f"{seed}-{source}-{split}-{cycle}").shuffle(order)
            positions += order
        for ex, position in zip(group, positions):
            rows.append(with_distractors(ex, pools[SOURCES[source][1]], position, n_documents, seed))
    return rows


def with_distractors(ex: dict, pool: list[tuple[str, str]], position: int, n_documents: int, seed: int) -> dict:
    rng = random.Random(f"{seed}-{ex['source']}-{ex['id']}")
    own = list(ex["documents"])
    seen = set(own)
    candidates = []
    for other_id, document in pool:
        if other_id != ex["id"] and document not in seen and not holds_answer(document, ex["answer"]):
            candidates.append(document)
            seen.add(document)
    drawn = rng.sample(candidates, n_documents - len(own))
    relevant = own[ex["relevant_document"]]
    others = [(d, True) for i, d in enumerate(own) if i != ex["relevant_document"]] + [(d, False) for d in drawn]
    rng.shuffle(others)
    placed = others[:position] + [(relevant, True)] + others[position:]
    row = {k: v for k, v in ex.items() if k not in ("documents", "relevant_document")}
    return {**row, "documents": [d for d, _ in placed], "relevant_document": position,
            "own_documents": [i for i, (_, mine) in enumerate(placed) if mine], "n_source_documents": len(own)}


def write(path: Path = TWENTY) -> list[dict]:
    rows = build()
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return rows


def load(path: Path = TWENTY):
    """The set as a `datasets.Dataset`."""
    from datasets import load_dataset

    return load_dataset("json", data_files=str(path), split="train")


if __name__ == "__main__":
    rows = write()
    print(f"{len(rows)} rows -> {TWENTY}")
