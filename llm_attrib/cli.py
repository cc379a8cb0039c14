"""The `llm-attrib` command line.

    llm-attrib explain --model PATH --prompt "..." --html out.html --json out.json
    llm-attrib evaluate --zoo rag --n 100 --methods ig ig:attention rpi random --output rows.jsonl
    llm-attrib rag --model PATH --question "..." --documents docs.jsonl --html report.html --json out.json

Subcommands live in `SUBCOMMANDS` (name -> (add_arguments, run)); add one there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from .errors import InvalidInputError, LlmAttribError


def load_model(name_or_path: str, show_progress: bool = True):
    """A model and its tokenizer from a zoo name (e.g. `smollm2`, `rag`), a local folder or a hub id, in eval
    mode (a pretrained zoo model's one-time conversion shows a progress bar unless `show_progress=False`).

    The class comes from the config's architecture: `...ForSequenceClassification` loads a sequence
    classifier, anything else a causal LM.
    """
    import torch
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from . import zoo

    if name_or_path in zoo.NAMES + tuple(zoo.PRETRAINED) and not Path(name_or_path).exists():
        try:
            return zoo.load(name_or_path, show_progress=show_progress)
        except OSError as err:
            raise InvalidInputError(
                f"the zoo model {name_or_path!r} could not be loaded ({_first_line(err)}); pass --model PATH_OR_HUB_ID."
            ) from err

    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise InvalidInputError(
            f"cannot load a model config from {name_or_path!r} ({_first_line(err)}); "
            "give a local model folder or a hub id that is available offline."
        ) from err
    architectures = getattr(config, "architectures", None) or []
    is_classifier = any(a.endswith("ForSequenceClassification") for a in architectures)
    auto = AutoModelForSequenceClassification if is_classifier else AutoModelForCausalLM
    try:
        model = auto.from_pretrained(name_or_path, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError, EOFError, SafetensorError) as err:
        raise InvalidInputError(
            f"{name_or_path!r} has a config but its weights cannot be loaded ({_first_line(err)}); the folder needs "
            "model.safetensors (or pytorch_model.bin), as save_pretrained writes them."
        ) from err
    try:
        tokenizer = load_tokenizer(name_or_path)
    except (OSError, ValueError, TypeError, AttributeError, KeyError, UnicodeDecodeError) as err:
        raise InvalidInputError(
            f"{name_or_path!r} has no usable tokenizer ({_first_line(err)}); save it beside the model with "
            "tokenizer.save_pretrained(folder)."
        ) from err
    return model.eval(), tokenizer


def load_tokenizer(name_or_path: str):
    """The folder's tokenizer. A folder that names the generic `PreTrainedTokenizerFast` gets exactly that:
    transformers 5 maps some model types (qwen2, phi3, ...) to their own tokenizer class regardless, which
    would silently re-tokenise a custom vocabulary."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config = Path(name_or_path) / "tokenizer_config.json"
    if config.is_file() and json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class") == "PreTrainedTokenizerFast":
        return PreTrainedTokenizerFast.from_pretrained(name_or_path)
    return AutoTokenizer.from_pretrained(name_or_path)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# --- explain -----------------------------------------------------------------------------------------


def _add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="NAME_OR_PATH",
                        help="zoo name (rag, recall, sentiment, or the real LLM smollm2), local model folder or hub id "
                             "(default: the zoo 'rag' model)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompt", metavar="TEXT", help="prompt text (default with no --model: a built-in rag example)")
    source.add_argument("--prompt-file", type=Path, metavar="FILE", help="read the prompt from this file")
    parser.add_argument("--answer", metavar="TEXT", help="continuation to explain (default: generate greedily)")
    parser.add_argument("--chat", action="store_true",
                        help="send the prompt as one user message through the tokenizer's chat template (instruct models)")
    parser.add_argument("--method", default="ig", metavar="NAME", help="attribution method (default: ig)")
    parser.add_argument("--space", default=None, metavar="NAME",
                        help="embeddings, attention or mask (default: the method's own: attention for rpi, embeddings for ig; "
                             "the built-in example: attention, chosen in eval/results/first_picture.md)")
    parser.add_argument("--n-steps", type=_positive, default=None, metavar="N",
                        help="path steps of path methods such as ig (default: the method's own; ig: 5, one Boole "
                             "panel per target, refined where the error is)")
    parser.add_argument("--max-new-tokens", type=_positive, default=16, metavar="N",
                        help="tokens to generate when --answer is not given (default: 16)")
    parser.add_argument("--layers", type=int, nargs="+", metavar="L",
                        help="attention layers of the attention or mask space (default: all)")
    parser.add_argument("--whole-answer", action="store_true",
                        help="explain the whole answer, log p(answer | prompt), as one target (one gradient per path point; "
                             "the default of the built-in example)")
    parser.add_argument("--per-token", action="store_true",
                        help="with no --model and --prompt: one row per answer token instead of the whole answer")
    parser.add_argument("--tokens", action="store_true", help="show scores over tokens (default: over words)")
    parser.add_argument("--target", type=int, default=None, metavar="T", help="show only this target index in the terminal")
    parser.add_argument("--html", type=Path, metavar="FILE", help="write a self-contained HTML page here")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the explanation as JSON here (Explanation.load reads it)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a method parameter, VALUE read as JSON if it parses (e.g. --param psi=aopc_sufficiency "
                             "--param n_baselines=8); repeatable")
    _add_memory_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


