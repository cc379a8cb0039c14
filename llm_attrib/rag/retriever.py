"""Why a bi-encoder retriever ranked a document: Integrated Gradients of the query-document similarity.

A sentence-transformers-style bi-encoder (a base encoder loaded with `transformers.AutoModel`, mean or CLS
pooling, optional L2 normalisation) scores a document by sim(q, d) = cos(E(query), E(document)) (or the dot
product without normalisation). One straight path moves the document's word embeddings (by default; or the
query's, or both at once) from their baselines (content tokens at the [PAD] embedding by default, [CLS]/[SEP]
kept) to the real embeddings, the other text staying real. The path's point is the concatenation of both sides
(Lq + Ld, D); the shared engine (`core.guided`) integrates it with score-guided nodes, so

    sum(query_scores) + sum(document_scores) = sim(q, d) - sim(start_q, start_d)

up to the reported `completeness_error`: with the default, what the document's words add to this query's match. Position and token-type embeddings are added inside the model, so the
attribution is to the word embeddings, which is what a reader can change.

A cross-encoder re-ranker (a `*ForSequenceClassification` model reading "query [SEP] document") needs no code
here: `llm_attrib.Attributor(model, tokenizer).explain(f"{query} [SEP] {document}", target_class=...)`.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .. import __version__
from ..attributor import convergence
from ..core.engine import check_finite
from ..core.guided import SCORE_GUIDED, Run, guided_integral
from ..core.memory import budget_bytes, checked_optional, measured_chunk, saved_bytes
from ..core.model_kind import context_length, is_classifier
from ..core.paths import Routes
from ..core.placement import compute_dtype, input_device
from ..core.quadrature import checked_steps
from ..core.sequence import readable_tokens, special_token_mask
from ..core.spaces import EmbeddingSpace
from ..errors import InvalidInputError, UnknownNameError
from ..explanation import _jsonable, _none_to_nan
from ..patching import frozen

POOLINGS = ("mean", "cls")
MOVES = ("both", "document", "query")
BASELINE_TOKENS = {"pad": "pad_token_id", "unk": "unk_token_id", "mask": "mask_token_id"}
BASELINES = (*BASELINE_TOKENS, "zeros")


@dataclass
class _Side:
    """One text as the encoder sees it: ids (1, L), character offsets, readable tokens, special-token mask (L,)."""

    text: str
    ids: torch.Tensor
    offsets: list[tuple[int, int]]
    tokens: list[str]
    keep: torch.Tensor

    @property
    def length(self) -> int:
        return self.ids.shape[1]


@dataclass
class RetrievalExplanation:
    """Why a bi-encoder scored `document` as it did for `query`: a score per token of both texts.

    Attributes:
        query, document: the texts; offsets index into them.
        query_tokens, document_tokens: readable tokens, special tokens ([CLS], [SEP]) included.
        query_offsets, document_offsets: (start, end) character span of each token ((0, 0) for special tokens).
        query_scores (Lq,), document_scores (Ld,): attribution of each token's word embedding to the similarity.
        similarity: sim(q, d), cosine when normalize=True, else the dot product of the pooled embeddings.
        baseline_similarity: sim at the path's start (both texts' content tokens at the baseline).
        completeness_error: |sum of all scores - (similarity - baseline_similarity)| / |similarity - baseline_similarity|.
        converged: completeness_error within the tolerance (1% when run without one).
        rank: 1 for the most similar document of a `rank_and_explain` call; None for a single explanation.
        n_steps: gradient evaluations the integral used (score-guided, refined until converged).
        cost: n_forward / n_backward (path points; each runs the query and the document), seconds.
        params: pooling, normalize, baseline, tolerance, ... that produced the scores.
        model_name, library_version: provenance.
    """

    query: str
    document: str
    query_tokens: list[str]
    query_offsets: list[tuple[int, int]]
    query_scores: torch.Tensor
    document_tokens: list[str]
    document_offsets: list[tuple[int, int]]
    document_scores: torch.Tensor
    similarity: float
    baseline_similarity: float
    completeness_error: float
    converged: bool | None
    rank: int | None = None
    n_steps: int | None = None
    cost: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    query_markup: list[bool] = field(default_factory=list)
    document_markup: list[bool] = field(default_factory=list)
    model_name: str = ""
    library_version: str = __version__

    def top_query_tokens(self, k: int = 5, include_markup: bool = False) -> list[tuple[str, float]]:
        """The k query tokens that raised the similarity most (special tokens left out by default)."""
        return _top(self.query_tokens, self.query_scores, self.query_markup, k, include_markup)

    def top_document_tokens(self, k: int = 5, include_markup: bool = False) -> list[tuple[str, float]]:
        """The k document tokens that raised the similarity most (special tokens left out by default)."""
        return _top(self.document_tokens, self.document_scores, self.document_markup, k, include_markup)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tensors as lists, NaN as null), for `json.dumps(..., allow_nan=False)`."""
        return {key: _jsonable(value) for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RetrievalExplanation":
        """The explanation `to_dict` wrote."""
        needed = {"query", "document", "query_tokens", "query_offsets", "query_scores", "document_tokens",
                  "document_offsets", "document_scores", "similarity", "baseline_similarity", "completeness_error",
                  "converged"}
        missing = sorted(needed - set(data)) if isinstance(data, dict) else sorted(needed)
        if missing:
            raise InvalidInputError(f"this is not a retrieval explanation: it lacks {missing}; pass what to_dict() wrote.")
        data = dict(data)
        for key in ("query_scores", "document_scores"):
            data[key] = torch.tensor(_none_to_nan(data[key]), dtype=torch.float32)
        for key in ("similarity", "baseline_similarity", "completeness_error"):
            data[key] = _none_to_nan(data[key])
        for key in ("query_offsets", "document_offsets"):
            data[key] = [tuple(o) for o in data[key]]
        return cls(**data)


def _top(tokens: list[str], scores: torch.Tensor, markup: list[bool], k: int,
         include_markup: bool) -> list[tuple[str, float]]:
    eligible = [i for i in range(len(tokens)) if include_markup or not (markup and markup[i])]
    ordered = sorted(eligible, key=lambda i: -float(scores[i]) if not math.isnan(scores[i]) else math.inf)  # NaN last
    return [(tokens[i], float(scores[i])) for i in ordered[:k]]


def explain_retrieval(
    model,
    tokenizer,
    query: str,
    document: str,
    *,
    pooling: str = "mean",
    normalize: bool = True,
    baseline: str | int = "pad",
    move: str = "document",
    n_steps: int = 32,
    tolerance: float | None = 0.01,
    max_steps: int = 512,
    n_probes: int = 32,
    internal_batch_size: int | None = None,
    memory_budget: int | None = None,
    show_progress: bool = False,
) -> RetrievalExplanation:
    """Explain a bi-encoder's similarity between `query` and `document`, token by token on both sides.

    Args:
        model: the encoder (`AutoModel.from_pretrained(...)`, e.g. a BertModel), in eval mode; its parameters
            are frozen for the call and restored afterwards.
        tokenizer: its fast tokenizer (character offsets).
        query, document: the two texts, each within the encoder's maximum length.
        pooling: "mean" (over the attention mask, sentence-transformers' default) or "cls".
        normalize: L2-normalise the pooled embeddings, so the similarity is their cosine; else the dot product.
        baseline: where content tokens start: "pad" (the [PAD] embedding, default), "unk", "mask", "zeros", or a
            token id. Special tokens ([CLS], [SEP]) stay at their real embeddings.
        move: which text the path moves: "document" (default: the query stays real, so the scores say what each
            document token adds to this query's match and sum to sim(q, d) - sim(q, blank d)), "query" (the reverse),
            or "both" (sum: sim(q, d) - sim(blank q, blank d); two blank texts look alike to an encoder, about 0.8-0.9
            on all-MiniLM-L6-v2, so most scores come out negative)
        n_steps: gradient evaluations to start with (4 per panel of the score-guided rule, plus one).
        tolerance: relative completeness error to refine to (None: no refinement).
        max_steps: gradient evaluations at most.
        n_probes: forward-only probe intervals that place the nodes.
        internal_batch_size: path points per forward; None: as many as `memory_budget` holds at the bytes one
            point keeps, measured on the model (at most 64).
        memory_budget: bytes the path points may use (default: 70% of the device's free memory).
        show_progress: a progress bar on work longer than a second.

    Returns:
        A `RetrievalExplanation` with scores of both texts; their sum is the similarity minus the baseline's.

    Example:
        >>> from transformers import AutoModel, AutoTokenizer
        >>> model, tokenizer = AutoModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
        >>> exp = explain_retrieval(model, tokenizer, "capital of France?", "Paris is the capital of France.")
        >>> exp.top_document_tokens(3)
    """
    started = time.perf_counter()
    check_encoder(model)
    if pooling not in POOLINGS:
        raise UnknownNameError(f"unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}.")
    if move not in MOVES:
        raise UnknownNameError(f"unknown move {move!r}; expected one of {', '.join(MOVES)}.")
    if tolerance is not None and not tolerance > 0:
        raise InvalidInputError(f"tolerance must be positive (or None for a fixed n_steps), got {tolerance}.")
    checked_steps(n_steps)
    checked_steps(max_steps, "max_steps", cap=None)
    checked_steps(n_probes, "n_probes")
    checked_optional(internal_batch_size, "internal_batch_size")
    checked_optional(memory_budget, "memory_budget")
    if not getattr(tokenizer, "is_fast", False):
        raise InvalidInputError("llm-attrib needs a fast tokenizer (for character offsets); load it with use_fast=True.")
    device = input_device(model)
    q = _encode(tokenizer, query, "query", context_length(model, tokenizer), device)
    d = _encode(tokenizer, document, "document", context_length(model, tokenizer), device)
    embed = model.get_input_embeddings()
    with torch.no_grad():
        x = torch.cat([embed(q.ids)[0], embed(d.ids)[0]]).float()  # (Lq + Ld, D)
    fixed = torch.cat([q.keep | (move == "document"), d.keep | (move == "query")])  # kept at their real embeddings
    start = _baseline(baseline, tokenizer, embed, torch.cat([q.ids[0], d.ids[0]]), fixed, x)
    with frozen(model), torch.enable_grad():  # frozen() refuses a model in training mode
        check_bidirectional(model, q.ids)
        scores = _similarity_scores(model, q.length, d.length, pooling, normalize)
        batch = measured_chunk(saved_bytes(scores, x, model), budget_bytes(model, memory_budget), internal_batch_size,
                               f"one path point of {q.length + d.length} query and document tokens")
        run = Run(scores, EmbeddingSpace().reduce, batch, show_progress)
        routes = Routes(torch.stack([start, x]).unsqueeze(0))  # (1 route, 2 vertices, Lq + Ld, D)
        integral, used = guided_integral(run, routes, lambda route: [0], 1, n_steps, tolerance, max_steps, n_probes)
    tokens = integral.tokens[0, 0].detach().cpu()  # (Lq + Ld,)
    check_finite(tokens, "attribution scores (retrieval)")
    error = integral.completeness_error()[0]  # (1,)
    return RetrievalExplanation(
        query=query,
        document=document,
        query_tokens=q.tokens,
        query_offsets=q.offsets,
        query_scores=tokens[: q.length],
        document_tokens=d.tokens,
        document_offsets=d.offsets,
        document_scores=tokens[q.length:],
        similarity=float(integral.f_end[0]),
        baseline_similarity=float(integral.f_start[0, 0]),
        completeness_error=float(error[0]),
        converged=convergence(error.cpu(), tolerance, "retrieval IG"),
        n_steps=int(used[0, 0]),
        cost={"n_forward": integral.n_forward, "n_backward": integral.n_backward, "internal_batch_size": batch,
              "seconds": time.perf_counter() - started},
        params={"pooling": pooling, "normalize": normalize, "baseline": baseline, "move": move, "quadrature": SCORE_GUIDED,
                "n_steps": n_steps, "tolerance": tolerance, "max_steps": max_steps, "n_probes": n_probes},
        query_markup=q.keep.tolist(),
        document_markup=d.keep.tolist(),
        model_name=getattr(model.config, "_name_or_path", "") or type(model).__name__,
    )


def rank_and_explain(
    model,
    tokenizer,
    query: str,
    documents: list[str],
    top_k: int | None = None,
    **kwargs: Any,
) -> list[RetrievalExplanation]:
    """Rank `documents` by similarity to `query` as the retriever would, and explain the top `top_k` (default all).

    The ranking costs one forward per document; only the explained documents pay for an integral.

    Args:
        documents: the candidate texts.
        top_k: how many of the best-ranked documents to explain (None: all).
        **kwargs: `explain_retrieval`'s options (pooling, normalize, baseline, n_steps, tolerance, ...).

    Returns:
        Explanations in rank order, most similar first, each with its `rank` (1 = most similar).
    """
    if isinstance(documents, str) or not isinstance(documents, (list, tuple)) or not documents:
        raise InvalidInputError("documents must be a non-empty list of texts (one string per candidate document).")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise InvalidInputError(f"top_k must be a positive integer or None, got {top_k!r}.")
    similarities = similarity(model, tokenizer, query, list(documents), pooling=kwargs.get("pooling", "mean"),
                              normalize=kwargs.get("normalize", True))
    order = sorted(range(len(documents)), key=lambda i: -float(similarities[i]))
    explained = []
    for rank, i in enumerate(order[:top_k], start=1):
        explanation = explain_retrieval(model, tokenizer, query, documents[i], **kwargs)
        explanation.rank = rank
        explained.append(explanation)
    return explained


def similarity(model, tokenizer, query: str, documents: list[str], *, pooling: str = "mean",
               normalize: bool = True) -> torch.Tensor:
    """The retriever's similarity of `query` to each document (N,), forward only (what ranking uses)."""
    check_encoder(model)
    if pooling not in POOLINGS:
        raise UnknownNameError(f"unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}.")
    if model.training:
        raise InvalidInputError(
            f"{type(model).__name__} is in training mode (dropout is active, so similarities would be random). "
            "Call model.eval() before explaining."
        )
    limit = context_length(model, tokenizer)
    device = input_device(model)
    q = _encode(tokenizer, query, "query", limit, device)
    sides = [_encode(tokenizer, text, f"document {i}", limit, device) for i, text in enumerate(documents)]
    with torch.no_grad():
        embed = model.get_input_embeddings()
        q_pooled = _pooled(model, embed(q.ids), pooling, normalize)  # (1, D)
        d_pooled = torch.cat([_pooled(model, embed(side.ids), pooling, normalize) for side in sides])  # (N, D)
    values = (d_pooled * q_pooled).sum(-1).float()
    check_finite(values, "similarities")
    return values.cpu()


def check_encoder(model) -> None:
    """Refuse models that are not a bare encoder, saying what to do with them instead."""
    name = type(model).__name__
    if is_classifier(model):
        raise InvalidInputError(
            f"{name} is a classifier (a cross-encoder re-ranker reads query and document together), not a bi-encoder. "
            "Explain it with llm_attrib.Attributor(model, tokenizer).explain(f'{query} [SEP] {document}', "
            "target_class=...); explain_retrieval takes the bare encoder (AutoModel.from_pretrained) of a "
            "sentence-transformers-style retriever."
        )
    if name.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) or getattr(model.config, "is_decoder", False):
        raise InvalidInputError(
            f"{name} is a causal language model, not a bi-encoder. To explain what it generates use "
            "llm_attrib.Attributor(model, tokenizer).explain(prompt); explain_retrieval takes the encoder of a "
            "sentence-transformers-style retriever loaded with AutoModel.from_pretrained."
        )
    if re.search(r"For[A-Z]", name):
        raise InvalidInputError(
            f"{name} has a task head; explain_retrieval takes the bare encoder of a sentence-transformers-style "
            "retriever (AutoModel.from_pretrained(path), e.g. BertModel), whose pooled hidden states are the embedding."
        )


