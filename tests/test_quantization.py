"""A model quantized the way users load one (weight-only int8 through transformers' TorchAoConfig) explains: the
integral is complete, and it ranks the inputs as the float32 model does."""

from __future__ import annotations

import pytest
import torch
from tiny_tokenizer import tiny_llama, tiny_tokenizer
from torchao.quantization import Int8WeightOnlyConfig
from transformers import AutoModelForCausalLM, TorchAoConfig

import llm_attrib

PROMPT, ANSWER = "w1 w2 w3 w4 w5 w6 w7 w8", "w9 w10"
FIXED = {"n_steps": 16, "quadrature": "gauss-legendre", "tolerance": None}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    plain = tiny_llama()
    plain.save_pretrained(folder)
    quantized = AutoModelForCausalLM.from_pretrained(folder, device_map="cpu", dtype=torch.float32,
                                                     quantization_config=TorchAoConfig(Int8WeightOnlyConfig())).eval()
    return plain, quantized, tiny_tokenizer()


def ranks(x: torch.Tensor) -> torch.Tensor:
    return x.argsort(-1).argsort(-1).float()


def test_the_weights_are_int8(models):
    _, quantized, _ = models
    weight = quantized.model.layers[0].mlp.up_proj.weight
    assert type(weight).__name__ == "Int8Tensor" and weight.qdata.dtype == torch.int8


@pytest.mark.parametrize("space", ["embeddings", "attention", "mask"])
def test_int8_explains_completely_and_ranks_like_float32(models, space):
    plain, quantized, tokenizer = models
    got = llm_attrib.Attributor(quantized, tokenizer, show_progress=False).explain(PROMPT, ANSWER, space=space, **FIXED)
    expected = llm_attrib.Attributor(plain, tokenizer, show_progress=False).explain(PROMPT, ANSWER, space=space, **FIXED)
    assert float(got.completeness_error.max()) < 1e-3
    content = ~torch.tensor(got.input_markup)
    for row, reference in zip(got.scores[:, content], expected.scores[:, content]):
        agreement = torch.corrcoef(torch.stack([ranks(row), ranks(reference)]))[0, 1]
        assert agreement >= 0.9, (space, agreement)
