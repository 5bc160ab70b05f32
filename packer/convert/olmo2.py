"""OLMo 2 (``Olmo2ForCausalLM``) -> GGUF ``olmo2``.

Differs from the Llama shape in its norms: no input norm; the attention and MLP outputs
are normalized before they join the residual (``post_attention_layernorm``,
``post_feedforward_layernorm``), and Q/K RMS norms span the whole projection (all heads
together, so their length is heads x head_dim) rather than one head. NEOX rope.
"""

from __future__ import annotations

import gguf

from packer.convert.base import register
from packer.convert.decoder import DecoderConverter
from packer.errors import UnsupportedModelError


@register
class Olmo2Converter(DecoderConverter):
    hf_architectures = ("Olmo2ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.OLMO2
    family = "OLMo 2"

    def read_family_hparams(self) -> None:
        if self.attention_bias or self.mlp_bias:
            raise UnsupportedModelError("OLMo 2 with biases is not supported by llama.cpp")

    def layer_shapes(self) -> dict[str, tuple[int, ...]]:
        layer = super().layer_shapes()
        del layer["input_layernorm.weight"]
        return layer | {
            "post_feedforward_layernorm.weight": (self.n_embd,),
            "self_attn.q_norm.weight": (self.n_head * self.head_dim,),
            "self_attn.k_norm.weight": (self.n_head_kv * self.head_dim,),
        }
