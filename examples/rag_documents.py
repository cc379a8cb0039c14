"""RAG debugging: which retrieved document carried which answer token.

    python examples/rag_documents.py [--n 5] [--space attention]

Token attributions are summed over each document's character span (`Explanation.aggregate`), so every
answer word gets one score per document; the top document should be the one the answer was copied from.
The end token is left out: the answer word before it decides it, not a document.
Runs offline on the embedded `rag` zoo model, whose examples know the relevant document.
"""

import argparse

import llm_attrib
from llm_attrib import Attributor

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--n", type=int, default=5, help="examples")
parser.add_argument("--space", default="attention", choices=("embeddings", "attention"))
args = parser.parse_args()

model, tokenizer = llm_attrib.zoo.load("rag")
attributor = Attributor(model, tokenizer, show_progress=False)
right = total = 0
for example in llm_attrib.zoo.examples("rag", n=args.n, seed=0):
    explanation = attributor.explain(example["prompt"], space=args.space)
    labels = [f"doc {i}" for i in range(len(example["documents"]))]
    by_document = explanation.aggregate(example["documents"], labels)
    print(f"\n{example['prompt']}\n  answer: {' '.join(explanation.target_tokens)!r}, "
          f"copied from doc {example['relevant_document']}")
    for t, token in enumerate(by_document.target_tokens):
        if by_document.target_ids[t] == tokenizer.eos_token_id:
            continue
        scores = by_document.prompt_scores[t]
        best = int(scores.argmax())
        cells = "  ".join(f"{label} {score:+.2f}" for label, score in zip(labels, scores.tolist()))
        print(f"  {token!r:>8}: {cells}   -> doc {best}")
        right += best == example["relevant_document"]
        total += 1
print(f"\ntop document is the relevant one for {right} of {total} answer words")
