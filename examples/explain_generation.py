"""Explain a generation token by token: which prompt tokens carried each generated token.

    python examples/explain_generation.py [--space attention] [--html explanation.html]

Runs offline on the embedded `rag` zoo model; pass --model for any local folder or hub id.
"""

import argparse

import llm_attrib
from llm_attrib import Attributor
from llm_attrib.cli import load_model

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", help="local folder or hub id (default: the zoo rag model)")
parser.add_argument("--prompt", help="default: a fresh rag zoo example")
parser.add_argument("--space", default="embeddings", choices=("embeddings", "attention"))
parser.add_argument("--html", help="also write the self-contained HTML heatmap here")
args = parser.parse_args()

model, tokenizer = load_model(args.model) if args.model else llm_attrib.zoo.load("rag")
prompt = args.prompt or llm_attrib.zoo.examples("rag", n=1, seed=0)[0]["prompt"]

explanation = Attributor(model, tokenizer).explain(prompt, method="ig", space=args.space, max_new_tokens=8)
explanation.print()
words = explanation.words()
for t, token in enumerate(explanation.target_tokens):
    top = ", ".join(f"{word!r} {score:+.2f}" for word, score in words.top_tokens(t, k=3))
    print(f"{token!r:>10} <- {top}   (completeness error {explanation.completeness_error[t]:.2%})")
if args.html:
    with open(args.html, "w") as f:
        f.write(explanation.to_html())
    print(f"wrote {args.html}")
