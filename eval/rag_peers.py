"""ContextCite, the RAG evaluation's peer, run in its own venv on the rows `eval/rag.py` wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import llm_attrib
from llm_attrib.rag.prompt import TEMPLATES

from rag_data import HERE, RESULTS, read_rows, save_settings


CONTEXTCITE_PYTHON = Path(os.environ.get("CONTEXTCITE_PYTHON", "/work/.venvs/contextcite/bin/python"))  # its venv
CONTEXTCITE_SCRIPT = HERE / "peers" / "contextcite_rag.py"
ZOO_TEMPLATE = "{context} question : {query}"  # rag TEMPLATES["zoo"] in ContextCite's terms
DEFAULT = TEMPLATES["default"]  # SmolLM2's rows: rag's default template, in ContextCite's terms
SMOL_TEMPLATE = DEFAULT.prompt.replace("{documents}", "{context}").replace("{question}", "{query}")


def cmd_contextcite(args) -> None:
    """EXAMPLES.jsonl from the correctly answered rows of `zoo`/`smollm2` (each document exactly as rendered,
    the model's answer as the response), then the peer in its own environment."""
    sys.path.insert(0, str(HERE / "peers"))
    from make_contextcite_examples import example_record  # noqa: E402

    name = args.which
    model, tokenizer = llm_attrib.zoo.load("rag" if name == "zoo" else "smollm2")
    rows = [r for r in read_rows(RESULTS / f"{name}.jsonl") if r.get("methods")]
    examples_path = RESULTS / f"contextcite_{name}_examples.jsonl"
    with open(examples_path, "w") as f:
        for row in rows:
            if name == "zoo":
                record = example_record(model, tokenizer, row["id"], ZOO_TEMPLATE,
                                        [f"doc : {d}" for d in row["documents"]], " ", row["question"],
                                        row["generated"], chat=False)
            else:
                record = example_record(model, tokenizer, row["id"], SMOL_TEMPLATE,
                                        [DEFAULT.document.format(index=i + 1, text=d)
                                         for i, d in enumerate(row["documents"])], DEFAULT.separator,
                                        row["question"], row["answer"], chat=True)
            if abs(record["response_logprob"] - row["full_logprob"]) > 1e-3:
                raise SystemExit(f"{row['id']}: log p(response) {record['response_logprob']} differs from the row's "
                                 f"{row['full_logprob']}")
            f.write(json.dumps(record) + "\n")
    del model
    print(f"{len(rows)} examples -> {examples_path}", flush=True)
    out = RESULTS / f"contextcite_{name}.json"
    command = [str(CONTEXTCITE_PYTHON), str(CONTEXTCITE_SCRIPT), str(llm_attrib.zoo.path("rag" if name == "zoo"
                                                                                            else "smollm2")),
               str(examples_path), str(out), "--num-ablations", str(args.num_ablations), "--threads", str(args.threads),
               *(["--also-ablations", *map(str, args.also_ablations)] if args.also_ablations else []),
               *(["--resume"] if args.resume else []),
               *(["--limit", str(args.limit)] if args.limit is not None else [])]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True)
    save_settings(f"contextcite_{name}", args, peer_command=" ".join(command[1:]))


def load_contextcite(name: str) -> tuple[dict[str, dict], dict | None]:
    path = RESULTS / f"contextcite_{name}.json"
    if not path.exists():
        return {}, None
    data = json.loads(path.read_text())
    return {e["id"]: e for e in data["examples"]}, data