def check_bidirectional(model, ids: torch.Tensor) -> None:
    """Refuse a bare decoder (e.g. LlamaModel): checked, not assumed, changing the last token must change the first
    token's hidden state, as it does in an encoder."""
    if ids.shape[1] < 2:
        return
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % model.get_input_embeddings().num_embeddings
    with torch.no_grad():
        first = [model(input_ids=i).last_hidden_state[0, 0].float() for i in (ids, changed)]
    if torch.equal(first[0], first[1]):
        raise InvalidInputError(
            f"{type(model).__name__} is a causal (decoder) model: its first position ignores later tokens, so mean or "
            "CLS pooling does not embed the text as a bi-encoder does. Use the encoder of a sentence-transformers-style "
            "retriever; to explain a language model's generation use llm_attrib.Attributor."
        )


def _encode(tokenizer, text: str, what: str, limit: int, device: torch.device) -> _Side:
    if not isinstance(text, str):
        raise InvalidInputError(f"the {what} must be a string, got {type(text).__name__}.")
    if not text.strip():
        raise InvalidInputError(f"the {what} is empty; give some text to explain.")
    encoding = tokenizer(text, return_offsets_mapping=True)
    ids, offsets = list(encoding["input_ids"]), [tuple(o) for o in encoding["offset_mapping"]]
    if len(ids) > limit:
        raise InvalidInputError(
            f"the {what} has {len(ids)} tokens, {len(ids) - limit} more than the encoder's maximum of {limit}; split it "
            f"into passages of at most {limit} tokens (as the retriever's index should), or shorten it."
        )
    return _Side(text, torch.tensor([ids], device=device), offsets, readable_tokens(tokenizer, ids, text, offsets),
                 special_token_mask(tokenizer, ids).to(device))


