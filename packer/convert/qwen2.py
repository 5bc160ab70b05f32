"""Qwen2 / Qwen2.5 (``Qwen2ForCausalLM``) -> GGUF ``qwen2``: NEOX rope, Q/K/V biases."""

from __future__ import annotations

import gguf

from packer.convert.base import register
from packer.convert.decoder import DecoderConverter
from packer.errors import UnsupportedModelError


@register
class Qwen2Converter(DecoderConverter):
    hf_architectures = ("Qwen2ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.QWEN2
    family = "Qwen2"
    qkv_bias = True

    def read_family_hparams(self) -> None:
        # transformers applies Qwen2's window only to layers >= max_window_layers, and only
        # with use_sliding_window (false in every released Qwen2/2.5 config). llama.cpp's
        # qwen2 has no sliding window: refuse the rare checkpoint that really uses one.
        if self.config.get("use_sliding_window") and self.sliding_window is not None:
            start = self.config.get("max_window_layers", self.n_layer)
            if isinstance(start, int) and start < self.n_layer:
                raise UnsupportedModelError(
                    "config.json enables Qwen2 sliding-window attention "
                    "(use_sliding_window), which llama.cpp's qwen2 does not implement"
                )