RECOMPUTE = {"auto": None, "always": True, "never": False}


def _add_memory_arguments(parser: argparse.ArgumentParser) -> None:
    """Memory of long prompts: `Attributor`'s memory_budget and recompute, as flags."""
    parser.add_argument("--memory-budget", type=_positive_float, default=None, metavar="GIB",
                        help="memory one chunk of path points may use, in GiB (default: a share of the available memory)")
    parser.add_argument("--recompute", choices=tuple(RECOMPUTE), default="auto",
                        help="recompute decoder layers in the backward instead of keeping them: 'auto' (default) "
                             "only where a path point would not fit, 'always', or 'never'")


def _memory_options(args: argparse.Namespace) -> dict[str, Any]:
    budget = None if args.memory_budget is None else int(args.memory_budget * 2**30)
    return {"memory_budget": budget, "recompute": RECOMPUTE[args.recompute]}


def _positive_float(text: str) -> float:
    """argparse type of sizes: a positive finite number."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _positive(text: str) -> int:
    """argparse type of counts: a usage error names the flag, where a 0 would fail deep inside the run."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _optional_positive(text: str) -> int | None:
    """argparse type of a count that may be 'all' (None: no limit)."""
    return None if text == "all" else _positive(text)


def _check_output(path: Path | None) -> None:
    """Refuse an output path that cannot be written before any work is done, not after it."""
    if path is None:
        return
    _check_text(str(path), "an output path")
    if path.is_dir():
        raise InvalidInputError(f"{str(path)!r} is a directory; give a file path to write to.")
    if path.exists() and not os.access(path, os.W_OK):
        raise InvalidInputError(f"cannot write {str(path)!r}: permission denied.")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is None or not parent.is_dir():
        raise InvalidInputError(f"cannot create {str(path)!r}: {parent} is not a directory.")
    if not path.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise InvalidInputError(f"cannot create {str(path)!r}: {str(parent)!r} is not writable.")


