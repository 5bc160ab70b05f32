"""Tiny random-weight checkpoints of the non-Llama families, with real trained tokenizers.

One entry of :data:`FAMILIES` per converted architecture: the transformers config class,
its tiny sizes and family features (biases, Q/K norms, partial rotary, sliding windows,
softcapping, ...) and which tokenizer the family ships:

* SentencePiece (``tokenizer.model``, :func:`checkpoints.train_spm_tokenizer`) for the
  families that use one: Mistral, Phi-3, Gemma 2/3;
* byte-level BPE (``tokenizer.json``, :func:`checkpoints.train_bpe_tokenizer`) with the
  family's pre-tokenizer: Qwen2-style for Qwen2/3, plain GPT-2 for GPT-2.

Weights are re-drawn with a large spread (as in checkpoints.py) so layout mistakes show.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checkpoints import (
    BPE_SPECIAL_TOKENS,
    HEADS,
    HIDDEN,
    INTERMEDIATE,
    KV_HEADS,
    LAYERS,
    MAX_POSITIONS,
    copy_tokenizer,
    train_bpe_tokenizer,
    train_spm_tokenizer,
)


@dataclass(frozen=True)
class Family:
    architecture: str
    config_class: str
    tokenizer: str  # "spm", or a BPE style of checkpoints.BPE_STYLES
    gguf_arch: str
    config: dict[str, Any] = field(default_factory=dict)
    # GGUF key (without the "<arch>." prefix) -> expected value, beyond the common ones
    gguf_keys: dict[str, Any] = field(default_factory=dict)
    # added special tokens after the SentencePiece vocabulary (declared in
    # tokenizer_config.json, as Phi-3 does for <|endoftext|>, <|end|>, ...)
    added_tokens: tuple[str, ...] = ()
    gelu: bool = False  # tanh-GELU MLP (ggml computes it through an F16 table)


_LLAMA_SIZES = {
    "hidden_size": HIDDEN,
    "intermediate_size": INTERMEDIATE,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS,
    "max_position_embeddings": MAX_POSITIONS,
    "rms_norm_eps": 1e-5,
}

FAMILIES: dict[str, Family] = {
    "mistral": Family(
        "MistralForCausalLM",
        "MistralConfig",
        "spm",
        "llama",
        {**_LLAMA_SIZES, "sliding_window": None, "rope_theta": 1000000.0},
    ),
    "qwen2": Family(
        "Qwen2ForCausalLM",
        "Qwen2Config",
        "qwen2",
        "qwen2",
        {**_LLAMA_SIZES, "tie_word_embeddings": True, "rope_theta": 1000000.0},
    ),
    "qwen2_yarn": Family(
        "Qwen2ForCausalLM",
        "Qwen2Config",
        "qwen2",
        "qwen2",
        # Qwen2.5 long-context style: YaRN, untied lm_head (as in Qwen2.5-7B and up)
        {
            **_LLAMA_SIZES,
            "rope_parameters": {
                "rope_type": "yarn",
                "rope_theta": 1000000.0,
                "factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        },
        {
            "rope.scaling.type": "yarn",
            "rope.scaling.factor": 4.0,
            "rope.scaling.original_context_length": 64,
        },
    ),
    "qwen3": Family(
        "Qwen3ForCausalLM",
        "Qwen3Config",
        "qwen2",
        "qwen3",
        # head_dim != hidden/heads, as in real Qwen3 models
        {**_LLAMA_SIZES, "head_dim": 24, "tie_word_embeddings": True},
        {"attention.key_length": 24, "attention.value_length": 24},
    ),
    "phi3": Family(
        "Phi3ForCausalLM",
        "Phi3Config",
        "spm",
        "phi3",
        # Phi-4-mini style partial rotary: rope on 3/4 of each 16-dim head
        {**_LLAMA_SIZES, "partial_rotary_factor": 0.75, "original_max_position_embeddings": 256},
        {"rope.dimension_count": 12},
        # llama.cpp looks these up by text for models named "phi3" (see llama-vocab.cpp)
        ("<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>"),
    ),
    "phi3_longrope": Family(
        "Phi3ForCausalLM",
        "Phi3Config",
        "spm",
        "phi3",
        # Phi-3.5 / Phi-4-mini style: longrope with partial rotary (6 frequencies per head)
        {
            **_LLAMA_SIZES,
            # llama.cpp pads n_ctx to a multiple of 256: the original context must be >= 256
            # for a 128-token test context to stay in the short-factor regime
            "max_position_embeddings": 1024,
            "original_max_position_embeddings": 256,
            "rope_parameters": {
                "rope_type": "longrope",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.75,
                "original_max_position_embeddings": 256,
                "short_factor": [1.0, 1.05, 1.2, 1.5, 1.9, 2.4],
                "long_factor": [1.0, 1.8, 3.5, 7.0, 12.0, 20.0],
            },
        },
        {
            "rope.dimension_count": 12,
            "rope.scaling.original_context_length": 256,
            # sqrt(1 + ln(1024 / 256) / ln(256))
            "rope.scaling.attn_factor": 1.118033988749895,
        },
        ("<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>"),
    ),
    "gemma2": Family(
        "Gemma2ForCausalLM",
        "Gemma2Config",
        "spm",
        "gemma2",
        # small window and softcaps so that both really act on the test prompts
        {
            **_LLAMA_SIZES,
            "num_hidden_layers": 3,
            "head_dim": 24,
            "query_pre_attn_scalar": 24,
            "sliding_window": 6,
            "attn_logit_softcapping": 5.0,
            "final_logit_softcapping": 3.0,
            "tie_word_embeddings": True,
        },
        {
            "attention.sliding_window": 6,
            "attention.sliding_window_pattern": [True, False, True],
            "attn_logit_softcapping": 5.0,
            "final_logit_softcapping": 3.0,
            "attention.key_length": 24,
        },
        gelu=True,
    ),
    "gemma3": Family(
        "Gemma3ForCausalLM",
        "Gemma3TextConfig",
        "spm",
        "gemma3",
        # 2 local layers then 1 global, each with its own rope base; small window
        {
            **_LLAMA_SIZES,
            "num_hidden_layers": 3,
            "head_dim": 24,
            "query_pre_attn_scalar": 24,
            "sliding_window": 5,
            "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
            "rope_parameters": {
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
            },
            "final_logit_softcapping": 4.0,
            "tie_word_embeddings": True,
        },
        {
            "attention.sliding_window": 5,
            "attention.sliding_window_pattern": [True, True, False],
            "rope.freq_base": 1000000.0,
            "rope.freq_base_swa": 10000.0,
            "final_logit_softcapping": 4.0,
        },
        gelu=True,
    ),
    "gpt2": Family(
        "GPT2LMHeadModel",
        "GPT2Config",
        "gpt2",
        "gpt2",
        {
            "n_embd": HIDDEN,
            "n_inner": INTERMEDIATE,
            "n_layer": LAYERS,
            "n_head": HEADS,
            "n_positions": MAX_POSITIONS,
            "tie_word_embeddings": True,
        },
        {"feed_forward_length": INTERMEDIATE, "attention.layer_norm_epsilon": 1e-5},
        gelu=True,
    ),
}


def save_model(family: Family, folder: Path, vocab_size: int, seed: int, **ids: int) -> None:
    """Save a random ``family.architecture`` model into ``folder`` (holding the tokenizer)."""
    import torch
    import transformers

    config = getattr(transformers, family.config_class)(
        vocab_size=vocab_size, **family.config, **ids
    )
    config.architectures = [family.architecture]
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.2)
            elif param.ndim == 1:  # norms: not all-ones, so a swapped norm shows
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            else:
                param.normal_(0.0, 0.15)
    model.save_pretrained(folder)


def add_special_tokens(folder: Path, n_vocab: int, tokens: tuple[str, ...]) -> int:
    """Declare ``tokens`` as added special tokens from id ``n_vocab`` on; new vocab size."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    for i, token in enumerate(tokens):
        config["added_tokens_decoder"][str(n_vocab + i)] = {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return n_vocab + len(tokens)


def make_family_checkpoints(root: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Build the tiny checkpoint of each family under ``root``; returns name -> folder."""
    tokenizers: dict[str, tuple[Path, int]] = {}
    out: dict[str, Path] = {}
    for name, family in FAMILIES.items():
        if names is not None and name not in names:
            continue
        style = family.tokenizer
        if style not in tokenizers:
            tok = root / f"_tokenizer_{style}"
            n = (
                train_spm_tokenizer(tok)
                if style == "spm"
                else train_bpe_tokenizer(tok, style=style)
            )
            tokenizers[style] = (tok, n)
        tok, n_vocab = tokenizers[style]
        if style == "spm":
            ids = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
        else:
            ids = {
                "bos_token_id": BPE_SPECIAL_TOKENS.index("<|im_start|>"),
                "eos_token_id": BPE_SPECIAL_TOKENS.index("<|im_end|>"),
                "pad_token_id": BPE_SPECIAL_TOKENS.index("<|endoftext|>"),
            }
        folder = root / f"{name}-tiny"
        copy_tokenizer(tok, folder)
        if family.added_tokens:
            n_vocab = add_special_tokens(folder, n_vocab, family.added_tokens)
        # a seed per family name, so adding a family does not redraw the others' weights
        save_model(family, folder, n_vocab, zlib.crc32(name.encode()), **ids)
        out[name] = folder
    return out
