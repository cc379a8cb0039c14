"""The one-time GGUF -> float32 conversion of a pretrained zoo model is a labelled phase of the package's progress bar
(its tensors counted, then the tokenizer and the saving), quiet when progress is off, in the Python API and the CLI.
The real conversion path runs, on a tiny GGUF written here (a one-layer Llama), shipped whole as SmolLM2's is or in
parts joined by its package as Gemma 3's is."""

import sys

import gguf
import numpy as np
import pytest
import torch

import llm_attrib
from llm_attrib.core import progress
from llm_attrib.zoo.pretrained import PRETRAINED, GgufModel

TOKENS = ["<unk>", "<s>", "</s>", "a", "b", "c", "Ġ", "ab", "Ġa"]
HIDDEN, FF, HEADS, KV_HEADS = 8, 16, 2, 1
SHAPES = {"token_embd.weight": (len(TOKENS), HIDDEN), "output_norm.weight": (HIDDEN,),
          "blk.0.attn_norm.weight": (HIDDEN,), "blk.0.ffn_norm.weight": (HIDDEN,),
          "blk.0.attn_q.weight": (HIDDEN, HIDDEN), "blk.0.attn_k.weight": (KV_HEADS * HIDDEN // HEADS, HIDDEN),
          "blk.0.attn_v.weight": (KV_HEADS * HIDDEN // HEADS, HIDDEN), "blk.0.attn_output.weight": (HIDDEN, HIDDEN),
          "blk.0.ffn_gate.weight": (FF, HIDDEN), "blk.0.ffn_up.weight": (FF, HIDDEN),
          "blk.0.ffn_down.weight": (HIDDEN, FF)}


def write_tiny_gguf(path) -> dict[str, np.ndarray]:
    """A float32 GGUF of a one-layer Llama with a byte-level BPE tokenizer; returns its tensors."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FF)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(len(TOKENS))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(TOKENS)
    writer.add_token_types([3, 3, 3] + [1] * (len(TOKENS) - 3))
    writer.add_token_merges(["a b", "Ġ a"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    rng = np.random.default_rng(0)
    tensors = {name: (rng.standard_normal(shape) * 0.1).astype(np.float32) for name, shape in SHAPES.items()}
    for name, values in tensors.items():
        writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tensors


@pytest.fixture(params=["whole", "assembled"])
def tiny(request, tmp_path, monkeypatch):
    """The zoo name "tiny": a GGUF its package ships whole, or one its package joins from parts (`assemble`)."""
    package = tmp_path / "packages" / "tiny_gguf_model"
    package.mkdir(parents=True)
    tensors = write_tiny_gguf(package / "tiny.gguf")
    assembled = request.param == "assembled"
    if assembled:  # the parts are the file cut in two
        data = (package / "tiny.gguf").read_bytes()
        (package / "tiny.gguf").unlink()
        (package / "part1").write_bytes(data[:len(data) // 2])
        (package / "part2").write_bytes(data[len(data) // 2:])
        (package / "__init__.py").write_text(
            "from pathlib import Path\nEXPECTED_SHA256 = '0123456789abcdef'\n"
            "def assemble(path):\n    here = Path(__file__).parent\n"
            "    Path(path).write_bytes((here / 'part1').read_bytes() + (here / 'part2').read_bytes())\n"
            "    return path\n")
    else:
        (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "packages"))
    monkeypatch.setitem(PRETRAINED, "tiny", GgufModel(package="tiny_gguf_model", file="tiny.gguf",
                                                      install="(a test package)", assembled=assembled))
    monkeypatch.setenv("LLM_ATTRIB_CACHE", str(tmp_path / "cache"))
    yield tensors, assembled
    sys.modules.pop("tiny_gguf_model", None)


@pytest.fixture
def bars(monkeypatch):
    """Every bar opened (enabled or not), and every phase (label, total) and step it was shown."""
    seen = {"opened": [], "phases": [], "steps": 0}
    init, phase, advance = progress.Progress.__init__, progress.Progress.phase, progress.Progress.advance

    def opened(self, enabled):
        seen["opened"].append(enabled)
        init(self, enabled)

    def shown(self, label, total=None, unit="pass"):
        seen["phases"].append((label, total))
        phase(self, label, total, unit)

    def stepped(self, n=1):
        seen["steps"] += n
        advance(self, n)

    monkeypatch.setattr(progress.Progress, "__init__", opened)
    monkeypatch.setattr(progress.Progress, "phase", shown)
    monkeypatch.setattr(progress.Progress, "advance", stepped)
    return seen


def test_the_conversion_is_one_labelled_phase_per_step(tiny, bars, capfd):
    """One bar, whose phases say what the one-time conversion is doing, counting the GGUF's tensors (and only
    them: transformers' unlabelled bar is not shown, and is restored afterwards); the converted model holds the
    GGUF's weights; a second load reads the cache (no bar)."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    tensors, assembled = tiny
    original = gguf_utils.tqdm
    model, tokenizer = llm_attrib.zoo.load("tiny")
    step = "converting tiny to float32 (once): "
    assert bars["opened"] == [True]
    assert bars["phases"] == [(step + "joining the GGUF file's parts", None)] * assembled + [
        (step + "reading the GGUF", None), (step + "dequantising", len(SHAPES)), (step + "the tokenizer", None),
        (step + "saving to the cache", None)]
    assert bars["steps"] == len(SHAPES) and gguf_utils.tqdm is original
    shown = capfd.readouterr().err
    assert f"{step}dequantising:   0%" in shown and f"0/{len(SHAPES)}" in shown
    assert f"{step}the tokenizer: [" in shown and "passes" not in shown and "Converting" not in shown
    assert torch.equal(model.model.embed_tokens.weight, torch.from_numpy(tensors["token_embd.weight"]))
    assert tokenizer.convert_ids_to_tokens(tokenizer("ab c")["input_ids"]) == ["ab", "Ġ", "c"]
    folder = llm_attrib.zoo.path("tiny")
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".gguf") == []  # only the float32 folder is kept
    llm_attrib.zoo.load("tiny")
    assert len(bars["opened"]) == 1  # cached: nothing to wait for


def test_the_conversion_is_quiet_without_progress(tiny, bars, capfd):
    """show_progress=False (the CLI's --no-progress) opens a disabled bar, and transformers' GGUF bar, which it
    shows even with progress bars turned off, is silenced too."""
    from llm_attrib.cli import _load

    _load("tiny", "rag", no_progress=True)
    assert bars["opened"] == [False] and bars["steps"] == len(SHAPES)
    assert "GGUF" not in capfd.readouterr().err
