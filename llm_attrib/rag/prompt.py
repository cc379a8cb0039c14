"""A RAG prompt built from a question and retrieved documents, with every document's and sentence's character span
known from construction (never re-found by searching the text: documents may repeat words, phrases, even
sentences).

A `Template` says how documents and the question are laid out; the prompt is rendered through the tokenizer's
chat template when it has one (a system message saying the task, then one user message), else as plain text.
Removing documents renders the same layout without them, so an ablation changes nothing but the removed documents.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

from jinja2 import TemplateError

from ..core.chat import render_chat
from ..errors import InvalidInputError
from .sentences import split_sentences

Span = tuple[int, int]

# Replaces a chat template's own default (SmolLM2's names the assistant and nothing else); chosen on real-text
# questions, eval/results/rag/calibration.md ("The default answer on the mountain example").
SYSTEM = "You are an assistant for question-answering tasks. Answer from the documents you are given."


def _format(template: str, values: dict[str, str]) -> tuple[str, dict[str, int]]:
    """`template.format(**values)` and where each field's value starts in the result."""
    out, at = "", {}
    for literal, name, _, _ in string.Formatter().parse(template):
        out += literal
        if name is not None:
            at[name] = len(out)
            out += values[name]
    return out, at


def _check_fields(what: str, layout: str, required: set[str], allowed: set[str]) -> None:
    try:
        names = [name for _, name, spec, conv in string.Formatter().parse(layout) if name is not None]
    except ValueError as error:
        raise InvalidInputError(f"the {what} {layout!r} is not a format string ({error}); write literal braces as {{{{ }}}}.") from None
    decorated = [f"{{{name}{'!' + conv if conv else ''}{':' + spec if spec else ''}}}"
                 for _, name, spec, conv in string.Formatter().parse(layout) if name is not None and (spec or conv)]
    if decorated:
        raise InvalidInputError(f"the {what} {layout!r} decorates its fields ({', '.join(decorated)}); fields are "
                                "placed as written, so write them plainly (e.g. {documents}).")
    missing = sorted(required - set(names))
    unknown = sorted(set(names) - allowed)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if missing or unknown or repeated:
        problems = ([f"lacks {{{m}}}" for m in missing] + [f"has unknown field {{{u}}}" for u in unknown]
                    + [f"repeats {{{r}}}" for r in repeated])
        raise InvalidInputError(
            f"the {what} {layout!r} {', '.join(problems)}; it must hold "
            f"{', '.join('{' + r + '}' for r in sorted(required))} once each (allowed: "
            f"{', '.join('{' + a + '}' for a in sorted(allowed))})."
        )


@dataclass(frozen=True)
class Template:
    """The layout of a RAG prompt.

    Attributes:
        prompt: the whole prompt, with the fields {documents} and {question} (each once).
        document: one document, with {text} and optionally {index} (1-based) and {title}.
        titled: the document layout used when a document has a title.
        separator: what joins the rendered documents.
        chat: render as one user message through the tokenizer's chat template; None: when the tokenizer has one.
        system: the system message before it (chat only; None: none, so the chat template's own default if it has
            one). A chat template that refuses a system role renders without this default.
    """

    prompt: str = "Answer the question in one sentence, using the documents.\n\n{documents}\n\nQuestion: {question}"
    document: str = "Document {index}: {text}"
    titled: str = "Document {index} ({title}): {text}"
    separator: str = "\n"
    chat: bool | None = None
    system: str | None = SYSTEM

    def __post_init__(self) -> None:
        _check_fields("template", self.prompt, required={"documents", "question"}, allowed={"documents", "question"})
        for name, layout in (("document", self.document), ("titled", self.titled)):
            _check_fields(f"{name} layout", layout, required={"text"}, allowed={"text", "index", "title"})


PLAIN = Template(prompt="Answer the question using the documents.\n\n{documents}\n\nQuestion: {question}\nAnswer:",
                 chat=False, system=None)
ZOO = Template(prompt="{documents} question : {question}", document="doc : {text}", titled="doc : {text}",
               separator=" ", chat=False, system=None)
TEMPLATES = {"default": Template(), "plain": PLAIN, "zoo": ZOO}


@dataclass(frozen=True)
class Document:
    """A retrieved document: its text, and optionally a title and the caller's id."""

    text: str
    title: str | None = None
    id: str | None = None


@dataclass
class RagPrompt:
    """The rendered prompt and where each part of it sits in `text` (the exact string the model reads).

    Attributes:
        prompt: what `Attributor.explain` takes: chat messages or the plain text.
        text: the rendered prompt text (chat template applied).
        documents: the documents, in prompt order.
        document_spans: each rendered document (with its label, e.g. "Document 2: ...") in `text`.
        sentence_spans: for each document, its sentences' spans in `text`.
        question_span: the question in `text`.
        kept: indices (into the caller's documents) of the documents in this prompt.
    """

    prompt: str | list[dict[str, str]]
    text: str
    documents: list[Document]
    document_spans: list[Span]
    sentence_spans: list[list[Span]]
    question_span: Span
    kept: list[int] = field(default_factory=list)