def _method_params(pairs: list[str]) -> dict[str, Any]:
    """--param KEY=VALUE pairs; VALUE as JSON where it parses (numbers, lists, booleans), else a string."""
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"--param takes KEY=VALUE, got {pair!r}.")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def _run_explain(args: argparse.Namespace) -> int:
    from . import zoo
    from .methods import get_method

    get_method(args.method, args.space)  # fail on a bad name or path before loading anything
    _check_output(args.html)
    _check_output(args.json)
    _check_text(args.prompt, "--prompt")
    _check_text(args.answer, "--answer")
    prompt = _read_prompt(args)
    example = None
    if args.model:
        if prompt is None:
            raise InvalidInputError("with --model, give --prompt TEXT or --prompt-file FILE.")
    elif prompt is None:  # the built-in first picture: the defaults eval/results/first_picture.md chose
        example = zoo.examples("rag", n=1, seed=0)[0]
        prompt = example["prompt"]
        if args.space is None and "attention" in get_method(args.method).spaces:
            args.space = "attention"
        args.whole_answer = args.whole_answer or not args.per_token
    if args.target is not None and (args.target < 0 or (args.whole_answer and args.target > 0)
                                    or (args.answer is None and args.target >= args.max_new_tokens)):
        most = 1 if args.whole_answer else args.max_new_tokens
        raise InvalidInputError(f"--target {args.target} does not exist: this run explains at most {most} target(s), "
                                f"numbered from 0.")
    model, tokenizer = _load(args.model, "rag", args.no_progress)
    if args.target is not None and args.answer is not None and not args.whole_answer:
        n_targets = len(tokenizer(args.answer, add_special_tokens=False)["input_ids"])
        if args.target >= n_targets:
            raise InvalidInputError(f"--target {args.target} does not exist: the answer has {n_targets} tokens, "
                                    "numbered from 0.")
    if args.chat:
        prompt = [{"role": "user", "content": prompt}]
    params: dict[str, Any] = _method_params(args.param)
    if args.n_steps is not None:
        params.setdefault("n_steps", args.n_steps)
    if args.whole_answer:
        params["target"] = "answer"
    from .attributor import Attributor

    exp = Attributor(model, tokenizer, show_progress=not args.no_progress, **_memory_options(args)).explain(
        prompt, args.answer, method=args.method, space=args.space, layers=args.layers,
        max_new_tokens=args.max_new_tokens, **params,
    )
    written = _save_outputs(args, lambda: exp.to_html(target=args.target), exp.save)
    from .render.terminal import print_explanation

    known = {"template_spans": example["template_spans"], "evidence_spans": example["evidence"]} if example else {}
    print_explanation(exp if args.tokens else exp.words(), target=args.target, **known)
    _announce(written)
    return 0


def _load(model: str | None, zoo_name: str, no_progress: bool):
    """The --model (or, without one, the zoo model `zoo_name`) and its tokenizer, the transformers loading bars
    replaced by one labelled line."""
    from transformers.utils import logging as hf_logging

    from . import zoo

    hf_logging.disable_progress_bar()
    if not no_progress and sys.stderr.isatty():
        print(f"loading {_model_label(model or zoo_name)} ...", file=sys.stderr, flush=True)
    if model:
        return load_model(model, show_progress=not no_progress)
    try:
        return zoo.load(zoo_name, show_progress=not no_progress)
    except OSError as err:
        raise InvalidInputError(
            f"the zoo model {zoo_name!r} could not be loaded ({_first_line(err)}); pass --model PATH_OR_HUB_ID."
        ) from err


def _model_label(name: str) -> str:
    from .render.terminal import model_label

    return model_label(name)


def _check_text(text: str | None, flag: str) -> None:
    """Refuse text that is not valid Unicode (e.g. invalid UTF-8 bytes in the shell argument), before the work
    rather than when a report is written."""
    if text is None:
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidInputError(f"{flag} is not valid UTF-8 text (byte {err.start}); pass it as UTF-8.") from None


def _read_text(path: Path, flag: str) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as err:
        raise InvalidInputError(f"cannot read {flag} {str(path)!r}: {err.strerror or err}.") from err
    except UnicodeDecodeError as err:
        raise InvalidInputError(f"{flag} {str(path)!r} is not UTF-8 text (invalid byte at {err.start}); "
                                "save it as UTF-8.") from None


