"""Speed at equal accuracy: llm-attrib's IG against Captum's LLMGradientAttribution(LayerIntegratedGradients),
measured in one run, one process, and inseq's integrated_gradients in its own environment; reported as ratios.

    python eval/speed.py                                  # every workload, writes eval/results/speed.md
    python eval/speed.py --workloads rag recall --threads 2 --output /tmp/speed.md
    python eval/speed.py --workloads smollm2 --spaces embeddings --captum-cap 50 --output /tmp/smollm2.md

For every workload both tools explain the same prompt and the same generated tokens (log-probability of each
target given its prefix). Captum runs (a) at its defaults (50 Gauss-Legendre steps, token-0 baseline) and
(b) at equal accuracy: its steps raised 50, 100, 200, 400, 800 until every target's completeness error is
<= 1% against its own baseline (the prompt's tokens replaced by token 0, the generated prefix kept), or the
cap is reached (said in the table). llm-attrib runs at its defaults (score-guided quadrature to 1%), over
embeddings and, where the model allows it, over attention, per token and for the whole answer as one target
(log p(answer | prompt): a different target, so it has no Captum counterpart). Columns: seconds, gradient evaluations per target
(mean), worst completeness error, peak resident memory of the run (VmHWM, reset before each run), and
Captum's time over llm-attrib's. No test asserts a time: this script is where speed is measured.

inseq 0.7.1 needs transformers 4, so it runs in a subprocess of its own venv (--inseq-python; made as
eval/peers/inseq_attribute.py says; without it the rows say so) on the same prompt and answer, from the model's
folder (the in-memory tiny Llama is saved to a temporary one), with the same threads and internal batch (16), at
its default 50 steps and at equal accuracy (its own steps raised as Captum's are). Its seconds and peak memory are those of
its attribute() call, measured inside the subprocess (not the venv's start or the model's load). It explains
the same target, the log-probability (its default is the probability; inseq_attribute.py's --logprob switches),
against its own baseline: the <unk> embedding at every position, <bos> and earlier answer tokens included. Its
completeness error is exact, not estimated: Captum's convergence delta, which inseq returns (sum of the
attributions minus f(input) - f(baseline)), over that change (the attributions' sum minus the delta; checked
against the model's own log-probabilities at input and baseline on the rag workload). Where inseq does not run
(SmolLM2: transformers 4 misreads its rope_theta, so the script refuses it) the row gives the reason. The ratio
on inseq's rows is its seconds over llm-attrib's per-token runs (embeddings / attention).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from captum.attr import LayerIntegratedGradients, LLMGradientAttribution, TextTokenInput

import llm_attrib
from llm_attrib import Attributor

sys.path.insert(0, str(Path(__file__).parent))
from peers.inseq_attribute import peak_gib, reset_peak  # noqa: E402 - one VmHWM reading for both processes

OUTPUT = Path(__file__).parent / "results" / "speed.md"
DATA = Path(__file__).parent / "data" / "real_text.jsonl"
INSEQ_PYTHON = Path("/work/.venvs/inseq/bin/python")
INSEQ_SCRIPT = Path(__file__).parent / "peers" / "inseq_attribute.py"
CAPTUM_STEPS = (50, 100, 200, 400, 800)  # --captum-cap cuts the escalation where a workload is too slow for it
TOLERANCE = 0.01


@dataclass
class Workload:
    """`prompt` is the text both tools read; `request` is what llm-attrib is given (the chat messages where the
    prompt is a rendered chat, so that it keeps the template's markup in its baseline); `folder` is where the
    model is saved, for inseq (None: saved to a temporary folder when inseq needs it)."""

    name: str
    model: object
    tokenizer: object
    prompt: str
    answer: list[int]
    spaces: tuple[str, ...]
    request: object = None
    folder: Path | None = None


@dataclass
class Run:
    seconds: float
    evaluations: float
    worst: float
    peak_gib: float


def measured(fn: Callable[[], tuple[float, float]]) -> Run:
    """Run `fn` (-> gradient evaluations per target, worst completeness error) with the peak memory reset."""
    reset_peak()
    started = time.perf_counter()
    evaluations, worst = fn()
    seconds = time.perf_counter() - started
    return Run(seconds, evaluations, worst, peak_gib())


def ours(workload: Workload, space: str, target: str | None = None) -> tuple[float, float]:
    attributor = Attributor(workload.model, workload.tokenizer, show_progress=False)
    exp = attributor.explain(workload.request or workload.prompt, answer=workload.answer, space=space, target=target)
    steps = exp.params["n_steps"]
    mean_steps = sum(steps) / len(steps) if isinstance(steps, list) else steps
    return float(mean_steps), float(exp.completeness_error.max())


def captum(workload: Workload, n_steps: int) -> tuple[float, float]:
    """Captum's attribution and its completeness error per target against its own baseline."""
    model, tokenizer = workload.model, workload.tokenizer
    skip = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    attribution = LLMGradientAttribution(LayerIntegratedGradients(model, model.get_input_embeddings()), tokenizer)
    inp = TextTokenInput(workload.prompt, tokenizer, skip_tokens=skip)
    result = attribution.attribute(inp, target=torch.tensor(workload.answer), n_steps=n_steps, method="gausslegendre",
                                   internal_batch_size=16)  # llm-attrib's chunk; all steps at once exhaust memory
    totals = result.token_attr.float().sum(1)  # (T,)
    prompt_ids = tokenizer(workload.prompt)["input_ids"]
    baseline_ids = [i if i in skip else 0 for i in prompt_ids]
    errors = []
    with torch.no_grad():
        for ids in (prompt_ids, baseline_ids):
            full = torch.tensor([ids + workload.answer])
            logits = model(input_ids=full).logits[0, len(ids) - 1:-1].float().log_softmax(-1)
            errors.append(logits.gather(-1, torch.tensor(workload.answer)[:, None])[:, 0])
    gap = errors[0] - errors[1]
    worst = float(((totals - gap).abs() / gap.abs().clamp_min(1e-12)).max())
    return float(n_steps), worst


def inseq_text(workload: Workload) -> str | None:
    """The text inseq is given to explain (it takes text, not ids): the prompt and the answer's decoding, joined
    so that it tokenises back to the prompt's ids and the answer's; None where no join does."""
    tokenizer = workload.tokenizer
    answer = tokenizer.decode(workload.answer)
    for text in (workload.prompt + " " + answer, workload.prompt + answer):
        if tokenizer(text)["input_ids"] == tokenizer(workload.prompt)["input_ids"] + workload.answer:
            return text
    return None


def inseq(workload: Workload, n_steps: int, python: Path, threads: int) -> Run | str:
    """inseq's integrated_gradients of the workload's answer in its own environment, as a Run (its attribute()
    call's seconds and peak memory, measured in the subprocess), or why it did not run."""
    text = inseq_text(workload)
    if text is None:
        return "the answer's decoded text does not tokenise back to its ids"
    with tempfile.TemporaryDirectory() as tmp:
        folder = workload.folder
        if folder is None:
            from llm_attrib.zoo._tokenizer import save  # names PreTrainedTokenizerFast, which transformers 4 loads

            folder = Path(tmp) / "model"
            workload.model.save_pretrained(folder)
            save(workload.tokenizer, folder)
        examples, output = Path(tmp) / "EXAMPLES.jsonl", Path(tmp) / "out.json"
        examples.write_text(json.dumps({"prompt": workload.prompt, "answer": text[len(workload.prompt):].strip(),
                                        "generated": text}) + "\n")
        done = subprocess.run([str(python), str(INSEQ_SCRIPT), str(folder), str(examples), str(output),
                               "--methods", "integrated_gradients", "--n-steps", str(n_steps),
                               "--internal-batch-size", "16", "--logprob", "--deltas", "--threads", str(threads)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            return next((line for line in reversed(done.stderr.splitlines()) if line.strip()), "failed")
        record = json.loads(output.read_text())["examples"][0]
    if record["target_tokens"] != workload.tokenizer.convert_ids_to_tokens(workload.answer):
        return f"inseq's targets {record['target_tokens']} are not the answer's tokens"
    ig = record["integrated_gradients"]
    return Run(ig["seconds"], float(n_steps), max(ig["completeness_error"]), ig["peak_gib"])


def zoo_workload(name: str, n_tokens: int) -> Workload:
    model, tokenizer = llm_attrib.zoo.load(name)
    prompt = llm_attrib.zoo.examples(name, n=1, seed=123)[0]["prompt"]
    attributor = Attributor(model, tokenizer, show_progress=False)
    answer = attributor.generate(tokenizer(prompt)["input_ids"], n_tokens, min_new_tokens=n_tokens)
    return Workload(f"{name} zoo, {n_tokens} targets", model, tokenizer, prompt, answer, ("embeddings", "attention"),
                    folder=llm_attrib.zoo.path(name))


def long_llama_workload(n_tokens: int = 1000, n_targets: int = 4) -> Workload:
    """A random 4-layer, d=256 Llama over a 1000-token prompt of the rag zoo's vocabulary (the tokenizer is the
    zoo's): long inputs are where memory and chunking matter."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tokenizer = llm_attrib.zoo.load("rag")
    tokenizer.model_max_length = 2048  # the zoo model's own context is 256; this model's is 2048
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048)
    model = LlamaForCausalLM(config).eval()
    words = " ".join(llm_attrib.zoo.examples("rag", n=60, seed=7)[i]["prompt"] for i in range(60)).split()
    prompt = " ".join(words[:n_tokens])
    ids = tokenizer(prompt)["input_ids"][:n_tokens]
    prompt = tokenizer.decode(ids, skip_special_tokens=True)
    answer = Attributor(model, tokenizer, show_progress=False).generate(tokenizer(prompt)["input_ids"], n_targets,
                                                                        min_new_tokens=n_targets)
    return Workload(f"tiny Llama (4 layers, d=256), {len(tokenizer(prompt)['input_ids'])}-token prompt, "
                    f"{n_targets} targets", model, tokenizer, prompt, answer, ("embeddings", "attention"))


def smollm2_workload(n_targets: int = 12) -> Workload:
    """SmolLM2-135M-Instruct on the first rag question of the real-text set, rendered with its chat template,
    answered greedily (12 tokens)."""
    from real_text import rag_prompt

    model, tokenizer = llm_attrib.zoo.load("smollm2")
    example = next(json.loads(line) for line in DATA.read_text().splitlines() if json.loads(line)["kind"] == "rag")
    messages, _ = rag_prompt(example)
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer = Attributor(model, tokenizer, show_progress=False).generate(ids, n_targets, min_new_tokens=n_targets)
    return Workload(f"SmolLM2-135M-Instruct, rag chat prompt ({len(ids)} tokens), {n_targets} targets",
                    model, tokenizer, prompt, answer, ("embeddings", "attention"), request=messages,
                    folder=llm_attrib.zoo.path("smollm2"))


WORKLOADS = {
    "rag": lambda: zoo_workload("rag", 16),
    "recall": lambda: zoo_workload("recall", 16),
    "long": long_llama_workload,
    "smollm2": smollm2_workload,
}


def inseq_row(label: str, run: Run | str, ours_seconds: list[float]) -> str:
    if isinstance(run, str):
        return f"| | inseq, IG, {label}: not run ({run}) | | | | | |"
    ratios = " / ".join(f"{run.seconds / s:.1f}x" for s in ours_seconds)
    return (f"| | inseq, IG, {label} | {run.seconds:.2f} | {run.evaluations:.0f} | {run.worst:.1%} | "
            f"{run.peak_gib:.2f} | inseq: {ratios} |")


def escalated(run_at: Callable[[int], Run | str], cap: int) -> tuple[Run | str, Run | str, str]:
    """A peer at its defaults (50 steps) and at equal accuracy: its steps raised through CAPTUM_STEPS until every
    target's completeness error is <= 1%, or `cap` (then the label says so)."""
    default = equal = run_at(50)
    for n_steps in [n for n in CAPTUM_STEPS[1:] if n <= cap]:
        if isinstance(equal, str) or equal.worst <= TOLERANCE:
            break
        equal = run_at(n_steps)
    return default, equal, " (cap)" if not isinstance(equal, str) and equal.worst > TOLERANCE else ""


def rows_for(workload: Workload, captum_cap: int, inseq_python: Path | None, threads: int) -> list[str]:
    captum_default, captum_equal, capped = escalated(lambda n_steps: measured(lambda: captum(workload, n_steps)),
                                                     captum_cap)
    rows = [f"| {workload.name} | Captum, defaults (50 GL steps) | {captum_default.seconds:.2f} | "
            f"{captum_default.evaluations:.0f} | {captum_default.worst:.1%} | {captum_default.peak_gib:.2f} | |",
            f"| | Captum, equal accuracy{capped} | {captum_equal.seconds:.2f} | {captum_equal.evaluations:.0f} | "
            f"{captum_equal.worst:.1%} | {captum_equal.peak_gib:.2f} | |"]
    ours_seconds = []
    for space in workload.spaces:
        run = measured(lambda: ours(workload, space))
        ours_seconds.append(run.seconds)
        rows.append(f"| | llm-attrib, {space} (defaults) | {run.seconds:.2f} | {run.evaluations:.0f} | {run.worst:.1%} | "
                    f"{run.peak_gib:.2f} | {captum_default.seconds / run.seconds:.1f}x / "
                    f"{captum_equal.seconds / run.seconds:.1f}x |")
    if inseq_python is None:
        rows.insert(2, f"| | inseq, IG: not installed (no {INSEQ_PYTHON}; see eval/peers/inseq_attribute.py) "
                       "| | | | | |")
    else:
        inseq_default, inseq_equal, inseq_capped = escalated(
            lambda n_steps: inseq(workload, n_steps, inseq_python, threads), captum_cap)
        rows[2:2] = [inseq_row("defaults (50 GL steps)", inseq_default, ours_seconds),
                     inseq_row(f"equal accuracy{inseq_capped}", inseq_equal, ours_seconds)]
    for space in workload.spaces:
        run = measured(lambda: ours(workload, space, "answer"))
        rows.append(f"| | llm-attrib, {space}, whole answer as one target | {run.seconds:.2f} | {run.evaluations:.0f} | "
                    f"{run.worst:.1%} | {run.peak_gib:.2f} | (another target) |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smollm2-targets", type=int, default=12, help="answer tokens explained on SmolLM2")
    parser.add_argument("--captum-cap", type=int, default=800, help="Captum's largest step count")
    parser.add_argument("--spaces", nargs="+", choices=["embeddings", "attention"], default=None,
                        help="llm-attrib's spaces (default: every space the workload allows); on SmolLM2 attention "
                             "does not converge and would run for hours")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--inseq-python", type=Path, default=INSEQ_PYTHON if INSEQ_PYTHON.exists() else None,
                        help="the inseq venv's python (default: /work/.venvs/inseq's, if it exists)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = [
        "# Speed at equal accuracy: llm-attrib against Captum and inseq",
        "",
        f"`python eval/speed.py --workloads {' '.join(args.workloads)} --threads {args.threads} --smollm2-targets "
        f"{args.smollm2_targets} --captum-cap {args.captum_cap}"
        f"{' --spaces ' + ' '.join(args.spaces) if args.spaces else ''}` (one process, "
        f"{args.threads} CPU thread(s)). Seconds of one run; gradient evaluations per target (Captum: its steps; "
        "llm-attrib: the mean over targets); worst completeness error over the targets, each tool against its own "
        "baseline; peak resident memory of the process during the run. Ratio: Captum's seconds at its defaults / "
        "at equal accuracy, over llm-attrib's. inseq (integrated_gradients, in its own venv, log-probability, "
        "<unk> baseline; seconds and memory of its attribute() call): its seconds over llm-attrib's per-token runs "
        "(embeddings / attention); eval/speed.py's docstring says how its completeness error is computed.",
        "",
        "| workload | run | seconds | gradient evaluations / target | worst completeness error | peak GiB | Captum / llm-attrib |",
        "|:--|:--|--:|--:|--:|--:|--:|",
    ]
    for name in args.workloads:
        workload = smollm2_workload(args.smollm2_targets) if name == "smollm2" else WORKLOADS[name]()
        if args.spaces:
            workload.spaces = tuple(space for space in workload.spaces if space in args.spaces)
        rows = rows_for(workload, args.captum_cap, args.inseq_python, args.threads)
        lines += rows
        print("\n".join(rows), flush=True)
    args.output.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
