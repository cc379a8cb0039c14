"""Verdict thresholds for SmolLM2-135M-Instruct, calibrated on one split of eval/data/rag_calibration.jsonl and
reported on the other (the rule and its amendment: eval/results/rag/calibration.md, written before the rows).

    python eval/rag_calibration.py run --shard 0/2      # rows -> eval/results/rag/calibration.jsonl (resumable)
    python eval/rag_calibration.py report                # thresholds, precision and recall -> stdout (Markdown)
    python eval/rag_calibration.py run --data report --no-own   # the third rule's report set (bare answers first)
    python eval/rag_calibration.py run --data first --no-own --prompt P1    # both sets again under the new default
    python eval/rag_calibration.py third                 # the third rule: first set calibrates, report set reports

Per example and answer kind ("bare": the expected answer as the whole answer, as `--answer X --granularity
answer`; "own": the model's answer generated as `rag.explain`'s default does, when it holds the expected answer,
judged on its first sentence that does): the verdict margin with every document (supported) and with the
relevant document removed (unsupported: the answer is then in no document). The cited document is leave-one-out's
top one (the verdict's own rule for "cited" needs the IG attribution, which this machine's load made too slow;
see the amendment), nothing cited when no removal costs anything.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llm_attrib import Attributor, rag, zoo  # noqa: E402
from llm_attrib.rag.ablation import DocumentSubsets  # noqa: E402
from llm_attrib.rag.answer import generate_answer  # noqa: E402
from llm_attrib.rag.explain import answer_sentences  # noqa: E402
from llm_attrib.rag.prompt import Template, as_documents, build_prompt  # noqa: E402
from llm_attrib.rag.verdicts import judge  # noqa: E402
from rag_data import sharded_runner  # noqa: E402

SETS = {"first": (ROOT / "eval/data/rag_calibration.jsonl", ROOT / "eval/results/rag/calibration.jsonl"),
        "report": (ROOT / "eval/data/rag_calibration_report.jsonl", ROOT / "eval/results/rag/calibration_report.jsonl")}


SYSTEM = "You are an assistant for question-answering tasks. Answer from the documents you are given."


def margin(attributor, question: str, documents, answer_ids: list[int], segment: tuple[int, int],
           system: str | None = None) -> dict:
    """The verdict's margin for one answer segment, citing leave-one-out's top document."""
    n = len(documents)
    subsets = DocumentSubsets(attributor, question, documents, Template(), answer_ids, [segment], system)
    full, *alone, none = subsets.stack([list(range(n)), *([d for d in range(n) if d != k] for k in range(n)), []])
    drops = (full[None] - torch.stack(alone))[:, 0]
    top = int(drops.argmax())
    cited = float(drops[top]) > 0
    others = [d for d in range(n) if d != top or not cited]
    drop_cited = float(drops[top]) if cited else 0.0
    drop_other = float(drops[others].clamp_min(0).mean()) if others else 0.0
    verdict = judge(drop_cited, drop_other, None, cited=cited, drop_all=float(full[0] - none[0]))
    return {"margin": verdict.margin, "cited": [top] if cited else [], "drop_cited": drop_cited,
            "drop_other": drop_other, "drop_all": verdict.drop_all, "leave_one_out": drops.tolist()}


def run(args) -> None:
    torch.set_num_threads(args.threads)
    k, n = args.shard
    DATA, ROWS = SETS[args.data]
    system = SYSTEM if args.prompt == "P1" else None
    if args.prompt == "P1":  # the third rule's recomputation under the new default prompt
        ROWS = ROWS.with_name(ROWS.stem + "_p1.jsonl")
    if args.own_only:  # own answers of rows that ran --no-own, into their own file
        ROWS = ROWS.with_name(ROWS.stem + "_own.jsonl")
    examples = [json.loads(line) for line in DATA.read_text().splitlines()]
    examples.sort(key=lambda ex: (ex["split"] != "calibration", ex["id"]))  # the calibration split first
    done = {json.loads(line)["id"] for line in ROWS.read_text().splitlines()} if ROWS.exists() else set()
    model, tokenizer = zoo.load("smollm2")
    attributor = Attributor(model, tokenizer, show_progress=False)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    for i, ex in enumerate(examples):
        if i % n != k or ex["id"] in done:
            continue
        started = time.perf_counter()
        docs = as_documents(ex["documents"])
        kept = [d for j, d in enumerate(docs) if j != ex["relevant_document"]]
        row = {"id": ex["id"], "split": ex["split"], "expected": ex["answer"], "commit": commit}
        if not args.own_only:
            bare = attributor.sequence(build_prompt(tokenizer, ex["question"], docs, Template(), system=system).prompt,
                                       answer=ex["answer"])
            bare_ids = bare.target_ids.tolist()
            row["bare"] = {"supported": margin(attributor, ex["question"], docs, bare_ids, (0, len(bare_ids)), system),
                           "unsupported": margin(attributor, ex["question"], kept, bare_ids, (0, len(bare_ids)), system)}
        if not args.own:
            row["seconds"] = time.perf_counter() - started
            with ROWS.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(ex["id"], f"{row['seconds']:.0f} s", flush=True)
            continue
        prompt = build_prompt(tokenizer, ex["question"], docs, Template(), system=system).prompt
        own_ids, truncated = generate_answer(attributor, prompt, 128, 3)
        seq = attributor.sequence(prompt, answer=own_ids)
        runs, spans = answer_sentences(seq)
        sentences = [seq.text[a:b] for a, b in spans]
        s = next((j for j, sentence in enumerate(sentences) if ex["answer"].lower() in sentence.lower()), None)
        row["own"] = {"answer": seq.text[seq.offsets[seq.n_prompt][0]:], "truncated": truncated,
                      "n_sentences": len(runs), "correct": s is not None}
        if s is not None:
            row["own"].update(sentence=s, supported=margin(attributor, ex["question"], docs, own_ids, runs[s], system),
                              unsupported=margin(attributor, ex["question"], kept, own_ids, runs[s], system))
        row["seconds"] = time.perf_counter() - started
        with ROWS.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(ex["id"], row["own"]["correct"], repr(row["own"]["answer"][:80]), f"{row['seconds']:.0f} s", flush=True)


def label(m: dict, thresholds: tuple[float, float]) -> str:
    return judge(m["drop_cited"], m["drop_other"], thresholds, cited=bool(m["cited"])).label


def pairs(rows: list[dict], kinds=("bare", "own")) -> list[tuple[str, dict]]:
    """(kind, {"supported": margins, "unsupported": margins}) of every judged answer."""
    out = []
    for r in rows:
        for kind in kinds:
            if kind not in r:
                continue
            part = r[kind]
            if kind == "bare" or part["correct"]:
                out.append((kind, part))
    return out


def report(args) -> None:
    rows = [json.loads(line) for line in SETS["first"][1].read_text().splitlines()]
    by_split = {"calibration": [r for r in rows if r["split"] == "calibration"],
                "report": [r for r in rows if r["split"] == "report" and r["id"] >= args.report_from]}
    cal = [p for _, p in pairs(by_split["calibration"], tuple(args.kinds))]
    thresholds = rag.calibrate([p["supported"]["margin"] for p in cal], [p["unsupported"]["margin"] for p in cal])
    print(f"thresholds = ({thresholds[0]:.2f}, {thresholds[1]:.2f}) nats from the calibration split's {len(cal)} "
          f"answers ({' and '.join(args.kinds)}); report rows from {args.report_from}\n")
    print("| split | answers | judged | unsupported flagged: precision | recall | supported answers: supported / uncertain / unsupported |")
    print("|---|---|---|---|---|---|")
    for split, part in by_split.items():
        for kinds, name in ((("bare",), "bare"), (("own",), "own (correct only)"), (("bare", "own"), "both")):
            judged = [p for _, p in pairs(part, kinds)]
            total = len(part) * len(kinds)
            sup = [label(p["supported"], thresholds) for p in judged]
            uns = [label(p["unsupported"], thresholds) for p in judged]
            tp, fp = uns.count("unsupported"), sup.count("unsupported")
            precision = f"{tp / (tp + fp):.3f}" if tp + fp else "n/a"
            recall = f"{tp / len(uns):.3f}" if uns else "n/a"
            print(f"| {split} | {name} | {len(judged)} of {total} | {precision} ({tp}/{tp + fp}) | {recall} ({tp}/{len(uns)}) | "
                  f"{sup.count('supported')} / {sup.count('uncertain')} / {sup.count('unsupported')} |")
    print("\n| id | split | kind | supported margin | unsupported margin | drop_all (supported) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        for kind, p in pairs([r]):
            print(f"| {r['id']} | {r['split']} | {kind} | {p['supported']['margin']:+.2f} | "
                  f"{p['unsupported']['margin']:+.2f} | {p['supported']['drop_all']:.2f} |")
    wrong = [r for r in rows if not r["own"]["correct"]]
    print(f"\nown answers: {len(rows) - len(wrong)} of {len(rows)} hold the expected answer; truncated "
          f"{sum(r['own']['truncated'] for r in rows)}; sentences per answer "
          f"{sum(r['own']['n_sentences'] for r in rows) / len(rows):.2f}; seconds per example "
          f"{sum(r['seconds'] for r in rows) / len(rows):.0f}")
    print("wrong own answers: " + "; ".join(f"{r['id']} {r['own']['answer'][:60]!r}" for r in wrong))


def third(args) -> None:
    """The third rule: thresholds from every bare row of the first set, labels on the report set's rows."""
    suffix = "_p1" if args.prompt == "P1" else ""
    paths = [SETS[name][1].with_name(SETS[name][1].stem + suffix + ".jsonl") for name in ("first", "report")]
    first, reported = ([json.loads(line) for line in path.read_text().splitlines()] for path in paths)
    own_rows = SETS["report"][1].with_name(SETS["report"][1].stem + "_own.jsonl")
    own = {r["id"]: r["own"] for r in map(json.loads, own_rows.read_text().splitlines())} if own_rows.exists() else {}
    reported = [{**r, "own": own[r["id"]]} if r["id"] in own else r for r in reported]
    thresholds = rag.calibrate([r["bare"]["supported"]["margin"] for r in first],
                               [r["bare"]["unsupported"]["margin"] for r in first])
    print(f"thresholds = ({thresholds[0]:.2f}, {thresholds[1]:.2f}) nats from the first set's {len(first)} bare "
          f"answers; report set: {len(reported)} rows\n")
    print("| set | answers | judged | unsupported: precision | recall | supported: precision | recall | "
          "uncertain | supported answers: supported / uncertain / unsupported |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, part in (("first (calibration, in-sample)", first), ("report", reported)):
        for kind in ("bare", "own"):
            judged = [p for k, p in pairs(part, (kind,)) if "supported" in p]
            if not judged:
                continue
            sup = [label(p["supported"], thresholds) for p in judged]
            uns = [label(p["unsupported"], thresholds) for p in judged]
            tp, fp = uns.count("unsupported"), sup.count("unsupported")
            ts, fs = sup.count("supported"), uns.count("supported")
            ratio = lambda a, b: f"{a / b:.3f} ({a}/{b})" if b else "n/a"  # noqa: E731
            print(f"| {name} | {kind} | {len(judged)} of {len(part)} | {ratio(tp, tp + fp)} | {ratio(tp, len(uns))} | "
                  f"{ratio(ts, ts + fs)} | {ratio(ts, len(sup))} | {ratio(sup.count('uncertain') + uns.count('uncertain'), 2 * len(judged))} | "
                  f"{ts} / {sup.count('uncertain')} / {fp} |")
    print("\n| id | kind | supported margin | label | unsupported margin | label | drop_all (supported) |")
    print("|---|---|---|---|---|---|---|")
    for r in reported:
        for kind, p in pairs([r]):
            if "supported" in p:
                print(f"| {r['id']} | {kind} | {p['supported']['margin']:+.2f} | {label(p['supported'], thresholds)} | "
                      f"{p['unsupported']['margin']:+.2f} | {label(p['unsupported'], thresholds)} | "
                      f"{p['supported']['drop_all']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    runner = sharded_runner(sub)
    runner.add_argument("--data", default="first", choices=sorted(SETS))
    runner.add_argument("--own", action=argparse.BooleanOptionalAction, default=True,
                        help="also the model's own answer (the third rule's report set runs --no-own first)")
    runner.add_argument("--prompt", default="P0", choices=["P0", "P1"],
                        help="P1: the system message chosen at 13:50 (rows to <rows>_p1.jsonl)")
    runner.add_argument("--own-only", action="store_true", help="only the own answers, to <rows>_own.jsonl")
    reporter = sub.add_parser("report")
    reporter.add_argument("--kinds", nargs="+", default=["bare", "own"], choices=["bare", "own"],
                          help="answers the thresholds are calibrated on (the second rule: bare)")
    reporter.add_argument("--report-from", default="rc-020", help="first report row counted (the second rule: rc-025)")
    thirder = sub.add_parser("third", help="the third rule's table (thresholds from the first set, labels on the report set)")
    thirder.add_argument("--prompt", default="P1", choices=["P0", "P1"], help="the rows' prompt (P1: the default since 13:51)")
    args = parser.parse_args()
    {"run": run, "report": report, "third": third}[args.command](args)


if __name__ == "__main__":
    main()
