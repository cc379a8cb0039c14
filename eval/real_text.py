"""Real-text evaluation on SmolLM2-135M-Instruct: faithfulness, document accuracy, completeness and cost.

    python eval/real_text.py --kinds completion sentiment rag --n 12 --threads 1

The set (`eval/data/real_text.jsonl`, written for this project) has three kinds of example:
- rag: a question with 3-5 short documents in one chat message; one document holds the answer.
- completion: a plain-text factual prompt ("The Eiffel Tower is located in the city of") and its answer.
- sentiment: a review in a chat message, asked to be labelled with one word.

Only examples the model gets right are explained (its greedy answer contains the expected one, checked
before any attribution is computed), with the expected answer as the explained continuation: for rag
and sentiment the whole assistant reply ("Mount Everest", "Positive"), for completion the next word(s).
Evidence: the relevant document (rag) or the listed words (completion, sentiment). For every method and
example: comprehensiveness, sufficiency, log-odds and AOPC (ERASER bins, deletion), hit@1 on the evidence,
top-1 document accuracy (rag; the whole answer's scores summed per document span), completeness error,
convergence, and cost. Each run streams its rows to `eval/results/real_text/rows_<kinds>[_<methods>]
[_from<start>].jsonl`; all streams of the kinds are combined into `rows_<kinds>.parquet` (a `datasets.Dataset`)
and `summary_<kinds>.md`. Nothing is selected or tuned on these examples.

Methods: IG in the three spaces (embeddings, attention, the mask), raw attention, a random draw, and RPI and IG2
over embeddings with the package's defaults; --max-steps is the budget of gradient evaluations per target (IG),
per baseline and target (RPI) and per reference and target (IG2). IG2 needs counterfactual references; as tests/test_real_llm.py gives it
prompts of the same form with another answer ("The capital of Italy is"), each example gets every other
example of its kind as a candidate (chat kinds as rendered chat text), in the set's order, and IG2 keeps, for
each target, those on which the model's own next token differs from that target's token, up to its default
of 20 (or --ig2-references; a run with fewer says so in its stream's name and rows).
"""

from __future__ import annotations

import argparse
import json
import time
import zlib
import warnings
from pathlib import Path

import pandas as pd
import torch
from datasets import Dataset, load_dataset

import llm_attrib
from llm_attrib import Attributor, ConvergenceWarning
from llm_attrib.core.chat import render_chat
from llm_attrib.core.guided import minimum_steps
from llm_attrib.errors import InvalidInputError
from llm_attrib.metrics import faithfulness, plausibility

HERE = Path(__file__).parent
DATA = HERE / "data" / "real_text.jsonl"
RESULTS = HERE / "results" / "real_text"
IG2_STEPS = 50  # IG2's default GradPath steps, which these runs use
METHODS = {
    "ig_embeddings": {"method": "ig", "space": "embeddings"},
    "ig_attention": {"method": "ig", "space": "attention"},
    "ig_mask": {"method": "ig", "space": "mask"},
    "attention": {"method": "attention"},
    "random": {"method": "random", "space": "embeddings"},
    "rpi": {"method": "rpi", "space": "embeddings"},
    "ig2": {"method": "ig2", "space": "embeddings"},
}


def rag_prompt(example: dict) -> tuple[list[dict], list[tuple[int, int]]]:
    """The chat message and each document's character span within the message content."""
    content, spans = "Answer the question using the documents.\n\n", []
    for i, document in enumerate(example["documents"]):
        line = f"Document {i + 1}: "
        spans.append((len(content) + len(line), len(content) + len(line) + len(document)))
        content += line + document + "\n"
    content += f"\nQuestion: {example['question']}"
    return [{"role": "user", "content": content}], spans


def sentiment_prompt(example: dict) -> tuple[list[dict], list[tuple[int, int]]]:
    head = "Is the sentiment of this review positive or negative? Answer with one word.\n\nReview: "
    return [{"role": "user", "content": head + example["text"]}], [(len(head), len(head) + len(example["text"]))]


def prepare(example: dict, tokenizer) -> dict:
    """prompt, answer, evidence spans (in the rendered text), document spans, and the check text to generate."""
    if example["kind"] == "completion":
        prompt = example["prompt"]
        evidence = [_span(prompt, e, 0, len(prompt)) for e in example["evidence"]]
        return {"prompt": prompt, "answer": " " + example["answer"], "expected": example["answer"],
                "evidence": evidence, "documents": None, "relevant": None}
    if example["kind"] == "rag":
        messages, spans = rag_prompt(example)
        answer = example["answer"]
    else:
        messages, spans = sentiment_prompt(example)
        answer = example["label"].capitalize()
    text, (content,) = render_chat(tokenizer, messages)
    shifted = [(content[0] + a, content[0] + b) for a, b in spans]
    if example["kind"] == "rag":
        evidence, documents, relevant = [shifted[example["relevant_document"]]], shifted, example["relevant_document"]
    else:
        evidence = [_span(text, e, *shifted[0]) for e in example["evidence"]]
        documents = relevant = None
    return {"prompt": messages, "answer": answer, "expected": answer, "evidence": evidence,
            "documents": documents, "relevant": relevant}


