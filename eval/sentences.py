"""Which sentence segmenter the RAG spans use: the English regex the package had, pysbd or sentencex, measured on a
small multilingual sample written by hand (eval/data/sentences_multilingual.jsonl: English, German, French,
Spanish, Japanese, Chinese, with abbreviations, decimals and quotes).

    python eval/sentences.py        # the table of eval/results/sentences.md

Per segmenter, with the language given and with the language detected (`llm_attrib.rag.sentences.detect_language`):
texts split exactly as written, boundary precision and recall (a boundary: the end of every sentence but the
last), and whether every span is exact (text[start:end] is the sentence, in order, not overlapping).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llm_attrib.rag.sentences import detect_language, split_sentences, trimmed  # noqa: E402

DATA = ROOT / "eval/data/sentences_multilingual.jsonl"
_END = re.compile(r"[.!?]+[\"')\]]*(?=\s)|\n\s*\n")
_ABBREVIATIONS = frozenset("mr mrs ms dr prof sr jr st mt vs etc e.g i.e cf al fig no vol approx inc ltd co corp dept "
                           "est jan feb mar apr jun jul aug sep sept oct nov dec u.s u.k".split())


def regex(text: str, language: str) -> list[tuple[int, int]]:
    """The package's splitter before this change (rag/sentences.py at 158568b)."""
    spans, start = [], 0
    for match in _END.finditer(text):
        word = re.search(r"(\S+)$", text[start:match.start()])
        token = word.group(1).lstrip("(\"'").lower() if word else ""
        if match.group().startswith(".") and (token in _ABBREVIATIONS or (len(token) == 1 and token.isalpha())):
            continue
        spans.append((start, match.end()))
        start = match.end()
    spans.append((start, len(text)))
    return trimmed(text, spans)


def pysbd_spans(text: str, language: str) -> list[tuple[int, int]]:
    import pysbd

    language = language if language in pysbd.languages.LANGUAGE_CODES else "en"
    return trimmed(text, [(s.start, s.end) for s in pysbd.Segmenter(language=language, clean=False, char_span=True).segment(text)])


def exact_spans(text: str, spans) -> bool:
    return all(0 <= a < b <= len(text) for a, b in spans) and all(b <= c for (_, b), (c, _) in zip(spans, spans[1:]))


def main() -> None:
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    detected = [detect_language(r["text"]) for r in rows]
    wrong = [(r["id"], r["language"], d) for r, d in zip(rows, detected) if d != r["language"]]
    print(f"language detection: {len(rows) - len(wrong)}/{len(rows)} right" + (f" (wrong: {wrong})" if wrong else ""))
    print("\n| segmenter | language | texts split exactly | boundary precision | boundary recall | spans exact | ms per text |")
    print("|---|---|---|---|---|---|---|")
    misses = {}
    for name, split in (("regex (before)", regex), ("pysbd 0.3.4", pysbd_spans), ("sentencex 1.0.32", split_sentences)):
        for mode in ("given", "detected"):
            if name.startswith("regex") and mode == "detected":
                continue
            n_exact = tp = n_pred = n_true = 0
            spans_ok, seconds = True, 0.0
            per_language: dict[str, list[int]] = {}
            for r, lang in zip(rows, detected):
                text = r["text"]
                started = time.perf_counter()
                spans = split(text, r["language"] if mode == "given" else lang)
                seconds += time.perf_counter() - started
                spans_ok &= exact_spans(text, spans)
                got = [text[a:b] for a, b in spans]
                truth = [text.index(s) + len(s) for s in r["sentences"]][:-1]
                pred = [b for _, b in spans][:-1]
                tp += len(set(truth) & set(pred))
                n_pred, n_true = n_pred + len(pred), n_true + len(truth)
                n_exact += got == r["sentences"]
                per_language.setdefault(r["language"], [0, 0])[0] += got == r["sentences"]
                per_language[r["language"]][1] += 1
                if got != r["sentences"] and mode == "given":
                    misses.setdefault(name, []).append((r["id"], got))
            by_language = ", ".join(f"{k} {a}/{b}" for k, (a, b) in per_language.items())
            print(f"| {name} | {mode} | {n_exact}/{len(rows)} ({by_language}) | {tp / max(n_pred, 1):.3f} | "
                  f"{tp / n_true:.3f} | {'yes' if spans_ok else 'NO'} | {1000 * seconds / len(rows):.2f} |")
    for name, items in misses.items():
        print(f"\n{name}, texts not split as written:")
        for id_, got in items:
            print(f"- {id_}: {got}")


if __name__ == "__main__":
    main()