def _baseline(spec: str | int, tokenizer, embed: torch.nn.Embedding, ids: torch.Tensor, keep: torch.Tensor,
              x: torch.Tensor) -> torch.Tensor:
    """(L, D): special tokens at their real embeddings, content tokens at the baseline token's (or zero)."""
    if isinstance(spec, bool) or not isinstance(spec, (str, int)):
        raise InvalidInputError(f"baseline must be one of {', '.join(BASELINES)} or a token id, got {spec!r}.")
    if spec == "zeros":
        return torch.where(keep[:, None], x, torch.zeros_like(x))
    if isinstance(spec, str):
        if spec not in BASELINE_TOKENS:
            raise UnknownNameError(f"unknown baseline {spec!r}; expected one of {', '.join(BASELINES)}, or a token id.")
        token = getattr(tokenizer, BASELINE_TOKENS[spec], None)
        if token is None:
            raise InvalidInputError(f"the tokenizer has no {spec} token; choose another baseline ({', '.join(BASELINES)}).")
    else:
        token = spec
    if not 0 <= token < embed.num_embeddings:
        raise InvalidInputError(f"baseline token id {token} is outside the vocabulary [0, {embed.num_embeddings}).")
    with torch.no_grad():
        return embed(torch.where(keep, ids, torch.full_like(ids, token))).float()


