"""Chat prompts: the tokenizer's chat template applied, with the character spans of what the user wrote.

The template adds markup around each message (role markers, special tokens, sometimes a default system
prompt). Attributions should land on the messages' content, so we need to know exactly where each content
string sits in the rendered text. We render the template once with a unique sentinel in place of every
content; what lies between the sentinels is pure markup, and interleaving it with the real contents must
reproduce the real rendering. Templates that transform the content (trim, escape) fail that check and
get a clear error instead of spans found by guessing.
"""

from __future__ import annotations

import re

from ..errors import InvalidInputError

Messages = list[dict[str, str]]


def render_chat(tokenizer, messages: Messages) -> tuple[str, list[tuple[int, int]]]:
    """The prompt text (template applied, generation prompt added) and each message's content span in it."""
    if not messages or not all(isinstance(m, dict) and "role" in m and isinstance(m.get("content"), str) for m in messages):
        raise InvalidInputError("chat messages must be a non-empty list of {'role': ..., 'content': str} dicts.")
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidInputError("this tokenizer has no chat template; pass the prompt as a string.")
    sentinels = [f"\x00llm-attrib-{i}\x00" for i in range(len(messages))]
    marked = tokenizer.apply_chat_template(
        [{**m, "content": s} for m, s in zip(messages, sentinels)], tokenize=False, add_generation_prompt=True
    )
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    pieces = re.split("(" + "|".join(map(re.escape, sentinels)) + ")", marked)
    rebuilt, spans = "", []
    for piece in pieces:
        if piece in sentinels:
            content = messages[sentinels.index(piece)]["content"]
            spans.append((len(rebuilt), len(rebuilt) + len(content)))
            rebuilt += content
        else:
            rebuilt += piece
    if rebuilt != text or len(spans) != len(messages):
        raise InvalidInputError(
            "this chat template changes the messages' text (e.g. trims or escapes it), so the content cannot be "
            "located exactly; apply the template yourself and pass the prompt as a string."
        )
    return text, spans


def outside_spans(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    """For each token's (start, end): True when it overlaps none of the spans (markup, special tokens)."""
    return [not (end > start and any(start < b and a < end for a, b in spans)) for start, end in offsets]
