"""The memory guard fits the chunk of path points to free memory, or stops at once with the figures."""

from types import SimpleNamespace

import pytest
import torch

from llm_attrib import Attributor, InvalidInputError
from llm_attrib.core import memory
from tiny_tokenizer import tiny_llama, tiny_tokenizer

# SmolLM2-135M's shape: 30 layers, 9 heads, hidden 576, MLP 1536.
SMOLLM2 = SimpleNamespace(num_hidden_layers=30, num_attention_heads=9, hidden_size=576, intermediate_size=1536)


def test_attention_space_grows_with_the_square_of_the_length():
    short, long = (memory.bytes_per_point(SMOLLM2, n, eager_attention=True) for n in (500, 2000))
    assert 10 < long / short < 16
    assert memory.bytes_per_point(SMOLLM2, 2000, eager_attention=False) < long / 5


def test_chunk_shrinks_to_fit_and_long_prompts_stop_with_figures(monkeypatch):
    model = SimpleNamespace(config=SMOLLM2, get_input_embeddings=lambda: SimpleNamespace(weight=torch.zeros(1)))
    monkeypatch.setattr(memory, "available_bytes", lambda device: 24 * 2**30)
    assert memory.fit_chunk(model, 100, 16, eager_attention=True) == 16
    assert 1 <= memory.fit_chunk(model, 2000, 16, eager_attention=False) < 16
    with pytest.raises(InvalidInputError, match=r"2000 tokens needs about \d+\.\d GiB .* shorten the prompt"):
        memory.fit_chunk(model, 2000, 16, eager_attention=True)


def test_explain_stops_before_any_path_work(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1)  # nothing free
    attributor = Attributor(tiny_llama(), tiny_tokenizer(64), show_progress=False)
    with pytest.raises(InvalidInputError, match="GiB of activations"):
        attributor.explain("w1 w2 w3", answer="w4", space="attention")