def _read_prompt(args: argparse.Namespace) -> str | None:
    if args.prompt_file is None:
        return args.prompt
    return _read_text(args.prompt_file, "--prompt-file")


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise InvalidInputError(f"cannot write {str(path)!r}: {err.strerror or err}.") from err


def _save_outputs(args: argparse.Namespace, html: Callable[[], str], save: Callable[[Path], None]) -> list[Path]:
    """--html and --json of a result, written before anything is printed (so a display problem never loses
    them); returns the paths written."""
    written = []
    if args.html:
        _write(args.html, html())
        written.append(args.html)
    if args.json:
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            save(args.json)
        except OSError as err:
            raise InvalidInputError(f"cannot write {str(args.json)!r}: {err.strerror or err}.") from err
        written.append(args.json)
    return written


def _announce(written: list[Path]) -> None:
    for path in written:
        print(f"wrote {path}")


# --- evaluate ----------------------------------------------------------------------------------------


def _add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="NAME_OR_PATH",
                        help="zoo name (e.g. smollm2), local model folder or hub id (default: the zoo model of --zoo)")
    parser.add_argument("--zoo", default="rag", metavar="NAME", help="zoo task for the model and/or examples (default: rag)")
    parser.add_argument("--data", type=Path, metavar="FILE",
                        help="examples as JSON lines or a JSON list of {prompt, answer?, evidence?, template_spans?} "
                             "(default: fresh zoo examples)")
    parser.add_argument("--n", type=_positive, default=100, help="number of zoo examples (default: 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the zoo examples (default: 0)")
    parser.add_argument("--methods", nargs="+", default=["ig"], metavar="METHOD[:SPACE]",
                        help="methods to compare, e.g. ig ig:attention rpi random (default: ig)")
    parser.add_argument("--output", type=Path, metavar="FILE", help="JSON-lines file the rows stream to; an existing one is resumed")
    parser.add_argument("--summary", type=Path, metavar="FILE", help="write the summary table here (CSV if it ends in .csv, else text)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _read_examples(path: Path, flag: str = "--data") -> list[Any]:
    """A JSON list or JSON lines, at least one item, every item an object or a string."""
    text = _read_text(path, flag)
    try:
        data = json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in text.splitlines() if line.strip()]
    except (json.JSONDecodeError, RecursionError) as err:
        raise InvalidInputError(f"{flag} {str(path)!r} is neither JSON lines nor a JSON list: {_first_line(err)}.") from None
    if not isinstance(data, list) or not data:
        raise InvalidInputError(f"{flag} {str(path)!r} holds no items; give at least one, as JSON lines or a JSON list.")
    for i, item in enumerate(data):
        if not isinstance(item, (dict, str)):
            raise InvalidInputError(f"{flag} {str(path)!r}: item {i} is a {type(item).__name__}; each item is a JSON "
                                    "object (or a string).")
        _check_text(json.dumps(item, ensure_ascii=False) if isinstance(item, dict) else item, f"{flag} item {i}")
    return data


def _run_evaluate(args: argparse.Namespace) -> int:
    from . import zoo
    from .attributor import Attributor
    from .evaluate import evaluate

    _check_output(args.output)
    _check_output(args.summary)
    specs = []
    for item in args.methods:
        name, _, space = item.partition(":")
        specs.append({"label": item, "method": name, **({"space": space} if space else {})})
    examples = _read_examples(args.data) if args.data else None
    if examples is not None and not all(isinstance(e, dict) for e in examples):
        raise InvalidInputError("--data items are objects with a 'prompt' (and answer?, evidence?, template_spans?).")
    if args.output is not None and args.output.exists():
        from .evaluate import read_rows

        read_rows(args.output, check_only=True)  # a file that is not this command's rows: refused before the work
    if args.zoo not in zoo.NAMES:
        raise InvalidInputError(f"--zoo {args.zoo!r} is not a zoo task; choose one of {', '.join(zoo.NAMES)}.")
    model, tokenizer = _load(args.model, args.zoo, args.no_progress)
    examples = examples if examples is not None else zoo.examples(args.zoo, n=args.n, seed=args.seed)
    attributor = Attributor(model, tokenizer, show_progress=False)
    result = evaluate(attributor, examples, specs, output=args.output, show_progress=not args.no_progress)
    written = []
    if args.summary:
        text = result.summary.to_csv() if args.summary.suffix == ".csv" else result.summary.to_string()
        _write(args.summary, text)
        written.append(args.summary)
    summary = result.summary.xs("mean", axis=1, level=1)
    from .render.terminal import safe

    print(safe(summary.to_string(float_format=lambda v: f"{v:.4f}")))
    _announce(written)
    return 0


