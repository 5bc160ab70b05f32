"""Factories for tiny, random-weight Hugging Face ``LlamaForCausalLM`` checkpoints.

Each checkpoint folder looks like a real download: config.json, safetensors weights
(single file or sharded with an index), and REAL tokenizer files trained here on a small
built-in multilingual corpus:

* byte-level BPE (``tokenizer.json``, SmolLM-style pre-tokenizer: individual digits +
  GPT-2 byte-level regex) with ChatML special tokens and a chat template;
* SentencePiece BPE (``tokenizer.model``, Llama-2 style: byte fallback, identity
  normalization, no whitespace collapsing) with a Zephyr/TinyLlama-style chat template.

Weights are re-drawn with a larger spread than transformers' init so that attention is far
from uniform and any mistake in layout (Q/K permutation, norms, rope) shows in the logits.
Used by tests/conftest.py; only test dependencies (torch, transformers, tokenizers,
sentencepiece) are imported, lazily.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

HIDDEN = 64
INTERMEDIATE = 160
LAYERS = 2
HEADS = 4
KV_HEADS = 2
MAX_POSITIONS = 256

BPE_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BPE_USER_TOKENS = ["<think>", "</think>"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

_CORPUS_BASE = [
    "The quick brown fox jumps over the lazy dog.",
    "Quantization makes large language models small enough to run on a laptop.",
    "Hello world! How are you today? I'm fine, thanks, and you'll see why.",
    "We packed the model into a single executable file that runs offline.",
    "¿Qué es la cuantización? Es reducir la precisión de los pesos del modelo.",
    "El niño comió una manzana en el año 2023. ¡Qué acción tan rápida!",
    "Mañana vamos a la montaña con mi compañero; la canción está en español.",
    "Corazón, pingüino, camión, árbol, también, lápiz, fútbol, jamás.",
    "def main():\n    print('hello')\n    return 0\n",
    "for i in range(10):\n\tif i % 2 == 0:\n\t\tprint(i)\n",
    "class Packer:\n    def __init__(self, path):\n        self.path = path\n",
    "import numpy as np\nx = np.zeros((3, 4), dtype=np.float32)\n",
    "if (x > 0) { return x * 2; } else { return -x; }",
    "Numbers: 12345, 3.14, 2.71828, 1e-5, 100%, $42.50, 0x1F.",
    "The year 1999 had 365 days; 2024 had 366 days.",
    "I love pizza 🍕 and coffee ☕! 🎉🎉 Party time 😀.",
    "Emoji test: 👍 👋 🚀 ✨ ❤️",
    "日本語のテキストです。東京は大きいです。",
    "中文文本：你好，世界！我们喜欢学习。",
    "Ελληνικά: γειά σου κόσμε. Русский: привет, мир!",
    "   leading spaces and    multiple   spaces inside.",
    "Tabs\tand\nnewlines\n\nare whitespace too.",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>",
    "<think>Let me think about this.</think> The answer is 42.",
]


def corpus() -> list[str]:
    """A few hundred lines: the base sentences plus simple recombinations."""
    lines = list(_CORPUS_BASE)
    for i, a in enumerate(_CORPUS_BASE):
        for b in _CORPUS_BASE[i + 1 : i + 6]:
            lines.append(f"{a} {b}")
    for n in range(200):
        lines.append(f"Item {n}: value {n * 37 % 1000} costs {n * 1.25:.2f} euros.")
    return lines


# ---- tokenizers -------------------------------------------------------------------------


LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")

# byte-level BPE styles -> the llama.cpp pre-tokenizer name the converter must pick
BPE_STYLES = {"smollm": "smollm", "gpt2": "gpt-2", "llama3": "llama-bpe", "qwen2": "qwen2"}


def train_bpe_tokenizer(folder: Path, vocab_size: int = 600, style: str = "smollm") -> int:
    """Write a byte-level BPE tokenizer.json + tokenizer_config.json; returns its size.

    ``style`` picks the pre-tokenizer (and normalizer) of a model family, see BPE_STYLES.
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tokenizer = Tokenizer(models.BPE(ignore_merges=style == "llama3"))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if style == "smollm":
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    elif style == "gpt2":
        tokenizer.pre_tokenizer = byte_level
    elif style in ("llama3", "qwen2"):
        split = pre_tokenizers.Split(
            Regex(LLAMA3_SPLIT if style == "llama3" else QWEN2_SPLIT), behavior="isolated"
        )
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
        if style == "qwen2":
            tokenizer.normalizer = normalizers.NFC()
    else:
        raise ValueError(style)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=BPE_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in BPE_USER_TOKENS])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))

    added = {}
    for token in BPE_SPECIAL_TOKENS + BPE_USER_TOKENS:
        added[str(tokenizer.token_to_id(token))] = {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": token in BPE_SPECIAL_TOKENS,
        }
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "clean_up_tokenization_spaces": False,
        "model_max_length": MAX_POSITIONS,
        "tokenizer_class": "GPT2Tokenizer",
        "chat_template": CHATML_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return tokenizer.get_vocab_size(with_added_tokens=True)


