"""`Attributor`: the thin stateful front. It prepares the sequence, patches the model for the duration of one
explanation, runs a method, and packages the result as an `Explanation`."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import time
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

import torch

from . import __version__, parallel
from .core.chat import outside_spans, render_chat
from .core.engine import check_finite
from .core.gradient_flow import check_gradients
from .core.memory import (MAX_CHUNK, SHORT_PROMPTS, TRANSIENT_FACTOR, budget_bytes, bytes_at, checked_optional,
                          fitting_points, length_polynomial, measured_chunk, saved_bytes)
from .core.model_kind import context_length, is_classifier
from .core.placement import check_placement, compute_dtype, input_device
from .core.progress import progress
from .core.sequence import Sequence, build_sequence, check_segments, readable_tokens, special_token_mask
from .core.spaces import make_space
from .core.targets import Target, resolve_target
from .errors import ConvergenceWarning, InvalidInputError, UnknownNameError, UnsupportedModelError
from .explanation import Explanation
from .methods import Problem, get_method
from .metrics._perturb import target_probabilities
from .patching import loaded_implementation, own_attention, prepared, recomputed

Prompt = str | list[dict[str, str]]


def describe(value: Any) -> Any:
    """A JSON-friendly record of a parameter: tensors by shape, callables by name, collections by size."""
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}"
    if callable(value):
        return getattr(value, "__name__", type(value).__name__)
    if isinstance(value, (list, tuple)) and not all(isinstance(v, (int, float, str)) for v in value):
        return f"{type(value).__name__} of {len(value)}"
    if hasattr(value, "num_rows"):
        return f"dataset of {value.num_rows}"
    return value


# Per model, what a path point keeps for its backward as a function of prompt length (see _bytes_per_point):
# shared by every Attributor of the model, so a new one (rag.explain makes one per call) does not measure again.
MEASURED_BYTES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Models whose layers were checked to pass gradients (check_gradients), once per model for the same reason.
GRADIENTS_CHECKED: weakref.WeakSet = weakref.WeakSet()


# The counters open in this context (thread or task): a model's forward counts only for the call that runs it.
_COUNTERS: contextvars.ContextVar[tuple[list[int], ...]] = contextvars.ContextVar("llm_attrib_counters", default=())


@contextlib.contextmanager
def counting_forwards(model, tokens: bool = False) -> Iterator[list[int]]:
    """Counts the sequences the model runs forward inside the block in the calling thread or task (a batch of B
    counts B), or with `tokens` the tokens they ran (padding included; tokens whose keys and values came from a
    cache are not run), as `count[0]`: the whole cost of a call, its checks and memory probe included, which the
    methods' own counts (path points) leave out. Forwards that other threads run on the same model meanwhile are
    not this call's cost."""
    count = [0]

    def add(_module, args, kwargs):
        if not any(counter is count for counter in _COUNTERS.get()):
            return
        inputs = next((v for v in (kwargs.get("input_ids"), kwargs.get("inputs_embeds"), *args)
                       if isinstance(v, torch.Tensor)), None)
        if tokens:
            count[0] += 0 if inputs is None else inputs.shape[:2].numel()
        else:
            count[0] += 1 if inputs is None else inputs.shape[0]

    handle = None
    token = _COUNTERS.set(_COUNTERS.get() + (count,))
    try:
        handle = model.register_forward_pre_hook(add, with_kwargs=True)
        yield count
    finally:
        if handle is not None:
            handle.remove()
        _COUNTERS.reset(token)


def attention_arithmetic(model, hooked: bool) -> str:
    """Which attention arithmetic the explanation's forwards used: the hooked (eager) one in the attention and mask
    spaces, which differs by float rounding from the model as loaded (e.g. sdpa) that generation and the metrics
    run; see docs/guides/models.md."""
    loaded = loaded_implementation(model)
    if not hooked or loaded == "eager":
        return "eager" if hooked else loaded
    return f"eager (hooked; the model as loaded runs {loaded})"