# --- rag ---------------------------------------------------------------------------------------------


def _add_rag_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="NAME_OR_PATH",
                        help="zoo name (e.g. smollm2), local model folder or hub id (default: the zoo 'rag' model with a "
                             "built-in example)")
    parser.add_argument("--question", metavar="TEXT", help="the question the documents were retrieved for")
    parser.add_argument("--documents", type=Path, metavar="FILE",
                        help="retrieved documents: JSON lines of strings or {text, title?, id?}, or a JSON list of them")
    parser.add_argument("--answer", metavar="TEXT", help="the answer to explain (default: generate greedily)")
    parser.add_argument("--template", metavar="NAME_OR_TEXT",
                        help="prompt layout: default, plain, zoo, or a string with {documents} and {question} "
                             "(default: the chat template when the tokenizer has one; zoo for the zoo model)")
    parser.add_argument("--system", metavar="TEXT",
                        help="a system message (chat templates only; default: one saying the task, rag.SYSTEM)")
    parser.add_argument("--method", default="ig", metavar="NAME", help="attribution method (default: ig)")
    parser.add_argument("--space", default=None, metavar="NAME",
                        help="embeddings, attention or mask (default: mask where the method has it, else attention, as rag.explain)")
    parser.add_argument("--granularity", default="sentence", choices=("sentence", "answer", "token"),
                        help="rows: one per answer sentence (default), one for the whole answer (cheapest) or per token")
    parser.add_argument("--reading", default="full", choices=("full", "answer"),
                        help="full (default): the whole prompt runs along the path; answer: the documents run once "
                             "and only the question and answer read them along the path (mask space; long prompts)")
    parser.add_argument("--removal", default="rerun", choices=("rerun", "hidden"),
                        help="rerun (default): leave-one-out and the verdicts rerun the prompt without each document "
                             "(exact); hidden: each document is hidden from the question and answer only (cheaper, "
                             "not the same numbers; verdicts then give margins only; long prompts)")
    parser.add_argument("--sentence-documents", type=_optional_positive, default=8, metavar="N",
                        help="coarse to fine: with more documents, rank them first and explain only the top N at "
                             "sentence level ('all': every document; default: 8)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the ablation check (verdicts and leave-one-out; 2 + documents forwards)")
    parser.add_argument("--shapley", action="store_true",
                        help="also each document's Shapley value per answer sentence, by removing subsets of documents "
                             "(exact from all 2^D subsets up to 64 forwards, sampled orders beyond)")
    parser.add_argument("--retriever", metavar="PATH",
                        help="a bi-encoder folder (sentence-transformers style) to explain each document's similarity")
    parser.add_argument("--max-new-tokens", type=_positive, default=128, metavar="N",
                        help="the most tokens to generate when --answer is not given; an answer cut by it is flagged "
                             "truncated (default: 128)")
    parser.add_argument("--max-sentences", type=_positive, default=3, metavar="N",
                        help="the generated answer ends at the end of turn, a blank line or after N sentences (default: 3)")
    parser.add_argument("--thresholds", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="verdict thresholds in nats, calibrated for this model (default: the ones shipped for it, "
                             "else verdicts say 'uncalibrated' and show their margins)")
    parser.add_argument("--language", metavar="CODE",
                        help="the documents' language for sentence splitting, e.g. de or ja (default: detected)")
    parser.add_argument("--html", type=Path, metavar="FILE", help="write the self-contained HTML report here")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the result as JSON here (RagExplanation.load reads it)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a method parameter, VALUE read as JSON if it parses (e.g. --param max_steps=64); repeatable")
    _add_memory_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _read_documents(path: Path) -> list[Any]:
    documents = _read_examples(path, flag="--documents")
    if not isinstance(documents, list):
        raise InvalidInputError(f"--documents {str(path)!r} must hold a list of documents (JSON lines or a JSON list).")
    return documents


