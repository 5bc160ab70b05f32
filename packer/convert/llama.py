"""Llama (``LlamaForCausalLM``): Llama 1/2/3, TinyLlama, SmolLM, ... -> GGUF ``llama``."""

from __future__ import annotations

import gguf

from packer.convert.base import register
from packer.convert.decoder import DecoderConverter, llama3_rope_factors, unpermute_rotary

__all__ = ["LlamaConverter", "llama3_rope_factors", "unpermute_rotary"]


@register
class LlamaConverter(DecoderConverter):
    hf_architectures = ("LlamaForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.LLAMA
    family = "Llama"
    rope_types = ("default", "linear", "llama3", "yarn", "dynamic")
    permute_rotary = True  # HF Llama Q/K rows are permuted for llama.cpp's "normal" rope
