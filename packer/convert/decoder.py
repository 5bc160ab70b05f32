"""Shared converter for Llama-shaped decoders (Llama, Mistral, Qwen2/3, Phi-3, Gemma 2/3).

The common shape: token embeddings, N blocks of (RMS norm, rotary self-attention,
RMS norm, gated MLP), a final norm and an lm_head (possibly tied). Family modules subclass
:class:`DecoderConverter` and change only what differs: class-level switches (rope layout,
biases, Q/K norms, allowed activations and rope types), extra per-layer tensors
(:meth:`layer_shapes`) and extra GGUF keys (:meth:`add_family_hparams`).
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar

import gguf
import numpy as np

from packer.convert.base import ModelConverter, PlannedTensor, TensorSpec
from packer.convert.checkpoint import to_float32
from packer.errors import ConversionError, UnsupportedModelError

logger = logging.getLogger(__name__)


def unpermute_rotary(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo the Q/K row permutation of HF Llama checkpoints.

    HF stores each head's rotary dimensions as two halves (x0..x(d/2-1), then the rest);
    llama.cpp's ``llama`` rope, like Meta's original weights, expects them interleaved
    in pairs. Works for weights (rows, cols) and biases (rows,), in any dtype.
    """
    rows = weight.shape[0]
    head_dim = rows // n_heads
    return (
        weight.reshape(n_heads, 2, head_dim // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def llama3_rope_factors(theta: float, dim: int, params: dict[str, Any]) -> np.ndarray:
    """Per-frequency divisors for Llama-3.1 style ("llama3") rope scaling.

    llama.cpp divides each rotary frequency by the matching ``rope_freqs`` entry: 1 for
    high frequencies, ``factor`` for low ones, and a smooth blend in between.
    """
    factor = float(params.get("factor", 8.0))
    low = float(params.get("low_freq_factor", 1.0))
    high = float(params.get("high_freq_factor", 4.0))
    old_ctx = float(params.get("original_max_position_embeddings", 8192))
    if factor <= 0 or high <= low:
        raise ConversionError(
            f"config.json llama3 rope scaling has invalid factors {params!r}; fix config.json"
        )
    freqs = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    wavelen = 2 * math.pi / freqs
    smooth = (old_ctx / wavelen - low) / (high - low)
    blended = 1.0 / ((1 - smooth) / factor + smooth)
    out = np.where(
        wavelen < old_ctx / high, 1.0, np.where(wavelen > old_ctx / low, factor, blended)
    )
    return out.astype(np.float32)


class DecoderConverter(ModelConverter):
    """Base of the Llama-shaped families; not registered itself."""

    family: ClassVar[str] = "?"  # for messages
    hidden_acts: ClassVar[tuple[str, ...]] = ("silu",)
    act_key: ClassVar[str] = "hidden_act"
    rope_types: ClassVar[tuple[str, ...]] = ("default", "linear", "yarn", "dynamic")
    # HF Llama checkpoints permute Q/K rows for llama.cpp's "normal" rope; NEOX-rope
    # architectures (qwen2, phi3, gemma, ...) take them as stored.
    permute_rotary: ClassVar[bool] = False
    # Q/K/V biases regardless of config (Qwen2); otherwise config 'attention_bias'.
    qkv_bias: ClassVar[bool] = False
    qk_norm: ClassVar[bool] = False  # per-head RMS norms on Q and K (Qwen3, Gemma 3)
    tied_default: ClassVar[bool] = False
    # Gemma's RMSNorm multiplies by (1 + weight); llama.cpp by weight: add 1 at conversion.
    norm_plus_one: ClassVar[bool] = False

    def read_hparams(self) -> None:
        act = self.config.get(self.act_key, self.hidden_acts[0])
        if act not in self.hidden_acts:
            raise UnsupportedModelError(
                f"config.json {self.act_key} {act!r} is not supported for {self.family} "
                f"(only {', '.join(repr(a) for a in self.hidden_acts)})"
            )
        self.n_embd = self.cfg_int("hidden_size")
        self.n_layer = self.cfg_int("num_hidden_layers")
        self.n_head = self.cfg_int("num_attention_heads")
        self.n_head_kv = self.cfg_int("num_key_value_heads", default=self.n_head)
        self.n_ff = self.cfg_int("intermediate_size")
        self.n_vocab = self.cfg_int("vocab_size")
        self.n_ctx = self.cfg_int("max_position_embeddings", default=2048)
        self.rms_eps = self.cfg_float("rms_norm_eps", default=1e-6)
        self.tied = self.cfg_bool("tie_word_embeddings", self.tied_default)
        self.attention_bias = self.cfg_bool("attention_bias", False)
        self.mlp_bias = self.cfg_bool("mlp_bias", False)
        if "head_dim" in self.config and self.config["head_dim"] is not None:
            self.head_dim = self.cfg_int("head_dim")
        elif self.n_embd % self.n_head:
            raise ConversionError(
                f"config.json hidden_size {self.n_embd} is not divisible by "
                f"num_attention_heads {self.n_head} and head_dim is not set; fix config.json"
            )
        else:
            self.head_dim = self.n_embd // self.n_head
        if self.n_head % self.n_head_kv:
            raise ConversionError(
                f"config.json num_attention_heads {self.n_head} is not a multiple of "
                f"num_key_value_heads {self.n_head_kv}; fix config.json"
            )
        if self.head_dim % 2:
            raise ConversionError(f"config.json head_dim {self.head_dim} must be even for rope")
        self.rope_theta, self.rope = self.rope_parameters()
        partial = self.rope.get("partial_rotary_factor", self.config.get("partial_rotary_factor"))
        partial = 1.0 if partial is None else partial
        if (
            isinstance(partial, bool)
            or not isinstance(partial, (int, float))
            or not 0 < partial <= 1
        ):
            raise ConversionError(
                f"config.json partial_rotary_factor must be in (0, 1], got {partial!r}"
            )
        self.n_rot = int(self.head_dim * partial)
        if self.n_rot % 2:
            raise ConversionError(f"rotary dimensions {self.n_rot} must be even; fix config.json")
        rope_type = self.rope["rope_type"]
        if rope_type not in self.rope_types:
            raise UnsupportedModelError(
                f"config.json rope scaling type {rope_type!r} is not supported for "
                f"{self.family} (supported: {', '.join(self.rope_types)})"
            )
        if rope_type in ("linear", "yarn", "dynamic"):
            factor = self.rope.get("factor")
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 0:
                raise ConversionError(
                    f"config.json rope scaling {rope_type!r} needs a positive 'factor', "
                    f"got {factor!r}; fix config.json"
                )
        self.sliding_window = self.read_sliding_window()
        self.read_family_hparams()

    def read_sliding_window(self) -> int | None:
        """config.json 'sliding_window' (None/absent or disabled: no window)."""
        if self.config.get("use_sliding_window") is False:
            return None
        if self.config.get("sliding_window") is None:
            return None
        return self.cfg_int("sliding_window")

    def read_family_hparams(self) -> None:
        """Family-specific config checks (after the common ones)."""

    # ---- tensors -----------------------------------------------------------------------

    def layer_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-layer tensor name (after ``model.layers.{i}.``) -> shape."""
        d, ff = self.n_embd, self.n_ff
        q_rows = self.n_head * self.head_dim
        kv_rows = self.n_head_kv * self.head_dim
        layer: dict[str, tuple[int, ...]] = {
            "input_layernorm.weight": (d,),
            "post_attention_layernorm.weight": (d,),
            "self_attn.q_proj.weight": (q_rows, d),
            "self_attn.k_proj.weight": (kv_rows, d),
            "self_attn.v_proj.weight": (kv_rows, d),
            "self_attn.o_proj.weight": (d, q_rows),
            "mlp.gate_proj.weight": (ff, d),
            "mlp.up_proj.weight": (ff, d),
            "mlp.down_proj.weight": (d, ff),
        }
        if self.attention_bias or self.qkv_bias:
            layer |= {
                "self_attn.q_proj.bias": (q_rows,),
                "self_attn.k_proj.bias": (kv_rows,),
                "self_attn.v_proj.bias": (kv_rows,),
            }
        if self.attention_bias:
            layer["self_attn.o_proj.bias"] = (d,)
        if self.mlp_bias:
            layer |= {
                "mlp.gate_proj.bias": (ff,),
                "mlp.up_proj.bias": (ff,),
                "mlp.down_proj.bias": (d,),
            }
        if self.qk_norm:
            layer |= {
                "self_attn.q_norm.weight": (self.head_dim,),
                "self_attn.k_norm.weight": (self.head_dim,),
            }
        return layer

    def tensor_specs(self) -> dict[str, TensorSpec]:
        d, v = self.n_embd, self.n_vocab
        specs = {
            "model.embed_tokens.weight": TensorSpec((v, d)),
            "model.norm.weight": TensorSpec((d,)),
            # tied: llama.cpp reuses token_embd for the output; an lm_head copy is dropped
            "lm_head.weight": TensorSpec((v, d), required=not self.tied, skip=self.tied),
        }
        layer = self.layer_shapes()
        for i in range(self.n_layer):
            p = f"model.layers.{i}."
            specs |= {p + name: TensorSpec(shape) for name, shape in layer.items()}
        return specs

    def transform(self, hf_name: str, data: np.ndarray, dtype: str) -> tuple[np.ndarray, str]:
        if self.permute_rotary:
            if ".self_attn.q_proj." in hf_name:
                return unpermute_rotary(data, self.n_head), dtype
            if ".self_attn.k_proj." in hf_name:
                return unpermute_rotary(data, self.n_head_kv), dtype
        if self.norm_plus_one and hf_name.endswith("norm.weight"):
            return to_float32(data, dtype) + np.float32(1.0), "F32"
        return data, dtype

    def keeps_data(self, hf_name: str) -> bool:
        if type(self).transform is not DecoderConverter.transform:
            return False  # a family rewrites more: take the safe path
        if self.permute_rotary and (
            ".self_attn.q_proj." in hf_name or ".self_attn.k_proj." in hf_name
        ):
            return False
        return not (self.norm_plus_one and hf_name.endswith("norm.weight"))

    def extra_tensors(self) -> list[PlannedTensor]:
        if self.rope["rope_type"] != "llama3":
            return []
        factors = llama3_rope_factors(self.rope_theta, self.n_rot, self.rope)
        name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
        return [PlannedTensor(name, factors.shape, gguf.GGMLQuantizationType.F32, lambda: factors)]

    # ---- GGUF hyperparameters ------------------------------------------------------------

    def add_hparams(self, writer: gguf.GGUFWriter) -> None:
        writer.add_context_length(self.n_ctx)
        writer.add_embedding_length(self.n_embd)
        writer.add_block_count(self.n_layer)
        writer.add_feed_forward_length(self.n_ff)
        writer.add_head_count(self.n_head)
        writer.add_head_count_kv(self.n_head_kv)
        writer.add_layer_norm_rms_eps(self.rms_eps)
        writer.add_rope_freq_base(self.rope_theta)
        writer.add_rope_dimension_count(self.n_rot)
        writer.add_vocab_size(self.n_vocab)
        if self.head_dim != self.n_embd // self.n_head:
            writer.add_key_length(self.head_dim)
            writer.add_value_length(self.head_dim)
        self.add_rope_scaling(writer)
        self.add_family_hparams(writer)

    def add_rope_scaling(self, writer: gguf.GGUFWriter) -> None:
        rope_type = self.rope["rope_type"]
        if rope_type == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(self.rope["factor"]))
        elif rope_type == "yarn":
            writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            writer.add_rope_scaling_factor(float(self.rope["factor"]))
            orig = self.rope.get("original_max_position_embeddings")
            if isinstance(orig, int):
                writer.add_rope_scaling_orig_ctx_len(orig)
            for key, add in (
                ("beta_fast", writer.add_rope_scaling_yarn_beta_fast),
                ("beta_slow", writer.add_rope_scaling_yarn_beta_slow),
            ):
                if isinstance(self.rope.get(key), (int, float)):
                    add(float(self.rope[key]))
        elif rope_type == "dynamic":
            logger.warning(
                "dynamic NTK rope scaling is not supported by llama.cpp; the model will use "
                "plain rope (fine up to its original context length)"
            )
        # "llama3" is carried by the rope_freqs tensor (extra_tensors)

    def add_family_hparams(self, writer: gguf.GGUFWriter) -> None:
        """Extra GGUF keys of one family (sliding window, softcapping, ...)."""
