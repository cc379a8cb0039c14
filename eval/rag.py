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
    python eval/rag.py twenty a 20                # 5. (#33) judged where documents carry the answer, at 3-5
    python eval/rag.py twenty-report              #    (`source`) and 20 documents -> eval/results/rag_twenty.md

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

import torch

from rag_data import CALIBRATION_SEED, DATASETS, RESULTS, SMOLLM2_OWN_PARTS, TEST_SEED, shard_spec, smollm2_part
from rag_peers import cmd_contextcite
from rag_report import cmd_report
from rag_runs import METHODS, cmd_batching, cmd_smollm2, cmd_speed, cmd_subsets, cmd_verdicts, cmd_zoo
from rag_twenty_report import cmd_twenty_report
from rag_twenty_runs import TWENTY_METHODS, TWENTY_PARTS, cmd_twenty


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
    p.add_argument("which", choices=["zoo", "smollm2", *SMOLLM2_OWN_PARTS, *TWENTY_PARTS])
    p.add_argument("--num-ablations", type=int, default=64)
    p.add_argument("--also-ablations", type=int, nargs="*", default=[],
                   help="also ContextCite at these numbers of ablations, fitted on the first ones of the same run")
    p.add_argument("--resume", action="store_true", help="keep the examples the output already holds")
    p.add_argument("--limit", type=int, default=None, help="only the first n examples (rows in order)")
    p.set_defaults(func=cmd_contextcite)
    p = sub.add_parser("subsets", help="the documents' Shapley values (rag.explain's, one forward per subset) on "
                                       "explained rows")
    p.add_argument("which", choices=["zoo", *SMOLLM2_OWN_PARTS])
    p.set_defaults(func=cmd_subsets)
    p = sub.add_parser("batching", help="every subset's forward one at a time (rag.explain's default) against one "
                                        "batch (SmolLM2)")
    p.add_argument("--n", type=int, default=12, help="rows with 4 or 5 documents")
    p.set_defaults(func=cmd_batching)
    p = sub.add_parser("twenty", help="SmolLM2 judged where documents carry the answer, at 3-5 and 20 documents "
                                      "(eval/results/rag/twenty_docs.md)")
    p.add_argument("group", choices=["a", "b"], help="(a) the held-out fictional test split, (b) real text")
    p.add_argument("docs", choices=["source", "20"], help="the source sets' 3-5 documents or eval/data/rag_twenty.jsonl")
    p.add_argument("--n", type=int, default=None, help="the first n questions of the group's order")
    p.add_argument("--minutes", type=float, default=90, help="no new question starts after this")
    p.add_argument("--shard", type=shard_spec, default=(0, 1), metavar="K/N")
    p.add_argument("--methods", nargs="+", default=list(TWENTY_METHODS), choices=list(TWENTY_METHODS),
                   help="run on each counted row (leave-one-out always runs)")
    p.add_argument("--add", nargs="+", default=None, choices=list(TWENTY_METHODS),
                   help="run these methods on the existing counted rows that lack them, nothing else")
    p.set_defaults(func=cmd_twenty)
    p = sub.add_parser("twenty-report", help="eval/results/rag_twenty.md from the twenty rows (no model)")
    p.set_defaults(func=cmd_twenty_report)
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
