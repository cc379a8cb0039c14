"""RAG debugging evaluation (#15): `llm_attrib.rag` against leave-one-out, raw attention, random and ContextCite.

    python eval/rag.py zoo --n 50                 # 1. zoo variants               -> eval/results/rag/zoo.jsonl
    python eval/rag.py verdicts --n 100           # 2. unsupported answers         -> eval/results/rag/verdicts.jsonl
    python eval/rag.py smollm2 --minutes 50       # 3. SmolLM2, real-text rag set  -> eval/results/rag/smollm2_own.jsonl
                                                  #    (--answer expected: the bare expected answer -> smollm2.jsonl)
    python eval/rag.py speed --threads 2          # 3b. the issue's speed workload -> eval/results/rag/speed.jsonl
    python eval/rag.py contextcite zoo            # 4. ContextCite on the rows above (its own venv, transformers 4.x)
    python eval/rag.py contextcite smollm2_own    #    -> eval/results/rag/contextcite_{zoo,smollm2_own}.json
                                                  #    (smollm2: the rows of --answer expected)
    python eval/rag.py subsets smollm2_own        # 3e. the documents' Shapley values on explained rows
    python eval/rag.py smollm2 --data replication # 3g. a second real-text sample (then contextcite/subsets
                                                  #     smollm2_own_replication)
    python eval/rag.py batching --threads 2       # 3i. batched removal forwards against one per forward
    python eval/rag.py report                     # eval/results/rag_debugging.md from the rows (no model)

Every example is first answered greedily by the model; only the examples it answers correctly (its answer equals
the relevant document's value; SmolLM2: eval/real_text.py's `knows`) are explained, with that answer given as
`answer=` (SmolLM2 by default: its own greedy reply, cut at its end-of-turn token, as `rag.explain` explains it
with answer=None; `--answer expected`: the bare expected answer, e.g. "Canberra"). Each row goes to its JSON-lines file as soon as it exists; a rerun skips the ids already there
(--fresh starts over).

Zoo cells: the zoo's own examples (`zoo.examples("rag", n, seed)`); 5 documents with the relevant one at every
position; 2..8 documents (the zoo model was trained on 3..6); a near-duplicate distractor: a second document about
the asked person with another attribute, where the "relevant" document is the one whose value the model produced.
The variant generators follow `llm_attrib.zoo.tasks.rag` (same vocabulary, no word repeated within a prompt),
seeded per cell.

Per example and method (all at granularity="answer": one target, log p(answer | prompt)): the document scores
(`answer_document_scores`) and seconds (`cost["seconds"]`, prompt building included). Per example, once: the
leave-one-out drops (nats the answer's log-probability loses when one document is removed; 1 + documents forwards,
timed) and the drop for every pair of documents removed together (so any method's top-2 removal is a lookup,
ContextCite's included). Metrics, computed by `report`: top-1 document accuracy against the relevant document,
Spearman correlation of the scores with the leave-one-out drops, the top-2 removal drop, seconds per example.

Verdicts: on a calibration seed and a separate test seed of zoo examples, `verdicts[0].margin` of
`rag.explain(...)` (package defaults: IG over the mask, sentence granularity, verify=True) for the model's
correct answer with all documents (supported) and the same answer with its relevant document removed
(unsupported); and the model's own answer after that removal. Thresholds come from the calibration rows only
(`calibrate`), precision/recall of "unsupported" from the test rows only.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
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
from llm_attrib.rag.explain import default_space, until_end
from llm_attrib.rag.prompt import TEMPLATES, as_documents, build_prompt
from llm_attrib.rag.shapley import document_shapley
from llm_attrib.rag.verdicts import calibrate as rag_calibrate, judge
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
CONTEXTCITE_PYTHON = Path("/work/.venvs/contextcite/bin/python")
CONTEXTCITE_SCRIPT = HERE / "peers" / "contextcite_rag.py"
ZOO_TEMPLATE = "{context} question : {query}"  # rag TEMPLATES["zoo"] in ContextCite's terms
OWN_ANSWER_TOKENS = 64  # rag.explain's max_new_tokens default
SMOL_TEMPLATE = "Answer the question using the documents.\n\n{context}\n\nQuestion: {query}"  # TEMPLATES["default"]

METHODS = {
    "ig_embeddings": {"method": "ig", "space": "embeddings"},
    "ig_attention": {"method": "ig", "space": "attention"},
    "ig_mask": {"method": "ig", "space": "mask"},
    "ixg_mask": {"method": "input_x_gradient", "space": "mask"},
    "ixg_attention": {"method": "input_x_gradient", "space": "attention"},
    "attention": {"method": "attention"},
    "random": {"method": "random"},
}
STANDARD_SEED = 15
CALIBRATION_SEED = 1501
TEST_SEED = 1502


# ---------------------------------------------------------------------------------------------------- examples


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


# ---------------------------------------------------------------------------------------------------- measuring


def greedy_answer(attributor: Attributor, built, max_new_tokens: int) -> str:
    """The model's greedy answer text to a built prompt, up to its first special token (as `rag.explain` takes it)."""
    seq = attributor.sequence(built.prompt, max_new_tokens=max_new_tokens)
    ids = until_end(attributor.tokenizer, seq.target_ids.tolist())
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


def done_ids(path: Path) -> set[str]:
    return {row["id"] for row in read_rows(path)} if path.exists() else set()


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


# ---------------------------------------------------------------------------------------------------- 1. zoo


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


# ---------------------------------------------------------------------------------------------------- 2. verdicts


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
            "leave_one_out": result.leave_one_out[:, 0].tolist(), "seconds": result.cost["seconds"]}


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


