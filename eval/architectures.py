"""Which architectures the attention hook supports, and how exactly it reproduces eager attention.

Prints a Markdown table: architecture, model class, max |logit diff| of the hooked model (no tap) against
the model's own eager attention (float32, batch of 2 x 11 tokens, with and without padding: left padding
for causal LMs, right padding for encoders, pad positions excluded), max |attention diff| of the recorded
probabilities against `output_attentions=True`, and whether the hook is supported.

    python eval/architectures.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from tiny_models import ARCHITECTURES, BYPASSING, is_encoder, tiny_model  # noqa: E402

from llm_attrib.patching import AttentionTap, attention_hooked, supports_attention_hook, tapped  # noqa: E402


def _inputs(model, vocab: int, arch: str, pad: bool):
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(3, vocab, (2, 11), generator=g)
    mask = torch.ones_like(ids)
    if pad:
        if is_encoder(arch):
            mask[1, -4:] = 0
        else:
            mask[1, :4] = 0
        ids[mask == 0] = getattr(model.config, "pad_token_id", None) or 0
    kwargs = dict(input_ids=ids, attention_mask=mask)
    if not is_encoder(arch):
        kwargs["use_cache"] = False
    return kwargs, mask.bool()


@torch.no_grad()
def measure(arch: str) -> tuple[str, str, str, str]:
    model, vocab = tiny_model(arch)
    name = type(model).__name__
    if not supports_attention_hook(model):
        return name, "n/a", "n/a", "no: bypasses AttentionInterface"
    logit_diff = attn_diff = 0.0
    for pad in (False, True):
        kwargs, valid = _inputs(model, vocab, arch, pad)
        reference = model(**kwargs, output_attentions=True)
        with attention_hooked(model), tapped(AttentionTap(record=True)) as tap:
            hooked = model(**kwargs).logits
        d = (reference.logits - hooked).abs()
        logit_diff = max(logit_diff, (d if is_encoder(arch) else d[valid]).max().item())
        for ref, rec in zip(reference.attentions, tap.recorded, strict=True):
            attn_diff = max(attn_diff, (ref - rec).abs().max().item())
    ok = logit_diff <= 1e-5 and attn_diff <= 1e-5
    return name, f"{logit_diff:.1e}", f"{attn_diff:.1e}", "yes" if ok else "NO: differs from eager"


def main() -> None:
    torch.set_num_threads(1)
    print("| architecture | model class | max abs logit diff vs eager | max abs attention diff | supported |")
    print("|---|---|---|---|---|")
    for arch in ARCHITECTURES + BYPASSING:
        name, logit_diff, attn_diff, supported = measure(arch)
        print(f"| {arch} | {name} | {logit_diff} | {attn_diff} | {supported} |")


if __name__ == "__main__":
    main()