def check_causal(model, ids: list[int]) -> None:
    """Refuse models that see their own targets: with bidirectional attention (BERT's masked LM, or a decoder class
    configured as an encoder) the output at a position depends on later tokens, so 'which inputs carried this
    token' has no causal answer. Checked, not assumed: changing the last token must leave earlier logits alone."""
    name = type(model).__name__
    if getattr(model.config, "is_encoder_decoder", False):
        raise UnsupportedModelError(
            f"{name} is an encoder-decoder model; llm-attrib explains decoder-only causal LMs and sequence classifiers."
        )
    probe = torch.tensor([ids[:8] + [ids[0]]], device=input_device(model))
    changed = probe.clone()
    changed[0, -1] = (probe[0, -1] + 1) % model.get_input_embeddings().num_embeddings
    with torch.no_grad():
        logits = [model(input_ids=x).logits[0, :-1].float() for x in (probe, changed)]
    if not torch.allclose(logits[0], logits[1], atol=1e-4, rtol=1e-3, equal_nan=True):  # NaN: NumericalError later
        raise UnsupportedModelError(
            f"{name} is not a causal language model: its output at a position changes when a later token changes, "
            "so it sees the tokens it would predict and there is no generation to explain. Use a decoder-only LM "
            "(AutoModelForCausalLM), or for classification a *ForSequenceClassification model with target_class=."
        )


