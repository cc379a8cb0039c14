"""Time to explain a 16-token generation with IG: llm-attrib against Captum's
LLMGradientAttribution(LayerIntegratedGradients), measured in one run, reported as ratios.

    python eval/speed_vs_captum.py [--model rag] [--tokens 16] [--repeats 3]

Both explain the same prompt and the same 16 target tokens (generated greedily by the model, with
`min_new_tokens` so the end token does not stop it early). Two comparisons:
- each tool at its defaults (llm-attrib: adaptive Gauss-Legendre from 32 steps until every target's
  completeness error is under 1%, neutral baseline; Captum: 50 Gauss-Legendre steps, token-id-0 baseline,
  no completeness guarantee);
- equal settings (50 Gauss-Legendre steps, token-0 baseline, no adaptation). The first target's attributions
  must agree, which the script checks and reports; later targets differ by design: llm-attrib's baseline
  also replaces the earlier generated tokens (they are inputs and get attributions), Captum keeps them.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from captum.attr import LayerIntegratedGradients, LLMGradientAttribution, TextTokenInput

import llm_attrib
from llm_attrib import Attributor


def timed(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="rag")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, tokenizer = llm_attrib.zoo.load(args.model)
    prompt = llm_attrib.zoo.examples(args.model, n=1, seed=123)[0]["prompt"]
    attr = Attributor(model, tokenizer, show_progress=False)
    prompt_ids = tokenizer(prompt)["input_ids"]
    answer = attr.generate(prompt_ids, args.tokens, min_new_tokens=args.tokens)
    skip = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []

    def ours(n_steps: int, baseline, tolerance, quadrature: str = "score-guided"):
        return attr.explain(prompt, answer=answer, method="ig", n_steps=n_steps, baseline=baseline, tolerance=tolerance,
                            quadrature=quadrature)

    def captum(n_steps: int | None):
        lig = LayerIntegratedGradients(model, model.get_input_embeddings())
        llm_attr = LLMGradientAttribution(lig, tokenizer)
        inp = TextTokenInput(prompt, tokenizer, skip_tokens=skip)
        kwargs = {} if n_steps is None else {"n_steps": n_steps, "method": "gausslegendre"}
        return llm_attr.attribute(inp, target=torch.tensor(answer), **kwargs)

    ours_default_s, ours_default = timed(lambda: ours(32, None, 0.01), args.repeats)
    captum_default_s, _ = timed(lambda: captum(None), args.repeats)
    ours_equal_s, ours_equal = timed(lambda: ours(50, 0, None, "gauss-legendre"), args.repeats)
    captum_equal_s, captum_equal = timed(lambda: captum(50), args.repeats)

    n_prompt = len(prompt_ids)
    ours_prompt = ours_equal.scores[:, len(skip):n_prompt]
    theirs = captum_equal.token_attr.float()
    agreement = (ours_prompt[0] - theirs[0]).abs().max().item()

    print(f"model: {args.model} ({type(model).__name__}), prompt tokens: {n_prompt}, targets: {len(answer)}, "
          f"threads: {args.threads}, median of {args.repeats}")
    print("| setting | llm-attrib (s) | Captum (s) | Captum / llm-attrib |")
    print("|---|---|---|---|")
    print(f"| each at its defaults (score-guided to 1% vs 50 GL steps) | {ours_default_s:.2f} | {captum_default_s:.2f} | "
          f"{captum_default_s / ours_default_s:.1f}x |")
    print(f"| equal settings (50 GL steps, token-0 baseline) | {ours_equal_s:.2f} | {captum_equal_s:.2f} | "
          f"{captum_equal_s / ours_equal_s:.1f}x |")
    print(f"max |llm-attrib - Captum| on the first target at equal settings: {agreement:.2e}")
    print(f"llm-attrib completeness error at defaults: max {ours_default.completeness_error.max():.2e}, "
          f"mean {ours_default.completeness_error.mean():.2e}; gradient evaluations per target "
          f"{ours_default.params['n_steps']}; passes {ours_default.cost['n_forward']} forward, "
          f"{ours_default.cost['n_backward']} backward")


if __name__ == "__main__":
    main()
