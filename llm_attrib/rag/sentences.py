"""Sentence spans of a text in any of ~300 languages, offline: sentencex's rules (abbreviations, decimals,
quotes, the full stops of Japanese and Chinese), with exact character offsets into the text.

sentencex was chosen over pysbd (and the English regex this module had) by measurement on a hand-written sample
in six languages (eval/results/sentences.md). The language is given (an ISO 639-1 code) or detected from the
script and, for Latin script, from function words; it only selects the abbreviation rules.
"""

from __future__ import annotations

import re

import sentencex


def split_sentences(text: str, language: str | None = None) -> list[tuple[int, int]]:
    """(start, end) of each sentence of `text`, white space trimmed, in order; an empty text has none. Blank lines
    (paragraph breaks) end a sentence too."""
    language = language or detect_language(text)
    boundaries = sentencex.get_sentence_boundaries(language, text)
    return trimmed(text, [(b["start_index"], b["end_index"]) for b in boundaries])


def trimmed(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The spans with white space cut from both ends; spans of white space only are dropped."""
    out = []
    for start, end in spans:
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if end > start:
            out.append((start, end))
    return out


_SCRIPTS = (("ja", re.compile(r"[\u3040-\u30ff]")), ("ko", re.compile(r"[\uac00-\ud7af]")),
            ("zh", re.compile(r"[\u4e00-\u9fff]")), ("ru", re.compile(r"[\u0400-\u04ff]")),
            ("el", re.compile(r"[\u0370-\u03ff]")), ("ar", re.compile(r"[\u0600-\u06ff]")),
            ("hi", re.compile(r"[\u0900-\u097f]")), ("he", re.compile(r"[\u0590-\u05ff]")),
            ("th", re.compile(r"[\u0e00-\u0e7f]")))
_STOPWORDS = {
    "en": "the of and to in is was it that for on with as are by this from".split(),
    "de": "der die das und ist nicht ein eine zu den mit von sie es im dem auch".split(),
    "fr": "le la les et est des un une du que dans en pour il elle pas sur".split(),
    "es": "el la los las y es de que en un una por con para se del".split(),
    "it": "il lo la gli le e di che un una per con non del della sono".split(),
    "pt": "o a os as e de que um uma para com não do da em se".split(),
    "nl": "de het een en is van dat niet op te met zijn voor".split(),
}
_LETTERS = {"de": "äöüß", "fr": "çœèêëàâîïôûù«»", "es": "ñ¿¡áíóú", "pt": "ãõç", "it": "àèìòù", "nl": "ĳ"}


def detect_language(text: str) -> str:
    """An ISO 639-1 code for `text`, enough to choose sentence rules: by script (kana is Japanese, Han without kana
    Chinese, ...), and for Latin script by function words and letters typical of seven languages (English when none
    is found)."""
    for code, script in _SCRIPTS:
        if script.search(text):
            return code
    words = re.findall(r"[^\W\d_]+", text.lower())
    lowered = text.lower()
    counts = {code: sum(word in stop for word in words) + sum(lowered.count(c) for c in _LETTERS.get(code, ""))
              for code, stop in _STOPWORDS.items()}
    best = max(counts, key=counts.get)
    return best if counts[best] > 0 else "en"