def check_unicode(text: str, what: str) -> None:
    """Refuse text with lone surrogates (e.g. undecodable bytes read with surrogateescape): tokenizers reject it
    raw, and a report of it could not be written."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidInputError(
            f"{what} is not valid Unicode: {error.reason} at character {error.start} ({text[error.start]!r}); "
            "decode the source text with errors='replace' or remove the stray surrogate."
        ) from None


class Attributor:
    """Explains a HuggingFace model's outputs token by token.

    Args:
        model: a causal LM or a sequence classifier (any `PreTrainedModel`), in eval mode.
        tokenizer: its tokenizer (a fast tokenizer, for character offsets).
        internal_batch_size: path points per forward pass; default None: as many as `memory_budget` holds at
            the bytes one point of this model, prompt and space keeps (measured once per shape), at most 64.
        memory_budget: bytes the path points of one chunk may use; default 70% of the free memory of the device
            with the least of it among those the model computes on (one device, unless Accelerate spread it).
        show_progress: show a progress bar on work longer than about a second.
        shard_points: under `accelerate launch --multi_gpu` (or torchrun) with several processes, split the gradient
            evaluations of each explanation across them and add the sums (every process must explain the same
            input, e.g. one long prompt); equal to one process up to float rounding.
        recompute: for long prompts: attention through torch's fused kernel (the mask space's too) and each
            decoder layer run again in the backward instead of keeping its activations, so a path point's memory
            grows with L instead of layers x heads x L^2, for about one more forward per backward. Default None:
            only where a path point would not fit the memory budget otherwise; True or False to force. Results
            equal a plain run up to float rounding.

    Example:
        >>> import llm_attrib
        >>> model, tokenizer = llm_attrib.zoo.load("recall")
        >>> attr = llm_attrib.Attributor(model, tokenizer)
        >>> exp = attr.explain("k1 = v3 v8 , k2 = v5 v1 . k2 =>", max_new_tokens=3)
    """

    def __init__(self, model, tokenizer, internal_batch_size: int | None = None, show_progress: bool = True,
                 shard_points: bool = False, memory_budget: int | None = None, recompute: bool | None = None) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise InvalidInputError("llm-attrib needs a fast tokenizer (for character offsets); load it with use_fast=True.")
        self.model = model
        self.tokenizer = tokenizer
        self.internal_batch_size = checked_optional(internal_batch_size, "internal_batch_size")
        self.memory_budget = checked_optional(memory_budget, "memory_budget")
        self.show_progress = show_progress
        self.shard_points = shard_points
        if recompute not in (None, True, False):
            raise InvalidInputError(f"recompute must be True, False or None (only where needed), got {recompute!r}.")
        self.recompute = recompute
        self._causal_checked = False

    @property
    def device(self) -> torch.device:
        """Where inputs go: the embedding's device, or the execution device of Accelerate's hooks."""
        return input_device(self.model)

    @property
    def vocab_size(self) -> int:
        return self.model.get_input_embeddings().num_embeddings

    def _bytes_per_point(self, problem: Problem, gradients: bool = True, recompute: bool = False) -> int:
        """What one path point of this problem keeps for its backward (or, for a method without gradients, the
        explicand in the space, which it holds), measured on the model: directly for a short prompt, else from
        three short prompts once per space and answer shape; with `recompute`, as the forwards run under
        `recomputed` (which the caller has entered)."""
        seq, space = problem.seq, problem.space
        if problem.reader_length and gradients:  # only the readers run along the path: measure one point directly
            return saved_bytes(problem.scores, problem.point(), self.model)
        key = (space.name, repr(getattr(space, "layers", None)), seq.n_targets, seq.n_outputs,
               compute_dtype(self.model), self.device, gradients, recompute)

        def measure(n_prompt: int) -> int:
            keep = torch.cat([torch.arange(n_prompt), torch.arange(seq.n_prompt, seq.length)])
            short = dataclasses.replace(seq, input_ids=seq.input_ids[:, keep], n_prompt=n_prompt, keep=seq.keep[keep])
            if not gradients:
                return space.point(self.model, short).nbytes
            return saved_bytes(lambda points: problem.scores_of(short, points), space.point(self.model, short),
                               self.model, recompute)

        if seq.n_prompt <= SHORT_PROMPTS[-1]:
            return measure(seq.n_prompt)
        measured = MEASURED_BYTES.setdefault(self.model, {})
        if key not in measured:
            measured[key] = length_polynomial(measure)
        return bytes_at(measured[key], seq.n_prompt)

    def _encode_prompt(self, prompt: Prompt) -> tuple[str, list[int], list[tuple[int, int]], list[bool]]:
        """Text, token ids, character offsets, and which tokens are markup (special or chat-template) rather
        than the user's content."""
        if isinstance(prompt, list):
            text, spans = render_chat(self.tokenizer, prompt)
        elif isinstance(prompt, str):
            text, spans = prompt, [(0, len(prompt))]
        else:
            raise InvalidInputError(f"prompt must be a string or a list of chat messages, got {type(prompt).__name__}.")
        check_unicode(text, "the prompt")
        encoding = self.tokenizer(text, add_special_tokens=not isinstance(prompt, list), return_offsets_mapping=True)
        if not text.strip() or not encoding["input_ids"]:
            raise InvalidInputError("the prompt is empty; give some text to explain.")
        ids, offsets = list(encoding["input_ids"]), [tuple(o) for o in encoding["offset_mapping"]]
        special = special_token_mask(self.tokenizer, ids).tolist()
        markup = [s or m for s, m in zip(special, outside_spans(offsets, spans))]
        return text, ids, offsets, markup

    def _check_length(self, n_tokens: int) -> None:
        limit = context_length(self.model, self.tokenizer)
        if n_tokens > limit:
            raise InvalidInputError(
                f"prompt and answer need {n_tokens} tokens but the model's context holds {limit}; "
                "shorten the prompt or lower max_new_tokens."
            )

    def generate(self, prompt_ids: list[int], max_new_tokens: int, **generation_kwargs: Any) -> list[int]:
        """Greedy continuation (generation kwargs pass through), with the model's default attention."""
        ids = torch.tensor([prompt_ids], device=self.device)
        kwargs = {"do_sample": False, "max_new_tokens": max_new_tokens, **generation_kwargs}
        kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
        return out[0, len(prompt_ids):].tolist()

    def sequence(
        self,
        prompt: Prompt,
        answer: str | list[int] | None = None,
        target_class: int | None = None,
        max_new_tokens: int = 16,
        **generation_kwargs: Any,
    ) -> Sequence:
        """Tokenise the prompt and fix the targets: the given answer, the generated one, or the class."""
        check_placement(self.model)
        text, ids, offsets, markup = self._encode_prompt(prompt)
        if is_classifier(self.model):
            if answer is not None:
                raise InvalidInputError(
                    f"{type(self.model).__name__} is a classifier: it explains a class, not an answer; pass "
                    "target_class=<class index> (or nothing, for the predicted class) instead of answer=."
                )
            self._check_length(len(ids))
            n_classes = self.model.config.num_labels
            if target_class is None:
                with torch.no_grad():
                    target_class = int(self.model(input_ids=torch.tensor([ids], device=self.device)).logits.argmax())
            if isinstance(target_class, bool) or not isinstance(target_class, int) or not 0 <= target_class < n_classes:
                raise InvalidInputError(f"target_class must be a class index in [0, {n_classes}), got {target_class!r}.")
            return Sequence(
                input_ids=torch.tensor([ids], device=self.device),
                n_prompt=len(ids),
                target_ids=torch.tensor([target_class], device=self.device),
                text=text,
                offsets=offsets,
                tokens=readable_tokens(self.tokenizer, ids, text, offsets),
                keep=torch.tensor(markup, device=self.device),
                is_classifier=True,
            )
        if target_class is not None:
            raise InvalidInputError("target_class is for sequence classifiers; for a language model pass answer=.")
        if not self._causal_checked:
            check_causal(self.model, ids)
            self._causal_checked = True
        if isinstance(answer, str):
            check_unicode(answer, "the answer")
            answer_ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
            unknown = self.tokenizer.unk_token_id
            if unknown is not None and unknown in answer_ids:
                raise InvalidInputError(
                    f"the answer {answer!r} holds text the tokenizer does not know (it becomes {self.tokenizer.unk_token!r}), "
                    "so the model could never produce it; give an answer in the model's vocabulary."
                )
        elif answer is None:
            if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
                raise InvalidInputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}.")
            self._check_length(len(ids) + max_new_tokens)
            answer_ids = self.generate(ids, max_new_tokens, **generation_kwargs)
        else:
            answer_ids = [int(i) for i in answer]
        self._check_length(len(ids) + len(answer_ids))
        seq = build_sequence(self.tokenizer, text, ids, offsets, answer_ids, self.device, self.vocab_size, markup)
        if isinstance(answer, str):
            self._check_answer_boundary(seq, answer, chat=isinstance(prompt, list))
        return seq

    def _check_answer_boundary(self, seq: Sequence, answer: str, chat: bool) -> None:
        """An answer tokenised on its own must be what the tokenizer makes of prompt + answer; otherwise the
        explained tokens are a split the model would never see (e.g. "Paris" after "is Par")."""
        together = self.tokenizer(seq.text, add_special_tokens=not chat)["input_ids"]
        if together != seq.input_ids[0].tolist():
            alone = seq.tokens[seq.n_prompt:]
            joined = readable_tokens(self.tokenizer, together[seq.n_prompt - 1:])
            raise InvalidInputError(
                f"the answer {answer!r} tokenises as {alone} on its own, but after the prompt the text is tokenised "
                f"differently (... {joined}), so the model would not see these tokens. Move the boundary (e.g. end "
                "the prompt at a word boundary and start the answer with its space), or pass the answer as token "
                "ids to explain exactly those tokens."
            )

    def explain(
        self,
        prompt: Prompt,
        answer: str | list[int] | None = None,
        *,
        method: str = "ig",
        space: str | None = None,
        target: str | Target | None = None,
        foil: int | None = None,
        answer_segments: list[tuple[int, int]] | None = None,
        attribute_to: list[tuple[int, int]] | None = None,
        reading: str = "full",
        readers_after: int | None = None,
        target_class: int | None = None,
        layers: list[int] | int | None = None,
        max_new_tokens: int = 16,
        generation_kwargs: dict[str, Any] | None = None,
        internal_batch_size: int | None = None,
        keep_head_scores: bool = True,
        **method_params: Any,
    ) -> Explanation:
        """Explain every generated (or given) token of `prompt`'s continuation, or a classifier's class.

        Args:
            prompt: text, or chat messages (the tokenizer's chat template is applied).
            answer: the continuation to explain (text or token ids); None generates greedily.
            method: "ig", "saliency", "input_x_gradient", "attention" (see `llm_attrib.METHODS`).
            space: "embeddings", "attention" or "mask" (how visible each token is to attention); default: the
                method's own (attention for rpi and attention, embeddings otherwise).
            target: "log_prob" (LM default), "prob", "logit" (classifier default), "contrastive", "answer"
                (one output: log p(answer | prompt), the whole answer at the cost of one target), or a callable
                (logits (B, T, V), target_ids (T,)) -> (B, T).
            foil: token id contrasted with each target (target="contrastive").
            answer_segments: with target="answer", runs of answer tokens [start, end) explained as one row each
                (e.g. the answer's sentences); default one row for the whole answer.
            attribute_to: character spans of the prompt that the path moves (e.g. the retrieved documents); every
                other token stays at its real value along the path, like markup, so the scores answer "what did
                these spans contribute, given the rest" and sum to f(input) - f(input with the spans blanked).
            reading: "full" (default): every token after a moving one runs along the path. "answer" (space="mask"):
                the prompt up to the last moving token runs once, at the input, and only the tokens after it (the
                question, instructions and answer, in a RAG prompt) see the moving tokens' visibility along the
                path: the scores say what those readers took from each token (what later spans read from earlier
                ones stays in their keys and values), and sum to f(input) minus f with the moving tokens hidden from
                the readers only. Each point then runs only the readers, over the cached keys: for long prompts.
            readers_after: with reading="answer", the character offset in the prompt where the readers begin (the
                first token starting at or after it); default: right after the last attributed token. Tokens between
                hold still at the input, like the prefix (e.g. documents that do not move).
            target_class: the class to explain for classifiers (default: the predicted one).
            layers: attention layers of the attention or mask space (default all; an int or a list).
            max_new_tokens: generation length when `answer` is None.
            generation_kwargs: passed to `model.generate`.
            internal_batch_size: path points per forward (default: the Attributor's).
            keep_head_scores: keep per-layer/per-head scores of attention-space methods.
            **method_params: the method's own parameters, e.g. baseline, n_steps, quadrature, tolerance.

        Returns:
            An `Explanation` with scores of shape (targets, inputs).
        """
        chosen = get_method(method, space)
        space = space or chosen.default_space
        if layers is None and space == "attention":
            layers = getattr(chosen, "default_layers", None)
        the_space = make_space(space, layers)
        if self.model.training:
            raise InvalidInputError(
                f"{type(self.model).__name__} is in training mode (dropout is active, so attributions would be "
                "random). Call model.eval() before explaining."
            )
        batch = checked_optional(self.internal_batch_size if internal_batch_size is None else internal_batch_size,
                                 "internal_batch_size")
        check_placement(self.model)  # before the gradient probe; sequence() checks again for its other callers
        if chosen.uses_gradients and self.model not in GRADIENTS_CHECKED:
            check_gradients(self.model, is_classifier(self.model))
            GRADIENTS_CHECKED.add(self.model)
        with progress(self.show_progress) as bar:
            if answer is None and target_class is None and not is_classifier(self.model):
                bar.phase("generating")
            seq = self.sequence(prompt, answer, target_class, max_new_tokens, **(generation_kwargs or {}))
            rows = len(answer_segments or [0]) if getattr(target, "answer_level", target == "answer") else seq.n_targets
            bar.phase(f"attributing {rows} target{'s' if rows != 1 else ''} ({method}, {space})")
            return self._attribute(seq, chosen=chosen, the_space=the_space, method=method, space=space, target=target,
                                   foil=foil, answer_segments=answer_segments, attribute_to=attribute_to,
                                   reading=reading, readers_after=readers_after, batch=batch,
                                   keep_head_scores=keep_head_scores, method_params=method_params)

    def _attribute(self, seq: Sequence, *, chosen, the_space, method: str, space: str, target, foil,
                   answer_segments, attribute_to, reading: str, readers_after: int | None, batch: int | None,
                   keep_head_scores: bool,
                   method_params: dict[str, Any]) -> Explanation:
        """The attribution of a prepared sequence, under the explanation's progress bar (see `explain`)."""
        markup = seq.keep.clone()
        if attribute_to is not None:
            seq.keep = seq.keep | ~covered(seq, attribute_to)
        readers_from = reader_start(seq, reading, space, readers_after)
        budget = budget_bytes(self.model, self.memory_budget, backward=chosen.uses_gradients)
        n_vocab = self.model.config.num_labels if seq.is_classifier else self.vocab_size
        target_fn = resolve_target(target or ("logit" if seq.is_classifier else "log_prob"), foil, n_vocab)
        if getattr(target_fn, "answer_level", False):
            if seq.is_classifier:
                raise InvalidInputError("target='answer' explains a generated answer; a classifier explains a class.")
            seq.answer_segments = check_segments(answer_segments, seq.n_targets)
        elif answer_segments is not None:
            raise InvalidInputError("answer_segments groups the answer's tokens into rows of target='answer'; pass "
                                    "target='answer' with it.")
        started = time.perf_counter()
        recomputing, per_point = False, None
        with (prepared(self.model, hook_attention=the_space.uses_attention_hook), torch.enable_grad(),
              parallel.sharding(self.shard_points), counting_forwards(self.model) as forwards,
              contextlib.ExitStack() as stack):
            problem = Problem(self.model, self.tokenizer, seq, the_space, target_fn, batch or MAX_CHUNK,
                              self.show_progress, reader_length=readers_from)
            if readers_from:
                problem.readers()  # before the method reads its baseline, whose visibility check runs only the readers
            # a prompt that cannot fit stops here with the figures rather than in the allocator: path points for
            # gradient methods, the explicand in the space for those that read it whole (raw attention)
            if chosen.uses_gradients:
                what = f"one path point of {seq.length} tokens in the {space} space"
                per_point = None if self.recompute else self._bytes_per_point(problem)
                if self.recompute or (self.recompute is None and fitting_points(per_point, budget) < 1):
                    stack.enter_context(recomputed(self.model))
                    recomputing = True
                    per_point, what = self._bytes_per_point(problem, recompute=True), what + " with recompute=True"
                problem.internal_batch_size = measured_chunk(per_point, budget, batch, what)
            elif getattr(chosen, "keeps_point", False):
                measured_chunk(self._bytes_per_point(problem, gradients=False), budget, None,
                               f"method {method!r} over {seq.length} tokens")
            result = chosen.attribute(problem, **method_params)
            with own_attention():  # the model as loaded (SDPA where it has it): no tap is needed here
                # reading="answer" ran the whole sequence so when it checked its cache: those are these logits
                probs = target_probabilities(self.model, seq, problem.readers().logits if readers_from else None)
            n_forward_all = int(parallel.sum_across(torch.tensor(forwards, device=seq.input_ids.device))[0])
        check_finite(probs, "target probabilities")
        check_finite(result.scores, f"attribution scores ({method})")
        notes = input_notes(self.tokenizer, seq, markup) + magnitude_notes(result.scores, method)
        converged = convergence(result.completeness_error, result.settings.get("tolerance"), method)
        n = seq.n_inputs
        params = {
            **{k: describe(v) for k, v in method_params.items()},
            **result.settings,
            "target": describe(target),
            "foil": foil,
            "reading": reading,
            "layers": getattr(the_space, "chosen", None) or None,
            "attention_implementation": attention_arithmetic(self.model, the_space.uses_attention_hook),
        }
        if seq.is_classifier:
            labels = getattr(self.model.config, "id2label", {}) or {}
            target_tokens = [str(labels.get(int(c), c)) for c in seq.target_ids.tolist()]
        elif seq.answer_level:
            starts = [seq.offsets[seq.n_prompt + a][0] for a, _ in seq.answer_segments]
            target_tokens = [seq.text[start:end] for start, end in zip(starts, starts[1:] + [len(seq.text)])]
        else:
            target_tokens = seq.tokens[seq.n_prompt:]
        return Explanation(
            scores=result.scores[:, :n].detach().cpu(),
            input_tokens=seq.tokens[:n],
            input_offsets=seq.offsets[:n],
            input_ids=seq.input_ids[0, :n].tolist(),
            target_tokens=target_tokens,
            target_ids=seq.target_ids.tolist(),
            target_probs=probs.tolist(),
            completeness_error=result.completeness_error.detach().cpu().float(),
            text=seq.text,
            n_prompt_tokens=seq.n_prompt,
            method=method,
            space=space,
            params=params,
            model_name=getattr(self.model.config, "_name_or_path", "") or type(self.model).__name__,
            library_version=__version__,
            head_scores=result.detail[..., :n].detach().cpu() if keep_head_scores and result.detail is not None else None,
            extra=result.extra,
            cost={"n_forward": result.n_forward, "n_backward": result.n_backward, "n_forward_all": n_forward_all,
                  "internal_batch_size": problem.internal_batch_size, "recompute": recomputing,
                  "point_bytes": None if per_point is None else int(TRANSIENT_FACTOR * per_point),
                  "seconds": time.perf_counter() - started},
            input_markup=markup[:n].tolist(),
            converged=converged,
            answer_level=seq.answer_level,
            answer_segments=seq.answer_segments if seq.answer_level else None,
            notes=notes,
        )


