"""Small input checks: what really happened is said, in the package's error, instead of a raw or misleading one."""

from __future__ import annotations

import pytest
import torch

from llm_attrib import Attributor, InvalidInputError, NumericalError, rag
from llm_attrib.rag.prompt import Template
from tiny_tokenizer import tiny_llama, tiny_tokenizer


@pytest.fixture()
def attributor():
    return Attributor(tiny_llama(), tiny_tokenizer(64), show_progress=False)


def test_mask_space_says_underflow_nan_or_a_missing_start_token(attributor):
    layers = len(attributor.model.model.layers)
    with pytest.raises(NumericalError, match="underflowed"):  # visible everywhere, but 1e-45 x p is 0 in float32
        attributor.explain("w1 w2 w3 w4", "w5", space="mask", baseline=torch.full((layers, 6), 1e-45))
    hidden_start = torch.cat([torch.zeros(layers, 1), torch.ones(layers, 5)], 1)
    with pytest.raises(InvalidInputError, match="start token"):
        attributor.explain("w1 w2 w3 w4", "w5", space="mask", baseline=hidden_start)
    with torch.no_grad():
        attributor.model.model.layers[0].self_attn.q_proj.weight[0, 0] = float("nan")
    with pytest.raises(NumericalError, match="NaN or inf on the input itself"):
        attributor.explain("w1 w2 w3 w4", "w5", space="mask")


def test_an_answer_with_a_lone_surrogate_is_refused(attributor):
    with pytest.raises(InvalidInputError, match="the answer is not valid Unicode"):
        attributor.explain("w1 w2 w3 w4", "w5 \udcff", method="saliency")


def test_documents_given_as_a_dict_are_refused(attributor):
    with pytest.raises(InvalidInputError, match="documents is a dict"):
        rag.explain(attributor.model, attributor.tokenizer, "w1 ?", {"a": "w2 w3", "b": "w4 w5"}, answer="w6",
                    template="plain")


@pytest.mark.parametrize("prompt", ["{documents:>5} {question}", "{documents!r} {question}", "{documents} {question:x}"])
def test_template_fields_with_format_specs_are_refused(prompt):
    with pytest.raises(InvalidInputError, match="decorates its fields"):
        Template(prompt=prompt)
    with pytest.raises(InvalidInputError, match="decorates its fields"):
        Template(document="Doc {index:03}: {text}")