def train_spm_tokenizer(folder: Path, vocab_size: int = 700) -> int:
    """Write a SentencePiece tokenizer.model + tokenizer_config.json; returns its size."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()),
        model_writer=model,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=0.9995,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())

    special = {"0": "<unk>", "1": "<s>", "2": "</s>"}
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {
            k: {
                "content": v,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for k, v in special.items()
        },
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        "model_max_length": MAX_POSITIONS,
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "chat_template": ZEPHYR_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return int(processor.get_piece_size())


# ---- models -----------------------------------------------------------------------------


def save_llama(
    folder: Path,
    vocab_size: int,
    *,
    seed: int,
    tie: bool,
    rope_theta: float = 10000.0,
    rope_scaling: dict[str, Any] | None = None,
    bf16: bool = False,
    max_shard_size: str | None = None,
    bos_token_id: int = 1,
    eos_token_id: int = 2,
) -> None:
    """Save a random LlamaForCausalLM into ``folder`` (which already holds the tokenizer)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        vocab_size=vocab_size,
        max_position_embeddings=MAX_POSITIONS,
        rms_norm_eps=1e-5,
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        tie_word_embeddings=tie,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
    )
    config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:  # norms: not all-ones, so a swapped norm shows
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            else:
                param.normal_(0.0, 0.15)
    if bf16:
        model = model.to(torch.bfloat16)
    kwargs: dict[str, Any] = {}
    if max_shard_size is not None:
        kwargs["max_shard_size"] = max_shard_size
    model.save_pretrained(folder, **kwargs)


def copy_tokenizer(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def make_checkpoints(root: Path) -> dict[str, Path]:
    """Build every fixture checkpoint under ``root``; returns name -> folder."""
    bpe_tok = root / "_bpe_tokenizer"
    spm_tok = root / "_spm_tokenizer"
    n_bpe = train_bpe_tokenizer(bpe_tok)
    n_spm = train_spm_tokenizer(spm_tok)
    bpe_bos, bpe_eos = (
        BPE_SPECIAL_TOKENS.index("<|im_start|>"),
        BPE_SPECIAL_TOKENS.index("<|im_end|>"),
    )
    out: dict[str, Path] = {}

    # SmolLM-like: byte-level BPE, tied embeddings, F32, one safetensors file
    out["tiny_llama_bpe"] = folder = root / "SmolLM-tiny-bpe"
    copy_tokenizer(bpe_tok, folder)
    save_llama(
        folder,
        n_bpe,
        seed=1,
        tie=True,
        rope_theta=100000.0,
        bos_token_id=bpe_bos,
        eos_token_id=bpe_eos,
    )

    # TinyLlama-like: SentencePiece, untied lm_head, F32
    out["tiny_llama_spm"] = folder = root / "TinyLlama-tiny-spm"
    copy_tokenizer(spm_tok, folder)
    save_llama(folder, n_spm, seed=2, tie=False)

    # Llama-3.1-like: sharded, untied, "llama3" rope scaling, vocab padded past the tokenizer
    out["tiny_llama_bpe_sharded"] = folder = root / "Llama3-tiny-sharded"
    copy_tokenizer(bpe_tok, folder)
    save_llama(
        folder,
        (n_bpe + 63) // 64 * 64,
        seed=3,
        tie=False,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
        max_shard_size="100KB",
        bos_token_id=bpe_bos,
        eos_token_id=bpe_eos,
    )

    # BF16 weights, SentencePiece, tied, linear rope scaling
    out["tiny_llama_spm_bf16"] = folder = root / "TinyLlama-tiny-bf16"
    copy_tokenizer(spm_tok, folder)
    save_llama(
        folder,
        n_spm,
        seed=4,
        tie=True,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
        bf16=True,
    )
    return out
