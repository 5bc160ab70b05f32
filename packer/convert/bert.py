"""BERT encoders (``BertModel``: all-MiniLM, bge-*-en) -> GGUF ``bert``, an embedding model.

Learned absolute positions and token types, post-norm blocks (LayerNorm with biases after
attention and after the GELU MLP), separate Q/K/V with biases. The pooler and any MLM head
are not needed for sentence embeddings and are dropped. The checkpoint's sentence-transformers
pooling (mean / cls / last) and normalization are written to the GGUF
(:mod:`packer.convert.pooling`), attention is marked non-causal. The vocabulary is WordPiece
(llama.cpp ``bert``) or, for XLM-RoBERTa (:mod:`packer.convert.xlm_roberta`), Unigram.
"""

from __future__ import annotations

from typing import ClassVar

import gguf
import numpy as np

from packer.convert.base import (
    ModelConverter,
    TensorSpec,
    converter_for,
    register,
    supported_architectures,
)
from packer.convert.pooling import Pooling, read_pooling
from packer.errors import ConversionError, UnsupportedModelError

# GELU as transformers names it; llama.cpp's bert computes the tanh form (within 1e-3)
_GELU = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_python")


# llama.cpp's encoder architectures, for a GGUF given as the source
_GGUF_ENCODERS = (
    "bert",
    "nomic-bert",
    "nomic-bert-moe",
    "jina-bert-v2",
    "modern-bert",
    "gemma-embedding",
)


def makes_embeddings(architecture: str | None) -> bool:
    """Whether a model of ``architecture`` (HF name, or a GGUF's) is an embedding model."""
    if architecture in _GGUF_ENCODERS:
        return True
    if architecture not in supported_architectures():
        return False
    return bool(getattr(converter_for(architecture), "embedding_model", False))


@register
class BertConverter(ModelConverter):
    hf_architectures = ("BertModel",)
    gguf_arch = gguf.MODEL_ARCH.BERT
    family: ClassVar[str] = "BERT"
    ignored_tensors = (r"(^|\.)position_ids$", r"(^|\.)token_type_ids$")
    default_pooling: ClassVar[gguf.PoolingType] = gguf.PoolingType.MEAN
    embedding_model: ClassVar[bool] = True  # see makes_embeddings()

    # rows of the position table before position 0 (XLM-RoBERTa: pad_token_id + 1)
    position_offset = 0

    def read_hparams(self) -> None:
        act = self.config.get("hidden_act", "gelu")
        if act not in _GELU:
            raise UnsupportedModelError(
                f"config.json hidden_act {act!r} is not supported for {self.family} "
                "(llama.cpp's bert uses GELU)"
            )
        kind = self.config.get("position_embedding_type", "absolute")
        if kind not in (None, "absolute"):
            raise UnsupportedModelError(
                f"config.json position_embedding_type {kind!r} is not supported by llama.cpp's "
                "bert (only 'absolute')"
            )
        if self.config.get("is_decoder"):
            raise UnsupportedModelError(f"a {self.family} decoder (is_decoder) is not supported")
        self.n_embd = self.cfg_int("hidden_size")
        self.n_layer = self.cfg_int("num_hidden_layers")
        self.n_head = self.cfg_int("num_attention_heads")
        self.n_ff = self.cfg_int("intermediate_size")
        self.n_vocab = self.cfg_int("vocab_size")
        self.n_positions = self.cfg_int("max_position_embeddings")
        self.n_token_types = self.cfg_int("type_vocab_size", default=2)
        self.norm_eps = self.cfg_float("layer_norm_eps", default=1e-12)
        if self.n_embd % self.n_head:
            raise ConversionError(
                f"config.json hidden_size {self.n_embd} is not divisible by "
                f"num_attention_heads {self.n_head}; fix config.json"
            )
        self.read_family_hparams()
        self.n_ctx = self.n_positions - self.position_offset
        if self.n_ctx < 1:
            raise ConversionError(
                f"config.json max_position_embeddings {self.n_positions} leaves no positions "
                f"after the first {self.position_offset}; fix config.json"
            )
        self.pooling: Pooling = read_pooling(self.src, self.default_pooling)

    def read_family_hparams(self) -> None:
        """Family-specific config checks (XLM-RoBERTa: the position offset)."""

    def tensor_specs(self) -> dict[str, TensorSpec]:
        d, ff = self.n_embd, self.n_ff
        specs = {
            "embeddings.word_embeddings.weight": TensorSpec((self.n_vocab, d)),
            "embeddings.position_embeddings.weight": TensorSpec((self.n_positions, d)),
            "embeddings.token_type_embeddings.weight": TensorSpec((self.n_token_types, d)),
            "embeddings.LayerNorm.weight": TensorSpec((d,)),
            "embeddings.LayerNorm.bias": TensorSpec((d,)),
            "pooler.dense.weight": TensorSpec((d, d), required=False, skip=True),
            "pooler.dense.bias": TensorSpec((d,), required=False, skip=True),
        }
        layer = {
            "attention.self.query.weight": (d, d),
            "attention.self.query.bias": (d,),
            "attention.self.key.weight": (d, d),
            "attention.self.key.bias": (d,),
            "attention.self.value.weight": (d, d),
            "attention.self.value.bias": (d,),
            "attention.output.dense.weight": (d, d),
            "attention.output.dense.bias": (d,),
            "attention.output.LayerNorm.weight": (d,),
            "attention.output.LayerNorm.bias": (d,),
            "intermediate.dense.weight": (ff, d),
            "intermediate.dense.bias": (ff,),
            "output.dense.weight": (d, ff),
            "output.dense.bias": (d,),
            "output.LayerNorm.weight": (d,),
            "output.LayerNorm.bias": (d,),
        }
        for i in range(self.n_layer):
            p = f"encoder.layer.{i}."
            specs |= {p + name: TensorSpec(shape) for name, shape in layer.items()}
        return specs

    def _offset_rows(self, hf_name: str) -> bool:
        return self.position_offset > 0 and hf_name == "embeddings.position_embeddings.weight"

    def transform(self, hf_name: str, data: np.ndarray, dtype: str) -> tuple[np.ndarray, str]:
        if self._offset_rows(hf_name):
            return np.ascontiguousarray(data[self.position_offset :]), dtype
        return data, dtype

    def keeps_data(self, hf_name: str) -> bool:
        return not self._offset_rows(hf_name)

    def gguf_shape(self, hf_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        if self._offset_rows(hf_name):
            return (shape[0] - self.position_offset, *shape[1:])
        return shape

    def add_hparams(self, writer: gguf.GGUFWriter) -> None:
        writer.add_context_length(self.n_ctx)
        writer.add_embedding_length(self.n_embd)
        writer.add_block_count(self.n_layer)
        writer.add_feed_forward_length(self.n_ff)
        writer.add_head_count(self.n_head)
        writer.add_layer_norm_eps(self.norm_eps)
        writer.add_causal_attention(False)
        writer.add_vocab_size(self.n_vocab)
        writer.add_token_type_count(self.n_token_types)
        self.pooling.add_to_gguf(writer)