def _span(text: str, piece: str, start: int, end: int) -> tuple[int, int]:
    at = text.index(piece, start, end)
    return at, at + len(piece)


def knows(attributor: Attributor, item: dict) -> bool:
    """Whether the model's own greedy answer contains the expected one (decided before any attribution)."""
    seq = attributor.sequence(item["prompt"], max_new_tokens=24)
    generated = attributor.tokenizer.decode(seq.target_ids, skip_special_tokens=True)
    return item["expected"].lower() in generated.lower()


def counterfactuals(items: dict[str, dict], tokenizer, example_id: str) -> list[dict]:
    """IG2's candidate references for one example: the other examples of its kind as prompt text (IG2 keeps
    those on which the model's own outcome differs from the explained one)."""
    return [{"prompt": item["prompt"] if isinstance(item["prompt"], str) else render_chat(tokenizer, item["prompt"])[0]}
            for other, item in items.items() if other != example_id]


def run(kinds: list[str], n: int, max_steps: int, methods: list[str], stream: Path | None = None,
        start: int = 0, ig2_references: int | None = None) -> pd.DataFrame:
    """Explain and score; each row is also appended to `stream` (JSON lines) as soon as it exists."""
    model, tokenizer = llm_attrib.zoo.load("smollm2")
    attributor = Attributor(model, tokenizer, show_progress=False)
    data = load_dataset("json", data_files=str(DATA), split="train")
    rows = []

    def record(row: dict) -> None:
        rows.append(row)
        _append(stream, row)
    for kind in kinds:
        examples = [e for e in data if e["kind"] == kind]
        items = {e["id"]: prepare(e, tokenizer) for e in examples}  # all of the kind: IG2's reference pool
        for example in examples[start:start + n]:
            item = items[example["id"]]
            if not knows(attributor, item):
                record({"id": example["id"], "kind": kind, "known": False})
                continue
            for label in methods:
                params = dict(METHODS[label])
                if params["method"] in ("ig", "rpi", "ig2"):
                    params["max_steps"] = max_steps
                if params["method"] == "ig2":
                    params["references"] = counterfactuals(items, tokenizer, example["id"])
                    # a panel per GradPath step: below that budget IG2 refuses to start
                    params["max_steps"] = max(max_steps, minimum_steps(IG2_STEPS))
                    if ig2_references is not None:
                        params["n_references"] = ig2_references
                if params["method"] == "random":
                    params["seed"] = zlib.crc32(example["id"].encode())  # a fresh draw per example
                started = time.perf_counter()
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", ConvergenceWarning)
                        exp = attributor.explain(item["prompt"], answer=item["answer"], **params)
                except InvalidInputError as error:  # e.g. the mask space on a prompt without a start token
                    record({"id": example["id"], "kind": kind, "known": True, "method": label, "refused": str(error)})
                    print(f"{example['id']} {label:14s} refused: {error}", flush=True)
                    continue
                seconds = time.perf_counter() - started
                values = faithfulness(attributor, exp)
                values.update(plausibility(exp, item["evidence"], k=1))
                row = {"id": example["id"], "kind": kind, "known": True, "method": label,
                       "n_targets": len(exp.target_ids), "n_tokens": len(exp.input_ids),
                       "seconds": seconds, "n_forward": exp.cost["n_forward"], "n_backward": exp.cost["n_backward"],
                       "completeness_max": float(exp.completeness_error.max()),
                       "converged": exp.converged,
                       **({"n_references": exp.params["n_references"]} if label == "ig2" else {}),
                       **{key: float(value.float().nanmean()) for key, value in values.items()}}
                if item["documents"]:
                    totals = exp.aggregate(item["documents"]).prompt_scores.sum(0)
                    row["top_document_correct"] = float(int(totals.argmax()) == item["relevant"])
                record(row)
                print(f"{example['id']} {label:14s} {seconds:6.1f}s aopc-comp {row['aopc_comprehensiveness']:+.3f} "
                      f"aopc-suff {row['aopc_sufficiency']:+.3f} hit@1 {row['hit@1']:.2f} "
                      f"doc {row.get('top_document_correct', float('nan'))} "
                      f"compl {row['completeness_max']:.3g} conv {row['converged']}", flush=True)
    return pd.DataFrame(rows)


