"""Tiny random-weight checkpoints of the architectures of issue #19 (OLMo 2, Granite,
SmolLM3, Qwen3 MoE, multimodal Gemma 3), and the checks every converted family passes.

Same recipe as tests/families.py (whose Family, save_model and sizes are reused): a real
trained tokenizer, transformers' own model class with large-spread random weights, then
F32 GGUF logits against transformers (eager, float32), tokenization parity on the mixed
texts, and the family's GGUF metadata.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from checkpoints import BPE_SPECIAL_TOKENS, copy_tokenizer, train_bpe_tokenizer, train_spm_tokenizer
from families import _LLAMA_SIZES, Family, save_model
from test_convert import (
    LOGITS_TOLERANCE,
    MIXED_TEXTS,
    PROMPTS,
    hf_token_ids,
    kv,
    llama_logits,
    load_llama,
)
from test_convert_families import (
    GELU_TOLERANCE,
    GGML_GELU_TOLERANCE,
    LONG_PROMPT,
    add_bos,
    hf_logits,
)

from packer.convert import SUPPORTED_ARCHITECTURES, convert_checkpoint

ARCH_FAMILIES: dict[str, Family] = {
    "olmo2": Family(
        "Olmo2ForCausalLM",
        "Olmo2Config",
        "llama3",
        "olmo2",
        {**_LLAMA_SIZES, "rope_theta": 500000.0},
    ),
    "granite": Family(
        "GraniteForCausalLM",
        "GraniteConfig",
        "gpt2",
        "granite",
        # multipliers far from 1 (and a scale unlike 1/sqrt(head_dim)) so each one shows
        {
            **_LLAMA_SIZES,
            "embedding_multiplier": 3.0,
            "residual_multiplier": 0.5,
            "attention_multiplier": 0.1,
            "logits_scaling": 2.0,
            "tie_word_embeddings": True,
        },
        {
            "embedding_scale": 3.0,
            "residual_scale": 0.5,
            "attention.scale": 0.1,
            "logit_scale": 2.0,
        },
    ),
    "smollm3": Family(
        "SmolLM3ForCausalLM",
        "SmolLM3Config",
        "llama3",
        "smollm3",
        # 4 layers: the 4th is a no-rope layer, as every 4th layer of SmolLM3
        {**_LLAMA_SIZES, "num_hidden_layers": 4, "tie_word_embeddings": True},
    ),
    "qwen3moe": Family(
        "Qwen3MoeForCausalLM",
        "Qwen3MoeConfig",
        "qwen2",
        "qwen3moe",
        {
            **_LLAMA_SIZES,
            "head_dim": 24,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "norm_topk_prob": True,
        },
        {"expert_count": 4, "expert_used_count": 2, "expert_feed_forward_length": 32},
    ),
    "gemma3mm": Family(
        "Gemma3ForConditionalGeneration",
        "Gemma3Config",
        "spm",
        "gemma3",
        # the text config, as families.py's gemma3 (the vision tower is added by save)
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
            "tie_word_embeddings": True,
        },
        {"attention.sliding_window": 5, "rope.freq_base_swa": 10000.0},
        gelu=True,
    ),
}

TINY_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "image_size": 28,
    "patch_size": 14,
}


def _save_gemma3_multimodal(family: Family, folder: Path, vocab_size: int, seed: int) -> None:
    import torch
    import transformers

    ids = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    config = transformers.Gemma3Config(
        text_config={**family.config, "vocab_size": vocab_size, **ids},
        vision_config=TINY_VISION,
        mm_tokens_per_image=4,
    )
    config.architectures = [family.architecture]
    torch.manual_seed(seed)
    model = transformers.Gemma3ForConditionalGeneration(config)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            else:
                param.normal_(0.0, 0.15)
    model.save_pretrained(folder)


def make_arch_checkpoint(name: str, root: Path) -> Path:
    """The tiny checkpoint of family ``name`` under ``root``."""
    family = ARCH_FAMILIES[name]
    tok = root / f"_tokenizer_{family.tokenizer}"
    if family.tokenizer == "spm":
        n_vocab = train_spm_tokenizer(tok)
        ids = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    else:
        n_vocab = train_bpe_tokenizer(tok, style=family.tokenizer)
        ids = {
            "bos_token_id": BPE_SPECIAL_TOKENS.index("<|im_start|>"),
            "eos_token_id": BPE_SPECIAL_TOKENS.index("<|im_end|>"),
            "pad_token_id": BPE_SPECIAL_TOKENS.index("<|endoftext|>"),
        }
    folder = root / f"{name}-tiny"
    copy_tokenizer(tok, folder)
    seed = zlib.crc32(name.encode())
    if family.config_class == "Gemma3Config":
        _save_gemma3_multimodal(family, folder, n_vocab, seed)
    else:
        save_model(family, folder, n_vocab, seed, **ids)
    return folder


def convert_f32(folder: Path, out: Path) -> Path:
    convert_checkpoint(folder, out, outtype="f32")
    return out


def check_logits(name: str, folder: Path, gguf_path: Path) -> None:
    """F32 GGUF logits equal transformers' at every position (GELU: as test_convert_families)."""
    prompts = [hf_token_ids(folder, p, add_bos(folder)) for p in [*PROMPTS, LONG_PROMPT]]
    got = llama_logits(gguf_path, prompts)
    gelu = ARCH_FAMILIES[name].gelu
    checks = [(False, GELU_TOLERANCE if gelu else LOGITS_TOLERANCE)]
    if gelu:
        checks.append((True, GGML_GELU_TOLERANCE))
    for ggml_gelu, tolerance in checks:
        expected = hf_logits(folder, prompts, ggml_gelu=ggml_gelu)
        for ids, exp, act in zip(prompts, expected, got, strict=True):
            assert act.shape == exp.shape == (len(ids), exp.shape[1])
            diff = float(np.abs(exp - act).max())
            print(f"{name}{' (ggml gelu)' if ggml_gelu else ''}: {len(ids)} tokens, {diff:.2e}")
            assert diff < tolerance, f"{name}: max logits diff {diff}"


def check_token_ids(folder: Path, gguf_path: Path) -> None:
    bos = add_bos(folder)
    llm = load_llama(gguf_path, vocab_only=True)
    for text in MIXED_TEXTS:
        expected = hf_token_ids(folder, text, add_bos=bos)
        assert llm.tokenize(text.encode(), add_bos=bos, special=False) == expected, text
    llm.close()


def check_metadata(name: str, gguf_path: Path) -> None:
    import gguf

    family = ARCH_FAMILIES[name]
    assert family.architecture in SUPPORTED_ARCHITECTURES
    cfg = family.config
    reader = gguf.GGUFReader(gguf_path)
    arch = family.gguf_arch
    assert kv(reader, "general.architecture") == arch
    assert kv(reader, f"{arch}.attention.head_count") == cfg["num_attention_heads"]
    assert kv(reader, f"{arch}.attention.head_count_kv") == cfg["num_key_value_heads"]
    assert kv(reader, f"{arch}.block_count") == cfg["num_hidden_layers"]
    for key, value in family.gguf_keys.items():
        got = kv(reader, f"{arch}.{key}")
        assert got == (pytest.approx(value) if isinstance(value, float) else value), key
    tensors = {t.name for t in reader.tensors}
    assert ("output.weight" in tensors) != cfg.get("tie_word_embeddings", False)
