"""`rag.explain`: which retrieved documents (and sentences) carried an answer, checked by removing them.

The prompt is built here from the question and the documents, so their spans are known exactly. The answer is
explained at the granularity the question needs: one row per answer sentence by default (log p(sentence | ...),
one gradient per sentence and path point), the whole answer (cheapest), or every token (for token-level views).
"""

from __future__ import annotations

import re
import time
import warnings
from typing import Any

import torch

from ..attributor import Attributor, counting_forwards
from ..core.model_kind import context_length
from ..core.progress import progress
from ..errors import InvalidInputError, UnknownNameError
from ..methods.base import get_method
from .ablation import DocumentSubsets, check_removal
from .answer import generate_answer
from .explanation import RagExplanation, cited_documents
from .prompt import TEMPLATES, Template, as_documents, build_prompt
from .sentences import split_sentences
from .shapley import DEFAULT_BUDGET, check_budget, document_shapley
from .verdicts import calibrated_thresholds, check_thresholds, judge

HIDDEN_NOTE = ("removal='hidden': leave-one-out and the other removals hid each document from the question and "
               "answer instead of rerunning the prompt without it (cheaper; not the same numbers).")
LONG_PROMPT = 1024  # tokens: beyond, reading="full" is slow on a CPU, and the call says so

GRANULARITIES = ("sentence", "answer", "token")
SCOPES = ("documents", "prompt")
DEFAULT_SENTENCE_DOCUMENTS = 8  # up to this many documents, one run explains them all at sentence level


