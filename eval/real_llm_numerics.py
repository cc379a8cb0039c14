"""Half precision and a long prompt on SmolLM2-135M-Instruct: what changes, what runs, what fails.

    python eval/real_llm_numerics.py --threads 1 [--n 8] [--fp16-n 8] [--spaces embeddings attention]

Why: the package attributes a bf16 or fp16 model in float32 and promises the same ranking as the float32
model, which one test checks on one short prompt; and it promises that a long prompt either runs within
memory or stops at once with a clear error. This measures both on real text.

(a) Half precision. The first n completion and n sentiment examples of eval/data/real_text.jsonl that the
float32 model answers right (eval/real_text.py's `prepare` and `knows`), their expected answer explained by
IG with a fixed rule (32 Gauss-Legendre nodes, tolerance=None: no refinement), so that every dtype integrates
at the same nodes, with the float32 model and its bf16 and fp16 copies. Per target: Spearman correlation of
the half-precision and the float32 scores over the content inputs the target can see (markup excluded, as in
tests/test_real_llm.py; inputs at or after the target's position are zero in every dtype and would only
inflate the correlation).

(b) A ~2000-token chat prompt: the rag documents of the set in one message, then the first rag question,
its expected answer explained by IG (8 Gauss-Legendre nodes, tolerance=None) over embeddings and over
attention, each space in a fresh process so that its peak RSS is its own.

Writes eval/results/real_llm_numerics.md.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import os
import platform
import resource
import subprocess
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import torch
from datasets import load_dataset
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_text import DATA, knows, prepare  # noqa: E402

import llm_attrib  # noqa: E402
from llm_attrib import Attributor, ConvergenceWarning, Explanation  # noqa: E402
from llm_attrib.core.chat import render_chat  # noqa: E402

OUTPUT = Path(__file__).parent / "results" / "real_llm_numerics.md"
HALF = {"bfloat16": torch.bfloat16, "float16": torch.float16}
FIXED_RULE = {"method": "ig", "quadrature": "gauss-legendre", "n_steps": 32, "tolerance": None}
LONG_RULE = {"method": "ig", "quadrature": "gauss-legendre", "n_steps": 8, "tolerance": None}
THRESHOLD = 0.95


def visible_content(exp: Explanation, target: int) -> torch.Tensor:
    """Indices of the inputs target `target` can see (the prompt and earlier answer tokens) that are content."""
    n = exp.n_prompt_tokens + target
    return (~torch.tensor(exp.input_markup[:n])).nonzero()[:, 0]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a constant vector has no rank correlation: NaN, reported as such
        return float(spearmanr(a.numpy(), b.numpy()).statistic)


def explain(attributor: Attributor, item: dict, space: str, rule: dict) -> tuple[Explanation, float]:
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a fixed rule without tolerance: errors reported
        exp = attributor.explain(item["prompt"], answer=item["answer"], space=space, **rule)
    return exp, time.perf_counter() - started


def half_precision(kinds: list[str], n: int, fp16_n: int, spaces: list[str]) -> list[dict]:
    """One row per (example, space, dtype): per-target Spearman against float32, seconds, completeness."""
    model, tokenizer = llm_attrib.zoo.load("smollm2")
    attributors = {"float32": Attributor(model, tokenizer, show_progress=False)}
    for name, dtype in HALF.items():
        attributors[name] = Attributor(copy.deepcopy(model).to(dtype), tokenizer, show_progress=False)
    data = load_dataset("json", data_files=str(DATA), split="train")
    rows = []
    for kind in kinds:
        chosen = []
        for example in (e for e in data if e["kind"] == kind):
            item = prepare(example, tokenizer)
            if knows(attributors["float32"], item):
                chosen.append((example["id"], item))
            if len(chosen) == n:
                break
        for index, (example_id, item) in enumerate(chosen):
            for space in spaces:
                reference, base_seconds = explain(attributors["float32"], item, space, FIXED_RULE)
                rows.append({"id": example_id, "kind": kind, "space": space, "dtype": "float32",
                             "targets": reference.target_tokens, "seconds": base_seconds, "spearman": [],
                             "finite": True, "completeness": reference.completeness_error.tolist()})
                for name in HALF:
                    if name == "float16" and index >= fp16_n:
                        continue
                    exp, seconds = explain(attributors[name], item, space, FIXED_RULE)
                    values = [spearman(exp.scores[t, visible_content(exp, t)],
                                       reference.scores[t, visible_content(reference, t)])
                              for t in range(len(exp.target_ids))]
                    rows.append({"id": example_id, "kind": kind, "space": space, "dtype": name,
                                 "targets": exp.target_tokens, "seconds": seconds, "spearman": values,
                                 "finite": bool(torch.isfinite(exp.scores).all()),
                                 "completeness": exp.completeness_error.tolist()})
                    print(f"{example_id} {space:10s} {name:8s} {seconds:6.1f}s (float32 {base_seconds:.1f}s) "
                          f"spearman {' '.join(f'{v:.3f}' for v in values)}", flush=True)
    return rows


def long_prompt(tokenizer, data, n_tokens: int) -> tuple[list[dict], str]:
    """The rag documents of the set (the first question's own first, no repeats) in one chat message, then
    the first rag question: as many whole documents as keep the rendered prompt within `n_tokens`."""
    rag = [e for e in data if e["kind"] == "rag"]
    documents = list(dict.fromkeys(d for e in rag for d in e["documents"]))
    question = f"\nQuestion: {rag[0]['question']}"
    content = "Answer the question using the documents.\n\n"
    for i, document in enumerate(documents):
        longer = content + f"Document {i + 1}: {document}\n"
        text, _ = render_chat(tokenizer, [{"role": "user", "content": longer + question}])
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) > n_tokens:
            break
        content = longer
    return [{"role": "user", "content": content + question}], rag[0]["answer"]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def long_run(space: str, n_tokens: int, threads: int) -> dict:
    """IG of the long prompt in one space (run in a fresh process: ru_maxrss is this process's alone)."""
    torch.set_num_threads(threads)
    model, tokenizer = llm_attrib.zoo.load("smollm2")
    data = load_dataset("json", data_files=str(DATA), split="train")
    messages, answer = long_prompt(tokenizer, data, n_tokens)
    attributor = Attributor(model, tokenizer, show_progress=False)
    seq = attributor.sequence(messages, answer)
    record = {"space": space, "n_prompt": seq.n_prompt, "n_targets": seq.n_targets, "answer": answer,
              "rss_before_mib": peak_rss_mib()}
    started = time.perf_counter()
    try:
        exp, _ = explain(attributor, {"prompt": messages, "answer": answer}, space, LONG_RULE)
        record.update(ran=True, completeness=exp.completeness_error.tolist(), cost=exp.cost,
                      chunk=exp.cost["internal_batch_size"],
                      top=[tok for tok, _ in exp.top_tokens(0, k=5)])
    except Exception as error:  # noqa: BLE001 - the error is the measurement
        record.update(ran=False, error=f"{type(error).__name__}: {error}")
    record.update(seconds=time.perf_counter() - started, peak_rss_mib=peak_rss_mib())
    return record


def long_prompt_outcomes(spaces: list[str], n_tokens: int, threads: int) -> list[dict]:
    records = []
    for space in spaces:
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            try:
                records.append(pool.submit(long_run, space, n_tokens, threads).result())
            except BrokenProcessPool:
                records.append({"space": space, "ran": False, "error": "the process died (killed, likely for memory)"})
        print(records[-1], flush=True)
    return records


def half_table(rows: list[dict]) -> list[str]:
    lines = ["| kind | space | dtype | examples | targets | mean Spearman | min Spearman | targets >= 0.95 | "
             "s/example | s/example float32 (same examples) | all scores finite | median completeness error |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    groups = dict.fromkeys((r["kind"], r["space"]) for r in rows)
    for kind, space in groups:
        own = [r for r in rows if r["kind"] == kind and r["space"] == space]
        base = {r["id"]: r for r in own if r["dtype"] == "float32"}
        for name in HALF:
            chosen = [r for r in own if r["dtype"] == name]
            if not chosen:
                continue
            values = torch.tensor([v for r in chosen for v in r["spearman"]])
            errors = torch.tensor([e for r in chosen for e in r["completeness"]])
            lines.append(
                f"| {kind} | {space} | {name} | {len(chosen)} | {len(values)} | {values.nanmean():.4f} | "
                f"{values.min():.4f} | {(values >= THRESHOLD).float().mean():.2f} | "
                f"{sum(r['seconds'] for r in chosen) / len(chosen):.1f} | "
                f"{sum(base[r['id']]['seconds'] for r in chosen) / len(chosen):.1f} | "
                f"{all(r['finite'] for r in chosen)} | {errors.nanmedian():.3g} |")
        errors = torch.tensor([e for r in base.values() for e in r["completeness"]])
        lines.append(f"| {kind} | {space} | float32 | {len(base)} | | | | | "
                     f"{sum(r['seconds'] for r in base.values()) / len(base):.1f} | | | {errors.nanmedian():.3g} |")
    return lines


def example_table(rows: list[dict]) -> list[str]:
    lines = ["| example | space | targets | " + " | ".join(f"{n} Spearman per target" for n in HALF) + " |",
             "|---|---|---|" + "---|" * len(HALF)]
    for r in (r for r in rows if r["dtype"] == "float32"):
        cells = []
        for name in HALF:
            match = [h for h in rows if (h["id"], h["space"], h["dtype"]) == (r["id"], r["space"], name)]
            cells.append(" ".join(f"{v:.3f}" for v in match[0]["spearman"]) if match else "not run")
        lines.append(f"| {r['id']} | {r['space']} | {' '.join(repr(t) for t in r['targets'])} | {' | '.join(cells)} |")
    return lines


def long_table(records: list[dict]) -> list[str]:
    lines = ["| space | prompt tokens | targets | ran | chunk | seconds | peak RSS MiB (before explain) | "
             "forwards / backwards | completeness error | top content tokens, first target | error |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        cost = r.get("cost", {})
        completeness = " ".join(f"{e:.3g}" for e in r.get("completeness", []))
        rss = f"{r['peak_rss_mib']:.0f} ({r['rss_before_mib']:.0f})" if "peak_rss_mib" in r else ""
        lines.append(
            f"| {r['space']} | {r.get('n_prompt', '')} | {r.get('n_targets', '')} | {r['ran']} | {r.get('chunk', '')} | "
            f"{r.get('seconds', float('nan')):.1f} | {rss} | "
            f"{cost.get('n_forward', '')} / {cost.get('n_backward', '')} | {completeness} | "
            f"{' '.join(repr(t) for t in r.get('top', []))} | {r.get('error', '')} |")
    return lines


def code_version() -> str:
    """Where llm_attrib was imported from, and its commit when that is a git checkout."""
    folder = Path(llm_attrib.__file__).resolve().parent.parent
    git = ["git", "-C", str(folder)]
    try:
        commit = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(git + ["status", "--porcelain", "llm_attrib"], capture_output=True, text=True, check=True)
    except (subprocess.CalledProcessError, FileNotFoundError):
        return f"llm_attrib {llm_attrib.__version__} from {folder} (not a git checkout)"
    return (f"llm_attrib {llm_attrib.__version__} from {folder} at commit {commit.stdout.strip()}"
            + (" with uncommitted changes to llm_attrib/" if dirty.stdout.strip() else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8, help="examples per kind (the first n the model answers right)")
    parser.add_argument("--fp16-n", type=int, default=None,
                        help="fp16 on only the first this many of them (fp16 is slow on CPU); default: all n")
    parser.add_argument("--kinds", nargs="+", default=["completion", "sentiment"])
    parser.add_argument("--spaces", nargs="+", default=["embeddings"], choices=["embeddings", "attention"],
                        help="spaces of the half-precision comparison")
    parser.add_argument("--long-tokens", type=int, default=2000, help="prompt length of (b); 0 skips (b)")
    parser.add_argument("--skip-half", action="store_true", help="only (b)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fp16_n = args.n if args.fp16_n is None else args.fp16_n
    load = os.getloadavg()[0]
    started = time.perf_counter()
    rows = [] if args.skip_half else half_precision(args.kinds, args.n, fp16_n, args.spaces)
    records = long_prompt_outcomes(["embeddings", "attention"], args.long_tokens, args.threads) if args.long_tokens else []
    environment = f"PYTHONPATH={os.environ['PYTHONPATH']} " if os.environ.get("PYTHONPATH") else ""
    text = [
        "# Half precision and a long prompt on SmolLM2-135M-Instruct", "",
        f"`{environment}python eval/real_llm_numerics.py {' '.join(sys.argv[1:])}`", "",
        f"Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), {args.threads} torch "
        f"thread(s); load average {load:.2f} at the start and {os.getloadavg()[0]:.2f} at the end (another process "
        f"may share the CPU, so seconds are upper bounds); torch {torch.__version__}; the whole run took "
        f"{time.perf_counter() - started:.0f} s; {code_version()}.", ""]
    if rows:
        fp16_note = (f" fp16 ran on the first {fp16_n} of them only (`--fp16-n {fp16_n}`: fp16 is slow on this CPU)."
                     if fp16_n < args.n else "")
        text += [
            "## (a) bf16 and fp16 copies against float32", "",
            f"The first {args.n} examples of each kind the float32 model answers right; the expected answer explained by "
            "IG with 32 Gauss-Legendre nodes and no refinement (tolerance=None), the same nodes in every dtype; models "
            "are `copy.deepcopy(model).to(dtype)`, scores computed in float32 by the package." + fp16_note + " Spearman "
            "(scipy) per target over the content inputs it can see (markup excluded); s/example is one explanation's "
            "seconds; completeness error is that of the fixed 32-node rule (not converged where it is large, in "
            "every dtype alike: the comparison is of the same integral in different precisions).", "",
            *half_table(rows), "", "Per example:", "", *example_table(rows), ""]
    if records:
        text += [
            f"## (b) A ~{args.long_tokens}-token prompt", "",
            "The rag documents of eval/data/real_text.jsonl (no repeats) in one chat message, then the first rag "
            "question, as many whole documents as keep the rendered prompt within the length; the expected answer "
            "explained by IG with 8 Gauss-Legendre nodes, tolerance=None, the chunk chosen from the measured memory "
            "budget (recorded in the explanation's cost), each space in a fresh process (peak RSS = ru_maxrss of "
            "that process: model load included; in brackets, before the explanation).", "",
            *long_table(records), ""]
    args.output.write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