def calibrate(supported: np.ndarray, unsupported: np.ndarray) -> tuple[float, float]:
    """The rule, written before any verdict row was computed: low = the midpoint between the unsupported margins' 95th
    percentile and the supported margins' 5th percentile; high = the supported margins' 5th percentile (or low,
    if that is lower). Flagged "unsupported": margin < low; "supported": margin >= high; between: uncertain."""
    return rag_calibrate(supported.tolist(), unsupported.tolist())


# ---------------------------------------------------------------------------------------------------- 3. SmolLM2


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
    done = done_ids(path)
    started = time.perf_counter()
    template = TEMPLATES["default"]
    for ex in examples:
        if ex["id"] in done:
            continue
        if time.perf_counter() - started > args.minutes * 60:
            print(f"budget of {args.minutes} minutes spent; stopping before {ex['id']}", flush=True)
            break
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


def shard_spec(text: str) -> tuple[int, int]:
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit() and 0 <= int(k) < int(n)):
        raise argparse.ArgumentTypeError(f"--shard takes K/N with 0 <= K < N, got {text!r}")
    return int(k), int(n)


def data_prefix(data: str) -> str:
    """Rows about a dataset's examples as a whole (which the model knows, its closed-book replies)."""
    return "smollm2" if data == "real_text" else f"smollm2_{data}"


def smollm2_part(answer: str, data: str = "real_text", split: str | None = None) -> str:
    """The rows' file name: "smollm2" explains the expected short answer, "smollm2_own" the model's own reply;
    other datasets add their name and split ("smollm2_own_heldout_test")."""
    name = "smollm2" if answer == "expected" else "smollm2_own"
    return name if data == "real_text" else f"{name}_{data}" + (f"_{split}" if split else "")


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
               "scores": result.answer_document_scores.tolist(), "leave_one_out": result.leave_one_out[:, 0].tolist()}
        append(RESULTS / "speed.jsonl", row)
        print(json.dumps(row), flush=True)
    save_settings("speed", args, settings="rag.explain defaults, granularity='answer'")