def explain(
    model,
    tokenizer,
    question: str,
    documents: list[str] | list[dict[str, str]],
    answer: str | list[int] | None = None,
    *,
    template: Template | str | None = None,
    system: str | None = None,
    method: str = "ig",
    space: str | None = None,
    granularity: str = "sentence",
    scope: str = "documents",
    reading: str = "full",
    removal: str = "rerun",
    sentence_documents: int | None = DEFAULT_SENTENCE_DOCUMENTS,
    verify: bool = True,
    thresholds: tuple[float, float] | None = None,
    shapley: bool = False,
    shapley_budget: int = DEFAULT_BUDGET,
    retriever: tuple[Any, Any] | None = None,
    max_new_tokens: int = 128,
    max_sentences: int | None = 3,
    language: str | None = None,
    internal_batch_size: int | None = None,
    memory_budget: int | None = None,
    recompute: bool | None = None,
    show_progress: bool = True,
    **method_params: Any,
) -> RagExplanation:
    """Explain which documents carried `answer` (generated greedily when None) to `question`.

    Args:
        model, tokenizer: any HF causal LM and its fast tokenizer.
        question: the user's question.
        documents: retrieved documents: strings, or dicts with "text" and optional "title" and "id".
        answer: the answer to explain (text or token ids); None generates it (end-of-turn tokens dropped).
        template: a `Template`, a name in `rag.TEMPLATES` ("default", "plain", "zoo"), or a prompt string with
            {documents} and {question}. Default: one user message through the tokenizer's chat template when it
            has one, else the plain layout.
        system: a system message (chat templates only); None: the template's (`Template.system`: by default one
            saying the task, in place of a chat template's own default such as SmolLM2's).
        method, space, **method_params: the attribution method (`Attributor.explain`'s). space=None is the mask
            space for every method that has one (IG's default here, unlike `Attributor.explain`), else attention
            where the method has it: a document's score is then what the model read from it, and the documents'
            scores sum to log p(answer) minus that with every document masked out of attention. It converges with
            fewer gradients than attention on RAG prompts; the measurements behind this default are in
            eval/results/rag_summary.md.
        granularity: "sentence" (a row per answer sentence), "answer" (one row) or "token" (a row per token).
        scope: "documents" (default): only the documents move along the path, the question and instructions stay
            as they are, so the scores say what each document contributed given the question (and sum to the
            answer's log-probability minus that with every document blanked); "prompt": every prompt token moves.
        reading: "full" (default): the whole prompt after the documents' start runs along the path, so a
            document's score includes what later documents read from it. "answer" (mask space, scope="documents"):
            the documents' keys and values are computed once, and only the tokens after the last document (question,
            instructions, answer) see the documents' visibility move: a document's score is what the question and
            answer read from it directly, and the scores sum to log p(answer) minus that with the documents hidden
            from those readers. Each path point then runs ~100 tokens instead of the prompt: for long prompts.
        removal: how `verify` and `shapley` remove documents. "rerun" (default): the prompt is rendered again
            without them and run from the first token that changed: the exact probability of the answer to that
            prompt. "hidden": the prompt runs once and each removal runs only the tokens after the last document
            (question, instructions, answer) with the removed documents masked out of their attention, so the
            documents after a removed one keep what they read from it: another, cheaper quantity (on SmolLM2 at
            20 documents, 5-9x fewer tokens than the rerun; the same top document in most answers, but not the
            same order of the others: eval/results/rag/hidden_removal.md). The shipped verdict thresholds were
            calibrated on reruns, so with "hidden" the verdicts give their margins ("uncalibrated") unless you
            pass `thresholds`.
        sentence_documents: coarse to fine. With more documents than this, the documents are ranked first (one
            integral of the whole answer's log-probability), then only the top `sentence_documents` move in the
            sentence-level integral (the others stay in the prompt as they are, like the instructions); every
            document is still removed for leave-one-out. The other documents keep their ranking score
            (`result.ranking_scores`) and no sentence scores (`result.sentence_documents` lists the ones with).
            None: every document at sentence level (one run, as with few documents).
        verify: remove each document (and each sentence's cited documents, and all of them) and measure the
            answer's log-probability: the leave-one-out check, a verdict per answer sentence and which document
            carried each answer word (`word_documents`) (3 + documents forwards, each from the first token it does
            not share with one run before).
        thresholds: (low, high) margins in nats for the verdicts (see `rag.verdicts`; `rag.calibrate` makes them
            for your model). None: the thresholds shipped for this model (found by its weights' fingerprint; the zoo
            rag model and SmolLM2-135M-Instruct have them); for any other model the verdicts say "uncalibrated" and keep
            their margins, since nats do not carry over between models.
        shapley: also give each document's Shapley value for each answer sentence (`result.shapley`), by removing
            documents: exact from all 2^D subsets of documents when 2^D <= shapley_budget forwards (shared with
            `verify`'s), else estimated from sampled orders (seeded, with standard errors, `exact=False`).
        retriever: (encoder, tokenizer) of a bi-encoder; explains each document's similarity to the question.
        max_new_tokens: the most tokens to generate when `answer` is None; an answer cut by it before it ended
            is flagged `result.truncated`.
        max_sentences: the generated answer ends at the model's end of turn, at the end of its first paragraph
            (a blank line) or after this many sentences, whichever comes first (None: no sentence budget).
        language: the documents' and answer's language for sentence splitting (an ISO 639-1 code such as "de");
            None: detected from the text.
        internal_batch_size: path points per forward (None: as many as memory holds), and prompts per removal
            forward (None: one; on a GPU give more, the subsets known in advance then share forwards).
        memory_budget, recompute: as for `Attributor`: the bytes one chunk of path points may use (default: a
            share of the available memory), and whether decoder layers are recomputed in the backward (default:
            only where a point would not fit otherwise; long prompts).
        show_progress: progress bars on long work, as for `Attributor`.
    """
    if granularity not in GRANULARITIES:
        raise UnknownNameError(f"unknown granularity {granularity!r}; choose one of {list(GRANULARITIES)}.")
    if scope not in SCOPES:
        raise UnknownNameError(f"unknown scope {scope!r}; choose one of {list(SCOPES)}.")
    if sentence_documents is not None and (isinstance(sentence_documents, bool) or not isinstance(sentence_documents, int)
                                           or sentence_documents < 1):
        raise InvalidInputError(f"sentence_documents must be a positive integer or None, got {sentence_documents!r}.")
    if reading == "answer" and scope != "documents":
        raise InvalidInputError("reading='answer' measures what the question and answer read from the documents, "
                                "so it needs scope='documents'; use reading='full' with scope='prompt'.")
    check_removal(model, removal)
    started = time.perf_counter()
    docs = as_documents(documents)
    check_budget(shapley_budget, len(docs), "shapley_budget")
    if thresholds is not None:
        thresholds = check_thresholds(thresholds)
    elif removal == "rerun":  # the shipped thresholds were calibrated on reruns
        thresholds = calibrated_thresholds(model)
    if max_sentences is not None and (isinstance(max_sentences, bool) or not isinstance(max_sentences, int)
                                      or max_sentences < 1):
        raise InvalidInputError(f"max_sentences must be a positive integer or None, got {max_sentences!r}.")
    if language is not None and not (isinstance(language, str) and re.fullmatch(r"[A-Za-z]{2,3}([-_][A-Za-z0-9]+)*", language)):
        raise InvalidInputError(f"language must be an ISO 639 code such as 'en', 'de' or 'ja' (or None to detect it), "
                                f"got {language!r}.")
    layout = resolve_template(template, tokenizer)
    built = build_prompt(tokenizer, question, docs, layout, system=system, language=language)
    attributor = Attributor(model, tokenizer, internal_batch_size=internal_batch_size, show_progress=show_progress,
                            memory_budget=memory_budget, recompute=recompute)
    n_prompt = check_fits(attributor, built, docs, 0 if answer is not None else max_new_tokens)
    if reading == "full" and n_prompt > LONG_PROMPT:
        warnings.warn(f"the prompt has {n_prompt} tokens: with reading='full' every one of them runs along the "
                      "integration path, which takes minutes per gradient evaluation on a CPU at this length; "
                      "reading='answer' ranks the documents from a cache of them in a fraction of that (a narrower "
                      "question: see the RAG guide, 'Long prompts').", stacklevel=2)
    truncated = False
    with progress(show_progress) as bar:  # one bar for the whole call: generation, attribution, removals
        bar.phase("generating" if answer is None else "reading the answer")
        if answer is None:
            answer, truncated = generate_answer(attributor, built.prompt, max_new_tokens, max_sentences, language)
        seq = attributor.sequence(built.prompt, answer=answer)
        answer_ids = seq.target_ids.tolist()
        runs, spans = answer_sentences(seq, language)
        words = answer_words(seq)
        params: dict[str, Any] = dict(method=method, space=default_space(method) if space is None else space,
                                      reading=reading, **method_params)
        if reading == "answer":  # the readers begin after the last document, whichever documents move
            params["readers_after"] = built.document_spans[-1][1]
        fine, ranking_scores, coarse_cost = list(range(len(docs))), None, {}
        if sentence_documents is not None and sentence_documents < len(docs):
            if scope != "documents":
                raise InvalidInputError("sentence_documents ranks the documents first and moves only the top ones, "
                                        "so it needs scope='documents'; pass sentence_documents=None with "
                                        "scope='prompt'.")
            coarse = attributor.explain(built.prompt, answer_ids, attribute_to=built.document_spans, target="answer",
                                        **params)
            ranking_scores = coarse.aggregate(built.document_spans).scores[0]
            fine = sorted(ranking_scores.argsort(descending=True)[:sentence_documents].tolist())
            coarse_cost = coarse.cost
        if scope == "documents":
            params["attribute_to"] = [built.document_spans[d] for d in fine]
        if granularity != "token":
            params.update(target="answer", answer_segments=runs if granularity == "sentence" else None)
        explanation = attributor.explain(built.prompt, answer_ids, **params)
        result = RagExplanation(
            question=question, documents=docs, answer=seq.text[len(built.text):], explanation=explanation,
            granularity=granularity, document_spans=built.document_spans, sentence_spans=built.sentence_spans,
            question_span=built.question_span, answer_sentences=runs, answer_sentence_spans=spans, scope=scope,
            truncated=truncated, reading=reading, removal=removal, ranking_scores=ranking_scores,
            sentence_documents=None if ranking_scores is None else fine,
        )
        ablation_forwards = ablation_tokens = 0
        if verify or shapley:
            exact = shapley and 2 ** len(docs) <= shapley_budget  # every subset runs: the progress bar knows its total
            with counting_forwards(model) as forwards, counting_forwards(model, tokens=True) as tokens:
                bar.phase("verifying documents (removing subsets)", total=2 ** len(docs) if exact else None)
                subsets = DocumentSubsets(attributor, question, docs, layout, answer_ids, runs, system, bar.advance,
                                          removal=removal)
                if shapley:  # first: with every subset, verify's are among them
                    result.shapley = document_shapley(subsets.stack, len(docs), budget=shapley_budget)
                if verify:
                    result.verdicts, result.leave_one_out = check(subsets, result, thresholds)
                    result.answer_words, result.word_leave_one_out = word_leave_one_out(subsets, words)
            ablation_forwards, ablation_tokens = forwards[0], tokens[0]
            if removal == "hidden":
                explanation.notes.append(HIDDEN_NOTE + (" Verdicts give their margins only: the shipped thresholds "
                                                        "were calibrated on reruns." if verify and thresholds is None
                                                        else ""))
    if retriever is not None:
        from .retriever import rank_and_explain

        encoder, encoder_tokenizer = retriever
        result.retrieval = [r.to_dict() for r in rank_and_explain(encoder, encoder_tokenizer, question,
                                                                   [d.text for d in docs])]
    result.cost = {**summed_cost(explanation.cost, coarse_cost), "n_forward_ablation": ablation_forwards,
                   "n_tokens_ablation": ablation_tokens,
                   "seconds": time.perf_counter() - started}
    return result


