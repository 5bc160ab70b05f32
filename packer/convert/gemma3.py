"""Gemma 3 -> GGUF ``gemma3``: text-only ``Gemma3ForCausalLM`` (270M / 1B) and the language
model of multimodal ``Gemma3ForConditionalGeneration`` (4B / 12B / 27B, vision skipped).

Gemma 2's layout (see gemma2.py: +1 on norm weights, four norms per block, tanh GELU,
tied embeddings) plus per-head Q/K RMS norms (also stored as ``w`` for ``1 + w``). Local
(sliding-window) layers use their own rope base (``rope.freq_base_swa``); rope scaling
applies to the global layers only, as in llama.cpp. No attention softcapping.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import gguf

from packer.convert.base import PlannedTensor, TensorSpec, register
from packer.convert.gemma2 import GemmaConverterBase
from packer.errors import ConversionError, UnsupportedModelError

logger = logging.getLogger(__name__)


@register
class Gemma3Converter(GemmaConverterBase):
    hf_architectures = ("Gemma3ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.GEMMA3
    family = "Gemma 3"
    rope_types = ("default", "linear")
    qk_norm = True
    scale_by_hidden_layers = (62,)  # the 27B
    swa_period = 6
    # attention without the causal mask: EmbeddingGemma (gemma_embedding.py); a causal LM
    # configured bidirectional is refused
    bidirectional = False

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
        if bool(self.config.get("use_bidirectional_attention")) != self.bidirectional:
            raise UnsupportedModelError(
                "a bidirectional Gemma 3 (use_bidirectional_attention) is an embedding model: "
                "convert its Gemma3TextModel checkpoint (EmbeddingGemma)"
                if not self.bidirectional
                else "a Gemma3TextModel without use_bidirectional_attention is not an embedding "
                "model llama.cpp knows; convert the Gemma3ForCausalLM checkpoint instead"
            )
        self.final_softcap = self.softcap("final_logit_softcapping")

    def add_family_hparams(self, writer: gguf.GGUFWriter) -> None:
        super().add_family_hparams(writer)
        if self.swa_layers is not None:
            writer.add_rope_freq_base_swa(self.rope_theta_swa)
        if self.final_softcap is not None:
            writer.add_final_logit_softcapping(self.final_softcap)


# Gemma3TextConfig's defaults: released multimodal checkpoints (gemma-3-4b/12b/27b) list
# only what differs from them in config.json's "text_config".
TEXT_CONFIG_DEFAULTS: dict[str, Any] = {
    "vocab_size": 262208,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-6,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "rope_theta": 1000000.0,
    "rope_local_base_freq": 10000.0,
}

# the language model's tensors, by checkpoint layout: (prefix of "model.", lm_head name)
_TEXT_LAYOUTS = (
    ("language_model.model.", "language_model.lm_head.weight"),  # as released on the hub
    ("model.language_model.", "lm_head.weight"),  # transformers >= 4.52 saves
)


@register
class Gemma3MultimodalConverter(Gemma3Converter):
    """The language model of ``Gemma3ForConditionalGeneration`` (Gemma 3 4B/12B/27B);
    the vision tower and its projector are skipped (the model.run answers text only)."""

    hf_architectures = ("Gemma3ForConditionalGeneration",)
    ignored_tensors = (
        *Gemma3Converter.ignored_tensors,
        r"^(model\.)?vision_tower\.",
        r"^(model\.)?multi_modal_projector\.",
    )

    def __init__(self, src: Path, config: dict[str, Any]) -> None:
        text = config.get("text_config") or {}
        if not isinstance(text, dict):
            raise ConversionError(f"config.json 'text_config' must be an object, got {text!r}")
        merged = {**TEXT_CONFIG_DEFAULTS, **text, "architectures": config.get("architectures")}
        if "tie_word_embeddings" in config:
            merged.setdefault("tie_word_embeddings", config["tie_word_embeddings"])
        self.prefix, self.lm_head = _TEXT_LAYOUTS[0]
        super().__init__(src, merged)

    def tensor_specs(self) -> dict[str, TensorSpec]:
        names = self.checkpoint.tensors
        for prefix, lm_head in _TEXT_LAYOUTS:
            if any(n.startswith(prefix) for n in names):
                self.prefix, self.lm_head = prefix, lm_head
                break
        return {self.to_checkpoint_name(n): s for n, s in super().tensor_specs().items()}

    def to_checkpoint_name(self, name: str) -> str:
        if name == "lm_head.weight":
            return self.lm_head
        return self.prefix + name.removeprefix("model.")

    def gguf_name(self, hf_name: str) -> str:
        if hf_name == self.lm_head:
            return super().gguf_name("lm_head.weight")
        return super().gguf_name("model." + hf_name.removeprefix(self.prefix))

    def plan(self, outtype: str) -> list[PlannedTensor]:
        if any(self.is_ignored(n) for n in self.checkpoint.tensors):
            logger.warning(
                "Gemma 3: converting the language model only; the vision tower is skipped "
                "(the model answers text, it cannot see images)"
            )
        return super().plan(outtype)
