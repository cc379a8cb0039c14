"""Sentence spans of a text, without downloaded models or data (nltk's punkt needs a download; this runs offline).

A sentence ends at ".", "!" or "?" (with closing quotes or brackets) followed by white space, unless the word
before the period is a known abbreviation or a single letter (an initial); line breaks between paragraphs also
end one. Good enough to group citations; spans are exact, so a missed split only merges two sentences.
"""

from __future__ import annotations

import re

ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st mt vs etc e.g i.e cf al fig no vol approx inc ltd co corp dept est jan feb mar apr "
    "jun jul aug sep sept oct nov dec u.s u.k".split()
)
_END = re.compile(r"[.!?]+[\"')\]]*(?=\s)|\n\s*\n")
_WORD_BEFORE = re.compile(r"(\S+)$")


def split_sentences(text: str, language: str | None = None) -> list[tuple[int, int]]:
    """(start, end) of each sentence of `text`, white space trimmed; an empty text has none."""
    spans, start = [], 0
    for match in _END.finditer(text):
        if match.group().startswith(".") and _is_abbreviation(text[start:match.start()]):
            continue
        spans.append((start, match.end()))
        start = match.end()
    spans.append((start, len(text)))
    return [trimmed for trimmed in (_trim(text, a, b) for a, b in spans) if trimmed]


def _is_abbreviation(before: str) -> bool:
    word = _WORD_BEFORE.search(before)
    if not word:
        return False
    token = word.group(1).lstrip("(\"'").lower()
    return token in ABBREVIATIONS or (len(token) == 1 and token.isalpha())


def _trim(text: str, start: int, end: int) -> tuple[int, int] | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if end > start else None
