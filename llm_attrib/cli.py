"""The `llm-attrib` command line.

    llm-attrib explain --model PATH --prompt "..." --html out.html --json out.json
    llm-attrib evaluate --zoo rag --n 100 --methods ig ig:attention rpi random --output rows.jsonl
    llm-attrib rag --model PATH --question "..." --documents docs.jsonl --html report.html --json out.json

Subcommands live in `SUBCOMMANDS` (name -> (add_arguments, run)); add one there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from .errors import InvalidInputError, LlmAttribError


def load_model(name_or_path: str):
    """A model and its tokenizer from a zoo name (e.g. `smollm2`, `rag`), a local folder or a hub id, in eval
    mode.

    The class comes from the config's architecture: `...ForSequenceClassification` loads a sequence
    classifier, anything else a causal LM.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from . import zoo

    if name_or_path in zoo.NAMES + tuple(zoo.PRETRAINED) and not Path(name_or_path).exists():
        return zoo.load(name_or_path)

    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise InvalidInputError(
            f"cannot load a model config from {name_or_path!r} ({_first_line(err)}); "
            "give a local model folder or a hub id that is available offline."
        ) from err
    architectures = getattr(config, "architectures", None) or []
    is_classifier = any(a.endswith("ForSequenceClassification") for a in architectures)
    auto = AutoModelForSequenceClassification if is_classifier else AutoModelForCausalLM
    try:
        model = auto.from_pretrained(name_or_path, dtype=torch.float32)
    except OSError as err:
        raise InvalidInputError(
            f"{name_or_path!r} has a config but its weights cannot be loaded ({_first_line(err)}); the folder needs "
            "model.safetensors (or pytorch_model.bin), as save_pretrained writes them."
        ) from err
    try:
        tokenizer = load_tokenizer(name_or_path)
    except (OSError, ValueError, TypeError) as err:
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
    if config.is_file() and json.loads(config.read_text()).get("tokenizer_class") == "PreTrainedTokenizerFast":
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
                        help="embeddings, attention or mask (default: the method's own: attention for rpi, embeddings for ig)")
    parser.add_argument("--n-steps", type=_positive, default=None, metavar="N",
                        help="path steps of path methods such as ig (default: the method's own; ig: 5, one Boole "
                             "panel per target, refined where the error is)")
    parser.add_argument("--max-new-tokens", type=_positive, default=16, metavar="N",
                        help="tokens to generate when --answer is not given (default: 16)")
    parser.add_argument("--layers", type=int, nargs="+", metavar="L",
                        help="attention layers of the attention or mask space (default: all)")
    parser.add_argument("--whole-answer", action="store_true",
                        help="explain the whole answer, log p(answer | prompt), as one target (one gradient per path point)")
    parser.add_argument("--target", type=int, default=None, metavar="T", help="show only this target index in the terminal")
    parser.add_argument("--html", type=Path, metavar="FILE", help="write a self-contained HTML page here")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the explanation as JSON here (Explanation.load reads it)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a method parameter, VALUE read as JSON if it parses (e.g. --param psi=aopc_sufficiency "
                             "--param n_baselines=8); repeatable")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _positive(text: str) -> int:
    """argparse type of counts: a usage error names the flag, where a 0 would fail deep inside the run."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _check_output(path: Path | None) -> None:
    """Refuse an output path that cannot be written before any work is done, not after it."""
    if path is None:
        return
    if path.is_dir():
        raise InvalidInputError(f"{str(path)!r} is a directory; give a file path to write to.")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is None or not parent.is_dir():
        raise InvalidInputError(f"cannot create {str(path)!r}: {parent} is not a directory.")


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
    from .attributor import Attributor
    from .methods import get_method
    from .render.terminal import print_explanation

    get_method(args.method, args.space)  # fail on a bad name or path before loading anything
    _check_output(args.html)
    _check_output(args.json)
    if args.no_progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    prompt = _read_prompt(args)
    if args.model:
        model, tokenizer = load_model(args.model)
        if prompt is None:
            raise InvalidInputError("with --model, give --prompt TEXT or --prompt-file FILE.")
    else:
        try:
            model, tokenizer = zoo.load("rag")
        except OSError as err:
            raise InvalidInputError(
                f"the zoo model 'rag' could not be loaded ({_first_line(err)}); pass --model PATH_OR_HUB_ID."
            ) from err
        if prompt is None:
            prompt = zoo.examples("rag", n=1, seed=0)[0]["prompt"]
    if args.chat:
        prompt = [{"role": "user", "content": prompt}]
    params: dict[str, Any] = _method_params(args.param)
    if args.n_steps is not None:
        params.setdefault("n_steps", args.n_steps)
    attributor = Attributor(model, tokenizer, show_progress=not args.no_progress)
    if args.whole_answer:
        params["target"] = "answer"
    exp = attributor.explain(
        prompt, args.answer, method=args.method, space=args.space, layers=args.layers,
        max_new_tokens=args.max_new_tokens, **params,
    )
    print_explanation(exp, target=args.target)
    _save_outputs(args, lambda: exp.to_html(target=args.target), exp.save)
    return 0


def _read_prompt(args: argparse.Namespace) -> str | None:
    if args.prompt_file is None:
        return args.prompt
    try:
        return args.prompt_file.read_text()
    except OSError as err:
        raise InvalidInputError(f"cannot read --prompt-file {str(args.prompt_file)!r}: {err.strerror or err}.") from err


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _save_outputs(args: argparse.Namespace, html: Callable[[], str], save: Callable[[Path], None]) -> None:
    """--html and --json of a result, each announced."""
    if args.html:
        _write(args.html, html())
        print(f"wrote {args.html}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        save(args.json)
        print(f"wrote {args.json}")


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
    try:
        text = path.read_text()
    except OSError as err:
        raise InvalidInputError(f"cannot read {flag} {str(path)!r}: {err.strerror or err}.") from err
    try:
        data = json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise InvalidInputError(f"{flag} {str(path)!r} is neither JSON lines nor a JSON list: {err}.") from err
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
    model, tokenizer = load_model(args.model) if args.model else zoo.load(args.zoo)
    examples = _read_examples(args.data) if args.data else zoo.examples(args.zoo, n=args.n, seed=args.seed)
    attributor = Attributor(model, tokenizer, show_progress=False)
    result = evaluate(attributor, examples, specs, output=args.output, show_progress=not args.no_progress)
    summary = result.summary.xs("mean", axis=1, level=1)
    print(summary.to_string(float_format=lambda v: f"{v:.4f}"))
    if args.summary:
        text = result.summary.to_csv() if args.summary.suffix == ".csv" else result.summary.to_string()
        _write(args.summary, text)
        print(f"wrote {args.summary}")
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
    parser.add_argument("--system", metavar="TEXT", help="a system message (chat templates only)")
    parser.add_argument("--method", default="ig", metavar="NAME", help="attribution method (default: ig)")
    parser.add_argument("--space", default=None, metavar="NAME",
                        help="embeddings, attention or mask (default: mask where the method has it, else attention, as rag.explain)")
    parser.add_argument("--granularity", default="sentence", choices=("sentence", "answer", "token"),
                        help="rows: one per answer sentence (default), one for the whole answer (cheapest) or per token")
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
    if args.no_progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    documents = _read_documents(args.documents) if args.documents else None
    template = args.template
    if args.model:
        if args.question is None or documents is None:
            raise InvalidInputError("with --model, give --question TEXT and --documents FILE.")
        model, tokenizer = load_model(args.model)
    else:
        model, tokenizer = zoo.load("rag")
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
        shapley=args.shapley, retriever=retriever, max_new_tokens=args.max_new_tokens, max_sentences=args.max_sentences,
        thresholds=args.thresholds, language=args.language, show_progress=not args.no_progress,
        **_method_params(args.param),
    )
    print_rag_explanation(result)
    _save_outputs(args, result.to_html, result.save)
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
        print(f"llm-attrib: error: {_first_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
