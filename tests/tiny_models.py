"""Tiny random-init transformers models built from configs (no hub access), for the attention-hook tests.

`tiny_model(arch, seed)` returns `(model, vocab_size)`: float32, eval mode, hidden 32, 2 layers, 4 heads.
The weights use a larger init std than the configs' default (0.02) so attention is far from uniform and an
error in scaling, masking or softcapping shows up as a real logit difference.

`ARCHITECTURES` lists the architectures whose attention goes through transformers' AttentionInterface
(hookable), `BYPASSING` those that compute attention in their own code. Both are decided for the installed
transformers version by the package's own check (`llm_attrib.patching.supports_attention_hook`), never by hand:
releases move architectures onto the interface (GPT-J and CodeGen in 5.24, Falcon in 5.25), and the tests then
hold each one to exact equality with eager attention, or to the package's clear refusal.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import transformers as tf

from llm_attrib.patching import supports_attention_hook

VOCAB = 96
INIT_STD = 0.2

_COMMON = dict(vocab_size=VOCAB, initializer_range=INIT_STD)
_DECODER = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
    **_COMMON,
)
_ENCODER = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=66,
    num_labels=3,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    **_COMMON,
)


def _gqa(kv: int) -> dict:
    return dict(num_key_value_heads=kv)


def _configs() -> dict[str, tuple[type, Callable]]:
    """arch name -> (model class, config factory)."""
    c = tf.AutoModelForCausalLM
    specs = {
        "llama": (c, lambda: tf.LlamaConfig(**_DECODER, **_gqa(4))),
        "llama_gqa": (c, lambda: tf.LlamaConfig(**_DECODER, **_gqa(2))),
        "mistral": (c, lambda: tf.MistralConfig(**_DECODER, **_gqa(4), sliding_window=None)),
        "mistral_gqa": (c, lambda: tf.MistralConfig(**_DECODER, **_gqa(2), sliding_window=4)),
        "qwen2": (c, lambda: tf.Qwen2Config(**_DECODER, **_gqa(4))),
        "qwen2_gqa": (c, lambda: tf.Qwen2Config(**_DECODER, **_gqa(2))),
        "qwen3": (c, lambda: tf.Qwen3Config(**_DECODER, **_gqa(4), head_dim=8)),
        "qwen3_gqa": (c, lambda: tf.Qwen3Config(**_DECODER, **_gqa(2), head_dim=8)),
        "gemma": (c, lambda: tf.GemmaConfig(**_DECODER, **_gqa(4), head_dim=8)),
        "gemma_gqa": (c, lambda: tf.GemmaConfig(**_DECODER, **_gqa(2), head_dim=8)),
        "gemma2": (
            c,
            lambda: tf.Gemma2Config(
                **_DECODER,
                **_gqa(2),
                head_dim=8,
                query_pre_attn_scalar=16,  # scaling 16**-0.5 differs from head_dim**-0.5
                attn_logit_softcapping=2.0,
                final_logit_softcapping=30.0,
                sliding_window=4,
                layer_types=["sliding_attention", "full_attention"],
            ),
        ),
        "phi3": (c, lambda: tf.Phi3Config(**_DECODER, **_gqa(4))),
        "phi3_gqa": (c, lambda: tf.Phi3Config(**_DECODER, **_gqa(2))),
        "gpt2": (
            c,
            lambda: tf.GPT2Config(
                n_embd=32, n_layer=2, n_head=4, n_positions=64, n_inner=64,
                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=2, **_COMMON,
            ),
        ),
        # GPT-2 with per-layer scaling 1/(layer+1): `scaling` differs from module defaults.
        "gpt2_layerscaled": (
            c,
            lambda: tf.GPT2Config(
                n_embd=32, n_layer=2, n_head=4, n_positions=64, n_inner=64, scale_attn_by_inverse_layer_idx=True,
                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=2, **_COMMON,
            ),
        ),
        "gpt_neox": (
            c,
            lambda: tf.GPTNeoXConfig(
                hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=64, rotary_pct=0.5, tie_word_embeddings=False, **_COMMON,
            ),
        ),
        "opt": (
            c,
            lambda: tf.OPTConfig(
                hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                word_embed_proj_dim=32, max_position_embeddings=64, pad_token_id=1, dropout=0.0,
                attention_dropout=0.0, init_std=INIT_STD, vocab_size=VOCAB,
            ),
        ),
        "bert": (tf.AutoModelForSequenceClassification, lambda: tf.BertConfig(**_ENCODER)),
        "roberta": (tf.AutoModelForSequenceClassification, lambda: tf.RobertaConfig(**_ENCODER, pad_token_id=1)),
        # Architectures that bypassed the AttentionInterface in some 5.x release (checked below).
        "falcon": (
            c,
            lambda: tf.FalconConfig(
                hidden_size=32, num_hidden_layers=2, num_attention_heads=4, new_decoder_architecture=False,
                multi_query=False, parallel_attn=True, alibi=False, **_COMMON,
            ),
        ),
        # Falcon with ALiBi: the position bias arrives inside the attention mask.
        "falcon_alibi": (
            c,
            lambda: tf.FalconConfig(
                hidden_size=32, num_hidden_layers=2, num_attention_heads=4, new_decoder_architecture=False,
                multi_query=False, parallel_attn=False, alibi=True, **_COMMON,
            ),
        ),
        # Falcon's new decoder architecture (Falcon-40B/180B): grouped key/value heads.
        "falcon_gqa": (
            c,
            lambda: tf.FalconConfig(
                hidden_size=32, num_hidden_layers=2, num_attention_heads=4, new_decoder_architecture=True,
                num_kv_heads=2, alibi=False, **_COMMON,
            ),
        ),
        "gptj": (
            c,
            lambda: tf.GPTJConfig(n_embd=32, n_layer=2, n_head=4, n_positions=64, rotary_dim=4, n_inner=64, bos_token_id=1, eos_token_id=2, **_COMMON),
        ),
        "gpt_neo": (
            c,
            lambda: tf.GPTNeoConfig(
                hidden_size=32, num_layers=2, num_heads=4, max_position_embeddings=64,
                attention_types=[[["global", "local"], 1]], window_size=4, intermediate_size=64,
                bos_token_id=1, eos_token_id=2, **_COMMON,
            ),
        ),
        "bloom": (c, lambda: tf.BloomConfig(hidden_size=32, n_layer=2, n_head=4, **_COMMON)),
        "mpt": (c, lambda: tf.MptConfig(d_model=32, n_layers=2, n_heads=4, max_seq_len=64, expansion_ratio=2, vocab_size=VOCAB)),
        "codegen": (
            c,
            lambda: tf.CodeGenConfig(
                n_embd=32, n_layer=2, n_head=4, n_positions=64, n_ctx=64, rotary_dim=4, n_inner=64, bos_token_id=1, eos_token_id=2, **_COMMON
            ),
        ),
        "deberta_v2": (
            tf.AutoModelForSequenceClassification,
            lambda: tf.DebertaV2Config(**_ENCODER, relative_attention=True, pos_att_type=["c2p", "p2c"]),
        ),
        "deberta": (
            tf.AutoModelForSequenceClassification,
            lambda: tf.DebertaConfig(**_ENCODER, relative_attention=True, pos_att_type=["c2p", "p2c"]),
        ),
    }
    if hasattr(tf, "GptOssConfig"):
        specs["gpt_oss"] = (
            c,
            lambda: tf.GptOssConfig(
                **_DECODER,
                **_gqa(2),
                head_dim=8,
                num_local_experts=4,
                num_experts_per_tok=2,
                sliding_window=4,
                layer_types=["sliding_attention", "full_attention"],
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            ),
        )
    return specs


_SPECS = _configs()

ENCODERS = ("bert", "roberta", "deberta", "deberta_v2")


def model_class(arch: str) -> type:
    """The concrete model class of `arch` in the installed transformers (resolved without building weights)."""
    auto_class, make_config = _SPECS[arch]
    return auto_class._model_mapping[type(make_config())]


# Every tiny architecture, split by whether the installed transformers routes its attention through the
# AttentionInterface: the same check the package makes before hooking.
ARCHITECTURES = [arch for arch in _SPECS if supports_attention_hook(model_class(arch))]
BYPASSING = [arch for arch in _SPECS if arch not in ARCHITECTURES]


def is_encoder(arch: str) -> bool:
    return arch in ENCODERS


def tiny_model(arch: str, seed: int = 0, attn_implementation: str = "eager"):
    """A tiny random-init model of `arch` (float32, eval mode) and its vocabulary size."""
    if arch not in _SPECS:
        raise KeyError(f"unknown tiny architecture {arch!r}; known: {sorted(_SPECS)}")
    model_class, make_config = _SPECS[arch]
    config = make_config()
    torch.manual_seed(seed)
    model = model_class.from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
    model.eval()
    return model, config.vocab_size
