"""The architecture-independent part of HF -> GGUF conversion, and the converter registry.

A converter subclass declares, for one family of Hugging Face architectures:

* how to read and validate its hyperparameters from config.json (:meth:`read_hparams`),
* which tensors the checkpoint must contain and their shapes (:meth:`tensor_specs`),
* how to write its GGUF hyperparameters (:meth:`add_hparams`),
* optionally, per-tensor rewrites (:meth:`transform`, :meth:`gguf_shape`) and generated
  tensors (:meth:`extra_tensors`).

Everything else (config reading helpers, lazy tensor streaming, name mapping with gguf's
``TensorNameMap``, output type choice, validation, vocabulary) lives here.
"""

from __future__ import annotations

import logging
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import gguf
import numpy as np

from packer.convert.checkpoint import (
    READABLE_DTYPES,
    Checkpoint,
    TensorInfo,
    float32_to_bf16,
    to_float32,
)
from packer.convert.vocab import TokenizerSpec, Vocab, load_vocab
from packer.errors import ConversionError, UnsupportedModelError

logger = logging.getLogger(__name__)

OUTTYPES = ("auto", "f32", "f16", "bf16")

_QTYPE_BY_NAME = {
    "F32": gguf.GGMLQuantizationType.F32,
    "F16": gguf.GGMLQuantizationType.F16,
    "BF16": gguf.GGMLQuantizationType.BF16,
    "F64": gguf.GGMLQuantizationType.F32,  # nobody wants F64 weights in a GGUF
}
_FILE_TYPE = {
    gguf.GGMLQuantizationType.F32: gguf.LlamaFileType.ALL_F32,
    gguf.GGMLQuantizationType.F16: gguf.LlamaFileType.MOSTLY_F16,
    gguf.GGMLQuantizationType.BF16: gguf.LlamaFileType.MOSTLY_BF16,
}
# stored dtypes whose bytes are the GGUF type's bytes as they are (both little endian)
_SAME_BYTES = {
    "F32": gguf.GGMLQuantizationType.F32,
    "F16": gguf.GGMLQuantizationType.F16,
    "BF16": gguf.GGMLQuantizationType.BF16,
}
_NUMPY_TYPE: dict[gguf.GGMLQuantizationType, np.dtype[Any]] = {
    gguf.GGMLQuantizationType.F32: np.dtype(np.float32),
    gguf.GGMLQuantizationType.F16: np.dtype(np.float16),
    gguf.GGMLQuantizationType.BF16: np.dtype(np.uint16),
}


def numpy_dtype(qtype: gguf.GGMLQuantizationType) -> np.dtype[Any]:
    """The numpy dtype holding a tensor of ``qtype`` (BF16 as uint16 bits)."""
    return _NUMPY_TYPE[qtype]


@dataclass(frozen=True)
class TensorSpec:
    """A tensor the checkpoint must (or may) contain, with the shape config.json implies."""

    shape: tuple[int, ...]
    required: bool = True
    skip: bool = False  # present in some checkpoints but not written (e.g. tied lm_head)


@dataclass
class PlannedTensor:
    """One GGUF tensor to write: name, numpy-order shape, output type and a data loader."""

    name: str
    shape: tuple[int, ...]
    qtype: gguf.GGMLQuantizationType
    load: Callable[[], np.ndarray]
    # set when the checkpoint's bytes are written unchanged: they are copied file to file
    source: TensorInfo | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _NUMPY_TYPE[self.qtype].itemsize

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


def encode(
    data: np.ndarray, src_dtype: str, qtype: gguf.GGMLQuantizationType, name: str = "?"
) -> np.ndarray:
    """Convert raw checkpoint data (BF16 as uint16) to the output type, C-contiguous."""
    if qtype == gguf.GGMLQuantizationType.BF16:
        out = data if src_dtype == "BF16" else float32_to_bf16(to_float32(data, src_dtype))
    elif qtype == gguf.GGMLQuantizationType.F16:
        if src_dtype == "F16":
            out = data
        else:
            with np.errstate(over="ignore"):
                out = to_float32(data, src_dtype).astype(np.float16)
            if not np.isfinite(out).all() and np.isfinite(to_float32(data, src_dtype)).all():
                logger.warning(
                    "tensor %s has values beyond the F16 range (now inf); prefer bf16 or f32",
                    name,
                )
    else:
        out = to_float32(data, src_dtype)
    return np.ascontiguousarray(out)


