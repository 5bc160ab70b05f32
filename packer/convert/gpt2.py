"""GPT-2 (``GPT2LMHeadModel``) -> GGUF ``gpt2``.

GPT-2 differs from the Llama shape throughout: LayerNorm with biases, learned position
embeddings (``wpe``), a plain tanh-GELU MLP, biases everywhere, and ``Conv1D`` layers,
whose weights are stored transposed (in_features, out_features); they are transposed
back to llama.cpp's (out, in) order. ``c_attn`` (Q, K and V stacked along the output)
maps to llama.cpp's fused ``attn_qkv``. Checkpoints with or without the ``transformer.``
prefix (the original OpenAI upload) are both read.
"""

from __future__ import annotations

import gguf
import numpy as np

from packer.convert.base import ModelConverter, TensorSpec, register
from packer.errors import ConversionError, UnsupportedModelError

_CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")


@register
class GPT2Converter(ModelConverter):
    hf_architectures = ("GPT2LMHeadModel",)
    gguf_arch = gguf.MODEL_ARCH.GPT2
    # the causal-mask buffers some checkpoints carry
    ignored_tensors = (r"(^|\.)attn\.(masked_)?bias$",)

    def read_hparams(self) -> None:
        act = self.config.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise UnsupportedModelError(
                f"config.json activation_function {act!r} is not supported for GPT-2 "
                "(llama.cpp's gpt2 uses the tanh GELU, 'gelu_new')"
            )
        for key, expected in (
            ("scale_attn_weights", True),
            ("scale_attn_by_inverse_layer_idx", False),
            ("reorder_and_upcast_attn", False),
            ("add_cross_attention", False),
        ):
            if self.cfg_bool(key, expected) != expected:
                raise UnsupportedModelError(
                    f"config.json {key}={not expected} is not supported by llama.cpp's gpt2"
                )
        self.n_embd = self.cfg_int("n_embd")
        self.n_layer = self.cfg_int("n_layer")
        self.n_head = self.cfg_int("n_head")
        self.n_ctx = self.cfg_int("n_positions")
        self.n_vocab = self.cfg_int("vocab_size")
        self.n_ff = self.cfg_int("n_inner", default=4 * self.n_embd)
        self.norm_eps = self.cfg_float("layer_norm_epsilon", default=1e-5)
        self.tied = self.cfg_bool("tie_word_embeddings", True)
        if self.n_embd % self.n_head:
            raise ConversionError(
                f"config.json n_embd {self.n_embd} is not divisible by n_head {self.n_head}"
            )

    def tensor_specs(self) -> dict[str, TensorSpec]:
        d, ff, v = self.n_embd, self.n_ff, self.n_vocab
        t = "" if "wte.weight" in self.checkpoint.tensors else "transformer."
        specs = {
            f"{t}wte.weight": TensorSpec((v, d)),
            f"{t}wpe.weight": TensorSpec((self.n_ctx, d)),
            f"{t}ln_f.weight": TensorSpec((d,)),
            f"{t}ln_f.bias": TensorSpec((d,)),
            "lm_head.weight": TensorSpec((v, d), required=not self.tied, skip=self.tied),
        }
        layer = {
            "ln_1.weight": (d,),
            "ln_1.bias": (d,),
            "attn.c_attn.weight": (d, 3 * d),  # Conv1D: (in, out)
            "attn.c_attn.bias": (3 * d,),
            "attn.c_proj.weight": (d, d),
            "attn.c_proj.bias": (d,),
            "ln_2.weight": (d,),
            "ln_2.bias": (d,),
            "mlp.c_fc.weight": (d, ff),
            "mlp.c_fc.bias": (ff,),
            "mlp.c_proj.weight": (ff, d),
            "mlp.c_proj.bias": (d,),
        }
        for i in range(self.n_layer):
            specs |= {f"{t}h.{i}.{name}": TensorSpec(shape) for name, shape in layer.items()}
        return specs

    def transform(self, hf_name: str, data: np.ndarray, dtype: str) -> tuple[np.ndarray, str]:
        if hf_name.endswith(_CONV1D):
            return np.ascontiguousarray(data.T), dtype
        return data, dtype

    def keeps_data(self, hf_name: str) -> bool:
        return not hf_name.endswith(_CONV1D)

    def gguf_shape(self, hf_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape[::-1] if hf_name.endswith(_CONV1D) else shape

    def add_hparams(self, writer: gguf.GGUFWriter) -> None:
        writer.add_context_length(self.n_ctx)
        writer.add_embedding_length(self.n_embd)
        writer.add_block_count(self.n_layer)
        writer.add_feed_forward_length(self.n_ff)
        writer.add_head_count(self.n_head)
        writer.add_head_count_kv(self.n_head)
        writer.add_layer_norm_eps(self.norm_eps)
        writer.add_vocab_size(self.n_vocab)
