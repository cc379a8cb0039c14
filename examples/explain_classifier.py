"""Explain a sequence classifier's decision, word by word.

    python examples/explain_classifier.py ["the food was not good"]

Runs offline on the embedded `sentiment` zoo model (the real all-MiniLM-L6-v2 encoder with a tuned head);
sub-word tokens are summed into words.
"""

import sys

import llm_attrib
from llm_attrib import Attributor

try:
    model, tokenizer = llm_attrib.zoo.load("sentiment")
except llm_attrib.MissingPackageError as err:  # an optional model whose package is not installed
    print(f"explain_classifier.py: {err}", file=sys.stderr)
    sys.exit(2)
sentence = sys.argv[1] if len(sys.argv) > 1 else "honestly , the concert was not very enjoyable in the end ."
explanation = Attributor(model, tokenizer, show_progress=False).explain(sentence).words()
print(f"{sentence!r} -> {explanation.target_tokens[0]} (p={explanation.target_probs[0]:.3f})")
for word, score in sorted(zip(explanation.input_tokens, explanation.scores[0].tolist()), key=lambda x: -abs(x[1])):
    print(f"  {word:>12} {score:+.3f}")