def _run_rag(args: argparse.Namespace) -> int:
    from . import rag, zoo
    from .methods import get_method
    from .render.terminal import print_rag_explanation

    get_method(args.method, args.space)  # fail on a bad name before loading anything
    if args.thresholds is not None:
        rag.verdicts.check_thresholds(args.thresholds)
    _check_output(args.html)
    _check_output(args.json)
    for text, flag in ((args.question, "--question"), (args.answer, "--answer"), (args.system, "--system"),
                       (args.template, "--template")):
        _check_text(text, flag)
    documents = _read_documents(args.documents) if args.documents else None
    template = args.template
    if args.model:
        if args.question is None or documents is None:
            raise InvalidInputError("with --model, give --question TEXT and --documents FILE.")
        model, tokenizer = _load(args.model, "rag", args.no_progress)
    else:
        model, tokenizer = _load(None, "rag", args.no_progress)
        template = template or "zoo"
        if args.question is None and documents is None:
            example = zoo.examples("rag", n=1, seed=0)[0]
            args.question, documents = example["question"], example["document_texts"]
        elif args.question is None or documents is None:
            raise InvalidInputError("give both --question and --documents (or neither, for the built-in example).")
    retriever = None
    if args.retriever:
        from transformers import AutoModel, AutoTokenizer

        try:
            retriever = (AutoModel.from_pretrained(args.retriever).eval(), AutoTokenizer.from_pretrained(args.retriever))
        except (OSError, ValueError) as err:
            raise InvalidInputError(f"cannot load the retriever {args.retriever!r} ({_first_line(err)}).") from err
    result = rag.explain(
        model, tokenizer, args.question, documents, args.answer, template=template, system=args.system,
        method=args.method, space=args.space, granularity=args.granularity, verify=not args.no_verify,
        reading=args.reading, removal=args.removal, sentence_documents=args.sentence_documents, shapley=args.shapley, retriever=retriever,
        max_new_tokens=args.max_new_tokens, max_sentences=args.max_sentences,
        thresholds=args.thresholds, language=args.language, show_progress=not args.no_progress,
        **_memory_options(args), **_method_params(args.param),
    )
    written = _save_outputs(args, result.to_html, result.save)
    print_rag_explanation(result)
    _announce(written)
    return 0


# --- entry point -------------------------------------------------------------------------------------

Command = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]

# name -> (add its arguments, run it, one-line help).
SUBCOMMANDS: dict[str, Command] = {
    "explain": (_add_explain_arguments, _run_explain, "explain a model's answer token by token"),
    "evaluate": (_add_evaluate_arguments, _run_evaluate, "compare methods' faithfulness and plausibility over examples"),
    "rag": (_add_rag_arguments, _run_rag, "which retrieved documents carried an answer, with citations and verdicts"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-attrib", description="Token-wise attributions for HuggingFace transformers.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_arguments, run, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        add_arguments(sub)
        sub.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 on a usage or llm-attrib error)."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except LlmAttribError as err:
        from .render.terminal import safe

        print(f"llm-attrib: error: {safe(_first_line(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: outputs are written whole or not at all, so one line is enough
        print("llm-attrib: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
