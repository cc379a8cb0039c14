"""A word-level fast tokenizer and tiny random models built in code (no hub), for tests."""

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]


def tiny_tokenizer(vocab_size: int = 64, bos: bool = True, extra: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """Words w0, w1, ... after the four special tokens, the last ones replaced by `extra` (e.g. "."); prepends
    <bos> when `bos`."""
    words = [f"w{i}" for i in range(vocab_size - len(SPECIALS) - len(extra))] + list(extra)
    vocab = {w: i for i, w in enumerate(SPECIALS + words)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>"
    )


def tiny_llama(n_layers: int = 2, context: int = 64, seed: int = 0):
    """A tiny random Llama (grouped-query attention) matching `tiny_tokenizer(64)`, in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=context, initializer_range=0.1,
        pad_token_id=0, bos_token_id=2, eos_token_id=3,
    )
    return LlamaForCausalLM(config).eval()


def tiny_bert(n_labels: int = 3, seed: int = 0):
    """A tiny random BERT sequence classifier matching `tiny_tokenizer(64)`, in eval mode."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, num_labels=n_labels, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config).eval()