def default_space(method: str) -> str | None:
    """The mask space where the method has one, else attention where it has that, else the method's own default."""
    spaces = get_method(method).spaces
    return next((space for space in ("mask", "attention") if space in spaces), None)


def resolve_template(template: Template | str | None, tokenizer=None) -> Template:
    """The layout asked for; None: the default chat layout, or the plain one (which ends in "Answer:", so the
    answer follows a cue, not the question mark) for a tokenizer without a chat template (e.g. a base model)."""
    if template is None and tokenizer is not None and not getattr(tokenizer, "chat_template", None):
        return TEMPLATES["plain"]
    if template is None or isinstance(template, Template):
        return template or Template()
    if isinstance(template, str):
        return TEMPLATES[template] if template in TEMPLATES else Template(prompt=template)
    raise InvalidInputError(f"template must be a Template, a name in {sorted(TEMPLATES)} or a string, "
                            f"got {type(template).__name__}.")


def check_fits(attributor: Attributor, built, documents, n_answer: int) -> int:
    """The prompt's tokens; prompts beyond the model's context are refused before any work, naming the documents
    that take the room."""
    limit = context_length(attributor.model, attributor.tokenizer)
    tokenizer = attributor.tokenizer
    n_prompt = len(tokenizer(built.text, add_special_tokens=isinstance(built.prompt, str))["input_ids"])
    if n_prompt + n_answer > limit:
        sizes = sorted(((len(tokenizer(d.text, add_special_tokens=False)["input_ids"]), i) for i, d in enumerate(documents)),
                       reverse=True)
        listed = ", ".join(f"document {i}: {n} tokens" for n, i in sizes[:5])
        raise InvalidInputError(
            f"the prompt needs {n_prompt} tokens{f' plus {n_answer} for the answer' if n_answer else ''}, "
            f"{n_prompt + n_answer - limit} more than the model's context of {limit} ({listed}); drop or shorten "
            "documents, or lower max_new_tokens."
        )
    return n_prompt


