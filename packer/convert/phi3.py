"""Phi-3 / Phi-3.5 / Phi-4-mini (``Phi3ForCausalLM``) -> GGUF ``phi3``.

Phi-3 stores fused projections, which llama.cpp's ``phi3`` takes as they are:
``qkv_proj`` (Q, K and V rows stacked) becomes ``attn_qkv`` and ``gate_up_proj`` (gate
rows, then up rows) becomes ``ffn_up`` of 2 x intermediate_size rows, which llama.cpp
splits in half for its SwiGLU. Rope is NEOX style, possibly partial
(``partial_rotary_factor``).

``longrope`` scaling (Phi-3-*-128k, Phi-3.5, Phi-4-mini) becomes llama.cpp's per-frequency
``rope_factors_long`` / ``rope_factors_short`` tensors, ``rope.scaling.attn_factor`` (the
cos/sin scale) and ``rope.scaling.original_context_length``. transformers picks the long
factors per sequence (longer than the original context); llama.cpp per context size
(``n_ctx`` larger than the original context): the two agree whenever a run's context size
and its sequences are on the same side of the original context length.
"""

from __future__ import annotations

import logging
import math

import gguf
import numpy as np

from packer.convert.base import PlannedTensor, register
from packer.convert.decoder import DecoderConverter
from packer.errors import ConversionError

logger = logging.getLogger(__name__)


@register
class Phi3Converter(DecoderConverter):
    hf_architectures = ("Phi3ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.PHI3
    family = "Phi-3"
    rope_types = ("default", "linear", "yarn", "dynamic", "longrope")

    def read_family_hparams(self) -> None:
        if self.head_dim * self.n_head != self.n_embd:
            raise ConversionError(
                f"config.json head_dim {self.head_dim} x num_attention_heads {self.n_head} "
                f"must equal hidden_size {self.n_embd} for Phi-3; fix config.json"
            )
        self.longrope = self.read_longrope() if self.rope["rope_type"] == "longrope" else None
        if self.sliding_window is not None and self.sliding_window < self.n_ctx:
            logger.warning(
                "Phi-3 sliding_window %d is shorter than the context (%d): llama.cpp's phi3 "
                "attends to the full context, so outputs differ past %d tokens",
                self.sliding_window,
                self.n_ctx,
                self.sliding_window,
            )

    def read_longrope(self) -> tuple[np.ndarray, np.ndarray, float, int]:
        """(long factors, short factors, attention factor, original context length)."""
        factors = []
        for key in ("long_factor", "short_factor"):
            value = self.rope.get(key)
            if (
                not isinstance(value, list)
                or len(value) != self.n_rot // 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
                or not all(v > 0 for v in value)
            ):
                raise ConversionError(
                    f"config.json longrope '{key}' must list {self.n_rot // 2} positive numbers "
                    "(one per rotary frequency); fix config.json"
                )
            factors.append(np.array(value, dtype=np.float32))
        orig = self.rope.get(
            "original_max_position_embeddings", self.config.get("original_max_position_embeddings")
        )
        if isinstance(orig, bool) or not isinstance(orig, int) or orig < 2:
            raise ConversionError(
                "config.json longrope needs an integer original_max_position_embeddings, "
                f"got {orig!r}; fix config.json"
            )
        factor = self.rope.get("factor")
        if not isinstance(factor, (int, float)) or isinstance(factor, bool):
            factor = self.n_ctx / orig
        attn = self.rope.get("attention_factor")
        if not isinstance(attn, (int, float)) or isinstance(attn, bool):
            attn = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(orig))
        return factors[0], factors[1], float(attn), orig

    def extra_tensors(self) -> list[PlannedTensor]:
        if self.longrope is None:
            return super().extra_tensors()
        out = []
        for kind, data in (
            (gguf.MODEL_TENSOR.ROPE_FACTORS_LONG, self.longrope[0]),
            (gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT, self.longrope[1]),
        ):
            name = gguf.TENSOR_NAMES[kind] + ".weight"
            out.append(
                PlannedTensor(name, data.shape, gguf.GGMLQuantizationType.F32, lambda d=data: d)
            )
        return out

    def layer_shapes(self) -> dict[str, tuple[int, ...]]:
        d, ff = self.n_embd, self.n_ff
        qkv_rows = (self.n_head + 2 * self.n_head_kv) * self.head_dim
        return {
            "input_layernorm.weight": (d,),
            "post_attention_layernorm.weight": (d,),
            "self_attn.qkv_proj.weight": (qkv_rows, d),
            "self_attn.o_proj.weight": (d, d),
            "mlp.gate_up_proj.weight": (2 * ff, d),
            "mlp.down_proj.weight": (d, ff),
        }

    def add_family_hparams(self, writer: gguf.GGUFWriter) -> None:
        if self.longrope is not None:
            writer.add_rope_scaling_attn_factors(self.longrope[2])
            writer.add_rope_scaling_orig_ctx_len(self.longrope[3])
        if self.sliding_window is not None:
            writer.add_sliding_window(self.sliding_window)  # read, then ignored by llama.cpp
