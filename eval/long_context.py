"""Peak memory and seconds against prompt length on SmolLM2, llm-attrib's spaces beside Captum and inseq.

The rule (what is measured, what decides, when a cell is skipped) is in eval/results/long_context.md. Each cell
(row x length) runs in its own subprocess so peaks do not mix; this parent runs them one after another, lengths
ascending, and appends each row to the results file as it finishes.

    nice -n 5 python eval/long_context.py [--lengths 1024 2048 4096 8192] [--rows mask embeddings ...]
        [--inseq-python /work/.venvs/inseq/bin/python] [--out eval/results/long_context.md]

A child (`--cell ROW LENGTH`) prints one JSON line. The inseq child runs under the inseq environment's
Python (transformers 4.x) and imports nothing of llm_attrib; the others run here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
N_STEPS = 2
ANSWER = " The"
GiB = 2**30
MAX_PREDICTED_BYTES = 12 * GiB
MAX_PREDICTED_SECONDS = 15 * 60
LLM_ATTRIB_ROWS = {  # row -> (space, recompute)
    "mask": ("mask", True),
    "embeddings": ("embeddings", True),
    "mask-plain": ("mask", False),
    "embeddings-plain": ("embeddings", False),
    "attention": ("attention", None),
}
ROWS = list(LLM_ATTRIB_ROWS) + ["captum", "inseq"]
DEFAULT_ROWS = ["mask", "embeddings", "attention", "captum", "inseq"]


def documents() -> list[str]:
    """Every document of the real-text sets, each once, in file order."""
    seen, out = set(), []
    for name in ("real_text.jsonl", "rag_real_replication.jsonl"):
        for line in (HERE / "data" / name).read_text().splitlines():
            for doc in json.loads(line).get("documents", []):
                if doc not in seen:
                    seen.add(doc)
                    out.append(doc)
    return out


def prompt_of(tokenizer, length: int) -> str:
    """A prompt of `length` tokens (one or two fewer where the cut would split a merged token): 'Documents:' and
    the documents, cut at a token's end."""
    text = "Documents:\n\n" + "\n\n".join(documents())
    ends = [end for _, end in tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]
    for cut in range(length, length - 20, -1):  # a cut inside a merge ('\n' + '\n') re-tokenises shorter
        prompt = text[: ends[cut - 1]]
        if len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) == cut:
            return prompt
    raise SystemExit(f"no prompt of {length} tokens ({len(ends)} tokens of documents)")


