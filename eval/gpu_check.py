"""Check a GPU machine: load a model the way users do (bf16, `device_map="auto"`), explain one prompt over every
space, rank the documents of a RAG prompt, and print each run's seconds, peak memory and completeness error.

    python eval/gpu_check.py                              # SmolLM2-135M-Instruct (zoo), bf16 on the GPUs
    python eval/gpu_check.py --model /path/to/model       # any causal LM folder (a hub name where online)
    accelerate launch --multi_gpu --num_processes 2 eval/gpu_check.py   # one explanation split over 2 GPUs
    python eval/gpu_check.py --cpu --model rag            # float32 on the CPU, the small zoo model (the tests)

With several processes each loads the model on its own GPU (`parallel.device()`), every explanation splits its
path points between them (`shard_points=True`, in chunks of 8 points so that the short prompt still gives each
process some), and the main process explains once more alone to check the split gives the same scores.

Exit code 1 when a check fails: a completeness error above --max-error, a RAG ranking that does not put the
source document first, a split explanation that differs from one process or left one process all the work.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

import llm_attrib
from llm_attrib import Attributor, parallel, rag
from llm_attrib.attributor import counting_forwards
from llm_attrib.core.placement import execution_devices, input_device

SPACES = ("embeddings", "attention", "mask")
SPLIT_CHUNK = 8
QUESTION = "What is the highest mountain in Japan?"
DOCUMENTS = ["Mount Kilimanjaro is the highest mountain in Africa. It is a dormant volcano in Tanzania.",
             "Mount Fuji is the highest mountain in Japan. It last erupted in 1707."]


def load(name: str, cpu: bool):
    """bf16 spread by Accelerate over the GPUs (one GPU per process when launched), or float32 on the CPU."""
    synthetic = name in llm_attrib.zoo.NAMES
    if synthetic:
        folder = llm_attrib.zoo.path(name)
    elif name in llm_attrib.zoo.PRETRAINED:
        folder = llm_attrib.zoo.pretrained_path(name)
    else:
        folder = Path(name) if Path(name).exists() else name
    placement = {"": parallel.device()} if parallel.n_processes() > 1 else "cpu" if cpu else "auto"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32 if cpu else torch.bfloat16,
                                                 device_map=placement).eval()
    # the zoo's word-level tokenizers load as saved (AutoTokenizer would swap in Qwen2's)
    tokenizer = (PreTrainedTokenizerFast if synthetic else AutoTokenizer).from_pretrained(folder)
    return model, tokenizer


def measured(run, gpus: list[torch.device]):
    """run()'s result, seconds and peak memory (GiB: this process's allocations on the model's GPUs, summed; on
    the CPU the process's RSS peak so far, which cannot be reset)."""
    for gpu in gpus:
        torch.cuda.reset_peak_memory_stats(gpu)
    started = time.perf_counter()
    result = run()
    for gpu in gpus:
        torch.cuda.synchronize(gpu)
    seconds = time.perf_counter() - started
    if gpus:
        peak = sum(torch.cuda.max_memory_allocated(gpu) for gpu in gpus) / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return result, seconds, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="zoo name or model folder (default: smollm2)")
    parser.add_argument("--cpu", action="store_true", help="float32 on the CPU, where there is no GPU")
    parser.add_argument("--max-steps", type=int, help="gradient evaluations per target at most (default: the "
                        "package's)")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--max-error", type=float, default=0.05, help="worst completeness error allowed")
    args = parser.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        parser.error("no CUDA device; pass --cpu to run the same checks on the CPU")
    if args.cpu:
        torch.set_num_threads(1)
    budget = {"max_steps": args.max_steps} if args.max_steps else {}
    model, tokenizer = load(args.model, args.cpu)
    main_process = parallel.is_main()
    say = print if main_process else (lambda *a, **k: None)
    say(f"{args.model}: {parallel.n_processes()} process(es); weights {model.dtype}; inputs on {input_device(model)};"
        f" computes on {', '.join(map(str, execution_devices(model)))}; torch {torch.__version__}")
    if args.model in llm_attrib.zoo.NAMES:  # a synthetic task: its own prompt words
        example = llm_attrib.zoo.examples(args.model, n=1, seed=0)[0]
        prompt, question, documents = example["prompt"], example.get("question"), example.get("document_texts")
        answer, source, template = example["answer"], example.get("relevant_document"), "zoo"
    else:
        prompt = [{"role": "user", "content": "Why is the sky blue? Answer in one sentence."}]
        question, documents, answer, source, template = QUESTION, DOCUMENTS, "Mount Fuji", 1, None
    failed = []
    gpus = [d for d in execution_devices(model) if d.type == "cuda"]
    split = parallel.n_processes() > 1
    chunk = SPLIT_CHUNK if split else None
    attributor = Attributor(model, tokenizer, show_progress=False, shard_points=split, internal_batch_size=chunk)
    say(f"{'run':<28}{'seconds':>9}{'peak GiB':>10}{'completeness error':>20}{'gradients':>11}")
    # the main process's answer, for every process (each must explain the same targets)
    generated = attributor.sequence(prompt, max_new_tokens=args.max_new_tokens).target_ids.tolist()
    targets = parallel.gathered([generated])[0]
    for space in SPACES:
        with counting_forwards(model) as forwards:
            exp, seconds, peak = measured(lambda: attributor.explain(prompt, targets, space=space, **budget), gpus)
        per_process = parallel.gathered(forwards)
        error = float(exp.completeness_error.max())
        say(f"{'ig over ' + space:<28}{seconds:>9.2f}{peak:>10.2f}{error:>20.2%}{exp.cost['n_backward']:>11}")
        if error > args.max_error:
            failed.append(f"ig over {space}: completeness error {error:.2%} > {args.max_error:.0%}")
        if split and main_process:
            with counting_forwards(model) as alone_forwards:
                alone = Attributor(model, tokenizer, show_progress=False, internal_batch_size=chunk).explain(
                    prompt, targets, space=space, **budget)
            worst = float((exp.scores - alone.scores).abs().max())
            allowed = (1e-5 if model.dtype == torch.float32 else 1e-2) * float(alone.scores.abs().max())
            say(f"  split vs one process: forwards per process {per_process}, one process {alone_forwards[0]}; "
                f"max difference {worst:.2e} (allowed {allowed:.1e})")
            if worst > allowed:
                failed.append(f"ig over {space}: split over processes differs from one process by {worst:.2e}")
            if max(per_process) >= alone_forwards[0]:
                failed.append(f"ig over {space}: one process did all the work ({per_process} forwards)")
        parallel.wait_for_everyone()
    if documents is not None and main_process:  # rag.explain runs in one process
        result, seconds, peak = measured(lambda: rag.explain(model, tokenizer, question, documents, answer,
                                                             template=template, show_progress=False, **budget), gpus)
        error = float(result.explanation.completeness_error.max())
        say(f"{'rag.explain (ranking)':<28}{seconds:>9.2f}{peak:>10.2f}{error:>20.2%}"
            f"{result.explanation.cost['n_backward']:>11}   ranking {result.ranking}, answer {result.answer!r}")
        if result.top_document != source:
            failed.append(f"rag.explain ranks document {result.top_document} first, not the source {source}")
        if error > args.max_error:
            failed.append(f"rag.explain: completeness error {error:.2%} > {args.max_error:.0%}")
    say("\n".join(["FAILED: " + f for f in failed] or ["every check passed"]))
    parallel.finish()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
