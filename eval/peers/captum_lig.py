"""Captum's LayerIntegratedGradients at its defaults (50 Gauss-Legendre steps, baseline token id 0), wrapped as an
external method for `llm_attrib.evaluate`: one full integral per target token, as Captum runs it."""

from __future__ import annotations

import dataclasses
import time

import torch
from captum.attr import LayerIntegratedGradients

from llm_attrib import Attributor, Explanation
from llm_attrib.core.model_kind import is_classifier


def captum_lig(attributor: Attributor, example: dict) -> Explanation:
    """Explain `example` with Captum; the result has the same inputs and targets as llm-attrib's."""
    skeleton = attributor.explain(example["prompt"], answer=example.get("answer"), method="random")
    model = attributor.model
    ids = torch.tensor([skeleton.input_ids + [skeleton.target_ids[-1]]], device=attributor.device)
    n_prompt = skeleton.n_prompt_tokens
    classifier = is_classifier(model)
    started = time.perf_counter()
    rows = []
    for t, target in enumerate(skeleton.target_ids):
        if classifier:
            inputs = ids[:, : len(skeleton.input_ids)]

            def forward(input_ids, target=target):
                return model(input_ids=input_ids).logits[:, target]
        else:
            inputs = ids[:, : n_prompt + t]

            def forward(input_ids, target=target):
                return model(input_ids=input_ids).logits[:, -1].log_softmax(-1)[:, target]

        lig = LayerIntegratedGradients(forward, model.get_input_embeddings())
        attribution = lig.attribute(inputs).sum(-1)[0].detach().float().cpu()
        row = torch.zeros(len(skeleton.input_ids))
        row[: attribution.shape[0]] = attribution
        rows.append(row)
    n_steps = 50  # LayerIntegratedGradients' default, one batch of 50 points per target
    return dataclasses.replace(
        skeleton,
        scores=torch.stack(rows),
        completeness_error=torch.full((len(rows),), float("nan")),
        method="captum_lig",
        params={"n_steps": n_steps, "baseline": "token 0", "quadrature": "gauss-legendre"},
        cost={"n_forward": n_steps * len(rows), "n_backward": n_steps * len(rows),
              "seconds": time.perf_counter() - started},
    )
