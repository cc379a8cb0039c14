"""The `twenty` part of `eval/rag.py` (#33): SmolLM2's answers judged where documents carry them, at the source
sets' 3-5 documents and at 20 (eval/data/rag_twenty.jsonl), one row per question (the rule:
eval/results/rag/twenty_docs.md)."""

from __future__ import annotations

import contextlib
import json
import random
import sys
import time
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import torch

import llm_attrib
from llm_attrib import Attributor, ConvergenceWarning, rag
from llm_attrib.errors import InvalidInputError
from llm_attrib.rag.ablation import DocumentSubsets
from llm_attrib.rag.prompt import TEMPLATES, as_documents, build_prompt
from llm_attrib.rag.shapley import document_shapley

from rag_data import HERE, RESULTS, append, commit, done_ids, read_rows, save_settings

GROUPS = {"a": ("heldout",), "b": ("real_text", "replication")}  # (a) invented entities, (b) real text
MARGIN = 0.5  # nats by which leave-one-out must name the relevant document for a (b) answer to count
ORDER_SEED = 33
TWENTY_METHODS = ("ig_mask", "shapley")
FALLBACK_BUDGET = 6 * 2**30  # bytes: one 20-document path point in the mask space measured ~3 GiB
REPLY_TOKENS, OWN_ANSWER_TOKENS = 24, 64  # eval/real_text.py's `knows`; rag.explain's max_new_tokens


def package() -> str:
    """Where the llm_attrib this row ran with was imported from (the continuation runs main's dc8afb9 package,
    exported outside the checkout: eval/results/rag/twenty_docs.md)."""
    return str(Path(llm_attrib.__file__).parent)


def twenty_part(group: str, docs: str) -> str:
    return f"twenty_{group}_{docs}"


TWENTY_PARTS = tuple(twenty_part(group, docs) for group in GROUPS for docs in ("source", "20"))


def questions(group: str, docs: str) -> list[dict]:
    """The group's questions in the order they are run: (a) the held-out fictional set's test split in file order,
    (b) every real-text question in one seeded order (the same at both document counts); at `docs="20"` each
    with its 20 documents, else with its own 3-5."""
    sys.path.insert(0, str(HERE))
    from rag_twenty import load, source_examples  # noqa: E402

    rows = [dict(r) for r in load()] if docs == "20" else source_examples()
    rows = [r for r in rows if r["source"] in GROUPS[group] and (group == "b" or r["split"] == "test")]
    if group == "b":
        rows.sort(key=lambda r: (r["source"], r["id"]))
        random.Random(ORDER_SEED).shuffle(rows)
    return rows


def reply(attributor: Attributor, built) -> tuple[str, str]:
    """The model's greedy reply: its first REPLY_TOKENS tokens as text (what eval/real_text.py's `knows` checks)
    and its own answer up to its first special token (what `rag.explain` explains with answer=None)."""
    generated = attributor.sequence(built.prompt, max_new_tokens=OWN_ANSWER_TOKENS).target_ids.tolist()
    special = set(attributor.tokenizer.all_special_ids)
    ids = next((generated[:i] for i, token in enumerate(generated) if token in special), generated)
    text = attributor.tokenizer.decode(generated[:REPLY_TOKENS], skip_special_tokens=True)
    own = attributor.sequence(built.prompt, answer=ids).text[len(built.text):] if ids else ""
    return text, own


def leave_one_out(attributor: Attributor, question: str, docs, answer_ids: list[int]) -> dict:
    """Leave-one-out drops (1 + D forwards, timed) and by how much they name the relevant document."""
    subsets = DocumentSubsets(attributor, question, docs, TEMPLATES["default"], answer_ids, [(0, len(answer_ids))])
    started = time.perf_counter()
    full = float(subsets.full[0])
    drops = [full - float(subsets.without([d])[0]) for d in range(len(docs))]
    return {"full_logprob": full, "leave_one_out": drops, "loo_seconds": time.perf_counter() - started,
            "loo_forwards": 1 + len(docs)}


def shapley(attributor: Attributor, question: str, docs, answer_ids: list[int]) -> dict:
    """The documents' Shapley values as `rag.explain(..., shapley=True)` computes them (default budget), on their own
    subsets (no forward shared with leave-one-out), timed."""
    forwards = []
    subsets = DocumentSubsets(attributor, question, docs, TEMPLATES["default"], answer_ids, [(0, len(answer_ids))],
                              on_forward=forwards.append)
    started = time.perf_counter()
    result = document_shapley(subsets.stack, len(docs))
    # one answer segment: values are (1, D) since 3ee6747 and were (D, 1) in the package the twenty rows run with
    return {"scores": result.values.reshape(-1).tolist(), "seconds": time.perf_counter() - started,
            "n_forward": sum(forwards), "n_backward": 0, "exact": result.exact, "n_subsets": result.n_subsets}


@contextlib.contextmanager
def with_budget(budgeted: bool):
    """rag.explain's Attributor with memory_budget=FALLBACK_BUDGET (rag.explain takes no memory_budget)."""
    if not budgeted:
        yield
        return

    class Budgeted(Attributor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, memory_budget=FALLBACK_BUDGET, **kwargs)

    with mock.patch.object(sys.modules["llm_attrib.rag.explain"], "Attributor", Budgeted):
        yield


