"""Recomputation for long prompts: the fused soft-mask attention and checkpointed layers give the plain run's
numbers, keep less memory, and the memory guard's estimate still bounds what a point really takes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from llm_attrib import Attributor
from llm_attrib.core import soft_mask_attention as fused
from llm_attrib.patching import attention_probabilities, recomputed, soft_masked
from tiny_models import is_encoder, tiny_model
from tiny_tokenizer import tiny_llama, tiny_tokenizer


def _masks(length: int) -> dict[str, torch.Tensor]:
    """Additive masks (B, 1, L, L) in float64: causal, a sliding window of 5, and left padding of 3 tokens on the
    second sequence (its padded queries see only themselves, as transformers' masks keep a row finite)."""
    low = torch.finfo(torch.float64).min
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    window = causal & ~torch.ones(length, length, dtype=torch.bool).tril(-5)
    padded = causal.expand(2, length, length).clone()
    padded[1, :, :3] = False
    padded[1, :3, :3] = torch.eye(3, dtype=torch.bool)
    as_mask = lambda allowed: torch.zeros(allowed.shape, dtype=torch.float64).masked_fill(~allowed, low)
    return {"causal": as_mask(causal)[None, None], "window": as_mask(window)[None, None],
            "padding": as_mask(padded)[:, None]}


@pytest.mark.parametrize("mask_name", ["causal", "window", "padding"])
@pytest.mark.parametrize("shared_visibility", [False, True])
def test_fused_soft_mask_attention_equals_the_eager_soft_mask(monkeypatch, mask_name, shared_visibility):
    """Output and every gradient (queries, keys, values, visibility; hidden keys included, where log v is -inf)
    equal the eager soft mask's, with the backward split into many query blocks."""
    monkeypatch.setattr(fused, "BLOCK_ELEMENTS", 2 * 3 * 23 * 4)  # blocks of 4 queries
    torch.manual_seed(0)
    batch, heads, length, dim = 2, 3, 23, 8
    q, k, v = (torch.randn(batch, heads, length, dim, dtype=torch.float64, requires_grad=True) for _ in range(3))
    visibility = torch.rand(1 if shared_visibility else batch, length, dtype=torch.float64)
    visibility[:, 5] = 0.0
    visibility[:, 0] = 1.0
    visibility[:, length - 4:] = 1.0  # every query of the window sees a visible key
    visibility.requires_grad_(True)
    mask = _masks(length)[mask_name]
    got = fused.soft_mask_attention(q, k, v, visibility, mask, 0.3)
    weighted = torch.softmax(q @ k.transpose(-1, -2) * 0.3 + mask, -1) * visibility[:, None, None, :]
    expected = weighted / weighted.sum(-1, keepdim=True) @ v  # the eager soft mask, in float64 throughout
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    probs, kept = soft_masked(nn.Module(), attention_probabilities(nn.Module(), q, k, mask, 0.3), visibility)
    torch.testing.assert_close(got, probs @ v, rtol=1e-5, atol=1e-6)  # the package's own (its softmax in float32)
    weights = torch.randn_like(expected)
    inputs = [q, k, v, visibility]
    mine = torch.autograd.grad((got * weights).sum(), inputs)
    for ours, theirs in zip(mine, torch.autograd.grad((expected * weights).sum(), inputs)):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-10)
    assert mine[3][:, 5].abs().sum() > 0  # a hidden key's visibility has a gradient, finite
    torch.testing.assert_close(fused.visible_share(q, k, visibility, mask, 0.3), kept.min().float().to(torch.float64),
                               rtol=1e-6, atol=0)


