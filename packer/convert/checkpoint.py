"""Lazy reading of Hugging Face safetensors checkpoints, single file or sharded.

The safetensors format is simple: an 8-byte little-endian header length, a JSON header
mapping tensor names to ``{"dtype", "shape", "data_offsets"}``, then the raw tensor bytes.
We parse the header ourselves and read one tensor at a time with an offset read, so the
whole model is never in memory. No torch or ``safetensors`` package needed.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from packer.errors import ConversionError, SourceError, UnsupportedModelError

logger = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

# A header larger than this is certainly not a real safetensors header (the format's own
# reference implementation caps it at 100 MB).
MAX_HEADER_BYTES = 100 * 1024 * 1024

# safetensors dtype -> (numpy dtype used to read the raw bytes, bytes per element).
# BF16 has no numpy dtype: it is read as uint16 and widened by :func:`to_float32`.
READABLE_DTYPES: dict[str, tuple[np.dtype[Any], int]] = {
    "F64": (np.dtype("<f8"), 8),
    "F32": (np.dtype("<f4"), 4),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2),
}

# Element sizes of dtypes we can size-check but not convert (quantized/integer checkpoints).
_OTHER_DTYPE_SIZES: dict[str, int] = {
    "I64": 8,
    "U64": 8,
    "I32": 4,
    "U32": 4,
    "I16": 2,
    "U16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, absolute byte offset and size, dtype and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    offset: int
    nbytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def readable(self) -> bool:
        return self.dtype in READABLE_DTYPES


def _corrupt(file: Path, detail: str) -> ConversionError:
    return ConversionError(
        f"corrupt safetensors header in {file}: {detail}; re-download or re-save the checkpoint"
    )


def read_safetensors_header(file: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse one .safetensors file's header; returns (tensors by name, __metadata__).

    Validates every entry (dtype, shape, offsets) against the file size, so a truncated
    file is reported here rather than as a crash while reading.
    """
    try:
        file_size = file.stat().st_size
        with open(file, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _corrupt(file, f"file is only {len(prefix)} bytes long")
            header_len = int.from_bytes(prefix, "little")
            if header_len > MAX_HEADER_BYTES or header_len > file_size - 8:
                raise _corrupt(
                    file, f"header length {header_len} does not fit in a {file_size}-byte file"
                )
            raw = f.read(header_len)
    except OSError as err:
        raise SourceError(f"cannot read {file}: {err.strerror or err}; check the file") from err

    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _corrupt(file, f"header is not valid JSON ({err})") from err
    if not isinstance(header, dict):
        raise _corrupt(file, "header is not a JSON object")

    data_start = 8 + header_len
    metadata: dict[str, str] = {}
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            if isinstance(entry, dict):
                metadata = {str(k): str(v) for k, v in entry.items()}
            continue
        if not isinstance(entry, dict):
            raise _corrupt(file, f"entry for tensor {name} is not an object")
        dtype = entry.get("dtype")
        shape = entry.get("shape")
        offsets = entry.get("data_offsets")
        if not isinstance(dtype, str):
            raise _corrupt(file, f"tensor {name} has no dtype")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise _corrupt(file, f"tensor {name} has an invalid shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise _corrupt(file, f"tensor {name} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        n_elements = math.prod(shape)
        itemsize = READABLE_DTYPES[dtype][1] if dtype in READABLE_DTYPES else None
        itemsize = itemsize or _OTHER_DTYPE_SIZES.get(dtype)
        if itemsize is not None and end - begin != n_elements * itemsize:
            raise _corrupt(
                file,
                f"tensor {name} ({dtype}, shape {shape}) should take {n_elements * itemsize} "
                f"bytes but its data_offsets span {end - begin}",
            )
        tensors[name] = TensorInfo(
            name=name,
            dtype=dtype,
            shape=tuple(shape),
            file=file,
            offset=data_start + begin,
            nbytes=end - begin,
        )
    cut = sorted(
        (t for t in tensors.values() if t.offset + t.nbytes > file_size), key=lambda t: t.offset
    )
    if cut:
        needed = max(t.offset + t.nbytes for t in tensors.values())
        raise ConversionError(
            f"{file} is truncated ({file_size} of {needed} bytes): tensor {cut[0].name}"
            + (f" and {len(cut) - 1} more are" if len(cut) > 1 else " is")
            + " incomplete; re-download the checkpoint"
        )
    return tensors, metadata


def find_weight_files(folder: Path) -> list[Path]:
    """The safetensors files holding the model's weights, in a stable order."""
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("weight_map is not an object")
            names = sorted({str(v) for v in weight_map.values()})
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConversionError(
                f"cannot use {index}: {err}; re-download the checkpoint's index file"
            ) from err
        for name in names:
            _check_shard_name(name, index)
        files = [folder / n for n in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ConversionError(
                f"shard {missing[0]} listed in {INDEX_FILE} is missing from {folder}; "
                "re-download the checkpoint"
            )
        return files
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    files = sorted(folder.glob("model*.safetensors"))
    if files:
        return files
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.pth")):
        raise UnsupportedModelError(
            f"{folder} has PyTorch .bin/.pt weights but no .safetensors; "
            "re-save the model with save_pretrained(..., safe_serialization=True)"
        )
    raise SourceError(f"no model*.safetensors weights in {folder}; download the full checkpoint")


def _check_shard_name(name: str, index: Path) -> None:
    """A shard named by the index must be a file inside the checkpoint folder: no absolute
    path, no ``..``, so that an index cannot make the converter read files elsewhere."""
    parts = PurePosixPath(name).parts
    if not name or "\\" in name or name.startswith("/") or ".." in parts or "\0" in name:
        raise ConversionError(
            f"{index} names the shard {name!r}, which is not a file inside the checkpoint "
            "folder: shard names must be relative and without '..'; re-download the index file"
        )


class Checkpoint:
    """All tensors of a (possibly sharded) safetensors checkpoint, read lazily."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files = find_weight_files(folder)
        self.tensors: dict[str, TensorInfo] = {}
        for file in self.files:
            tensors, _ = read_safetensors_header(file)
            for name, info in tensors.items():
                if name in self.tensors:
                    raise ConversionError(
                        f"tensor {name} appears in both {self.tensors[name].file.name} and "
                        f"{file.name}; re-download the checkpoint"
                    )
                self.tensors[name] = info

    def read(self, name: str) -> np.ndarray:
        """The tensor's raw data in its stored precision (BF16 as uint16), shaped."""
        info = self.tensors[name]
        if not info.readable:
            raise ConversionError(
                f"tensor {name} has dtype {info.dtype}, which packer cannot read "
                f"(supported: {', '.join(READABLE_DTYPES)}); use an unquantized checkpoint"
            )
        np_dtype, itemsize = READABLE_DTYPES[info.dtype]
        count = info.nbytes // itemsize
        try:
            data = np.fromfile(info.file, dtype=np_dtype, count=count, offset=info.offset)
        except OSError as err:
            raise SourceError(
                f"cannot read tensor {name} from {info.file}: {err.strerror or err}; check the file"
            ) from err
        if data.size != count:
            raise ConversionError(
                f"{info.file} is truncated: tensor {name} is incomplete; re-download the checkpoint"
            )
        return data.reshape(info.shape)


def bf16_to_float32(raw: np.ndarray) -> np.ndarray:
    """Widen bfloat16 values stored as uint16 to float32 (exact)."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16(values: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest, ties to even), returned as uint16 bits."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))) >> 16
    # keep NaNs NaN (rounding could carry a NaN's payload into the infinity pattern)
    nan = np.isnan(values)
    if nan.any():
        rounded = np.where(nan, (bits >> 16) | np.uint32(0x40), rounded)
    return rounded.astype(np.uint16)


def to_float32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Any readable stored tensor as float32."""
    if dtype == "BF16":
        return bf16_to_float32(raw)
    return raw.astype(np.float32, copy=False)
