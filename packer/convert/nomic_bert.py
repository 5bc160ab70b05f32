"""Nomic BERT (``NomicBertModel``: nomic-embed-text v1 / v1.5) -> GGUF ``nomic-bert``, an
embedding model.

BERT's post-norm blocks with rotary positions (NEOX layout, ``rotary_emb_base``) instead of
learned ones, a fused Q/K/V projection (``Wqkv``: llama.cpp's ``attn_qkv``), a SwiGLU MLP
(``fc2(fc11(x) * silu(fc12(x)))``: ``ffn_up``, ``ffn_gate``, ``ffn_down``) and no biases but the
norms'. The vocabulary is BERT's WordPiece; pooling and normalization as in bert.py.

Two config.json dialects, the same tensors (``encoder.layers.N.attn.Wqkv`` ...):
- the hub checkpoints' own (remote code, ``n_embd``/``n_layer``/``rotary_emb_base``...): what
  it computes is fixed by the switches in ``_FIXED``. nomic-embed-text v1/v1.5 say
  ``n_positions`` 8192 but were trained for ``max_trained_positions`` (2048): the smaller is
  the context.
- transformers' ``NomicBertConfig`` (>= 5, ``hidden_size``/``num_hidden_layers``/
  ``rope_parameters``...), written by its ``save_pretrained``, which saves the hub tensor
  names; its model has the fixed design above, only ``hidden_act`` may differ.
"""

from __future__ import annotations

from typing import ClassVar

import gguf

from packer.convert.base import ModelConverter, TensorSpec, register
from packer.convert.pooling import Pooling, read_pooling
from packer.errors import ConversionError, UnsupportedModelError

# config.json switch -> the only value llama.cpp's nomic-bert computes
_FIXED = {
    "activation_function": "swiglu",
    "causal": False,
    "prenorm": False,
    "qkv_proj_bias": False,
    "mlp_fc1_bias": False,
    "mlp_fc2_bias": False,
    "rotary_emb_fraction": 1.0,
    "rotary_emb_interleaved": False,
    "rotary_emb_scale_base": None,
    "rotary_scaling_factor": None,
}


@register
class NomicBertConverter(ModelConverter):
    hf_architectures = ("NomicBertModel",)
    gguf_arch = gguf.MODEL_ARCH.NOMIC_BERT
    embedding_model: ClassVar[bool] = True  # see bert.makes_embeddings()

    def read_hparams(self) -> None:
        if "n_embd" not in self.config and "hidden_size" in self.config:
            self._read_transformers_hparams()
        else:
            self._read_remote_code_hparams()
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ConversionError(
                f"config.json: hidden size {self.n_embd} / {self.n_head} heads must give an "
                "even head size; fix config.json"
            )
        self.pooling: Pooling = read_pooling(self.src, gguf.PoolingType.MEAN)

    def _read_transformers_hparams(self) -> None:
        """transformers' own ``NomicBertConfig`` keys."""
        act = self.config.get("hidden_act", "silu")
        if act != "silu":
            raise UnsupportedModelError(
                f"config.json hidden_act={act!r} is not supported by llama.cpp's nomic-bert "
                "(only 'silu')"
            )
        self.n_embd = self.cfg_int("hidden_size")
        self.n_layer = self.cfg_int("num_hidden_layers")
        self.n_head = self.cfg_int("num_attention_heads")
        head_dim = self.config.get("head_dim")
        if head_dim is not None and head_dim * self.n_head != self.n_embd:
            raise UnsupportedModelError(
                f"config.json head_dim={head_dim!r} is not supported by llama.cpp's nomic-bert "
                "(only hidden_size / num_attention_heads)"
            )
        self.n_ff = self.cfg_int("intermediate_size")
        self.n_vocab = self.cfg_int("vocab_size")
        self.n_token_types = self.cfg_int("type_vocab_size", default=2)
        self.norm_eps = self.cfg_float("layer_norm_eps", default=1e-12)
        has_theta = "rope_parameters" in self.config or "rope_theta" in self.config
        theta, rope = self.rope_parameters()
        if rope["rope_type"] != "default":
            raise UnsupportedModelError(
                f"config.json rope type {rope['rope_type']!r} is not supported by llama.cpp's "
                "nomic-bert (only 'default')"
            )
        self.rope_theta = theta if has_theta else 1000.0  # NomicBertConfig's default
        self.n_ctx = self.cfg_int("max_position_embeddings", default=2048)

    def _read_remote_code_hparams(self) -> None:
        """The hub checkpoints' own keys (their modeling code ships with them)."""
        if self.config.get("moe_every_n_layers"):
            raise UnsupportedModelError("Nomic BERT with experts (nomic-bert-moe) is not supported")
        for key, expected in _FIXED.items():
            value = self.config.get(key, expected)
            if value != expected:
                raise UnsupportedModelError(
                    f"config.json {key}={value!r} is not supported by llama.cpp's nomic-bert "
                    f"(only {expected!r})"
                )
        self.n_embd = self.cfg_int("n_embd")
        self.n_layer = self.cfg_int("n_layer")
        self.n_head = self.cfg_int("n_head")
        self.n_ff = self.cfg_int("n_inner", default=4 * self.n_embd)
        self.n_vocab = self.cfg_int("vocab_size")
        self.n_token_types = self.cfg_int("type_vocab_size", default=2)
        self.norm_eps = self.cfg_float("layer_norm_epsilon", default=1e-12)
        self.rope_theta = self.cfg_float("rotary_emb_base", default=10000.0)
        n_positions = self.cfg_int("n_positions")
        self.n_ctx = min(n_positions, self.cfg_int("max_trained_positions", default=n_positions))

    def tensor_specs(self) -> dict[str, TensorSpec]:
        d, ff = self.n_embd, self.n_ff
        specs = {
            "embeddings.word_embeddings.weight": TensorSpec((self.n_vocab, d)),
            "embeddings.token_type_embeddings.weight": TensorSpec((self.n_token_types, d)),
            "emb_ln.weight": TensorSpec((d,)),
            "emb_ln.bias": TensorSpec((d,)),
        }
        layer = {
            "attn.Wqkv.weight": (3 * d, d),
            "attn.out_proj.weight": (d, d),
            "mlp.fc11.weight": (ff, d),
            "mlp.fc12.weight": (ff, d),
            "mlp.fc2.weight": (d, ff),
            "norm1.weight": (d,),
            "norm1.bias": (d,),
            "norm2.weight": (d,),
            "norm2.bias": (d,),
        }
        for i in range(self.n_layer):
            p = f"encoder.layers.{i}."
            specs |= {p + name: TensorSpec(shape) for name, shape in layer.items()}
        return specs

    def add_hparams(self, writer: gguf.GGUFWriter) -> None:
        writer.add_context_length(self.n_ctx)
        writer.add_embedding_length(self.n_embd)
        writer.add_block_count(self.n_layer)
        writer.add_feed_forward_length(self.n_ff)
        writer.add_head_count(self.n_head)
        writer.add_layer_norm_eps(self.norm_eps)
        writer.add_causal_attention(False)
        writer.add_rope_freq_base(self.rope_theta)
        writer.add_vocab_size(self.n_vocab)
        writer.add_token_type_count(self.n_token_types)
        self.pooling.add_to_gguf(writer)