# plain softmax (GQA, sliding window, qk-norm, GPT-2's own scaling, a bidirectional encoder), softcapping (gemma2)
# and sinks (gpt_oss), which keep the eager attention inside checkpointed layers
ARCHITECTURES = ["llama_gqa", "mistral_gqa", "qwen3", "gpt2", "bert", "gemma2", "gpt_oss"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_recomputed_explanations_equal_plain_ones(arch):
    """Every space gives the plain run's scores with recompute=True (points batched in one chunk): the mask space
    from a baseline that hides nothing entirely (sliding windows then always see a visible key) and, where every
    query sees the first token, from the default fully hidden baseline (gradients at visibility 0)."""
    model, vocab = tiny_model(arch)
    tokenizer = tiny_tokenizer(vocab)
    prompt = " ".join(f"w{i % 50 + 1}" for i in range(14))
    target = {"target_class": 1} if is_encoder(arch) else {"answer": "w4 w5"}
    seq = Attributor(model, tokenizer).sequence(prompt, **target)
    runs = [("embeddings", None), ("attention", None),
            ("mask", torch.full((model.config.num_hidden_layers, seq.length), 0.25))]
    if arch not in ("mistral_gqa", "gemma2"):  # sliding windows of 4 see no visible key at the hidden baseline
        runs.append(("mask", None))
    for space, baseline in runs:
        plain, recomputing = (Attributor(model, tokenizer, show_progress=False, recompute=flag).explain(
            prompt, **target, space=space, baseline=baseline, n_steps=3, tolerance=None,
            quadrature="gauss-legendre") for flag in (False, True))
        assert (plain.cost["recompute"], recomputing.cost["recompute"]) == (False, True)
        scale = plain.scores.abs().max()
        torch.testing.assert_close(recomputing.scores, plain.scores, rtol=0, atol=2e-5 * scale)


def test_recompute_runs_without_the_static_prefix_and_gives_its_scores():
    """A prompt whose leading tokens never move: the plain run reuses their cache (its forwards run on the rest),
    the recomputed one runs every token (a checkpointed layer cannot replay a cache), with the same scores."""
    from test_static_prefix import MOVING, PREFIX, PROMPT, input_lengths

    model, tokenizer = tiny_llama(), tiny_tokenizer(64)
    runs = {}
    for flag in (False, True):
        attributor = Attributor(model, tokenizer, show_progress=False, recompute=flag)
        runs[flag] = input_lengths(model, lambda: attributor.explain(
            PROMPT, answer="w5 w6 w8", attribute_to=MOVING, space="mask", n_steps=3, tolerance=None,
            quadrature="gauss-legendre"))
    (plain, plain_lengths), (recomputed_run, lengths) = runs[False], runs[True]
    suffix = 1 + 14 + 3 - PREFIX  # what the plain run's chunks run on
    assert suffix in plain_lengths and suffix not in lengths and PREFIX not in lengths
    torch.testing.assert_close(recomputed_run.scores, plain.scores, rtol=0, atol=2e-5 * plain.scores.abs().max())


def test_recomputed_leaves_the_model_as_it_was_also_after_an_error():
    model = tiny_llama()
    ids = torch.tensor([[2, 5, 6, 7]])
    before = model(input_ids=ids).logits
    with pytest.raises(RuntimeError, match="inside"), recomputed(model):
        assert all("forward" in vars(layer) for layer in model.model.layers)
        raise RuntimeError("inside")
    assert not any("forward" in vars(layer) for layer in model.model.layers)
    torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=0, atol=0)


MEASURE = """
import json, sys, warnings
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from llm_attrib import Attributor
from tiny_tokenizer import tiny_tokenizer

warnings.simplefilter("ignore")
torch.set_num_threads(1)
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(
    vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=8,
    num_key_value_heads=2, max_position_embeddings=1024, pad_token_id=0, bos_token_id=2, eos_token_id=3,
    attn_implementation="sdpa")).eval()
prompt = " ".join(f"w{i % 50 + 1}" for i in range(900))


def status(field):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(field))


found = {}
for space in ("mask", "embeddings"):
    for flag in (False, True):
        attributor = Attributor(model, tiny_tokenizer(64), internal_batch_size=1, show_progress=False, recompute=flag)
        kwargs = dict(answer="w4", space=space, n_steps=2, tolerance=None, quadrature="gauss-legendre")
        attributor.explain(prompt[:200], **kwargs)  # first-use allocations and the short-prompt measurements
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak (VmHWM)
        before = status("VmRSS:")
        exp = attributor.explain(prompt, **kwargs)
        found[f"{space} {flag}"] = (status("VmHWM:") - before, exp.cost["point_bytes"])
print(json.dumps(found))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak resident memory from /proc")
def test_recompute_keeps_less_and_its_estimate_still_bounds_the_measured_peak():
    """A 900-token prompt, one path point at a time, in a fresh process whose allocator returns large blocks to the
    system (so its resident memory follows the tensors alive): in the mask and embeddings spaces the guard's
    estimate of a point with recompute is below the plain one and at least the resident memory the explanation
    really added at its peak, which is below the plain run's."""
    tests = str(Path(__file__).parent)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", MEASURE], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    for space in ("mask", "embeddings"):
        (plain_peak, plain_estimate), (peak, estimate) = found[f"{space} False"], found[f"{space} True"]
        assert estimate < plain_estimate and peak < plain_peak
        assert peak <= estimate