READINGS = ("full", "answer")


def reader_start(seq: Sequence, reading: str, space: str, after: int | None = None) -> int:
    """Where the readers start with reading="answer": the first prompt token at or after character `after`, by
    default the token after the last moving one; 0 with "full"."""
    if reading not in READINGS:
        raise UnknownNameError(f"unknown reading {reading!r}; choose one of {list(READINGS)}.")
    if reading == "full":
        if after is not None:
            raise InvalidInputError("readers_after= says where the readers of reading='answer' begin; pass "
                                    "reading='answer' with it.")
        return 0
    if space != "mask":
        raise InvalidInputError(f"reading='answer' moves how visible the earlier tokens are to the later ones, which "
                                f"only space='mask' can do; got space={space!r} (use reading='full' there).")
    if seq.is_classifier:
        raise InvalidInputError("reading='answer' needs a causal model: a classifier's tokens all read each other.")
    moving = (~seq.keep[: seq.n_prompt]).nonzero()
    start = int(moving[-1, 0]) + 1 if len(moving) else 0
    if after is not None:
        if isinstance(after, bool) or not isinstance(after, int):
            raise InvalidInputError(f"readers_after must be a character offset in the prompt, got {after!r}.")
        later = [j for j, (a, b) in enumerate(seq.offsets[: seq.n_prompt]) if b > a and a >= after]
        start = later[0] if later else seq.n_prompt
        if start < int(moving[-1, 0]) + 1:
            raise InvalidInputError(f"readers_after={after} falls before the last attributed token: the readers must "
                                    "come after every token that moves.")
    if not 0 < start <= int(seq.target_positions.min()):
        raise InvalidInputError("reading='answer' needs prompt tokens after the attributed ones to read them (e.g. "
                                "the question after the documents); here the attributed tokens run to the end of the "
                                "prompt. Attribute to earlier spans (attribute_to=) or use reading='full'.")
    return start


