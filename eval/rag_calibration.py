"""Verdict thresholds for SmolLM2-135M-Instruct, calibrated on one split of eval/data/rag_calibration.jsonl and
reported on the other (the rule and its amendment: eval/results/rag/calibration.md, written before the rows).

    python eval/rag_calibration.py run --shard 0/2      # rows -> eval/results/rag/calibration.jsonl (resumable)
    python eval/rag_calibration.py report                # thresholds, precision and recall -> stdout (Markdown)

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

SETS = {"first": (ROOT / "eval/data/rag_calibration.jsonl", ROOT / "eval/results/rag/calibration.jsonl"),
        "report": (ROOT / "eval/data/rag_calibration_report.jsonl", ROOT / "eval/results/rag/calibration_report.jsonl")}


def margin(attributor, question: str, documents, answer_ids: list[int], segment: tuple[int, int]) -> dict:
    """The verdict's margin for one answer segment, citing leave-one-out's top document."""
    n = len(documents)
    subsets = DocumentSubsets(attributor, question, documents, Template(), answer_ids, [segment])
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
    k, n = (int(x) for x in args.shard.split("/"))
    DATA, ROWS = SETS[args.data]
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
        bare = attributor.sequence(build_prompt(tokenizer, ex["question"], docs, Template()).prompt, answer=ex["answer"])
        bare_ids = bare.target_ids.tolist()
        row["bare"] = {"supported": margin(attributor, ex["question"], docs, bare_ids, (0, len(bare_ids))),
                       "unsupported": margin(attributor, ex["question"], kept, bare_ids, (0, len(bare_ids)))}
        if not args.own:
            row["seconds"] = time.perf_counter() - started
            with ROWS.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(ex["id"], f"{row['seconds']:.0f} s", flush=True)
            continue
        prompt = build_prompt(tokenizer, ex["question"], docs, Template()).prompt
        own_ids, truncated = generate_answer(attributor, prompt, 128, 3)
        seq = attributor.sequence(prompt, answer=own_ids)
        runs, spans = answer_sentences(seq)
        sentences = [seq.text[a:b] for a, b in spans]
        s = next((j for j, sentence in enumerate(sentences) if ex["answer"].lower() in sentence.lower()), None)
        row["own"] = {"answer": seq.text[seq.offsets[seq.n_prompt][0]:], "truncated": truncated,
                      "n_sentences": len(runs), "correct": s is not None}
        if s is not None:
            row["own"].update(sentence=s, supported=margin(attributor, ex["question"], docs, own_ids, runs[s]),
                              unsupported=margin(attributor, ex["question"], kept, own_ids, runs[s]))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    runner = sub.add_parser("run")
    runner.add_argument("--shard", default="0/1")
    runner.add_argument("--threads", type=int, default=1)
    runner.add_argument("--data", default="first", choices=sorted(SETS))
    runner.add_argument("--own", action=argparse.BooleanOptionalAction, default=True,
                        help="also the model's own answer (the third rule's report set runs --no-own first)")
    reporter = sub.add_parser("report")
    reporter.add_argument("--kinds", nargs="+", default=["bare", "own"], choices=["bare", "own"],
                          help="answers the thresholds are calibrated on (the second rule: bare)")
    reporter.add_argument("--report-from", default="rc-020", help="first report row counted (the second rule: rc-025)")
    args = parser.parse_args()
    run(args) if args.command == "run" else report(args)


if __name__ == "__main__":
    main()