def ig_mask(model, tokenizer, question: str, documents: list[str], answer: str) -> dict:
    """`rag.explain`'s document ranking at its defaults (IG over the mask), for the whole answer. Where the default
    memory budget (a share of the host's free memory, without its page cache) refuses even one path point, the
    refusal is recorded and the ranking rerun with `FALLBACK_BUDGET`, which decides only how many path points share
    a forward, not the result."""
    refused = None
    for budgeted in (False, True):
        try:
            with warnings.catch_warnings(), with_budget(budgeted):
                warnings.simplefilter("ignore", ConvergenceWarning)
                result = rag.explain(model, tokenizer, question, documents, answer=answer, granularity="answer",
                                     verify=False, show_progress=False)
            break
        except InvalidInputError as error:
            if budgeted or "memory budget" not in str(error):
                raise
            refused = str(error)
    exp = result.explanation
    return {"scores": result.answer_document_scores.tolist(), "seconds": result.cost["seconds"],
            "n_forward": exp.cost["n_forward"], "n_backward": exp.cost["n_backward"], "space": exp.space,
            "converged": exp.converged, "completeness_error": float(exp.completeness_error.max()),
            "n_steps": exp.params.get("n_steps"), "default_budget_refused": refused,
            "memory_budget": None if refused is None else FALLBACK_BUDGET}


def counts(group: str, row: dict) -> bool:
    """Whether an answered question counts: (a) every correct answer, (b) a correct answer that leave-one-out
    names the relevant document for by at least MARGIN nats over every other document."""
    if not row["correct"] or "leave_one_out" not in row:
        return False
    return group == "a" or row["loo_margin"] >= MARGIN


def cmd_twenty(args) -> None:
    if args.add:
        return add_methods(args)
    model, tokenizer = llm_attrib.zoo.load("smollm2")
    attributor = Attributor(model, tokenizer, show_progress=False)
    part = twenty_part(args.group, args.docs)
    path = RESULTS / f"{part}.jsonl"
    done = done_ids(path)
    started = time.perf_counter()
    for k, ex in enumerate(questions(args.group, args.docs)[:args.n]):
        if ex["id"] in done or k % args.shard[1] != args.shard[0]:
            continue
        if time.perf_counter() - started > args.minutes * 60:
            print(f"budget of {args.minutes} minutes spent; stopping before {ex['id']}", flush=True)
            break
        docs = as_documents(ex["documents"])
        built = build_prompt(tokenizer, ex["question"], docs, TEMPLATES["default"])
        text, answer = reply(attributor, built)
        row = {"id": ex["id"], "rank": k, "group": args.group, "docs": args.docs, "source": ex["source"],
               "question": ex["question"], "documents": ex["documents"], "relevant": ex["relevant_document"],
               "n_documents": len(docs), "expected": ex["answer"], "reply": text, "answer": answer,
               "correct": ex["answer"].lower() in text.lower(), "code": commit(), "package": package(),
               "threads": torch.get_num_threads(),
               "n_prompt_tokens": attributor.sequence(built.prompt, answer=[0]).n_prompt}
        if row["correct"] and answer.strip():
            answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
            row.update(leave_one_out(attributor, ex["question"], docs, answer_ids))
            others = [v for d, v in enumerate(row["leave_one_out"]) if d != row["relevant"]]
            row["loo_margin"] = row["leave_one_out"][row["relevant"]] - max(others)
            row["counted"] = counts(args.group, row)
            if row["counted"]:
                row["methods"] = run_methods(model, attributor, row, args.methods)
        append(path, row)
        show(row)
    save_settings(part, args)


def run_methods(model, attributor: Attributor, row: dict, methods: list[str]) -> dict:
    answer_ids = attributor.tokenizer(row["answer"], add_special_tokens=False)["input_ids"]
    out = {}
    for name in methods:
        if name == "ig_mask":
            out[name] = ig_mask(model, attributor.tokenizer, row["question"], row["documents"], row["answer"])
        else:
            out[name] = shapley(attributor, row["question"], as_documents(row["documents"]), answer_ids)
        out[name]["code"], out[name]["package"] = commit(), package()
    return out


def show(row: dict) -> None:
    m = row.get("methods", {})
    print(f"{row['id']} k={row['rank']} rel={row['relevant']} correct={row['correct']} tokens={row['n_prompt_tokens']} "
          + (f"loo={int(np.argmax(row['leave_one_out']))} margin={row['loo_margin']:.2f} " if "loo_margin" in row else "")
          + " ".join(f"{name}: top={int(np.argmax(v['scores']))} {v['seconds']:.0f}s {v['n_forward']}f"
                     for name, v in m.items()), flush=True)


def add_methods(args) -> None:
    """Run `args.add` on the counted rows of the part that lack them (among the first `args.n` rows), rewriting the
    rows file after each."""
    model, tokenizer = llm_attrib.zoo.load("smollm2")
    attributor = Attributor(model, tokenizer, show_progress=False)
    path = RESULTS / f"{twenty_part(args.group, args.docs)}.jsonl"
    rows = read_rows(path)
    for row in rows[:args.n]:
        missing = [m for m in args.add if row.get("counted") and m not in row["methods"]]
        if missing:
            row["methods"].update(run_methods(model, attributor, row, missing))
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            show(row)
