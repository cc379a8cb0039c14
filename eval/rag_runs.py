"""The RAG evaluation's runs: answer, ablate and explain each example with every method, one row each (the `zoo`,
`verdicts`, `smollm2`, `speed`, `subsets` and `batching` parts of `eval/rag.py`)."""

from __future__ import annotations

import json
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch

import llm_attrib
from llm_attrib import Attributor, ConvergenceWarning, rag
from llm_attrib.errors import InvalidInputError
from llm_attrib.rag.ablation import DocumentSubsets
from llm_attrib.rag.explain import default_space
from llm_attrib.rag.prompt import TEMPLATES, as_documents, build_prompt
from llm_attrib.rag.shapley import document_shapley

from rag_data import (HERE, OWN_ANSWER_TOKENS, RESULTS, append, commit, data_prefix, done_ids, pending,
                      read_rows, save_settings, smollm2_examples, smollm2_part, zoo_cells,
                      zoo_standard)


METHODS = {
    "ig_embeddings": {"method": "ig", "space": "embeddings"},
    "ig_attention": {"method": "ig", "space": "attention"},
    "ig_mask": {"method": "ig", "space": "mask"},
    "ixg_mask": {"method": "input_x_gradient", "space": "mask"},
    "ixg_attention": {"method": "input_x_gradient", "space": "attention"},
    "attention": {"method": "attention"},
    "random": {"method": "random"},
}


def greedy_answer(attributor: Attributor, built, max_new_tokens: int) -> str:
    """The model's greedy answer text to a built prompt, up to its first special token (as `rag.explain` takes it)."""
    seq = attributor.sequence(built.prompt, max_new_tokens=max_new_tokens)
    special = set(attributor.tokenizer.all_special_ids)  # llm_attrib.rag.explain.until_end, which rag.explain dropped
    generated = seq.target_ids.tolist()
    ids = next((generated[:i] for i, token in enumerate(generated) if token in special), generated)
    if not ids:
        return ""
    return attributor.sequence(built.prompt, answer=ids).text[len(built.text):]


def ablations(attributor: Attributor, question: str, documents: list[str], template, answer: str, system=None) -> dict:
    """Leave-one-out drops (D,), pair drops (D, D) and the full log-probability of the answer, with timings."""
    docs = as_documents(documents)
    answer_ids = attributor.tokenizer(answer, add_special_tokens=False)["input_ids"]
    subsets = DocumentSubsets(attributor, question, docs, template, answer_ids, [(0, len(answer_ids))], system)
    started = time.perf_counter()
    full = float(subsets.full[0])
    alone = torch.stack([subsets.without([d]) for d in range(len(docs))])[:, 0]
    loo_seconds = time.perf_counter() - started
    pairs = [[i, j] for i in range(len(docs)) for j in range(i + 1, len(docs))]
    started = time.perf_counter()
    both = torch.stack([subsets.without(pair) for pair in pairs])[:, 0] if pairs else torch.zeros(0)
    pair_seconds = time.perf_counter() - started
    drops = np.full((len(docs), len(docs)), np.nan)
    for (i, j), value in zip(pairs, both.tolist()):
        drops[i, j] = drops[j, i] = full - value
    return {"full_logprob": full, "leave_one_out": (full - alone).tolist(), "loo_seconds": loo_seconds,
            "loo_forwards": 1 + len(docs), "pair_drops": [[None if np.isnan(v) else v for v in row] for row in drops],
            "pair_seconds": pair_seconds}


def run_methods(model, tokenizer, question, documents, template, answer, row_id, methods, **params) -> dict:
    out = {}
    for label in methods:
        spec = dict(METHODS[label])
        if spec["method"] == "random":
            spec["seed"] = zlib.crc32(row_id.encode())
        elif spec["method"] == "ig":
            spec.update(params)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                result = rag.explain(model, tokenizer, question, documents, answer=answer, template=template,
                                     granularity="answer", verify=False, show_progress=False, **spec)
        except InvalidInputError as error:
            out[label] = {"error": str(error)}
            continue
        exp = result.explanation
        errors = exp.completeness_error
        out[label] = {"scores": result.answer_document_scores.tolist(), "seconds": result.cost["seconds"],
                      "n_forward": exp.cost["n_forward"], "n_backward": exp.cost["n_backward"],
                      "n_forward_all": exp.cost["n_forward_all"], "converged": exp.converged,
                      "completeness_error": None if torch.isnan(errors).all() else float(errors.max()),
                      "n_steps": exp.params.get("n_steps"), "n_tokens": len(exp.input_ids)}
    return out