def _pooled(model, embeds: torch.Tensor, pooling: str, normalize: bool) -> torch.Tensor:
    """Sentence embeddings (B, D) of unpadded texts given as input embeddings (B, L, D)."""
    dtype = compute_dtype(model)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)  # (B, L)
    hidden = model(inputs_embeds=embeds.to(dtype), attention_mask=mask).last_hidden_state.float()  # (B, L, D)
    pooled = hidden[:, 0] if pooling == "cls" else hidden.mean(1)  # no padding: the masked mean is the mean
    return F.normalize(pooled, dim=-1) if normalize else pooled


def _similarity_scores(model, n_query: int, n_document: int, pooling: str, normalize: bool):
    """points (B, Lq + Ld, D) -> similarities (B, 1), each point's query half against its document half.

    Texts of equal length run as one batch; otherwise one call each, because padding the shorter text to share a
    call costs more than the second call saves (measured on a CPU, forward and backward of 16 points).
    """

    def scores(points: torch.Tensor) -> torch.Tensor:
        query, document = points[:, :n_query], points[:, n_query:]  # (B, Lq, D), (B, Ld, D)
        if n_query == n_document:
            q, d = _pooled(model, torch.cat([query, document]), pooling, normalize).split(points.shape[0])
        else:
            q, d = _pooled(model, query, pooling, normalize), _pooled(model, document, pooling, normalize)
        return (q * d).sum(-1, keepdim=True)  # (B, 1)

    return scores