def covered(seq: Sequence, spans: list[tuple[int, int]]) -> torch.Tensor:
    """(L,) bool: prompt tokens whose first character lies in one of the character spans."""
    prompt_end = seq.offsets[seq.n_prompt - 1][1] if seq.n_prompt else 0
    checked = []
    for span in spans:
        try:
            start, end = int(span[0]), int(span[1])
        except (TypeError, ValueError, IndexError):
            raise InvalidInputError(f"attribute_to must be (start, end) character spans of the prompt, got {span!r}.") from None
        if not 0 <= start < end <= max(prompt_end, len(seq.text)):
            raise InvalidInputError(f"attribute_to span ({start}, {end}) is not inside the prompt text of length {prompt_end}.")
        checked.append((start, end))
    inside = [j < seq.n_prompt and e > s and any(a <= s < b for a, b in checked) for j, (s, e) in enumerate(seq.offsets)]
    if not any(inside):
        raise InvalidInputError(f"attribute_to spans {checked} cover no prompt token; give spans of the prompt text.")
    return torch.tensor(inside, device=seq.input_ids.device)


UNKNOWN_SHARE = 0.1  # above this share of <unk> among the prompt's content tokens, the result carries a note
ABSURD_MAGNITUDE = 1e6  # a |score| beyond this, in units of a log-probability or a logit, is a numerical failure


