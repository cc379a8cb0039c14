"""The memory guard fits the chunk of path points to free memory, or stops at once with the figures."""

import pytest

from llm_attrib import Attributor, InvalidInputError
from llm_attrib.core import memory
from llm_attrib.core.spaces import make_space
from llm_attrib.core.targets import resolve_target
from llm_attrib.methods import Problem
from llm_attrib.patching import prepared
from tiny_tokenizer import tiny_llama, tiny_tokenizer


def test_explain_stops_before_any_path_work(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1)  # nothing free
    attributor = Attributor(tiny_llama(), tiny_tokenizer(64), show_progress=False)
    with pytest.raises(InvalidInputError, match=r"keeps .* MiB \(measured\), and the memory budget is 0 MiB"):
        attributor.explain("w1 w2 w3", answer="w4", space="attention")


def _measured(attributor: Attributor, prompt: str, space: str, answer: str = "w4") -> int:
    seq = attributor.sequence(prompt, answer=answer)
    with prepared(attributor.model, hook_attention=space == "attention"):
        problem = Problem(attributor.model, attributor.tokenizer, seq, make_space(space), resolve_target("log_prob", None, 64))
        return attributor._bytes_per_point(problem)


def test_measured_point_keeps_the_attention_probabilities_and_little_more():
    model = tiny_llama()
    attributor = Attributor(model, tiny_tokenizer(64), show_progress=False)
    config = model.config
    for n in (8, 32):
        prompt = " ".join(f"w{i % 60 + 1}" for i in range(n))
        length = n + 2  # <bos> and the answer token
        kept = _measured(attributor, prompt, "attention")
        probabilities = 4 * config.num_hidden_layers * config.num_attention_heads * length * length
        # at most a few (L x L) copies per head and a few dozen (L x hidden) ones per layer
        bound = 4 * config.num_hidden_layers * (8 * config.num_attention_heads * length ** 2
                                                 + 16 * length * config.hidden_size + 2 * length * config.intermediate_size)
        assert probabilities < kept < bound
        assert _measured(attributor, prompt, "embeddings") < kept


def test_long_prompts_are_extrapolated_from_short_measurements_exactly():
    """Saved bytes are a quadratic in the length, so three short prompts predict a long one (never run to
    find out whether it fits)."""
    model = tiny_llama()
    attributor = Attributor(model, tiny_tokenizer(64), show_progress=False)
    prompt = " ".join(f"w{i % 60 + 1}" for i in range(55))
    seq = attributor.sequence(prompt, answer="w4 w5")
    for space in ("attention", "embeddings"):
        predicted = _measured(attributor, prompt, space, answer="w4 w5")
        with prepared(model, hook_attention=space == "attention"):
            problem = Problem(model, attributor.tokenizer, seq, make_space(space), resolve_target("log_prob", None, 64))
            direct = memory.saved_bytes(problem.scores, problem.space.point(model, seq), model)
        assert abs(predicted - direct) <= 0.01 * direct


def test_a_models_long_prompt_measurement_is_made_once_for_all_its_attributors():
    """rag.explain builds an Attributor per call: the short-prompt measurements behind a long prompt's estimate
    belong to the model, so a second Attributor runs fewer forwards for the same explanation."""
    model, tokenizer = tiny_llama(), tiny_tokenizer(64)
    prompt = " ".join(f"w{i % 60 + 1}" for i in range(55))
    costs = [Attributor(model, tokenizer, show_progress=False).explain(
        prompt, answer="w4", space="mask", n_steps=4, tolerance=None).cost for _ in range(2)]
    assert costs[0]["n_forward"] == costs[1]["n_forward"]
    assert costs[1]["n_forward_all"] == costs[0]["n_forward_all"] - 2 * len(memory.SHORT_PROMPTS)  # read + probe


def test_chunk_is_what_the_budget_holds_at_the_measured_cost():
    model, tokenizer = tiny_llama(), tiny_tokenizer(64)
    per_point = _measured(Attributor(model, tokenizer), "w1 w2 w3", "attention")
    for k in (1, 3):
        budget = int(memory.TRANSIENT_FACTOR * per_point * (k + 0.5))
        exp = Attributor(model, tokenizer, show_progress=False, memory_budget=budget).explain(
            "w1 w2 w3", answer="w4", space="attention")
        assert exp.cost["internal_batch_size"] == k
    chosen = Attributor(model, tokenizer, show_progress=False, internal_batch_size=2).explain("w1 w2 w3", answer="w4")
    assert chosen.cost["internal_batch_size"] == 2
    default = Attributor(model, tokenizer, show_progress=False).explain("w1 w2 w3", answer="w4")
    assert default.cost["internal_batch_size"] == memory.MAX_CHUNK  # a tiny model: the cap, not the memory
    with pytest.raises(InvalidInputError, match="raise memory_budget"):
        Attributor(model, tokenizer, memory_budget=per_point).explain("w1 w2 w3", answer="w4", space="attention")
    with pytest.raises(InvalidInputError, match="memory_budget must be a positive integer"):
        Attributor(model, tokenizer, memory_budget="4GiB")


def test_host_memory_counts_the_page_cache_the_kernel_can_drop(monkeypatch):
    """The host's budget is MemAvailable (free pages plus reclaimable cache), not the free pages alone."""
    import os
    import torch

    monkeypatch.setattr(memory, "process_limit_bytes", lambda: None)
    with open("/proc/meminfo") as meminfo:
        fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in meminfo}
    free_pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    measured = memory.available_bytes(torch.device("cpu"))
    assert abs(measured - fields["MemAvailable"]) < 2**28  # the same reading, give or take what moved meanwhile
    assert measured >= free_pages - 2**28
