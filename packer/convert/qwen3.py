"""Qwen3 (``Qwen3ForCausalLM``) -> GGUF ``qwen3``: NEOX rope, per-head Q/K RMS norms."""

from __future__ import annotations

import gguf

from packer.convert.base import register
from packer.convert.qwen2 import Qwen2Converter


@register
class Qwen3Converter(Qwen2Converter):
    hf_architectures = ("Qwen3ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.QWEN3
    family = "Qwen3"
    qkv_bias = False  # config 'attention_bias' (false in released Qwen3) decides
    qk_norm = True
