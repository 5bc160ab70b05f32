"""EmbeddingGemma (``Gemma3TextModel`` with bidirectional attention) -> GGUF
``gemma-embedding``, an embedding model.

Gemma 3's layout (gemma3.py) without the causal mask, followed by what its
sentence-transformers pipeline adds: the pooling (mean), up to two bias-free ``Dense``
projections (``2_Dense``, ``3_Dense``: llama.cpp's ``dense_2`` / ``dense_3``, with their
sizes in ``{arch}.dense_2_feat_in`` ...) and the normalization. The checkpoint is a base model:
its tensor names have no ``model.`` prefix and there is no lm_head.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from packer.convert.base import PlannedTensor, TensorSpec, register
from packer.convert.checkpoint import Checkpoint
from packer.convert.gemma3 import Gemma3Converter
from packer.convert.pooling import Pooling, read_pooling
from packer.errors import ConversionError, UnsupportedModelError

_PREFIX = "model."


@register
class GemmaEmbeddingConverter(Gemma3Converter):
    hf_architectures = ("Gemma3TextModel",)
    gguf_arch = gguf.MODEL_ARCH.GEMMA_EMBEDDING
    family = "EmbeddingGemma"
    embedding_model = True  # see bert.makes_embeddings()
    bidirectional = True  # required (Gemma 3 checks it)

    def read_family_hparams(self) -> None:
        super().read_family_hparams()
        self.pooling: Pooling = read_pooling(self.src, gguf.PoolingType.MEAN, dense=True)
        if len(self.pooling.dense) > 2:
            raise UnsupportedModelError(
                f"{self.src / 'modules.json'}: {len(self.pooling.dense)} Dense modules; "
                "llama.cpp applies at most two"
            )
        self.dense = [Checkpoint(self.src / folder) for folder in self.pooling.dense]
        for folder, ckpt in zip(self.pooling.dense, self.dense, strict=True):
            if set(ckpt.tensors) != {"linear.weight"}:
                raise UnsupportedModelError(
                    f"{self.src / folder}: a Dense module with tensors {sorted(ckpt.tensors)}; "
                    "llama.cpp takes one bias-free linear weight"
                )

    def tensor_specs(self) -> dict[str, TensorSpec]:
        specs = {}
        for name, spec in super().tensor_specs().items():
            if name == "lm_head.weight":
                continue
            specs[name.removeprefix(_PREFIX)] = spec
        return specs

    def gguf_name(self, hf_name: str) -> str:
        return super().gguf_name(hf_name if hf_name.startswith(_PREFIX) else _PREFIX + hf_name)

    def extra_tensors(self) -> list[PlannedTensor]:
        planned = list(super().extra_tensors())
        for i, ckpt in enumerate(self.dense):
            info = ckpt.tensors["linear.weight"]
            name = f"dense_{i + 2}.weight"
            qtype = gguf.GGMLQuantizationType.F32

            def load(ckpt: Checkpoint = ckpt, dtype: str = info.dtype) -> np.ndarray:
                from packer.convert.checkpoint import to_float32

                return np.ascontiguousarray(to_float32(ckpt.read("linear.weight"), dtype))

            planned.append(PlannedTensor(name, info.shape, qtype, load))
        return planned

    def dense_dims(self) -> list[tuple[int, int]]:
        """(in, out) features of each Dense module, checked to chain from the hidden size."""
        dims = []
        width = self.n_embd
        for folder, ckpt in zip(self.pooling.dense, self.dense, strict=True):
            out_features, in_features = ckpt.tensors["linear.weight"].shape
            if in_features != width:
                raise ConversionError(
                    f"{Path(folder) / 'model.safetensors'}: Dense takes {in_features} features "
                    f"but gets {width}; the modules do not match the model"
                )
            dims.append((in_features, out_features))
            width = out_features
        return dims

    def add_family_hparams(self, writer: gguf.GGUFWriter) -> None:
        super().add_family_hparams(writer)
        writer.add_causal_attention(False)
        for i, (n_in, n_out) in enumerate(self.dense_dims()):
            writer.add_dense_features_dims(f"dense_{i + 2}", n_in, n_out)
        self.pooling.add_to_gguf(writer)
