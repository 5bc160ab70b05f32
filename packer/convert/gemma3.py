"""Gemma 3, text only (``Gemma3ForCausalLM``: Gemma 3 270M / 1B) -> GGUF ``gemma3``.

Gemma 2's layout (see gemma2.py: +1 on norm weights, four norms per block, tanh GELU,
tied embeddings) plus per-head Q/K RMS norms (also stored as ``w`` for ``1 + w``). Local
(sliding-window) layers use their own rope base (``rope.freq_base_swa``); rope scaling
applies to the global layers only, as in llama.cpp. No attention softcapping.
"""

from __future__ import annotations

from typing import Any

import gguf

from packer.convert.base import register
from packer.convert.gemma2 import GemmaConverterBase
from packer.errors import ConversionError, UnsupportedModelError


@register
class Gemma3Converter(GemmaConverterBase):
    hf_architectures = ("Gemma3ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.GEMMA3
    family = "Gemma 3"
    rope_types = ("default", "linear")
    qk_norm = True
    scale_by_hidden_layers = (62,)  # the 27B
    swa_period = 6

    def rope_parameters(self) -> tuple[float, dict[str, Any]]:
        """Global rope (theta, scaling); the local layers' base goes to ``rope_theta_swa``.

        transformers >= 5 nests both under ``rope_parameters`` by layer type; older configs
        have ``rope_theta`` / ``rope_scaling`` (global) and ``rope_local_base_freq``.
        """
        nested = self.config.get("rope_parameters")
        if isinstance(nested, dict) and "full_attention" in nested:
            full, local = nested.get("full_attention"), nested.get("sliding_attention", {})
            if not isinstance(full, dict) or not isinstance(local, dict):
                raise ConversionError(f"config.json rope_parameters is malformed: {nested!r}")
            if (local.get("rope_type") or "default") != "default":
                raise UnsupportedModelError(
                    f"Gemma 3 rope scaling on sliding-window layers ({local!r}) is not "
                    "supported by llama.cpp"
                )
            self.rope_theta_swa = float(local.get("rope_theta", 10000.0))
            params = dict(full)
            theta = params.get("rope_theta", 1000000.0)
            if isinstance(theta, bool) or not isinstance(theta, (int, float)) or theta <= 0:
                raise ConversionError(f"config.json full_attention rope_theta {theta!r} invalid")
            params.setdefault("rope_type", params.get("type") or "default")
            return float(theta), params
        self.rope_theta_swa = self.cfg_float("rope_local_base_freq", default=10000.0)
        return super().rope_parameters()

    def read_family_hparams(self) -> None:
        super().read_family_hparams()
        if self.mlp_bias or self.attention_bias:
            raise UnsupportedModelError("Gemma 3 with biases is not supported by llama.cpp")
        if self.config.get("attn_logit_softcapping") is not None:
            raise UnsupportedModelError(
                "Gemma 3 with attn_logit_softcapping is not supported by llama.cpp's gemma3"
            )
        if self.config.get("use_bidirectional_attention"):
            raise UnsupportedModelError("bidirectional Gemma 3 (embedding) models unsupported")
        self.final_softcap = self.softcap("final_logit_softcapping")

    def add_family_hparams(self, writer: gguf.GGUFWriter) -> None:
        super().add_family_hparams(writer)
        if self.swa_layers is not None:
            writer.add_rope_freq_base_swa(self.rope_theta_swa)
        if self.final_softcap is not None:
            writer.add_final_logit_softcapping(self.final_softcap)
