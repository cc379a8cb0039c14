"""Compare attribution methods on labelled examples: faithfulness (comprehensiveness, sufficiency) and
plausibility (hit@1 and AUPRC against the known evidence), with their cost.

    python examples/compare_methods.py [--task rag] [--n 20]
    accelerate launch --multi_gpu --num_processes 2 examples/compare_methods.py --n 100   # data-parallel

Rows stream to --output and an interrupted run resumes there. Runs offline on the zoo models.
"""

import argparse
import sys

import llm_attrib
from llm_attrib import Attributor, parallel
from llm_attrib.evaluate import evaluate

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--task", default="rag", choices=("recall", "rag", "sentiment"))
parser.add_argument("--n", type=int, default=20, help="examples")
parser.add_argument("--output", default="compare_methods.jsonl", help="rows (JSON lines), resumable")
args = parser.parse_args()

try:
    model, tokenizer = llm_attrib.zoo.load(args.task, device=parallel.device())
except llm_attrib.MissingPackageError as err:  # an optional model whose package is not installed
    print(f"compare_methods.py: {err}", file=sys.stderr)
    sys.exit(2)
methods = [
    "ig",
    {"label": "ig_attention", "method": "ig", "space": "attention"},
    "saliency",
    "random",
]
result = evaluate(Attributor(model, tokenizer, show_progress=False),
                  llm_attrib.zoo.examples(args.task, n=args.n, seed=0), methods, output=args.output)
columns = ["aopc_comprehensiveness", "aopc_sufficiency", "hit@1", "auprc"]
print(result.summary[[(c, "mean") for c in columns]].round(3).to_string())
parallel.finish()
