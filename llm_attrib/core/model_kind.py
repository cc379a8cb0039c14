"""What kind of model a HuggingFace model is, read from the model itself: the helpers every layer needs (the
front, the methods, the metrics), kept here at the bottom so imports run one way."""

from __future__ import annotations

import inspect


def is_classifier(model) -> bool:
    """Sequence classifiers explain a class; everything else is treated as a causal LM."""
    return type(model).__name__.endswith("ForSequenceClassification")


def context_length(model, tokenizer) -> int:
    """Tokens the model can take at once: the smaller of the config's and the tokenizer's limits (10**9 if neither
    says)."""
    limits = [getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    return min([n for n in limits if isinstance(n, int) and 0 < n < 10**9] or [10**9])


def head_only_at(model, positions) -> dict:
    """The forward argument that runs the LM head only at `positions` (a tensor, or the last n tokens for an int),
    for a model that takes it; {} otherwise, and the caller keeps the positions of the full logits."""
    return {"logits_to_keep": positions} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