def input_notes(tokenizer, seq: Sequence, markup: torch.Tensor) -> list[str]:
    """A note (and a warning) when many of the prompt's content tokens are unknown to the tokenizer: the model
    never saw those words, so the scores say nothing about them."""
    unknown_id = getattr(tokenizer, "unk_token_id", None)
    if unknown_id is None:
        return []
    ids = seq.input_ids[0, : seq.n_prompt].cpu()
    unknown = ids == unknown_id  # the unknown token counts as special, but it stands for the user's words
    content = ~markup[: seq.n_prompt].cpu() | unknown
    n_content, n_unknown = int(content.sum()), int(unknown.sum())
    if not n_content or n_unknown / n_content <= UNKNOWN_SHARE:
        return []
    note = (f"{n_unknown} of {n_content} prompt tokens ({n_unknown / n_content:.0%}) are unknown to the tokenizer "
            f"(each became {tokenizer.unk_token!r}): the model never saw those words, so their scores say nothing "
            "about them; use a model whose vocabulary covers the text.")
    warnings.warn(note, UserWarning, stacklevel=4)
    return [note]


def magnitude_notes(scores: torch.Tensor, method: str) -> list[str]:
    """A note (and a warning) for finite but absurd scores: an overflowing model, not an attribution."""
    peak = float(scores.detach().abs().max()) if scores.numel() else 0.0
    if peak <= ABSURD_MAGNITUDE:
        return []
    note = (f"{method}: a score of magnitude {peak:.3g} is far beyond what a log-probability can carry; the model's "
            "numbers overflow (low precision, extreme weights or inputs), so these scores are not meaningful even if "
            "they sum up; run the model in float32.")
    warnings.warn(note, UserWarning, stacklevel=4)
    return [note]


DEFAULT_TOLERANCE = 0.01


def convergence(errors: torch.Tensor, tolerance: float | None, method: str) -> bool | None:
    """Whether every target's completeness error is within tolerance (1% when the run had none); None for
    methods without completeness. A miss is warned about, so unconverged scores never pass as final."""
    finite = errors[~errors.isnan()]
    if not len(finite):
        return None
    tolerance = DEFAULT_TOLERANCE if tolerance is None else tolerance
    missed = (errors > tolerance).nonzero()[:, 0].tolist()
    if missed:
        warnings.warn(
            f"{method}: completeness error above {tolerance * 100:.3g}% for targets {missed} (worst "
            f"{float(finite.max()):.1%}); these scores are not a converged integral. Raise n_steps / max_steps, "
            "or see Explanation.completeness_error.",
            ConvergenceWarning,
            stacklevel=4,
        )
    return not missed