class ModelConverter(ABC):
    """Base class of all converters; subclasses register with :func:`register`."""

    hf_architectures: ClassVar[tuple[str, ...]] = ()
    gguf_arch: ClassVar[gguf.MODEL_ARCH]
    # Checkpoint tensors that carry no weights llama.cpp needs (regexes on HF names).
    ignored_tensors: ClassVar[tuple[str, ...]] = (r"(^|\.)rotary_emb\.inv_freq$",)

    def __init__(self, src: Path, config: dict[str, Any]) -> None:
        self.src = src
        self.tokenizer: TokenizerSpec | None = None  # set by the caller once detected
        self.config = config
        self.read_hparams()
        self.checkpoint = Checkpoint(src)
        self.tensor_map = gguf.get_tensor_name_map(self.gguf_arch, self.block_count)
        self.specs = self.tensor_specs()
        self.validate()

    # ---- what subclasses provide -------------------------------------------------------

    # set by read_hparams()
    n_layer: int
    n_ctx: int
    n_vocab: int

    @abstractmethod
    def read_hparams(self) -> None:
        """Read and check config.json fields (use the ``cfg_*`` helpers); must set
        ``n_layer``, ``n_ctx`` and ``n_vocab``."""

    @property
    def block_count(self) -> int:
        return self.n_layer

    @property
    def context_length(self) -> int:
        return self.n_ctx

    @property
    def vocab_size(self) -> int:
        return self.n_vocab

    @abstractmethod
    def tensor_specs(self) -> dict[str, TensorSpec]:
        """HF tensor name -> expected shape, for every tensor of the checkpoint."""

    @abstractmethod
    def add_hparams(self, writer: gguf.GGUFWriter) -> None:
        """Write the architecture's GGUF hyperparameters."""

    def transform(self, hf_name: str, data: np.ndarray, dtype: str) -> tuple[np.ndarray, str]:
        """Rewrite one tensor's raw data (``dtype`` as stored, BF16 as uint16 bits) before
        writing; returns (data, its dtype). The result must have :meth:`gguf_shape`.
        Arithmetic rewrites should work on ``to_float32(data, dtype)`` and return "F32"."""
        return data, dtype

    def keeps_data(self, hf_name: str) -> bool:
        """Whether :meth:`transform` returns this tensor's data unchanged (then its bytes
        can be copied straight from the checkpoint). A subclass that overrides
        :meth:`transform` must override this too: by default it is true only for converters
        that do not override :meth:`transform`."""
        return type(self).transform is ModelConverter.transform

    def gguf_shape(self, hf_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Numpy-order shape of the written tensor (differs when :meth:`transform` transposes)."""
        return shape

    def extra_tensors(self) -> list[PlannedTensor]:
        """Tensors that are computed rather than read from the checkpoint."""
        return []

    # ---- config.json helpers -----------------------------------------------------------

    def _cfg_missing(self, key: str) -> ConversionError:
        return ConversionError(
            f"config.json in {self.src} has no '{key}'; the checkpoint's config is incomplete"
        )

    def cfg_int(self, key: str, default: int | None = None, minimum: int = 1) -> int:
        value = self.config.get(key)
        if value is None:
            if default is None:
                raise self._cfg_missing(key)
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConversionError(
                f"config.json '{key}' must be an integer >= {minimum}, got {value!r}; "
                "fix config.json"
            )
        return value

    def cfg_float(self, key: str, default: float | None = None) -> float:
        value = self.config.get(key)
        if value is None:
            if default is None:
                raise self._cfg_missing(key)
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConversionError(f"config.json '{key}' must be a number, got {value!r}")
        return float(value)

    def cfg_bool(self, key: str, default: bool) -> bool:
        value = self.config.get(key, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConversionError(f"config.json '{key}' must be true or false, got {value!r}")
        return value

    def rope_parameters(self) -> tuple[float, dict[str, Any]]:
        """(rope theta, rope scaling parameters incl. 'rope_type'), from either the
        transformers <5 keys (``rope_theta``, ``rope_scaling``) or >=5 (``rope_parameters``)."""
        params: dict[str, Any] = {}
        for key in ("rope_scaling", "rope_parameters"):
            value = self.config.get(key)
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConversionError(f"config.json '{key}' must be an object, got {value!r}")
            params.update(value)
        theta = params.get("rope_theta", self.config.get("rope_theta", 10000.0))
        if isinstance(theta, bool) or not isinstance(theta, (int, float)) or theta <= 0:
            raise ConversionError(f"config.json 'rope_theta' must be a positive number: {theta!r}")
        params.setdefault("rope_type", params.get("type") or "default")
        return float(theta), params

    # ---- validation --------------------------------------------------------------------

    def is_ignored(self, hf_name: str) -> bool:
        return any(re.search(p, hf_name) for p in self.ignored_tensors)

    def gguf_name(self, hf_name: str) -> str:
        name = self.tensor_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ConversionError(f"no GGUF name for tensor {hf_name}; packer does not know it")
        return name

    def validate(self) -> None:
        """Check tensor names, shapes and dtypes against config.json, from headers only."""
        present = {n: i for n, i in self.checkpoint.tensors.items() if not self.is_ignored(n)}
        for name, spec in self.specs.items():
            if spec.required and name not in present:
                raise ConversionError(
                    f"missing tensor {name} (shape {list(spec.shape)}) in {self.src}; "
                    "the checkpoint is incomplete or does not match its config.json"
                )
        for name, info in present.items():
            spec = self.specs.get(name)
            if spec is None:
                raise ConversionError(
                    f"unexpected tensor {name} in {info.file.name}; the checkpoint does not "
                    f"match a plain {self.config['architectures'][0]} with this config.json"
                )
            if info.shape != spec.shape:
                raise ConversionError(
                    f"tensor {name} has shape {list(info.shape)} but config.json implies "
                    f"{list(spec.shape)}; the checkpoint does not match its config.json"
                )
            if not info.readable:
                raise ConversionError(
                    f"tensor {name} has dtype {info.dtype}, which packer cannot read "
                    f"(supported: {', '.join(READABLE_DTYPES)}); use an unquantized checkpoint"
                )
            if not spec.skip:
                self.gguf_name(name)

    # ---- facts for inspect ---------------------------------------------------------------

    def weight_tensors(self) -> list[TensorInfo]:
        return [
            info
            for name, info in self.checkpoint.tensors.items()
            if not self.is_ignored(name) and not self.specs[name].skip
        ]

    @property
    def n_params(self) -> int:
        return sum(info.n_elements for info in self.weight_tensors())

    @property
    def dominant_dtype(self) -> str:
        totals: dict[str, int] = {}
        for info in self.weight_tensors():
            totals[info.dtype] = totals.get(info.dtype, 0) + info.n_elements
        return max(totals, key=lambda d: totals[d]) if totals else "F32"

    # ---- planning and writing ------------------------------------------------------------

    def output_type(
        self, gguf_name: str, shape: tuple[int, ...], src_dtype: str, outtype: str
    ) -> gguf.GGMLQuantizationType:
        """1-D tensors (norms, biases) stay F32 as llama.cpp expects; the rest per outtype."""
        if len(shape) <= 1:
            return gguf.GGMLQuantizationType.F32
        if outtype == "auto":
            return _QTYPE_BY_NAME[src_dtype]
        return _QTYPE_BY_NAME[outtype.upper()]

    def plan(self, outtype: str) -> list[PlannedTensor]:
        planned = list(self.extra_tensors())
        infos = sorted(self.weight_tensors(), key=lambda i: (str(i.file), i.offset))
        for info in infos:
            name = self.gguf_name(info.name)
            shape = self.gguf_shape(info.name, info.shape)
            qtype = self.output_type(name, shape, info.dtype, outtype)
            source = info if self.copies_as_is(info, shape, qtype) else None
            planned.append(PlannedTensor(name, shape, qtype, self._loader(info, qtype), source))
        return planned

    def copies_as_is(
        self, info: TensorInfo, shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType
    ) -> bool:
        """Whether the written tensor is exactly the checkpoint's bytes (same type and
        shape, no rewrite): then it is copied file to file instead of through numpy."""
        return (
            _SAME_BYTES.get(info.dtype) == qtype
            and shape == info.shape
            and info.nbytes == math.prod(shape) * _NUMPY_TYPE[qtype].itemsize
            and self.keeps_data(info.name)
        )

    def _loader(
        self, info: TensorInfo, qtype: gguf.GGMLQuantizationType
    ) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            data, dtype = self.transform(info.name, self.checkpoint.read(info.name), info.dtype)
            return encode(data, dtype, qtype, info.name)

        return load

    @staticmethod
    def file_type(planned: list[PlannedTensor]) -> gguf.LlamaFileType:
        counts: dict[gguf.GGMLQuantizationType, int] = {}
        for t in planned:
            if len(t.shape) >= 2:
                counts[t.qtype] = counts.get(t.qtype, 0) + t.n_elements
        if not counts:
            return gguf.LlamaFileType.ALL_F32
        return _FILE_TYPE[max(counts, key=lambda q: counts[q])]

    def load_vocab(self) -> Vocab:
        return load_vocab(self.src, self.vocab_size, self.tokenizer)

    def add_metadata(
        self, writer: gguf.GGUFWriter, model_name: str, planned: list[PlannedTensor], vocab: Vocab
    ) -> None:
        writer.add_name(model_name)
        writer.add_file_type(self.file_type(planned))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        self.add_hparams(writer)
        vocab.write(writer)


# ---- registry ------------------------------------------------------------------------------

_REGISTRY: dict[str, type[ModelConverter]] = {}

C = TypeVar("C", bound=type[ModelConverter])


def register(cls: C) -> C:
    """Class decorator: make ``cls`` the converter for its ``hf_architectures``."""
    for arch in cls.hf_architectures:
        if arch in _REGISTRY:
            raise RuntimeError(f"two converters for {arch}")
        _REGISTRY[arch] = cls
    return cls


def supported_architectures() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def converter_for(architecture: str) -> type[ModelConverter]:
    try:
        return _REGISTRY[architecture]
    except KeyError:
        raise UnsupportedModelError(
            f"architecture {architecture!r} is not supported; packer converts: "
            f"{', '.join(supported_architectures())}"
        ) from None