def as_documents(documents) -> list[Document]:
    """Strings or dicts with "text" (and optional "title", "id") as `Document`s, checked."""
    if isinstance(documents, (str, bytes)) or not hasattr(documents, "__iter__"):
        raise InvalidInputError("documents must be a list of strings or of dicts with a 'text' key.")
    if isinstance(documents, (dict, set, frozenset)):  # iterating would take a dict's keys, or a random order
        raise InvalidInputError(f"documents is a {type(documents).__name__}; pass a list (e.g. list(documents.values()) "
                                "for texts keyed by id), in retrieval order.")
    out = []
    for i, doc in enumerate(documents):
        if isinstance(doc, Document):
            out.append(doc)
        elif isinstance(doc, str):
            out.append(Document(doc))
        elif isinstance(doc, dict) and isinstance(doc.get("text"), str):
            unknown = set(doc) - {"text", "title", "id"}
            if unknown:
                raise InvalidInputError(f"document {i} has unknown keys {sorted(unknown)}; use 'text', 'title', 'id'.")
            title = doc.get("title")
            out.append(Document(doc["text"], None if title is None else str(title),
                                None if doc.get("id") is None else str(doc["id"])))
        else:
            raise InvalidInputError(f"document {i} is a {type(doc).__name__}; give a string or a dict with a 'text' key.")
    if not out:
        raise InvalidInputError("there are no documents; give at least one retrieved document to attribute to.")
    empty = [i for i, d in enumerate(out) if not d.text.strip()]
    if empty:
        raise InvalidInputError(f"documents {empty} are empty; drop them before explaining.")
    seen: dict[str, int] = {}
    for i, d in enumerate(out):
        key = " ".join(d.text.split())
        if key in seen:
            raise InvalidInputError(
                f"documents {seen[key]} and {i} have the same text, so no attribution can tell them apart; "
                "deduplicate the retrieved documents first."
            )
        seen[key] = i
    return out


def build_prompt(tokenizer, question: str, documents: list[Document], template: Template,
                 kept: list[int] | None = None, system: str | None = None, language: str | None = None) -> RagPrompt:
    """Render `question` and the `kept` documents (default all) with `template`, after `system` (None: the
    template's); spans come from the rendering (sentences split in `language`, None: detected)."""
    if not isinstance(question, str) or not question.strip():
        raise InvalidInputError("the question is empty; give the question the documents were retrieved for.")
    kept = list(range(len(documents))) if kept is None else kept
    pieces, relative = [], []  # rendered documents, and each one's text span within its rendering
    for i in kept:
        doc = documents[i]
        layout = template.titled if doc.title else template.document
        before, after = layout.split("{text}")
        head = before.format(index=i + 1, title=doc.title or "")
        pieces.append(head + doc.text + after.format(index=i + 1, title=doc.title or ""))
        relative.append((len(head), len(head) + len(doc.text)))
    body, starts = "", []
    for piece in pieces:
        body += template.separator if starts else ""
        starts.append(len(body))
        body += piece
    content, field_at = _format(template.prompt, {"documents": body, "question": question})
    chat = template.chat if template.chat is not None else bool(getattr(tokenizer, "chat_template", None))
    if chat:
        user = [{"role": "user", "content": content}]
        chosen = system or template.system
        messages = ([{"role": "system", "content": chosen}] if chosen else []) + user
        try:
            text, spans = render_chat(tokenizer, messages)
        except TemplateError as error:
            if not chosen:
                raise
            if system:
                raise InvalidInputError(f"the tokenizer's chat template refused the system message ({error}); this "
                                        "model may take none: leave system= unset.") from None
            messages = user  # a template without a system role (e.g. Gemma 2's) gets no default one
            text, spans = render_chat(tokenizer, messages)
        offset = spans[-1][0]
        prompt: str | list[dict[str, str]] = messages
    else:
        if system:
            raise InvalidInputError("a system message needs a chat template; this prompt is plain text.")
        text, offset, prompt = content, 0, content
    base = offset + field_at["documents"]
    document_spans, sentence_spans = [], []
    for start, piece, (a, b) in zip(starts, pieces, relative):
        document_spans.append((base + start, base + start + len(piece)))
        sentence_spans.append([(base + start + a + s, base + start + a + e)
                               for s, e in split_sentences(piece[a:b], language)])
    question_at = offset + field_at["question"]
    return RagPrompt(prompt, text, [documents[i] for i in kept], document_spans, sentence_spans,
                     (question_at, question_at + len(question)), kept)