def cmd_zoo(args) -> None:
    model, tokenizer = llm_attrib.zoo.load("rag")
    attributor = Attributor(model, tokenizer, show_progress=False)
    path = RESULTS / "zoo.jsonl"
    if args.add:
        return add_methods(model, tokenizer, path, args.add, "zoo")
    done = done_ids(path)
    template = TEMPLATES["zoo"]
    for ex in zoo_cells(args.n):
        if ex["id"] in done:
            continue
        built = build_prompt(tokenizer, ex["question"], as_documents(ex["documents"]), template)
        if "prompt" in ex:
            assert built.text == ex["prompt"], (built.text, ex["prompt"])
        generated = greedy_answer(attributor, built, 6)
        correct = [k for k in ex["candidates"] if generated == " " + ex["values"][k]]
        row = {key: ex[key] for key in ("id", "variant", "cell", "question", "documents", "values", "candidates")}
        row.update(n_documents=len(ex["documents"]), generated=generated, correct=bool(correct),
                   relevant=correct[0] if correct else None)
        if correct:
            row.update(ablations(attributor, ex["question"], ex["documents"], template, generated))
            row["methods"] = run_methods(model, tokenizer, ex["question"], ex["documents"], "zoo", generated,
                                         ex["id"], METHODS)
        append(path, row)
        if correct:
            m = row["methods"]
            print(f"{ex['id']:16s} top: " + " ".join(f"{k}={int(np.argmax(v['scores']))}" for k, v in m.items())
                  + f" loo={int(np.argmax(row['leave_one_out']))} rel={row['relevant']}", flush=True)
        else:
            print(f"{ex['id']:16s} wrong answer {generated!r}", flush=True)
    save_settings("zoo", args, methods=METHODS, granularity="answer", method_defaults="package defaults")


