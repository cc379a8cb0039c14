"""Generators of the zoo's synthetic tasks.

Every example knows where its answer comes from (``evidence``: character spans in the prompt), so
attribution methods can be scored against ground truth instead of against each other.
"""

from __future__ import annotations

import random
from collections.abc import Callable

Span = list[int]

# recall: key-value pairs, then a query key. Small vocabularies: every word is seen often in training.
RECALL_KEYS = [f"k{i}" for i in range(12)]
RECALL_VALUES = [f"v{i}" for i in range(30)]
RECALL_WORDS = RECALL_KEYS + RECALL_VALUES + ["=", ",", ".", "=>"]

# rag: short documents about distinct people sharing one vocabulary; each attribute is two words.
RAG_NAMES = "alice bob carol dave eve frank grace heidi ivan judy mallory nina".split()
RAG_PLACE = ("north south east west old new upper lower".split(),
             "town harbor valley ridge bay field port hill".split())
RAG_FOOD = ("green black hot sweet cold red fresh dark".split(),
            "tea coffee soup apples bread rice cake fish".split())
RAG_WORDS = (RAG_NAMES + RAG_PLACE[0] + RAG_PLACE[1] + RAG_FOOD[0] + RAG_FOOD[1]
             + "doc : visits likes . question what about ?".split())

# sentiment: one sentiment word, optionally negated, among neutral filler.
POSITIVE = ("good great excellent wonderful amazing delightful fantastic brilliant lovely superb "
            "enjoyable pleasant").split()
NEGATIVE = ("bad terrible awful horrible boring dreadful poor disappointing mediocre unpleasant dull "
            "lousy").split()
NEGATIONS = ("not", "never")
SUBJECTS = ("the movie", "the film", "the food", "the service", "the book", "the hotel", "the show",
            "the album", "the game", "the trip", "the concert", "the lecture")
VERBS = ("was", "is", "seemed", "felt")
ADVERBS = ("", "", "really", "quite", "very", "rather", "somewhat")
PREFIXES = ("", "", "honestly ,", "to be honest ,", "after two hours ,", "on sunday", "i think",
            "we agreed that", "my sister said", "as expected ,")
SUFFIXES = ("", "", "overall", "and we went home", "according to my friend", "for a tuesday",
            "in the end", "this time", "to me", "by the evening")
LABELS = ("negative", "positive")


class _Builder:
    """Concatenates words with single spaces and remembers character spans."""

    def __init__(self) -> None:
        self.text = ""

    def add(self, words: str) -> Span:
        if not words:
            return [len(self.text), len(self.text)]
        if self.text:
            self.text += " "
        start = len(self.text)
        self.text += words
        return [start, len(self.text)]


def recall(rng: random.Random) -> dict:
    """'k3 = v12 v5 , k9 = v3 v8 . k9 =>' -> 'v3 v8'; value tokens are distinct within a prompt.

    Evidence: the queried pair, and the query key that selects it (both decide the answer).
    """
    n = rng.randint(3, 6)
    keys = rng.sample(RECALL_KEYS, n)
    values = rng.sample(RECALL_VALUES, 2 * n)
    q = rng.randrange(n)
    b = _Builder()
    pair_spans, shared = [], []  # shared: format tokens every prompt has ("=", ",", ".", "=>")
    for i, key in enumerate(keys):
        start = b.add(key)[0]
        shared.append(b.add("="))
        pair_spans.append([start, b.add(f"{values[2 * i]} {values[2 * i + 1]}")[1]])
        shared.append(b.add("," if i < n - 1 else "."))
    query = b.add(keys[q])
    shared.append(b.add("=>"))
    answer = f"{values[2 * q]} {values[2 * q + 1]}"
    end = pair_spans[q][1]
    return {"prompt": b.text, "answer": answer, "evidence": [pair_spans[q], query],
            "answer_span": [end - len(answer), end], "pairs": pair_spans, "query_index": q,
            "template_spans": shared}


def rag(rng: random.Random) -> dict:
    """Documents 'doc : alice visits north harbor .' or 'doc : bob likes green tea .', then
    'question : what about bob ?' -> 'green tea'.

    Every document states one fact about one person, in a vocabulary all documents share; the answer is
    the two-word span copied from the relevant document. Evidence: the relevant document, the answer span
    in it, and the name asked about in the question (which selects the document). `question` and
    `document_texts` are the parts `rag.explain(..., template="zoo")` renders back into exactly this prompt.
    """
    n = rng.randint(3, 6)
    names = rng.sample(RAG_NAMES, n)
    # no word repeats within a prompt, so every answer word points at one document
    places = [f"{a} {b}" for a, b in zip(rng.sample(RAG_PLACE[0], n), rng.sample(RAG_PLACE[1], n))]
    foods = [f"{a} {b}" for a, b in zip(rng.sample(RAG_FOOD[0], n), rng.sample(RAG_FOOD[1], n))]
    rel = rng.randrange(n)
    b = _Builder()
    docs, texts, answer_span, answer, shared = [], [], None, None, []  # shared: format words every prompt has
    for i in range(n):
        opening = b.add("doc :")
        shared.append(opening)
        verb, value = ("visits", places[i]) if rng.random() < 0.5 else ("likes", foods[i])
        b.add(f"{names[i]} {verb}")
        span = b.add(value)
        if i == rel:
            answer_span, answer = span, value
        closing = b.add(".")
        shared.append(closing)
        docs.append([opening[0], closing[1]])
        texts.append(b.text[opening[1] + 1:closing[1]])
    shared.append(b.add("question : what about"))
    asked = b.add(names[rel])
    shared.append(b.add("?"))
    return {"prompt": b.text, "answer": answer, "evidence": [docs[rel], answer_span, asked],
            "documents": docs, "relevant_document": rel, "answer_span": answer_span,
            "template_spans": shared, "question": f"what about {names[rel]} ?", "document_texts": texts}


def sentiment(rng: random.Random) -> dict:
    """'the movie was not good' -> negative: the sentiment word, flipped by an optional negation."""
    positive = rng.random() < 0.5
    negated = rng.random() < 0.4
    b = _Builder()
    b.add(rng.choice(PREFIXES))
    b.add(rng.choice(SUBJECTS))
    verb = rng.choice(VERBS)
    b.add(verb)
    evidence = []
    if negated:
        evidence.append(b.add(rng.choice(NEGATIONS) if verb in ("was", "is") else "not"))
    b.add(rng.choice(ADVERBS))
    evidence.append(b.add(rng.choice(POSITIVE if positive else NEGATIVE)))
    b.add(rng.choice(SUFFIXES))
    b.add(".")
    label = int(positive != negated)
    return {"prompt": b.text, "label": label, "label_name": LABELS[label], "evidence": evidence,
            "negated": negated, "template_spans": []}


GENERATORS: dict[str, Callable[[random.Random], dict]] = {
    "recall": recall, "rag": rag, "sentiment": sentiment}


def generate(name: str, n: int, seed: int | str) -> list[dict]:
    """n examples from a generator seeded by (name, seed), so tasks never share a random stream."""
    rng = random.Random(f"{name}:{seed}")
    return [GENERATORS[name](rng) for _ in range(n)]
