"""Gemma 2 (``Gemma2ForCausalLM``) -> GGUF ``gemma2``; shared Gemma logic for Gemma 3.

What Gemma needs beyond the Llama shape:

* RMSNorm weights are stored as ``w`` with the norm multiplying by ``1 + w``; llama.cpp
  multiplies by its weight, so 1 is added at conversion (every ``*norm.weight``);
* four norms per block: input, post-attention, pre-feedforward, post-feedforward;
* GELU (tanh) gated MLP, tied embeddings (llama.cpp scales them by sqrt(hidden_size));
* attention scale ``query_pre_attn_scalar ** -0.5``, which llama.cpp derives from the
  head size (or hidden_size / heads for the 27B): other values are refused;
* sliding-window layers (``layer_types``), written as a per-layer pattern, and tanh
  softcapping of attention scores and of the final logits.
"""

from __future__ import annotations

import gguf

from packer.convert.base import register
from packer.convert.decoder import DecoderConverter
from packer.errors import ConversionError, UnsupportedModelError


class GemmaConverterBase(DecoderConverter):
    hidden_acts = ("gelu_pytorch_tanh", "gelu_tanh")
    act_key = "hidden_activation"
    rope_types = ("default",)
    tied_default = True
    norm_plus_one = True
    # llama.cpp's Gemma models with this block count use hidden_size / heads as scale
    scale_by_hidden_layers: tuple[int, ...] = ()
    swa_period = 2  # without layer_types: layers i with (i + 1) % period != 0 slide

    def read_family_hparams(self) -> None:
        if not self.tied:
            raise UnsupportedModelError(
                f"{self.family} with an untied lm_head is not supported: llama.cpp's "
                f"{self.gguf_arch.name.lower()} always reuses the token embeddings"
            )
        scalar = self.cfg_float("query_pre_attn_scalar", default=float(self.head_dim))
        llama_cpp_scalar = (
            self.n_embd // self.n_head
            if self.n_layer in self.scale_by_hidden_layers
            else self.head_dim
        )
        if scalar != llama_cpp_scalar:
            raise UnsupportedModelError(
                f"config.json query_pre_attn_scalar {scalar:g} differs from what llama.cpp "
                f"uses for this {self.family} ({llama_cpp_scalar}); it cannot run this model"
            )
        self.swa_layers = self.read_layer_types()

    def read_layer_types(self) -> list[bool] | None:
        """Which layers use the sliding window, from ``layer_types`` (None: no window)."""
        if self.sliding_window is None:
            return None
        types = self.config.get("layer_types")
        if types is None:  # older configs: every n-th layer is global, the rest slide
            period = self.config.get("sliding_window_pattern", self.swa_period)
            if isinstance(period, bool) or not isinstance(period, int) or period < 1:
                raise ConversionError(
                    f"config.json sliding_window_pattern must be a positive integer, got {period!r}"
                )
            return [(i + 1) % period != 0 for i in range(self.n_layer)]
        if not isinstance(types, list) or len(types) != self.n_layer:
            raise ConversionError(
                f"config.json layer_types must list {self.n_layer} layer types, got {types!r}"
            )
        unknown = set(types) - {"sliding_attention", "full_attention"}
        if unknown:
            raise UnsupportedModelError(f"config.json layer_types {sorted(unknown)} unsupported")
        return [t == "sliding_attention" for t in types]

    def layer_shapes(self) -> dict[str, tuple[int, ...]]:
        d = self.n_embd
        return super().layer_shapes() | {
            "pre_feedforward_layernorm.weight": (d,),
            "post_feedforward_layernorm.weight": (d,),
        }

    def softcap(self, key: str) -> float | None:
        value = self.config.get(key)
        if value is None:
            return None
        value = self.cfg_float(key)
        if value <= 0:
            raise ConversionError(f"config.json '{key}' must be positive, got {value!r}")
        return value

    def add_family_hparams(self, writer: gguf.GGUFWriter) -> None:
        if self.swa_layers is not None and self.sliding_window is not None:
            writer.add_sliding_window(self.sliding_window)
            writer.add_sliding_window_pattern(self.swa_layers)


@register
class Gemma2Converter(GemmaConverterBase):
    hf_architectures = ("Gemma2ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.GEMMA2
    family = "Gemma 2"
    scale_by_hidden_layers = (46,)  # the 27B

    def read_family_hparams(self) -> None:
        super().read_family_hparams()
        if self.mlp_bias or self.attention_bias:
            raise UnsupportedModelError("Gemma 2 with biases is not supported by llama.cpp")
        # llama.cpp's gemma2 always windows and softcaps (defaults 4096, 50, 30): a config
        # without them cannot be expressed, so it is refused rather than silently changed.
        self.attn_softcap = self.softcap("attn_logit_softcapping")
        self.final_softcap = self.softcap("final_logit_softcapping")
        for key, value in (
            ("sliding_window", self.sliding_window),
            ("attn_logit_softcapping", self.attn_softcap),
            ("final_logit_softcapping", self.final_softcap),
        ):
            if value is None:
                raise UnsupportedModelError(
                    f"Gemma 2 without config.json '{key}' is not supported: llama.cpp's gemma2 "
                    "always applies it"
                )

    def add_family_hparams(self, writer: gguf.GGUFWriter) -> None:
        super().add_family_hparams(writer)
        assert self.attn_softcap is not None and self.final_softcap is not None
        writer.add_attn_logit_softcapping(self.attn_softcap)
        writer.add_final_logit_softcapping(self.final_softcap)