def add_methods(model, tokenizer, path: Path, methods: list[str], template: str | None, **params) -> None:
    """Run `methods` on the explained rows that lack them (the rows' examples, answers and ablations unchanged),
    rewriting the rows file as it goes."""
    rows = read_rows(path)
    for row in rows:
        missing = [m for m in methods if row.get("methods") and m not in row["methods"]]
        if missing:
            answer = row["generated"] if template == "zoo" else row["answer"]
            row["methods"].update(run_methods(model, tokenizer, row["question"], row["documents"], template,
                                              answer, row["id"], missing, **params))
            done = {m: row["methods"][m] for m in missing}
            print(f"{row['id']:16s} " + " ".join(f"{m}={int(np.argmax(v['scores']))}" if "scores" in v else
                                                 f"{m} refused: {v['error']}" for m, v in done.items())
                  + f" rel={row['relevant']}", flush=True)
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def verdict_row(model, tokenizer, question, documents, answer) -> dict:
    """The default rag.explain's verdict on the first answer sentence, with what the verdict is made of."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = rag.explain(model, tokenizer, question, documents, answer=answer, template="zoo",
                             show_progress=False)
    verdict = result.verdicts[0]
    return {"answer": result.answer, "margin": verdict.margin, "drop_cited": verdict.drop_cited,
            "drop_other": verdict.drop_other, "cited": [d for d, _ in result.citations[0].documents],
            "label_placeholder": verdict.label, "n_sentences": len(result.verdicts),
            "leave_one_out": result.leave_one_out[0].tolist(), "seconds": result.cost["seconds"]}


def cmd_verdicts(args) -> None:
    model, tokenizer = llm_attrib.zoo.load("rag")
    attributor = Attributor(model, tokenizer, show_progress=False)
    path = RESULTS / "verdicts.jsonl"
    done = done_ids(path)
    for split, seed in (("calibration", args.calibration_seed), ("test", args.test_seed)):
        for ex in zoo_standard(args.n, seed):
            ex_id = f"{split}-{ex['id']}"
            if ex_id in done:
                continue
            built = build_prompt(tokenizer, ex["question"], as_documents(ex["documents"]), TEMPLATES["zoo"])
            generated = greedy_answer(attributor, built, 6)
            relevant = ex["candidates"][0]
            row = {"id": ex_id, "split": split, "seed": seed, "documents": ex["documents"], "question": ex["question"],
                   "relevant": relevant, "generated": generated, "correct": generated == " " + ex["values"][relevant]}
            if row["correct"]:
                kept = [d for i, d in enumerate(ex["documents"]) if i != relevant]
                row["supported"] = verdict_row(model, tokenizer, ex["question"], ex["documents"], generated)
                row["unsupported"] = verdict_row(model, tokenizer, ex["question"], kept, generated)
                own = greedy_answer(attributor, build_prompt(tokenizer, ex["question"], as_documents(kept),
                                                             TEMPLATES["zoo"]), 6)
                values = [v for i, v in enumerate(ex["values"]) if i != relevant]
                row["own_answer"] = own
                row["own_copied"] = next((i for i, v in enumerate(values) if own == " " + v), None)
                if own.strip():
                    row["own"] = verdict_row(model, tokenizer, ex["question"], kept, own)
                print(f"{ex_id:24s} supported {row['supported']['margin']:+7.2f} unsupported "
                      f"{row['unsupported']['margin']:+7.2f} own {own!r} "
                      f"{row.get('own', {}).get('margin', float('nan')):+7.2f}", flush=True)
            append(path, row)
    save_settings("verdicts", args, method=f"rag.explain defaults (ig over {default_space('ig')}, granularity sentence, "
                                           "verify)")


def cmd_smollm2(args) -> None:
    sys.path.insert(0, str(HERE))
    from real_text import knows  # noqa: E402

    model, tokenizer = llm_attrib.zoo.load("smollm2")
    attributor = Attributor(model, tokenizer, show_progress=False)
    examples = smollm2_examples(tokenizer, args.data, args.split)
    own = args.answer == "own"
    part = smollm2_part(args.answer, args.data, args.split)
    if args.add:
        return add_methods(model, tokenizer, RESULTS / f"{part}.jsonl", args.add, None, max_steps=args.max_steps)
    known_path, path = RESULTS / f"{data_prefix(args.data)}_knows.jsonl", RESULTS / f"{part}.jsonl"
    decided = {row["id"]: row["known"] for row in read_rows(known_path)}
    for ex in examples:  # every example's "knows" first, before any attribution
        if ex["id"] not in decided:
            decided[ex["id"]] = knows(attributor, ex["item"])
            append(known_path, {"id": ex["id"], "known": decided[ex["id"]]})
    print(f"SmolLM2 answers {sum(decided.values())} of {len(decided)} rag examples correctly", flush=True)
    closed_path = RESULTS / f"{data_prefix(args.data)}_closed_book.jsonl"
    knows_closed = {row["id"]: row["knows_closed_book"] for row in read_rows(closed_path)}
    for ex in examples:  # and whether it answers without any document (also before any attribution)
        if decided[ex["id"]] and ex["id"] not in knows_closed:
            row = closed_book(attributor, ex)
            append(closed_path, row)
            knows_closed[ex["id"]] = row["knows_closed_book"]
    # The examples the model needs documents for go first: only they have a relevant document to be found.
    examples.sort(key=lambda ex: (not decided[ex["id"]], knows_closed.get(ex["id"], True)))
    shard, n_shards = args.shard
    examples = [ex for ex in examples if decided[ex["id"]] or args.all_answers][shard::n_shards]
    template = TEMPLATES["default"]
    for ex in pending(examples, path, args.minutes):
        built = build_prompt(tokenizer, ex["question"], as_documents(ex["documents"]), template)
        answer = greedy_answer(attributor, built, OWN_ANSWER_TOKENS) if own else ex["item"]["answer"]
        row = {"id": ex["id"], "question": ex["question"], "documents": ex["documents"], "answer": answer,
               "relevant": ex["relevant_document"], "n_documents": len(ex["documents"]), "correct": decided[ex["id"]]}
        try:
            attributor.sequence(built.prompt, answer=answer)
        except InvalidInputError as error:
            row["refused"] = str(error)
            append(path, row)
            print(f"{ex['id']} refused: {error}", flush=True)
            continue
        row.update(ablations(attributor, ex["question"], ex["documents"], template, answer))
        row["methods"] = run_methods(model, tokenizer, ex["question"], ex["documents"], None, answer, ex["id"],
                                     args.methods, max_steps=args.max_steps)
        append(path, row)
        m = row["methods"]
        print(f"{ex['id']} rel={row['relevant']} loo={int(np.argmax(row['leave_one_out']))} "
              + " ".join(f"{k}: top={int(np.argmax(v['scores']))} {v['seconds']:.0f}s conv={v['converged']} "
                         f"err={v['completeness_error']}" for k, v in m.items() if "scores" in v), flush=True)
    save_settings(part, args, granularity="answer", ig_params={"max_steps": args.max_steps})


def closed_book(attributor: Attributor, example: dict) -> dict:
    """The model's greedy reply to the question with every document removed (the same template, as
    leave-one-out removes them), and whether it still holds the expected answer: where it does, the model
    knows the answer without the documents, so no method can be expected to find the relevant one."""
    built = build_prompt(attributor.tokenizer, example["question"], as_documents(example["documents"]),
                         TEMPLATES["default"], kept=[])
    reply = attributor.tokenizer.decode(attributor.sequence(built.prompt, max_new_tokens=24).target_ids,
                                        skip_special_tokens=True)
    return {"id": example["id"], "reply": reply, "knows_closed_book": example["item"]["expected"].lower() in reply.lower()}


def cmd_speed(args) -> None:
    """The issue's workload: a document ranking (granularity="answer", IG, defaults) of a 3-document chat prompt of
    about 120 tokens, on `--threads` threads. The prompt: the first real-text rag example with 3 documents whose
    prompt has 110..130 tokens and that the model answers correctly."""
    sys.path.insert(0, str(HERE))
    from real_text import knows  # noqa: E402

    model, tokenizer = llm_attrib.zoo.load("smollm2")
    attributor = Attributor(model, tokenizer, show_progress=False)
    template = TEMPLATES["default"]
    for ex in smollm2_examples(tokenizer):
        if len(ex["documents"]) != 3:
            continue
        built = build_prompt(tokenizer, ex["question"], as_documents(ex["documents"]), template)
        n_prompt = attributor.sequence(built.prompt, answer=[0]).n_prompt
        if 110 <= n_prompt <= 130 and knows(attributor, ex["item"]):
            break
    else:
        raise SystemExit("no 3-document example of 110..130 tokens")
    for answer in (None, ex["item"]["answer"]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            started = time.perf_counter()
            result = rag.explain(model, tokenizer, ex["question"], ex["documents"], answer=answer,
                                 granularity="answer", space=args.space, show_progress=False)
            seconds = time.perf_counter() - started
        exp = result.explanation
        row = {"id": ex["id"], "code": commit(), "threads": torch.get_num_threads(), "answer_given": answer is not None, "space": exp.space,
               "answer": result.answer, "n_prompt_tokens": exp.n_prompt_tokens,
               "n_answer_tokens": len(exp.target_ids), "seconds": seconds, "cost": result.cost,
               "n_steps": exp.params.get("n_steps"), "completeness_error": float(exp.completeness_error.max()),
               "converged": exp.converged, "top_document": result.top_document, "relevant": ex["relevant_document"],
               "scores": result.answer_document_scores.tolist(), "leave_one_out": result.leave_one_out[0].tolist()}
        append(RESULTS / "speed.jsonl", row)
        print(json.dumps(row), flush=True)
    save_settings("speed", args, settings="rag.explain defaults, granularity='answer'")


def cmd_subsets(args) -> None:
    """The documents' Shapley values on each explained row, as `rag.explain(..., shapley=True)` computes them at its
    default budget (every subset of documents up to 6 documents, sampled orders beyond), one forward per subset
    (the prompt re-rendered with the subset, as leave-one-out does); exact rows keep every subset's value, so the
    report can derive the other candidate of the rule (notes.md, "Exact document Shapley values")."""
    on_zoo = args.which == "zoo"
    model, tokenizer = llm_attrib.zoo.load("rag" if on_zoo else "smollm2")
    attributor = Attributor(model, tokenizer, show_progress=False)
    path = RESULTS / f"{args.which}.jsonl"
    rows = read_rows(path)
    for k, row in enumerate(rows):
        if not row.get("methods") or "subsets" in row:
            continue
        docs = as_documents(row["documents"])
        answer_ids = tokenizer(row["generated" if on_zoo else "answer"], add_special_tokens=False)["input_ids"]
        subsets = DocumentSubsets(attributor, row["question"], docs, TEMPLATES["zoo" if on_zoo else "default"],
                                  answer_ids, [(0, len(answer_ids))])
        started = time.perf_counter()
        result = document_shapley(subsets.stack, len(docs))
        seconds = time.perf_counter() - started
        values = {sum(1 << d for d in kept): float(v[0]) for kept, v in subsets.values.items()}
        full = (1 << len(docs)) - 1
        if abs(values[full] - row["full_logprob"]) > 1e-3 or any(
                abs(values[full] - values[full ^ (1 << d)] - drop) > 1e-3
                for d, drop in enumerate(row["leave_one_out"]) if full ^ (1 << d) in values):
            raise SystemExit(f"{row['id']}: subset values disagree with the row's leave-one-out")
        row["subsets"] = {"shapley": result.values[0].tolist(), "exact": result.exact, "seconds": seconds,
                          "n_forward": len(subsets.values), "commit": commit()}
        if result.exact:
            row["subsets"]["values"] = [values[m] for m in range(full + 1)]
        if on_zoo and k % 50 and k != len(rows) - 1:
            continue  # the zoo's 693 rows are rewritten every 50
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{row['id']} shapley={np.round(row['subsets']['shapley'], 2).tolist()} "
              f"loo={np.round(row['leave_one_out'], 2).tolist()} rel={row['relevant']} {seconds:.1f}s", flush=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def cmd_batching(args) -> None:
    """Seconds to evaluate every subset of documents on SmolLM2 one per forward (rag.explain's default) and all in
    one left-padded batch (internal_batch_size=32), on the real-text rows with 4 or 5 documents (their own
    answers); which runs first alternates per row, and the two must agree to 1e-3 nats."""
    model, tokenizer = llm_attrib.zoo.load("smollm2")
    path = RESULTS / "batching.jsonl"
    rows = [r for r in read_rows(RESULTS / "smollm2_own.jsonl") if r.get("methods") and r["n_documents"] >= 4]
    for k, row in enumerate(rows[:args.n]):
        docs = as_documents(row["documents"])
        answer_ids = tokenizer(row["answer"], add_special_tokens=False)["input_ids"]
        everyone = [[d for d in range(len(docs)) if mask >> d & 1] for mask in range(2 ** len(docs))]
        timed = {}
        for batch in ((32, None) if k % 2 == 0 else (None, 32)):
            forwards = []
            subsets = DocumentSubsets(Attributor(model, tokenizer, internal_batch_size=batch, show_progress=False),
                                      row["question"], docs, TEMPLATES["default"], answer_ids, [(0, len(answer_ids))],
                                      on_forward=forwards.append)
            started = time.perf_counter()
            values = subsets.stack(everyone)[:, 0]
            timed[batch] = (time.perf_counter() - started, len(forwards), values)
        if (timed[32][2] - timed[None][2]).abs().max() > 1e-3:
            raise SystemExit(f"{row['id']}: batched subset values differ from one subset per forward")
        out = {"id": row["id"], "n_documents": len(docs), "n_subsets": len(everyone), "code": commit(),
               "threads": torch.get_num_threads(), "seconds_batched": timed[32][0], "forwards_batched": timed[32][1],
               "seconds_one_per_forward": timed[None][0]}
        append(path, out)
        print(out, flush=True)
    save_settings("batching", args)
