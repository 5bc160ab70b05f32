"""IBM Granite 3.x (``GraniteForCausalLM``) -> GGUF ``granite``.

A Llama (same permuted Q/K rows) with four scalars that GGUF carries as metadata:
``embedding_multiplier`` (embeddings scaled), ``residual_multiplier`` (each block's output
scaled before the residual add), ``attention_multiplier`` (the attention scale, instead of
1/sqrt(head_dim)) and ``logits_scaling`` (logits divided by it).
"""

from __future__ import annotations

import gguf

from packer.convert.base import register
from packer.convert.decoder import DecoderConverter
from packer.errors import ConversionError


@register
class GraniteConverter(DecoderConverter):
    hf_architectures = ("GraniteForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.GRANITE
    family = "Granite"
    rope_types = ("default", "linear", "yarn", "dynamic")
    permute_rotary = True

    def read_family_hparams(self) -> None:
        self.multipliers: dict[str, float] = {}
        for key in (
            "embedding_multiplier",
            "residual_multiplier",
            "attention_multiplier",
            "logits_scaling",
        ):
            value = self.cfg_float(key, default=1.0)
            if value <= 0:
                raise ConversionError(f"config.json '{key}' must be positive, got {value!r}")
            self.multipliers[key] = value

    def add_family_hparams(self, writer: gguf.GGUFWriter) -> None:
        writer.add_embedding_scale(self.multipliers["embedding_multiplier"])
        writer.add_residual_scale(self.multipliers["residual_multiplier"])
        writer.add_attention_scale(self.multipliers["attention_multiplier"])
        writer.add_logit_scale(self.multipliers["logits_scaling"])