def answer_sentences(seq, language: str | None = None) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The answer's sentences as token runs [start, end) covering every answer token, and their character spans.

    A token belongs to the sentence its first character falls in (a token of spaces between two sentences goes
    with the next); sentences no token starts in are merged away."""
    first = seq.offsets[seq.n_prompt][0]
    answer = seq.text[first:]
    sentences = [(first + a, first + b) for a, b in split_sentences(answer, language)] or [(first, len(seq.text))]
    owner = []
    for start, _ in seq.offsets[seq.n_prompt:]:
        owner.append(next((k for k, (_, b) in enumerate(sentences) if start < b), len(sentences) - 1))
    runs, spans = [], []
    for t, k in enumerate(owner):
        if runs and owner[t - 1] == k:
            runs[-1] = (runs[-1][0], t + 1)
        else:
            runs.append((t, t + 1))
            spans.append(sentences[k])
    return runs, spans


def answer_words(seq) -> list[tuple[tuple[int, int], list[int]]]:
    """The answer's words: (character span, answer token indices) for each word (letters and digits, with the
    hyphens, apostrophes and separators inside them: "Jean-Paul", "3,776"). A token belongs to the word holding
    its first non-space character (a byte-level " Kil" and "imanjaro" make one word); punctuation and special
    tokens belong to none."""
    first = seq.offsets[seq.n_prompt][0]
    text = seq.text
    spans = [(first + m.start(), first + m.end()) for m in re.finditer(r"\w+(?:[-'’.,:]\w+)*", text[first:])]
    members: dict[int, list[int]] = {}
    for t, (start, end) in enumerate(seq.offsets[seq.n_prompt:]):
        piece = text[start:end]
        at = start + len(piece) - len(piece.lstrip())
        w = next((k for k, (a, b) in enumerate(spans) if a <= at < b), None)
        if end > start and piece.strip() and w is not None:
            members.setdefault(w, []).append(t)
    return [(spans[w], tokens) for w, tokens in sorted(members.items())]


def word_leave_one_out(subsets: DocumentSubsets, words) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """The answer words' spans and (words, documents) nats each word loses when one document alone is removed, from
    the removals leave-one-out already ran."""
    drops = subsets.token_leave_one_out()
    table = torch.stack([drops[tokens].sum(0) for _, tokens in words]) if words else drops.new_zeros(0, drops.shape[1])
    return [span for span, _ in words], table


def summed_cost(cost: dict[str, Any], coarse: dict[str, Any]) -> dict[str, Any]:
    """The attribution's cost with the coarse ranking's added (its counts and seconds, kept apart too)."""
    if not coarse:
        return dict(cost)
    added = {key: cost[key] + coarse[key] for key in ("n_forward", "n_backward", "n_forward_all", "seconds")
             if key in cost and key in coarse}
    return {**cost, **added, **{f"ranking_{key}": coarse[key] for key in added}}


def check(subsets: DocumentSubsets, result: RagExplanation, thresholds: tuple[float, float]):
    """Verdicts per answer sentence and the leave-one-out table (sentences, documents), from removing documents:
    each document alone (every one, also under coarse to fine: removals are exact and share their prefixes, so
    the table never has a hole), the cited ones, all of them."""
    n_documents = len(subsets.documents)
    everyone = list(range(n_documents))
    by_doc = result.sentence_document_scores()
    citing = [[d for d, _ in cited_documents(by_doc[min(s, len(by_doc) - 1)])]
              for s in range(len(result.answer_sentences))]
    # asked together, so the cited documents' removals share their forwards' prefixes with leave-one-out's
    removals = [everyone, *([d for d in everyone if d != left] for left in everyone), [],
                *([d for d in everyone if d not in cited] for cited in citing if cited)]
    values = subsets.stack(removals)
    full, none = values[0], values[n_documents + 1]
    leave_one_out = subsets.members.T @ subsets.token_leave_one_out()  # (S, D)
    drop_all = full - none  # (S,) every document removed
    verdicts = []
    for s, cited in enumerate(citing):
        drop_cited = float(full[s] - subsets.without(cited)[s]) if cited else 0.0
        others = [d for d in range(n_documents) if d not in cited]
        drop_other = float(leave_one_out[s, others].clamp_min(0).mean()) if others else 0.0
        drop_alone = float(leave_one_out[s, others].max()) if others else None
        verdicts.append(judge(drop_cited, drop_other, thresholds, cited=bool(cited), drop_all=float(drop_all[s]),
                              drop_alone=drop_alone))
    return verdicts, leave_one_out