def combined(folder: Path, name: str) -> pd.DataFrame:
    """The rows of every stream of these kinds; a later run's (example, method) rows replace earlier ones
    (streams in order of name length: the full run, then runs of some methods or from a later start)."""
    frame = pd.DataFrame()
    for stream in sorted(folder.glob(f"rows_{name}*.jsonl"), key=lambda p: (len(p.name), p.name)):
        rows = pd.DataFrame([json.loads(line) for line in stream.read_text().splitlines() if line.strip()])
        if not frame.empty and "method" in rows:
            new = set(zip(rows["id"], rows["method"]))
            frame = frame[[(i, m) not in new for i, m in zip(frame["id"], frame["method"])]]
        frame = pd.concat([frame, rows], ignore_index=True)
    if "method" not in frame:  # only examples the model got wrong so far: no method ran
        frame["method"] = None
    return frame.drop_duplicates(subset=["id", "method"], keep="last")


def _append(stream: Path | None, row: dict) -> None:
    if stream is not None:
        with open(stream, "a") as f:
            f.write(json.dumps(row) + "\n")


def summary(frame: pd.DataFrame) -> str:
    known = frame[frame["known"]]
    lines = [f"- {kind}: the model answered {g[g['known']]['id'].nunique()} of {g['id'].nunique()} examples right; "
             "only those are explained" for kind, g in frame.groupby("kind")]
    if "refused" in known:  # a method that refused an example (with the package's message) is left out of its means
        refused = known[known["refused"].notna()]
        lines += [f"- {kind}, {method}: refused on {len(g)} examples: {g['refused'].iloc[0]}"
                  for (kind, method), g in refused.groupby(["kind", "method"])]
        known = known[known["refused"].isna()]
    if "n_references" in known:  # IG2's references per target, which --ig2-references may have capped
        lines += [f"- {kind}, {method}: counterfactual references per target: "
                  f"{sorted({str(int(v)) if isinstance(v, float) else str(v) for v in g['n_references']})}"
                  for (kind, method), g in known.dropna(subset=["n_references"]).groupby(["kind", "method"])]
    columns = ["aopc_comprehensiveness", "aopc_sufficiency", "comprehensiveness@20", "sufficiency@20", "log_odds@20",
               "hit@1", "top_document_correct", "completeness_max", "converged", "seconds", "n_backward"]
    columns = [c for c in columns if c in known]
    if known.empty or not columns:
        return "\n".join(lines) + "\n\nNo method has run on an example the model answered right yet."
    groups = known.assign(converged=known["converged"].astype(float)).groupby(["kind", "method"], sort=False)
    table = groups[columns].mean()
    table.insert(0, "examples", groups.size())  # methods run on fewer examples (slow ones) say so
    table = table.rename(columns={c: f"{c} (sum/6; code: x6/5)" for c in columns if c.startswith("aopc_")})
    note = ("AOPC: ERASER's bins (1, 5, 10, 20, 50)%, deletion, the ERASER paper's sum over bins / 6; ERASER's "
            "released code averages over the bins (x6/5).")
    formats = ("", ".0f") + (".3f",) * len(columns)  # the row label, the example count, the means
    return "\n".join(lines) + "\n\n" + note + "\n\n" + table.to_markdown(floatfmt=formats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", nargs="+", default=["completion", "sentiment", "rag"])
    parser.add_argument("--n", type=int, default=12, help="examples per kind (the first n of the set)")
    parser.add_argument("--start", type=int, default=0, help="skip this many examples of each kind first")
    parser.add_argument("--max-steps", type=int, default=128, help="gradient evaluations per target (per baseline/reference and target for RPI/IG2) at most")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--ig2-references", type=int, default=None,
                        help="IG2's n_references (default: the package's, 20); its cost grows linearly with it")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--summarise", action="store_true",
                        help="only rebuild the parquet and summary from the rows streamed so far (an interrupted run)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.output.mkdir(parents=True, exist_ok=True)
    name = "_".join(args.kinds)
    part = "" if set(args.methods) == set(METHODS) else "_" + "_".join(args.methods)
    part += f"_from{args.start}" if args.start else ""
    part += f"_refs{args.ig2_references}" if args.ig2_references is not None else ""
    stream = args.output / f"rows_{name}{part}.jsonl"
    if not args.summarise:
        stream.unlink(missing_ok=True)
        run(args.kinds, args.n, args.max_steps, args.methods, stream, args.start, args.ig2_references)
    frame = combined(args.output, name)
    Dataset.from_pandas(frame, preserve_index=False).to_parquet(str(args.output / f"rows_{name}.parquet"))
    text = summary(frame)
    streams = ", ".join(f"`{p.name}`" for p in sorted(args.output.glob(f"rows_{name}*.jsonl")))
    (args.output / f"summary_{name}.md").write_text(
        f"# Real-text evaluation on SmolLM2-135M-Instruct ({', '.join(args.kinds)})\n\n"
        f"{frame['id'].nunique()} examples, from the row streams {streams} (each written by one "
        "`python eval/real_text.py` run; see README.md beside this page for the commands)\n\n" + text + "\n")
    print(text)


if __name__ == "__main__":
    main()