def reset_peak() -> int:
    """Reset the process's peak resident memory; return the resident memory now (bytes)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status_bytes("VmRSS")


def status_bytes(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def warm_up(model) -> None:
    """One forward and backward of 64 tokens, so first-use allocations (kernels' buffers) are in every row's
    memory before the call alike."""
    import torch

    ids = torch.arange(64)[None] + 1000
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    model(inputs_embeds=embeds).logits[0, -1].logsumexp(-1).backward()


def measured(call) -> dict:
    """Seconds, peak resident memory and the memory before, of `call()`; its own fields added. While it runs, a
    line per backward pass and every 30 s (elapsed seconds, CPU seconds, peak so far) goes to the file named by
    LONG_CONTEXT_TRACE, if set, so a cell stopped by the session's end still tells how far it got."""
    import threading

    import torch

    trace = os.environ.get("LONG_CONTEXT_TRACE")
    before = reset_peak()
    started = time.perf_counter()

    def note(what: str) -> None:
        if trace:
            with open(trace, "a") as f:
                f.write(json.dumps({"what": what, "seconds": time.perf_counter() - started,
                                    "cpu": time.process_time(), "peak": status_bytes("VmHWM"),
                                    "before": before}) + "\n")

    grad, backward = torch.autograd.grad, torch.Tensor.backward

    def traced(function):
        def run(*args, **kwargs):
            out = function(*args, **kwargs)
            note("backward")
            return out
        return run

    torch.autograd.grad, torch.Tensor.backward = traced(grad), traced(backward)
    done = threading.Event()
    threading.Thread(target=lambda: [note("running") for _ in iter(lambda: done.wait(30), True)], daemon=True).start()
    extra = call() or {}
    seconds = time.perf_counter() - started
    done.set()
    torch.autograd.grad, torch.Tensor.backward = grad, backward
    return {"seconds": seconds, "peak": status_bytes("VmHWM"), "before": before, **extra}


def llm_attrib_cell(row: str, length: int) -> dict:
    import torch

    import llm_attrib
    from llm_attrib.errors import LlmAttribError

    torch.set_num_threads(1)
    model, tokenizer = llm_attrib.zoo.load("smollm2")
    prompt = prompt_of(tokenizer, length - 1)  # and the answer token: `length` in all
    space, recompute = LLM_ATTRIB_ROWS[row]
    attributor = llm_attrib.Attributor(model, tokenizer, internal_batch_size=1, show_progress=False,
                                       memory_budget=16 * GiB, recompute=recompute)
    warm_up(model)
    start = prompt.index("\n\n") + 2

    def call() -> dict:
        try:
            exp = attributor.explain(prompt, answer=ANSWER, space=space, n_steps=N_STEPS, tolerance=None,
                                     quadrature="gauss-legendre", attribute_to=[(start, len(prompt))])
        except LlmAttribError as error:
            return {"refused": str(error)}
        return {"n_prompt": exp.n_prompt_tokens, "recompute": exp.cost["recompute"],
                "point_bytes": exp.cost["point_bytes"], "n_backward": exp.cost["n_backward"],
                "completeness_error": float(exp.completeness_error[0])}

    return measured(call)


def guard_estimates(lengths: list[int]) -> list[str]:
    """The memory guard's bytes per point (transients included) for each llm-attrib space, with and without
    recompute, at each length: measured at three short prompts and extrapolated, as every explanation does, so
    no long prompt runs. Markdown table lines."""

    import torch

    import llm_attrib
    from llm_attrib.core.memory import TRANSIENT_FACTOR
    from llm_attrib.core.spaces import make_space
    from llm_attrib.core.targets import resolve_target
    from llm_attrib.methods import Problem
    from llm_attrib.patching import prepared, recomputed

    torch.set_num_threads(1)
    model, tokenizer = llm_attrib.zoo.load("smollm2")
    attributor = llm_attrib.Attributor(model, tokenizer, show_progress=False)
    lines = ["| space | recompute | " + " | ".join(f"{n} tokens" for n in lengths) + " |",
             "|---|---|" + "---|" * len(lengths)]
    for space in ("mask", "embeddings", "attention"):
        for flag in (False, True):
            cells = []
            for length in lengths:
                seq = attributor.sequence(prompt_of(tokenizer, length - 1), answer=ANSWER)
                with prepared(model, hook_attention=space != "embeddings"), (
                        recomputed(model) if flag else contextlib.nullcontext()):
                    problem = Problem(model, tokenizer, seq, make_space(space), resolve_target("log_prob", None, model.config.vocab_size))
                    cells.append(TRANSIENT_FACTOR * attributor._bytes_per_point(problem, recompute=flag) / GiB)
            lines.append(f"| {space} | {flag} | " + " | ".join(f"{gib:.2f} GiB" for gib in cells) + " |")
    return lines


def captum_cell(length: int) -> dict:
    import torch
    from captum.attr import LayerIntegratedGradients

    import llm_attrib

    torch.set_num_threads(1)
    model, tokenizer = llm_attrib.zoo.load("smollm2")
    prompt = prompt_of(tokenizer, length - 1)  # and the answer token: `length` in all
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    (target,) = tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
    warm_up(model)

    def forward(input_ids):
        return model(input_ids=input_ids).logits[:, -1].log_softmax(-1)[:, target]

    def call() -> dict:
        lig = LayerIntegratedGradients(forward, model.get_input_embeddings())
        lig.attribute(ids, n_steps=N_STEPS, internal_batch_size=1)
        return {"n_prompt": ids.shape[1]}

    return measured(call)


def inseq_cell(length: int) -> dict:
    """Runs under the inseq environment (transformers 4.x). The zoo's SmolLM2 folder was saved by transformers 5:
    a copy of its config names the rope theta the way 4.x reads it, and its tokenizer class one 4.x loads."""
    import tempfile

    import inseq
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    source = Path(os.environ["SMOLLM2_DIR"])
    folder = Path(tempfile.mkdtemp())
    for name in os.listdir(source):
        if name not in ("config.json", "tokenizer_config.json"):
            os.symlink(source / name, folder / name)
    config = json.loads((source / "config.json").read_text())
    config["rope_theta"] = config["rope_parameters"]["rope_theta"]
    config.pop("quantization_config", None)  # null here (the GGUF's dequantised weights); 4.x cannot print it
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer_config = json.loads((source / "tokenizer_config.json").read_text())
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = prompt_of(tokenizer, length - 1)  # and the answer token: `length` in all
    model = inseq.load_model(str(folder), "integrated_gradients", tokenizer=tokenizer)
    warm_up(model.model)

    def call() -> dict:
        out = model.attribute(prompt, prompt + ANSWER, n_steps=N_STEPS, internal_batch_size=1, show_progress=False)
        return {"n_prompt": len(out.sequence_attributions[0].source)}

    return measured(call)


def run_cell(row: str, length: int, inseq_python: str) -> dict:
    """Run one cell in a child process; its JSON result (or the failure)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", LONG_CONTEXT_TRACE=f"/tmp/long_context_{row}_{length}.jsonl")
    python = sys.executable
    if row == "inseq":
        from llm_attrib.zoo import path

        python, env["SMOLLM2_DIR"] = inseq_python, str(path("smollm2"))
        env.pop("PYTHONPATH", None)
    done = subprocess.run([python, __file__, "--cell", row, str(length)], capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"failed": (done.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return json.loads(lines[-1])


def predicted(ran: list[dict], key: str, least: float) -> float | None:
    """The next length's figure from the row's measured cells: the last one times the growth between the last two
    (at least `least`), or None before any cell. Memory grows above the loaded model."""
    values = [cell[key] - (cell["before"] if key == "peak" else 0) for cell in ran]
    if not values:
        return None
    growth = values[-1] / values[-2] if len(values) > 1 and values[-2] > 0 else least
    return values[-1] * max(growth, least) + (ran[-1]["before"] if key == "peak" else 0)


def cell_text(cell: dict) -> str:
    if "skipped" in cell:
        return f"skipped: {cell['skipped']}"
    if "failed" in cell:
        return f"failed: {cell['failed']}"
    if "refused" in cell:
        return f"refused: {cell['refused']}"
    text = (f"{cell['peak'] / GiB:.2f} GiB peak ({(cell['peak'] - cell['before']) / GiB:.2f} above the model), "
            f"{cell['seconds'] / N_STEPS:.1f} s/point ({cell['seconds']:.0f} s)")
    if cell.get("point_bytes"):
        text += f"; guard's estimate {cell['point_bytes'] / GiB:.2f} GiB/point"
    if "recompute" in cell:
        text += f"; recompute={cell['recompute']}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cell", nargs=2, metavar=("ROW", "LENGTH"))
    parser.add_argument("--lengths", nargs="+", type=int, default=[1024, 2048, 4096, 8192])
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=DEFAULT_ROWS)
    parser.add_argument("--inseq-python", default="/work/.venvs/inseq/bin/python")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "long_context.md")
    parser.add_argument("--estimates", action="store_true",
                        help="print and append the memory guard's estimates per point instead of running cells")
    parser.add_argument("--order", nargs="+", metavar="ROW:LENGTH",
                        help="run these cells in this order instead of the default stages")
    args = parser.parse_args()
    if args.estimates:
        lines = guard_estimates(sorted(args.lengths))
        print("\n".join(lines))
        with args.out.open("a") as out:
            out.write("\nThe memory guard's estimate of one path point (bytes kept x 1.5), from three short prompts:\n\n"
                      + "\n".join(lines) + "\n")
        return
    if args.cell:
        row, length = args.cell[0], int(args.cell[1])
        cell = (captum_cell(length) if row == "captum" else inseq_cell(length) if row == "inseq"
                else llm_attrib_cell(row, length))
        print(json.dumps(cell))
        return
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout
    with args.out.open("a") as out:
        out.write(f"\nRun of commit {commit.strip()}, started {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
                  "one line per cell as it finished: row, length, result, load average before the cell.\n\n")
    history: dict[str, dict[int, dict]] = {row: {} for row in ROWS}
    order = stages(args.lengths, args.rows) if not args.order else [
        (int(cell.split(":")[1]), [cell.split(":")[0]]) for cell in args.order]
    for length, rows in order:
        for row in rows:
            cell = next_cell(history[row], length, always=row in ("mask", "embeddings"))
            if cell is None:
                load = os.getloadavg()[0]
                cell = {**run_cell(row, length, args.inseq_python), "load": load}
            history[row][length] = cell
            line = f"- {row}, {length} tokens: {cell_text(cell)}"
            if "load" in cell:
                line += f" (load {cell['load']:.1f})"
            print(line, flush=True)
            with args.out.open("a") as out:
                out.write(line + "\n")


def stages(lengths: list[int], rows: list[str]) -> list[tuple[int, list[str]]]:
    """The order cells run in: the shortest length, then the 4k comparison, the issue's 8k rows (mask and
    embeddings), the lengths between, and the peers' longest cells last."""
    lengths = sorted(lengths)
    first = [lengths[0]] + [n for n in lengths[1:] if n == 4096]
    ours = [row for row in rows if row in ("mask", "embeddings")]
    order = [(n, rows) for n in first]
    order += [(lengths[-1], ours)] if lengths[-1] not in first else []
    order += [(n, rows) for n in lengths if n not in first and n != lengths[-1]]
    order += [(lengths[-1], [row for row in rows if row not in ours])] if lengths[-1] not in first else []
    return order


def next_cell(history: dict[int, dict], length: int, always: bool) -> dict | None:
    """None to run the row at `length`, or why it is skipped (see the rule): after a refusal or skip at a shorter
    length, or where the prediction from the shorter lengths is over the caps (`always`: the issue's own rows
    run whatever their predicted time)."""
    shorter = [history[n] for n in sorted(history) if n < length]
    if shorter and "peak" not in shorter[-1]:
        return {"skipped": "the shorter prompt was refused, skipped or failed"}
    ran = [cell for cell in shorter if "peak" in cell]
    memory = predicted(ran, "peak", 2.0)
    seconds = predicted(ran, "seconds", 2.0 if len(ran) > 1 else 4.0)
    if memory is not None and memory > MAX_PREDICTED_BYTES:
        return {"skipped": f"predicted peak {memory / GiB:.1f} GiB > 12 GiB"}
    if not always and seconds is not None and seconds > MAX_PREDICTED_SECONDS:
        return {"skipped": f"predicted {seconds / 60:.0f} min > 15 min"}
    return None


if __name__ == "__main__":
    main()
