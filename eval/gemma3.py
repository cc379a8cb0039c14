"""Gemma 3 270M (base, `zoo.load("gemma3")`) beside SmolLM2: convergence, cost and the real-text RAG rows.

    nice -n 10 python eval/gemma3.py convergence            # -> eval/results/gemma3/convergence.jsonl
    nice -n 10 python eval/gemma3.py rag --minutes 40       # -> eval/results/gemma3/rag.jsonl (+ knows, closed book)
    python eval/gemma3.py report                            # -> eval/results/gemma3.md (from the rows, no model)

Everything runs on one thread (`torch.set_num_threads(1)`; the machine is shared). Each row records the commit,
the seconds and the load average at its start, so a timing is read beside the load it ran under.

Convergence: plain completion prompts (a base model has no chat template); IG in each space (embeddings,
attention, mask) with fixed Gauss-Legendre rules of 4..128 nodes (completeness error against gradient evaluations)
and with the package default (score-guided nodes to a 1% tolerance); RPI and IG2 with their defaults once (IG2's
references: the other prompts, whose answers differ).

RAG: the real-text rag set that eval/rag.py runs on SmolLM2 (`eval/data/real_text.jsonl`), laid out with the plain
template (`rag.TEMPLATES["plain"]`, which `rag.explain` picks for a tokenizer without a chat template). Every
example is first answered greedily (24 tokens); "known" when the first line of the reply (a base model goes on
with the next "Question:") contains the expected answer. For the known
ones the closed-book reply (every document removed) says whether the model needs the documents. Known examples are
then explained, those that need the documents first, with the expected answer after "Answer:" (" Canberra") as
`answer=`, granularity="answer": leave-one-out (1 + documents forwards), IG over the mask (`rag.explain`'s default),
raw attention and a random draw, as eval/rag.py's rows (eval/rag_runs.py's `ablations` and `run_methods`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import llm_attrib
from llm_attrib import Attributor, ConvergenceWarning
from llm_attrib.rag.prompt import TEMPLATES, as_documents, build_prompt

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from rag_data import append, commit, pending, read_rows  # noqa: E402
from rag_report import metric_rows, smollm2_table  # noqa: E402
from rag_runs import ablations, run_methods  # noqa: E402

RESULTS = HERE / "results" / "gemma3"
REPORT = HERE / "results" / "gemma3.md"
DATA = HERE / "data" / "real_text.jsonl"
PLAIN = TEMPLATES["plain"]
PROMPTS = [("The capital of France is", " Paris"), ("The Eiffel Tower is located in the city of", " Paris"),
           ("The capital of Japan is", " Tokyo")]
NODES = (4, 8, 16, 32, 64, 128)
SPACES = ("embeddings", "attention", "mask")
RAG_METHODS = ["ig_mask", "attention", "random"]


def load() -> Attributor:
    torch.set_num_threads(1)
    return Attributor(*llm_attrib.zoo.load("gemma3"), show_progress=False)


def stamp() -> dict:
    return {"commit": commit(), "load_average": round(os.getloadavg()[0], 1)}


def explain(attributor: Attributor, prompt: str, answer: str, **params) -> dict:
    row = {"prompt": prompt, "answer": answer, **{k: v for k, v in params.items() if k != "references"}, **stamp()}
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        exp = attributor.explain(prompt, answer=answer, **params)
    steps = exp.params.get("gradient_evaluations", exp.params.get("n_steps"))
    return {**row, "space": exp.space, "seconds": time.perf_counter() - started,
            "completeness_error": float(exp.completeness_error.max()), "converged": exp.converged,
            "gradient_evaluations": max(steps) if isinstance(steps, list) else steps,
            "n_forward": exp.cost["n_forward"], "n_backward": exp.cost["n_backward"],
            "n_forward_all": exp.cost["n_forward_all"], "target_prob": exp.target_probs[0]}


def cmd_convergence(args) -> None:
    attributor = load()
    path = RESULTS / "convergence.jsonl"
    done = {(r["prompt"], r.get("method", "ig"), r["space"], r.get("quadrature"), r.get("n_steps")) for r in read_rows(path)}
    for prompt, answer in PROMPTS[:args.n_prompts]:
        for space in SPACES:
            runs = [dict(quadrature="gauss-legendre", n_steps=n, tolerance=None) for n in NODES] + [dict()]
            for params in runs:
                key = (prompt, "ig", space, params.get("quadrature"), params.get("n_steps"))
                if key not in done:
                    append(path, row := explain(attributor, prompt, answer, method="ig", space=space, **params))
                    print(json.dumps(row), flush=True)
    prompt, answer = PROMPTS[0]
    references = [p for p, a in PROMPTS[1:] + [("The capital of Italy is", " Rome"), ("The capital of Spain is", " Madrid")]
                  if a != answer]
    for method, params in (("rpi", {}), ("ig2", {"references": references})):
        if (prompt, method, "embeddings" if method == "ig2" else "attention", None, None) not in done:
            append(path, row := explain(attributor, prompt, answer, method=method, **params))
            print(json.dumps(row), flush=True)


def examples() -> list[dict]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["kind"] == "rag"]


def reply(attributor: Attributor, question: str, documents: list[str], kept: list[int] | None = None) -> str:
    """The greedy 24-token reply. A base model goes on past its answer with the next "Question: ..." of the
    pattern, so only the reply's first line is its answer (`first_line`)."""
    built = build_prompt(attributor.tokenizer, question, as_documents(documents), PLAIN, kept)
    ids = attributor.sequence(built.prompt, max_new_tokens=24).target_ids
    return attributor.tokenizer.decode(ids, skip_special_tokens=True)