# ---------------------------------------------------------------------------------------------------- 4. ContextCite


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
                                        [f"Document {i + 1}: {d}" for i, d in enumerate(row["documents"])], "\n",
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
               str(examples_path), str(out), "--num-ablations", str(args.num_ablations), "--threads", str(args.threads)]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True)
    save_settings(f"contextcite_{name}", args, peer_command=" ".join(command[1:]))


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
        row["subsets"] = {"shapley": result.values[:, 0].tolist(), "exact": result.exact, "seconds": seconds,
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


def batching_section() -> str:
    rows = read_rows(RESULTS / "batching.jsonl")
    if not rows:
        return ""
    lines = ["| documents | rows | subsets | forwards (batched) | seconds, one subset per forward | seconds, batched | "
             "speed-up (median) |", "|---|---|---|---|---|---|---|"]
    for n in sorted({r["n_documents"] for r in rows}):
        group = [r for r in rows if r["n_documents"] == n]
        ratio = np.median([r["seconds_one_per_forward"] / r["seconds_batched"] for r in group])
        lines.append(f"| {n} | {len(group)} | {group[0]['n_subsets']} | {np.mean([r['forwards_batched'] for r in group]):.1f} | "
                     f"{np.mean([r['seconds_one_per_forward'] for r in group]):.2f} | "
                     f"{np.mean([r['seconds_batched'] for r in group]):.2f} | {ratio:.2f}x |")
    return f"""## 3i. Removing documents in batched forwards (SmolLM2)

`python eval/rag.py batching --threads {rows[0]['threads']}` (code {rows[0]['code']}): every subset of the documents
of the real-text rows with 4 or 5 documents, the model's own answers, one subset per forward (`rag.explain`'s
default) and all in one left-padded batch (`internal_batch_size=32`); equal to 1e-3 nats on every row. On this CPU
the batch gains nothing, so the default stays one subset per forward; on a GPU pass internal_batch_size.

{chr(10).join(lines)}"""


def banzhaf(values: list[float]) -> list[float]:
    """Exact Banzhaf values from the 2^D subset values: each player's marginal contribution averaged over every
    subset of the others."""
    n = len(values).bit_length() - 1
    return [float(np.mean([values[m | 1 << i] - values[m] for m in range(len(values)) if not m >> i & 1]))
            for i in range(n)]


# ---------------------------------------------------------------------------------------------------- report


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def top2_drop(row: dict, scores) -> float:
    order = np.argsort(-np.asarray(scores), kind="stable")
    if len(order) < 2:
        return float("nan")
    return float(row["pair_drops"][order[0]][order[1]])


def method_scores(row: dict, contextcite: dict[str, dict], banzhaf_too: bool = False) -> dict[str, dict]:
    """Every method's document scores and cost on one row, leave-one-out, the exact Shapley values (and Banzhaf,
    the candidate the dev split turned down, where asked) and ContextCite included."""
    out = {k: v for k, v in row["methods"].items() if "scores" in v}
    out["leave_one_out"] = {"scores": row["leave_one_out"], "seconds": row["loo_seconds"],
                            "n_forward": row["loo_forwards"], "n_backward": 0}
    if "subsets" in row:
        subsets = row["subsets"]
        cost = {"seconds": subsets["seconds"], "n_forward": subsets["n_forward"], "n_backward": 0}
        out["shapley"] = {"scores": subsets["shapley"], **cost}
        if banzhaf_too:
            out["banzhaf"] = {"scores": banzhaf(subsets["values"]), **cost}
    cc = contextcite.get(row["id"])
    if cc is not None:
        out["contextcite"] = {"scores": cc["scores"], "seconds": cc["seconds"], "n_forward": cc["n_ablations"],
                              "n_backward": 0}
    return out


def metric_rows(rows: list[dict], contextcite: dict[str, dict], banzhaf_too: bool = False) -> list[dict]:
    out = []
    for row in rows:
        if not row.get("methods"):
            continue
        for label, m in method_scores(row, contextcite, banzhaf_too).items():
            scores = np.asarray(m["scores"], dtype=float)
            out.append({"id": row["id"], "cell": row.get("cell", "smollm2"), "method": label,
                        "top1": float(np.argmax(scores) == row["relevant"]),
                        "top1_loo": float(np.argmax(scores) == int(np.argmax(row["leave_one_out"]))),
                        "spearman": spearman(scores, row["leave_one_out"]), "top2_drop": top2_drop(row, scores),
                        "seconds": m["seconds"], "n_forward": m["n_forward"], "n_backward": m["n_backward"],
                        "converged": m.get("converged"), "completeness_error": m.get("completeness_error")})
    return out


ORDER = ["ig_embeddings", "ig_attention", "ig_mask", "ixg_mask", "ixg_attention", "attention", "random",
         "leave_one_out", "shapley", "banzhaf", "contextcite"]


def pivot(frame, value: str, fmt: str, cells: list[str]) -> str:
    methods = [m for m in ORDER if m in set(frame["method"])]
    lines = ["| cell | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for cell in cells:
        sub = frame[frame["cell"] == cell]
        values = []
        for m in methods:
            v = sub[sub["method"] == m][value].dropna()
            values.append("–" if v.empty else format(v.mean(), fmt))
        lines.append(f"| {cell} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def load_contextcite(name: str) -> tuple[dict[str, dict], dict | None]:
    path = RESULTS / f"contextcite_{name}.json"
    if not path.exists():
        return {}, None
    data = json.loads(path.read_text())
    return {e["id"]: e for e in data["examples"]}, data


def cmd_report(args) -> None:
    import pandas as pd

    settings = json.loads((RESULTS / "settings.json").read_text()) if (RESULTS / "settings.json").exists() else {}
    parts = [REPORT_HEAD]
    # 1. zoo
    zoo = read_rows(RESULTS / "zoo.jsonl")
    cc_zoo, cc_zoo_data = load_contextcite("zoo")
    if zoo:
        frame = pd.DataFrame(metric_rows(zoo, cc_zoo))
        cells = list(dict.fromkeys(r["cell"] for r in zoo))
        counts = {c: (sum(r["correct"] for r in zoo if r["cell"] == c), sum(r["cell"] == c for r in zoo)) for c in cells}
        labelled = frame.assign(cell=frame["cell"].map(lambda c: f"{c} ({counts[c][0]}/{counts[c][1]})"))
        names = [f"{c} ({counts[c][0]}/{counts[c][1]})" for c in cells]
        parts.append(zoo_section(settings.get("zoo", {}), labelled, names, frame, cc_zoo_data))
    verdicts = read_rows(RESULTS / "verdicts.jsonl")
    if verdicts:
        parts.append(verdict_section(settings.get("verdicts", {}), verdicts))
    for answer in ("own", "expected"):
        part = smollm2_part(answer)
        smol = read_rows(RESULTS / f"{part}.jsonl")
        if smol:
            parts.append(smollm2_section(settings.get(part, {}), smol, read_rows(RESULTS / "smollm2_knows.jsonl"),
                                         *load_contextcite(part), answer=answer))
    for split in ("dev", "test"):
        part = smollm2_part("own", "heldout", split)
        held = read_rows(RESULTS / f"{part}.jsonl")
        if held:
            parts.append(heldout_section(split, settings.get(part, {}), held, *load_contextcite(part)))
    speed = read_rows(RESULTS / "speed.jsonl")
    if speed:
        parts.append(speed_section(settings.get("speed", {}), speed))
    parts.append(sampled_shapley_section())
    parts.append(decompositions_section())
    part = smollm2_part("own", "replication")
    replication = read_rows(RESULTS / f"{part}.jsonl")
    if replication:
        parts.append(smollm2_section(settings.get(part, {}), replication,
                                     read_rows(RESULTS / f"{data_prefix('replication')}_knows.jsonl"),
                                     *load_contextcite(part), answer="own", data="replication"))
        parts.append(pooled_real_text_section())
    parts.append(batching_section())
    parts.append((RESULTS / "notes.md").read_text() if (RESULTS / "notes.md").exists() else "")
    REPORT.write_text("\n\n".join(p.strip() for p in parts if p.strip()) + "\n")
    print(REPORT.read_text())


REPORT_HEAD = """# RAG debugging: `llm_attrib.rag` against leave-one-out, raw attention, random and ContextCite (#15)

Written by `python eval/rag.py report` from the JSON lines in `eval/results/rag/` (one file per part; each row one
example, streamed as it finished). Run on a 2-core CPU shared with other jobs, one thread (`torch.set_num_threads(1)`)
unless stated: seconds are indicative, ratios and step counts are not affected. The code and the exact commands:
`eval/rag.py` (its docstring) and `eval/results/rag/settings.json` (every argument of each run).

Metrics (per example, then averaged): **top-1** = the method's highest-scoring document is the relevant one;
**top-1 = LOO** = it is the document whose removal costs the answer most; **Spearman** = rank correlation of the
method's document scores with the leave-one-out drops (undefined, so left out, where either is constant, e.g.
attention with ties); **top-2 drop** = nats the answer's log-probability loses when the method's top-1 and top-2
documents are removed together; **s/ex** = seconds per example; **fwd/bwd** = forward and backward passes.
Leave-one-out is the reference (1 + documents forwards); its own Spearman is 1 by construction."""


def zoo_shapley_note(frame) -> str:
    if "shapley" not in set(frame["method"]):
        return ""
    return (" Shapley: `rag.explain(..., shapley=True)`'s values at its default budget of 64 forwards (`python "
            "eval/rag.py subsets zoo`): exact from every subset up to 6 documents, sampled orders for 7 and 8.")


def zoo_section(settings: dict, labelled, names, frame, cc_data) -> str:
    cost = frame.groupby("method")[["seconds", "n_forward", "n_backward"]].mean().reindex(
        [m for m in ORDER if m in set(frame["method"])])
    cost_lines = ["| method | s/ex | fwd/ex | bwd/ex |", "|---|---|---|---|"]
    cost_lines += [f"| {m} | {r.seconds:.3f} | {r.n_forward:.1f} | {r.n_backward:.1f} |" for m, r in cost.iterrows()]
    overall = labelled.assign(cell="all cells").groupby("method")
    summary = ["| method | top-1 | top-1 = LOO | Spearman vs LOO | top-2 drop (nats) |", "|---|---|---|---|---|"]
    for m in [m for m in ORDER if m in set(frame["method"])]:
        g = overall.get_group(m)
        summary.append(f"| {m} | {g['top1'].mean():.3f} ({int(g['top1'].sum())}/{len(g)}) | {g['top1_loo'].mean():.3f} | "
                       f"{g['spearman'].mean():.3f} | {g['top2_drop'].mean():.2f} |")
    converged = frame[frame["method"].str.startswith("ig_")].groupby("method").agg(
        converged=("converged", "mean"), worst=("completeness_error", "max"))
    conv = "; ".join(f"{m}: {r.converged:.1%} of examples converged (1% tolerance), worst completeness error "
                     f"{r.worst:.2%}" for m, r in converged.iterrows())
    cc_note = ("ContextCite (`eval/peers/contextcite_rag.py`, its own venv) on the same correctly answered examples, "
               "each document as a source exactly as rendered, the model's answer as the given response: " +
               (f"{cc_data['settings'].get('num_ablations')} ablations per example, Lasso surrogate, "
                + ", ".join(f"{k} {v}" for k, v in cc_data["versions"].items()) + "."
                if cc_data else "no results (not run)."))
    return f"""## 1. Zoo variants (the `rag` zoo model)

Command: `{settings.get('command', 'python eval/rag.py zoo --n 50')}`, then
`python eval/rag.py contextcite zoo`. Every method through `rag.explain(..., template="zoo", granularity="answer",
verify=False)` with the package defaults (IG: score-guided quadrature to 1%, neutral-token / zero baselines);
random draws with a per-example seed. "zoo examples" = `zoo.examples("rag", n, seed={STANDARD_SEED})`; the other
cells are generated by `zoo_cells` (string seeds per cell). n = examples the model answered correctly / generated;
only the correct ones are scored. {conv}. {cc_note}{zoo_shapley_note(frame)}

### Top-1 document accuracy (against the relevant document)

{pivot(labelled, 'top1', '.3f', names)}

### Spearman correlation of the document scores with leave-one-out

{pivot(labelled, 'spearman', '.3f', names)}

### Answer log-probability lost when the method's top-2 documents are removed (nats; higher = the method found what carries the answer)

{pivot(labelled, 'top2_drop', '.2f', names)}

### Top-1 agrees with leave-one-out's top-1

{pivot(labelled, 'top1_loo', '.3f', names)}

### All cells together

{chr(10).join(summary)}

### Cost per example (all cells)

{chr(10).join(cost_lines)}"""


def verdict_section(settings: dict, rows: list[dict]) -> str:
    correct = [r for r in rows if r["correct"]]
    cal = [r for r in correct if r["split"] == "calibration"]
    test = [r for r in correct if r["split"] == "test"]
    s_cal = np.array([r["supported"]["margin"] for r in cal])
    u_cal = np.array([r["unsupported"]["margin"] for r in cal])
    low, high = calibrate(s_cal, u_cal)

    def label(v):
        return judge(v["drop_cited"], v["drop_other"], (low, high), cited=bool(v["cited"])).label

    def pr(rows_):
        truth = [False] * len(rows_) + [True] * len(rows_)
        flags = [label(r["supported"]) == "unsupported" for r in rows_] + \
                [label(r["unsupported"]) == "unsupported" for r in rows_]
        tp = sum(t and f for t, f in zip(truth, flags))
        fp = sum(f and not t for t, f in zip(truth, flags))
        fn = sum(t and not f for t, f in zip(truth, flags))
        precision = tp / (tp + fp) if tp + fp else float("nan")
        recall = tp / (tp + fn) if tp + fn else float("nan")
        return precision, recall, tp, fp, fn

    def labels(rows_, key):
        got = [label(r[key]) for r in rows_ if key in r]
        return {k: got.count(k) for k in ("supported", "uncertain", "unsupported")}, len(got)

    def quant(values):
        return " / ".join(f"{np.quantile(values, q):+.2f}" for q in (0, 0.05, 0.5, 0.95, 1))

    lines = ["| split | case | n | supported | uncertain | unsupported | margin min / q05 / median / q95 / max |",
             "|---|---|---|---|---|---|---|"]
    for name, part in (("calibration", cal), ("test", test)):
        for key in ("supported", "unsupported", "own"):
            got, n = labels(part, key)
            margins = np.array([r[key]["margin"] for r in part if key in r])
            if n:
                lines.append(f"| {name} | {key} | {n} | {got['supported']} | {got['uncertain']} | {got['unsupported']} "
                             f"| {quant(margins)} |")
    p_cal, r_cal, *_ = pr(cal)
    p, r, tp, fp, fn = pr(test)
    own = [x for x in test if "own" in x]
    own_flagged = sum(label(x["own"]) == "unsupported" for x in own)
    copies = [x for x in own if x["own_copied"] is not None]
    copies_flagged = sum(label(x["own"]) == "unsupported" for x in copies)
    others = [x for x in own if x["own_copied"] is None]
    others_flagged = sum(label(x["own"]) == "unsupported" for x in others)
    other_answers = sorted({x["own_answer"] for x in others})
    no_answer = sum(1 for x in test if not x["own_answer"].strip())
    n_cal = sum(1 for x in rows if x["split"] == "calibration")
    n_test = sum(1 for x in rows if x["split"] == "test")
    uncited = sum(not x["unsupported"]["cited"] for x in test)
    return f"""## 2. Unsupported-answer detection (zoo)

Command: `{settings.get('command', 'python eval/rag.py verdicts --n 100')}`. `{settings.get('method', 'rag.explain defaults (ig over embeddings, granularity sentence, verify)')}`:
one row per answer sentence; the statistic is `verdicts[0].margin` (nats lost when
the cited documents are removed, minus the mean loss when one other document is removed). Supported: the model's
correct answer with all documents. Unsupported: the same answer (`answer=`) with its relevant document removed.
Calibration: `zoo.examples("rag", {settings.get('n', 100)}, seed={settings.get('calibration_seed', CALIBRATION_SEED)})`,
{len(cal)}/{n_cal} answered correctly; test: seed {settings.get('test_seed', TEST_SEED)}, {len(test)}/{n_test}.

Rule (written into `calibrate` in eval/rag.py before any verdict row was computed): low = midpoint between the 95th percentile
of the unsupported margins and the 5th percentile of the supported margins; high = the supported margins' 5th
percentile (or low if that is lower). On the calibration set: **thresholds = ({low:.2f}, {high:.2f})** nats.
"Unsupported" = flagged; "uncertain" counts as not flagged.

| | precision (unsupported) | recall (unsupported) |
|---|---|---|
| calibration (in-sample, for reference) | {p_cal:.3f} | {r_cal:.3f} |
| **test** | **{p:.3f}** | **{r:.3f}** (tp {tp}, fp {fp}, fn {fn}) |

Labels with the calibrated thresholds (relabelled from each row's drop_cited / drop_other / cited, so the
thresholds the run used, the package's `rag.THRESHOLDS` of the time, do not matter); "own" = the model's own
greedy answer after the relevant document was removed:

{chr(10).join(lines)}

In the test unsupported case the attribution cited no document (all scores <= 0, so "unsupported" by rule) in
{uncited} of {len(test)} examples.

**The model's own answers without the relevant document (test):** it answered in {len(own)} of {len(test)} cases
({no_answer} empty). It copied another document's value in {len(copies)}: the verdicts flag {copies_flagged} of
{len(copies)} ({copies_flagged / max(len(copies), 1):.1%}) as unsupported. Such an answer is carried by the (wrong)
document it was copied from, so "supported" is the verdict's documented meaning, not a detection failure: the verdict
checks that an answer depends on the documents it cites, not that the right document was retrieved. The other
{len(others)} answers copy no document ({', '.join(repr(a) for a in other_answers[:5])}): {others_flagged} of
{len(others)} flagged. All own answers together: {own_flagged} of {len(own)} ({own_flagged / max(len(own), 1):.1%})
flagged."""


def smollm2_table(frame) -> str:
    methods = [m for m in ORDER if m in set(frame["method"])]
    lines = ["| method | n | top-1 | top-1 = LOO | Spearman vs LOO | top-2 drop (nats) | converged | worst completeness error "
             "| s/ex | fwd/ex | bwd/ex |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in methods:
        g = frame[frame["method"] == m]
        conv = g["converged"].dropna()
        worst = g["completeness_error"].dropna()
        lines.append(f"| {m} | {len(g)} | {g['top1'].mean():.3f} ({int(g['top1'].sum())}/{len(g)}) | "
                     f"{g['top1_loo'].mean():.3f} | {g['spearman'].mean():.3f} | {g['top2_drop'].mean():.2f} | "
                     f"{'–' if conv.empty else f'{conv.astype(float).mean():.0%}'} | "
                     f"{'–' if worst.empty else f'{worst.max():.1%}'} | {g['seconds'].mean():.1f} | "
                     f"{g['n_forward'].mean():.0f} | {g['n_backward'].mean():.0f} |")
    return "\n".join(lines)


def budget_note(minutes) -> str:
    """Why the run stopped early: its time budget, or what the settings say (a run stopped by hand)."""
    return f" ({minutes})" if isinstance(minutes, str) else f" (the time budget of {minutes} minutes ran out there)"


def smollm2_section(settings: dict, rows: list[dict], knows_rows: list[dict], cc: dict, cc_data, answer: str,
                    data: str = "real_text") -> str:
    import pandas as pd

    n_known = sum(r["known"] for r in knows_rows)
    refused = [r for r in rows if "refused" in r]
    ran = [r for r in rows if r.get("methods")]
    frame = pd.DataFrame(metric_rows(ran, cc))
    closed_file = f"{data_prefix(data)}_closed_book.jsonl"
    closed = {r["id"]: r["knows_closed_book"] for r in read_rows(RESULTS / closed_file)}
    needs = [r for r in ran if closed.get(r["id"]) is False]
    split = ""
    if closed and all(r["id"] in closed for r in ran):
        split = f"""

Only the examples the model does **not** answer without documents ({len(needs)} of {len(ran)}; the closed-book reply
is the greedy 24-token reply to the same template with every document removed, `{closed_file}`, decided
by the model alone, before and apart from any attribution or leave-one-out). Where the model knows the answer
without documents, no document carries it and "the relevant document" is not what any faithful method should find:

{smollm2_table(frame[frame["id"].isin({r["id"] for r in needs})])}"""
    lines = [smollm2_table(frame)]
    loo_right = sum(int(np.argmax(r["leave_one_out"])) == r["relevant"] for r in ran)
    refused_text = "; ".join(f"{r['id']} ({r['answer']!r}): {r['refused'][:160]}" for r in refused) or "none"
    explained = (
        "the model's own greedy reply (up to 64 tokens, cut at its end-of-turn token, e.g. \"The capital city of "
        "Australia is Canberra.\"), as `rag.explain` explains it with answer=None, given as `answer=`"
        if answer == "own" else
        "the expected short answer as `answer=` (e.g. \"Canberra\", the whole assistant reply as eval/real_text.py "
        "explains it)")
    heading = ("## 3. SmolLM2-135M-Instruct on the real-text rag set: the model's own answers" if answer == "own" else
               "## 3a. SmolLM2-135M-Instruct on the real-text rag set: the bare expected answer (earlier protocol)")
    if data == "replication":
        heading = ("## 3g. SmolLM2 on a second real-text sample (`eval/data/rag_real_replication.jsonl`): the model's "
                   "own answers")
    part = smollm2_part(answer, data)
    stopped = len(ran) + len(refused) < n_known  # a run that did not reach every correctly answered example
    which = "the first" if stopped else "all"
    budget = budget_note(settings.get("minutes", "?")) if stopped else ""
    return f"""{heading}

Command: `{settings.get('command', 'python eval/rag.py smollm2')}`, then `python eval/rag.py contextcite {part}`.
The model answers {n_known} of {len(knows_rows)} rag examples correctly (eval/real_text.py's `knows`: its greedy
24-token reply contains the expected answer; decided for every example before any attribution). Explained: {which}
{len(ran)} of those, in the set's order, the ones the model cannot answer without documents first{budget}
with {explained}, granularity="answer", IG with max_steps={settings.get('max_steps', '?')} (other settings: package
defaults, i.e. score-guided quadrature to a 1% tolerance). Refused by the answer boundary check: {len(refused)}
({refused_text}). Leave-one-out's own top document is the relevant one in {loo_right} of {len(ran)}.{subsets_note(ran, part, False)}

All explained examples:

{chr(10).join(lines)}{split}"""


def pooled_real_text_section() -> str:
    """The two real-text samples' correctly answered examples together, as the rule in notes.md ("A second
    real-text sample") judges #15's top-1 and agreement targets on them."""
    import pandas as pd

    frames = []
    for data in ("real_text", "replication"):
        part = smollm2_part("own", data)
        known = {r["id"] for r in read_rows(RESULTS / f"{data_prefix(data)}_knows.jsonl") if r["known"]}
        ran = [r for r in read_rows(RESULTS / f"{part}.jsonl") if r.get("methods") and r["id"] in known]
        frames.append(pd.DataFrame(metric_rows(ran, load_contextcite(part)[0])).assign(sample=part))
    in_both = set.intersection(*(set(f["method"]) for f in frames))  # a method run on one sample only is left out
    frame = pd.concat(frames)
    frame = frame[frame["method"].isin(in_both)]
    counts = frame.groupby("sample")["id"].nunique()
    paired = frame[frame["method"].isin(["shapley", "contextcite"])].pivot_table(
        index="id", columns="method", values="spearman").dropna()
    difference = ""
    if {"shapley", "contextcite"} <= set(paired.columns) and len(paired) > 1:
        d = paired["shapley"] - paired["contextcite"]
        difference = (f" Shapley minus ContextCite in Spearman with leave-one-out, per example: mean {d.mean():+.3f} "
                      f"(standard error {d.std(ddof=1) / np.sqrt(len(d)):.3f}, n = {len(d)}; Shapley higher on "
                      f"{int((d > 0).sum())}, lower on {int((d < 0).sum())}, equal on {int((d == 0).sum())}).")
    return f"""## 3h. Both real-text samples together (the rule in notes.md, "A second real-text sample")

The correctly answered examples of section 3 ({counts.get("smollm2_own", 0)}) and section 3g
({counts.get("smollm2_own_replication", 0)}), pooled; the methods run on both.{difference}

{smollm2_table(frame)}"""


def subsets_note(rows: list[dict], part: str, banzhaf_too: bool) -> str:
    if not any("subsets" in r for r in rows):
        return ""
    which = "shapley and banzhaf (the two candidates of the rule in notes.md)" if banzhaf_too else "shapley"
    return (f" Rows {which}: exact values from every subset of documents, one forward each (`python eval/rag.py "
            f"subsets {part}`, 2^D forwards: 8-32 here).")


def heldout_section(split: str, settings: dict, rows: list[dict], cc: dict, cc_data) -> str:
    import pandas as pd

    knows_rows = {r["id"]: r["known"] for r in read_rows(RESULTS / f"{data_prefix('heldout')}_knows.jsonl")}
    examples = (json.loads(line) for line in DATASETS["heldout"].read_text().splitlines() if line.strip())
    split_ids = {ex["id"] for ex in examples if ex["split"] == split}
    in_split = [i for i in knows_rows if i in split_ids]
    ran = [r for r in rows if r.get("methods")]
    frame = pd.DataFrame(metric_rows(ran, cc, banzhaf_too=split == "dev"))
    correct = frame[frame["id"].isin({r["id"] for r in ran if knows_rows[r["id"]]})]
    wrong = [r for r in ran if not knows_rows[r["id"]]]
    loo_right = sum(int(np.argmax(r["leave_one_out"])) == r["relevant"] for r in ran if knows_rows[r["id"]])
    peer = (f" ContextCite (`python eval/rag.py contextcite {smollm2_part('own', 'heldout', split)}`) as in section 3: "
            "64 ablations, each document kept with probability 0.5, Lasso surrogate; its seconds come from its own "
            "stack and a busy machine." if cc else " ContextCite was not run on this split.")
    return f"""## 3{'b' if split == 'dev' else 'c'}. SmolLM2 on the held-out fictional rag set: {split} split

Command: `{settings.get('command', 'python eval/rag.py smollm2 --data heldout')}`. `eval/data/rag_heldout.jsonl`:
invented entities, so the model can only answer from the documents (the rule this split served, and when it was
fixed: `eval/results/rag/notes.md`). SmolLM2 answers {sum(knows_rows[i] for i in in_split)} of {len(in_split)}
{split} questions correctly; it mostly names the entity of another document. Every answer explained is the model's
own greedy reply, granularity="answer", IG with max_steps={settings.get('max_steps', '?')}.{peer}{subsets_note(ran, smollm2_part('own', 'heldout', split), split == "dev")}

Correct answers ({len(correct['id'].unique())}; leave-one-out's own top document is the relevant one in {loo_right}):

{smollm2_table(correct) if len(correct) else "(none)"}

Every answer, right or wrong ({len(ran)}; {len(wrong)} wrong): the wrong ones came from some document too, so
agreement with leave-one-out means the same there; top-1 still counts the relevant document, which a wrong answer
mostly did not use:

{smollm2_table(frame)}"""


def decompositions_section() -> str:
    """IG over the mask and the documents' Shapley values split nearly the same total (the answer with every
    document, minus with none: masked out of attention for IG, removed from the prompt for Shapley); how alike
    are the splits?"""
    lines = ["| rows | n | top document the same | Spearman (mean) | correlation of the totals | median total (nats) | "
             "median difference of the totals (nats) |", "|---|---|---|---|---|---|---|"]
    for part in SMOLLM2_OWN_PARTS:
        rows = [r for r in read_rows(RESULTS / f"{part}.jsonl") if "subsets" in r and "ig_mask" in r["methods"]]
        if not rows:
            continue
        ig = [np.asarray(r["methods"]["ig_mask"]["scores"]) for r in rows]
        shapley = [np.asarray(r["subsets"]["shapley"]) for r in rows]
        totals = np.array([[a.sum(), b.sum()] for a, b in zip(ig, shapley)])
        same = np.mean([a.argmax() == b.argmax() for a, b in zip(ig, shapley)])
        rho = np.nanmean([spearman(a, b) for a, b in zip(ig, shapley)])
        lines.append(f"| {part} | {len(rows)} | {same:.3f} | {rho:.3f} | {np.corrcoef(totals.T)[0, 1]:.3f} | "
                     f"{np.median(totals[:, 1]):.2f} | {np.median(np.abs(totals[:, 0] - totals[:, 1])):.2f} |")
    if len(lines) == 2:
        return ""
    return f"""## 3f. Two decompositions of one total: IG over the mask and the documents' Shapley values

Both split what the documents add to the answer's log-probability: IG over the mask integrates from every document
masked out of attention (a continuous path, tokens' gradients), the Shapley values average the documents'
marginal contributions over every order of removing them from the prompt (discrete, one forward per subset). The
totals nearly coincide (masking a document and removing it do almost the same to this model); how the total is
split differs, and where they differ, interactions between documents decide (the diagonal path sees every document
partly visible at once, the orders see each one added to whole documents).

{chr(10).join(lines)}"""


SAMPLED_BUDGETS = {4: (8, 12), 5: (8, 16, 24)}  # forwards below 2^D, where rag.explain samples orders
SAMPLED_SEEDS = 5


def looked_up(values: torch.Tensor):
    """`document_shapley`'s log_probs from stored coalition values (2^D, S), row m the subset with bits m."""
    return lambda subsets: values[[sum(1 << d for d in kept) for kept in subsets]]


def sampled_shapley_section() -> str:
    """How close sampled orders come to the exact Shapley values, replayed on the stored subset values of the
    SmolLM2 rows with 4 and 5 documents (no forward: each sampled subset is looked up)."""
    from llm_attrib.rag.shapley import exact_shapley

    rows = [r for part in SMOLLM2_OWN_PARTS
            for r in read_rows(RESULTS / f"{part}.jsonl") if "subsets" in r]
    if not rows:
        return ""
    lines = ["| documents | budget (forwards) | examples x seeds | subsets evaluated | orders | Spearman with exact | "
             "same top document | median worst error (nats) | exact within 2 standard errors |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n_documents, budgets in SAMPLED_BUDGETS.items():
        games = [torch.tensor(r["subsets"]["values"], dtype=torch.float64)[:, None] for r in rows
                 if r["n_documents"] == n_documents]
        for budget in budgets:
            stats = []
            for values in games:
                exact = exact_shapley(values)[:, 0]
                for seed in range(SAMPLED_SEEDS):
                    result = document_shapley(looked_up(values), n_documents, budget=budget, seed=seed)
                    estimate, stderr = result.values[:, 0], result.stderr[:, 0]
                    error = (estimate - exact).abs()
                    stats.append((result.n_subsets, result.n_orders, spearman(estimate.numpy(), exact.numpy()),
                                  float(estimate.argmax() == exact.argmax()), float(error.max()),
                                  float((error <= 2 * stderr).double().mean()), result.exact))
            s = np.array(stats, dtype=float)
            lines.append(f"| {n_documents} | {budget} | {len(games)} x {SAMPLED_SEEDS} | {s[:, 0].mean():.1f} | "
                         f"{s[:, 1].mean():.1f} | {np.nanmean(s[:, 2]):.3f} | {s[:, 3].mean():.3f} | "
                         f"{np.median(s[:, 4]):.2f} | {s[:, 5].mean():.2f} |")
    return f"""## 3e. Sampled Shapley values against the exact ones

`rag.explain(..., shapley=True)` evaluates every subset of documents when 2^D fits `shapley_budget` (64: up to 6
documents) and otherwise samples orders, each with its reverse, until the budget's subsets are spent (at least two
pairs). Replayed here on the stored subset values of every SmolLM2 row above with 4 or 5 documents, at budgets below
2^D, {SAMPLED_SEEDS} seeds each (`python eval/rag.py report`; no forward is run). Spearman and the worst error
compare each estimate with the exact values of the same row; the last column is how often the exact value lies
within two of the reported standard errors (0.95 would be a calibrated interval).

{chr(10).join(lines)}

With the two or three pairs of orders such budgets buy, the estimates find the exact top document about nine
times in ten, but their standard errors come from so few orders that they understate the error: treat a sampled
result (`exact=False`) as a rough ranking, or raise `shapley_budget`."""


def speed_section(settings: dict, rows: list[dict]) -> str:
    lines = ["| code | space | answer | prompt tokens | answer tokens | threads | seconds | gradient evaluations (n_steps) | "
             "forwards | backwards | worst completeness error | top document (relevant) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.get('code', 'before 2026-11-26')} | {r.get('space', 'embeddings')} | {'given' if r['answer_given'] else 'generated'}: {r['answer']!r} | {r['n_prompt_tokens']} | "
                     f"{r['n_answer_tokens']} | {r['threads']} | {r['seconds']:.1f} | {r['n_steps']} | "
                     f"{r['cost']['n_forward']} | {r['cost']['n_backward']} | {r['completeness_error']:.2%} | "
                     f"{r['top_document']} ({r['relevant']}) |")
    return f"""## 3d. Speed target: a document ranking on SmolLM2

Command: `{settings.get('command', 'python eval/rag.py speed --threads 2')}`: `rag.explain(model, tokenizer, question,
documents, granularity="answer")` with every other setting at its default (IG, score-guided to 1%, max_steps 512,
verify=True; the space: embeddings before rag.explain's default became attention, then the mask (both on
2026-11-26), `--space` where given; each row says its space), on {rows[0]['id']} (the first real-text rag example with 3 documents, a 110-130 token
prompt, that the model answers correctly), timed end to end (generation, attribution, leave-one-out check), on
{rows[0]['threads']} threads. Target: < 30 s. One row per run and answer, with the code it ran (the commit, where
recorded); repeated runs of the same code and space took the same steps, forwards and backwards each time, so the
time differences between them are load from other jobs on the shared cores.

{chr(10).join(lines)}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    p = sub.add_parser("zoo")
    p.add_argument("--n", type=int, default=50, help="examples per cell")
    p.set_defaults(func=cmd_zoo)
    p = sub.add_parser("verdicts")
    p.add_argument("--n", type=int, default=100, help="examples per split")
    p.add_argument("--calibration-seed", type=int, default=CALIBRATION_SEED)
    p.add_argument("--test-seed", type=int, default=TEST_SEED)
    p.set_defaults(func=cmd_verdicts)
    p = sub.add_parser("smollm2")
    p.add_argument("--max-steps", type=int, default=64, help="IG: gradient evaluations per target at most")
    p.add_argument("--minutes", type=float, default=50, help="no new example starts after this")
    p.add_argument("--shard", type=shard_spec, default=(0, 1), metavar="K/N",
                   help="explain only every N-th correctly answered example from the K-th (0-based), so N processes "
                        "can share the work; they append to the same rows file")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--answer", choices=["expected", "own"], default="own",
                   help="explain the model's own greedy reply (as rag.explain does with answer=None) or the "
                        "expected short answer")
    p.add_argument("--data", choices=list(DATASETS), default="real_text",
                   help="the rag examples: eval/data/real_text.jsonl, or the held-out fictional set")
    p.add_argument("--split", choices=["dev", "test"], default=None, help="the held-out set's split")
    p.add_argument("--all-answers", action="store_true",
                   help="also explain the examples the model answers wrongly (after the right ones; rows say "
                        "\"correct\"): their answers came from some document too, so leave-one-out agreement is "
                        "measured on them, top-1 against the relevant document is not")
    p.set_defaults(func=cmd_smollm2)
    p = sub.add_parser("speed")
    p.add_argument("--space", choices=["embeddings", "attention", "mask"], default=None,
                   help="IG's space (default: rag.explain's)")
    p.set_defaults(func=cmd_speed)
    p = sub.add_parser("contextcite")
    p.add_argument("which", choices=["zoo", "smollm2", *SMOLLM2_OWN_PARTS])
    p.add_argument("--num-ablations", type=int, default=64)
    p.set_defaults(func=cmd_contextcite)
    p = sub.add_parser("subsets", help="the documents' Shapley values (rag.explain's, one forward per subset) on "
                                       "explained rows")
    p.add_argument("which", choices=["zoo", *SMOLLM2_OWN_PARTS])
    p.set_defaults(func=cmd_subsets)
    p = sub.add_parser("batching", help="every subset's forward one at a time (rag.explain's default) against one "
                                        "batch (SmolLM2)")
    p.add_argument("--n", type=int, default=12, help="rows with 4 or 5 documents")
    p.set_defaults(func=cmd_batching)
    p = sub.add_parser("report")
    p.set_defaults(func=cmd_report)
    for name in ("zoo", "smollm2"):
        sub.choices[name].add_argument("--add", nargs="+", choices=list(METHODS), default=None,
                                       help="run these methods on the existing rows that lack them, nothing else")
    for p in sub.choices.values():
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--fresh", action="store_true", help="delete this part's rows first")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.fresh:
        names = {"zoo": ["zoo.jsonl"], "verdicts": ["verdicts.jsonl"],
                 "smollm2": [f"{smollm2_part(args.answer, args.data, args.split)}.jsonl"] if args.part == "smollm2" else [],
                 "speed": ["speed.jsonl"], "batching": ["batching.jsonl"]}.get(args.part, [])
        for name in names:
            (RESULTS / name).unlink(missing_ok=True)
    args.func(args)


if __name__ == "__main__":
    main()
