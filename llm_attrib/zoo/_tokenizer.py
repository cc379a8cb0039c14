"""Word-level tokenizers for the zoo's LMs: one token per word, so character offsets are exact."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]


def build(words: list[str]) -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer over ``words`` that prepends <bos>; decoding joins words with spaces."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(dict.fromkeys(words)))}
    core = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = Whitespace()
    bos = vocab["<bos>"]
    core.post_processor = TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                             special_tokens=[("<bos>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>",
                                   clean_up_tokenization_spaces=False)


def save(tokenizer: PreTrainedTokenizerFast, folder: Path) -> None:
    """Save, naming the class PreTrainedTokenizerFast so transformers 4.x loads the folder too."""
    tokenizer.save_pretrained(folder)
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