def first_line(text: str) -> str:
    return text.strip().split("\n")[0]


def holds(answer: str, text: str | None) -> bool:
    return text is not None and answer.lower() in first_line(text).lower()


def cmd_rag(args) -> None:
    attributor = load()
    model, tokenizer = attributor.model, attributor.tokenizer
    knows_path, path = RESULTS / "rag_knows.jsonl", RESULTS / "rag.jsonl"
    decided = {r["id"]: r for r in read_rows(knows_path)}
    by_id = {ex["id"]: ex for ex in examples()[:args.limit]}
    for ex in by_id.values():  # every example's reply and closed-book reply first, before any attribution
        if ex["id"] not in decided:
            row = {"id": ex["id"], "reply": reply(attributor, ex["question"], ex["documents"])}
            if holds(ex["answer"], row["reply"]):
                row["closed_book"] = reply(attributor, ex["question"], ex["documents"], kept=[])
            append(knows_path, row)
            decided[ex["id"]] = row
            print(json.dumps(row), flush=True)
    known = {i for i, r in decided.items() if holds(by_id[i]["answer"], r["reply"])}
    closed = {i for i in known if holds(by_id[i]["answer"], decided[i].get("closed_book"))}
    chosen = sorted((ex for ex in by_id.values() if ex["id"] in known), key=lambda ex: ex["id"] in closed)
    for ex in pending(chosen, path, args.minutes):
        answer = " " + ex["answer"]
        row = {"id": ex["id"], "question": ex["question"], "documents": ex["documents"], "answer": answer,
               "relevant": ex["relevant_document"], "n_documents": len(ex["documents"]),
               "knows_closed_book": ex["id"] in closed, **stamp()}
        row.update(ablations(attributor, ex["question"], ex["documents"], PLAIN, answer))
        row["methods"] = run_methods(model, tokenizer, ex["question"], ex["documents"], "plain", answer, ex["id"],
                                     RAG_METHODS)
        append(path, row)
        m = row["methods"]
        print(f"{ex['id']} rel={row['relevant']} loo={int(np.argmax(row['leave_one_out']))} "
              + " ".join(f"{k}: top={int(np.argmax(v['scores']))} {v['seconds']:.0f}s conv={v['converged']}"
                         for k, v in m.items() if "scores" in v), flush=True)


def cmd_report(args) -> None:
    import pandas as pd

    conv = read_rows(RESULTS / "convergence.jsonl")
    lines = ["| prompt | method | space | rule | gradient evaluations | worst completeness error | converged | forwards "
             "| backwards | seconds | load average |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in conv:
        rule = f"{r['quadrature']} {r['n_steps']}" if r.get("quadrature") else "default (score-guided, 1%)"
        lines.append(f"| {r['prompt']!r} | {r.get('method', 'ig')} | {r['space']} | {rule} | {r['gradient_evaluations']} | "
                     f"{r['completeness_error']:.2%} | {r['converged']} | {r['n_forward']} | {r['n_backward']} | "
                     f"{r['seconds']:.1f} | {r['load_average']} |")
    knows = read_rows(RESULTS / "rag_knows.jsonl")
    rows = [r for r in read_rows(RESULTS / "rag.jsonl") if r.get("methods")]
    frame = pd.DataFrame(metric_rows(rows, {}))
    needs = frame[frame["id"].isin({r["id"] for r in rows if not r["knows_closed_book"]})]
    carried = frame[frame["id"].isin({r["id"] for r in rows if r["leave_one_out"][r["relevant"]] >= 0.5
                                      and int(np.argmax(r["leave_one_out"])) == r["relevant"]})]
    answers = {ex["id"]: ex["answer"] for ex in examples()}
    n_known = sum(holds(answers[r["id"]], r["reply"]) for r in knows)
    n_closed = sum(holds(answers[r["id"]], r.get("closed_book")) for r in knows)
    print("## Convergence and cost\n\n" + "\n".join(lines))
    print(f"\n## RAG\n\nknown {n_known} of {len(knows)}, of which {n_closed} also closed-book; explained {len(rows)}; "
          f"commits {sorted({r['commit'] for r in conv + rows})}")
    for title, part in (("all explained", frame), ("needing the documents", needs),
                        ("leave-one-out names the relevant document by >= 0.5 nats", carried)):
        print(f"\n### {title} ({part['id'].nunique() if len(part) else 0} examples)\n")
        print(smollm2_table(part) if len(part) else "(none)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("convergence")
    p.add_argument("--n-prompts", type=int, default=len(PROMPTS), help="the first n of PROMPTS (then RPI and IG2)")
    p = sub.add_parser("rag")
    p.add_argument("--minutes", type=float, default=40, help="stop explaining after this many minutes")
    p.add_argument("--limit", type=int, default=None, help="only the first n rag examples of the set")
    sub.add_parser("report")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    {"convergence": cmd_convergence, "rag": cmd_rag, "report": cmd_report}[args.command](args)


if __name__ == "__main__":
    main()
