"""Writing the GGUF file: header, metadata and tensor infos in one buffer, then the data.

``gguf.GGUFWriter`` is used only to collect the metadata (its ``add_*`` methods and
``add_tensor_info``); the bytes are produced here, because the writer packs arrays one item
at a time (about 0.4 s for a 49k-token vocabulary with its merges) and writes tensors only
from numpy arrays. The layout, as llama.cpp reads it (GGUF version 3, little endian):

* magic ``GGUF``, version (u32), tensor count (u64), metadata count (u64);
* each metadata pair: key (string), value type (u32), value; a string is its byte length
  (u64) then UTF-8 bytes, an array its item type (u32), item count (u64), then the items;
* each tensor info: name (string), dimension count (u32), dimensions (u64, fastest-varying
  first, i.e. the numpy shape reversed), type (u32), offset from the data start (u64);
* zero padding to ``general.alignment`` (default 32), then each tensor's bytes, each padded
  with zeros to the alignment.

The output is byte-identical to what ``GGUFWriter`` writes from the same metadata.
:class:`DataWriter` streams the data section: numpy arrays, or byte ranges copied straight
from a checkpoint file into the output (``os.copy_file_range``: no copy through Python).
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from packer.errors import ConversionError

_T = gguf.GGUFValueType
_SCALAR_FORMATS: dict[gguf.GGUFValueType, str] = {
    _T.UINT8: "B",
    _T.INT8: "b",
    _T.UINT16: "H",
    _T.INT16: "h",
    _T.UINT32: "I",
    _T.INT32: "i",
    _T.FLOAT32: "f",
    _T.UINT64: "Q",
    _T.INT64: "q",
    _T.FLOAT64: "d",
    _T.BOOL: "?",
}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_COPY_CHUNK = 1 << 30  # bytes per copy_file_range call
_FALLBACK_CHUNK = 16 << 20  # bytes per read/write when copy_file_range is not available
# copy_file_range refusals that mean "not here" (old kernel, other file system, ...)
_NO_COPY_RANGE = {errno.ENOSYS, errno.EXDEV, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF}


def pad_to(n: int, alignment: int) -> int:
    """``n`` rounded up to a multiple of ``alignment``."""
    return (n + alignment - 1) // alignment * alignment


def _pack_string(value: str | bytes | bytearray) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return _U64.pack(len(raw)) + raw


def _pack_strings(items: Sequence[str | bytes | bytearray]) -> bytes:
    """Strings, each as its byte length (u64) then its UTF-8 bytes, all in one go."""
    if set(map(type, items)) == {str}:
        encoded = list(map(str.encode, items))
    else:
        encoded = [s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in items]
    lengths = np.fromiter(map(len, encoded), dtype="<u8", count=len(encoded))
    blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    # each string's length field starts after the previous fields and strings
    starts = np.arange(len(encoded), dtype=np.int64) * 8
    starts[1:] += np.cumsum(lengths[:-1], dtype=np.int64)
    out = np.empty(8 * len(encoded) + blob.size, dtype=np.uint8)
    length_at = (starts[:, None] + np.arange(8)).ravel()
    out[length_at] = lengths.view(np.uint8)
    is_text = np.ones(out.size, dtype=bool)
    is_text[length_at] = False
    out[is_text] = blob
    return out.tobytes()


def _item_type(items: Sequence[Any]) -> gguf.GGUFValueType:
    """The one GGUF type of all items of an untyped array (as gguf infers it)."""
    # one representative per Python type: checking 49k tokens one by one is slow
    if len(set(map(type, items))) == 1:
        samples = [items[0]]
    else:
        samples = list({type(item): item for item in items}.values())
    types = {gguf.GGUFValueType.get_type(item) for item in samples}
    if len(types) != 1:
        raise ValueError("all items of a GGUF metadata array must have the same type")
    return types.pop()


def _pack_array(items: Sequence[Any], sub_type: gguf.GGUFValueType | None) -> bytes:
    if not isinstance(items, Sequence):
        raise ValueError("a GGUF metadata array must be a sequence")
    if len(items) == 0:
        raise ValueError("a GGUF metadata array must not be empty")
    if sub_type is not None:
        item_type = sub_type
    elif isinstance(items, bytes):
        item_type = _T.UINT8
    else:
        item_type = _item_type(items)
    head = _U32.pack(item_type) + _U64.pack(len(items))
    fmt = _SCALAR_FORMATS.get(item_type)
    if fmt is not None:
        prefix = "" if item_type == _T.BOOL else "<"
        return head + struct.pack(f"{prefix}{len(items)}{fmt}", *items)
    if item_type == _T.STRING:
        return head + _pack_strings(items)
    return head + b"".join(pack_value(item, item_type) for item in items)


def pack_value(
    value: Any, value_type: gguf.GGUFValueType, sub_type: gguf.GGUFValueType | None = None
) -> bytes:
    """One metadata value's bytes, without its type tag."""
    fmt = _SCALAR_FORMATS.get(value_type)
    if fmt is not None:
        return struct.pack(fmt if value_type == _T.BOOL else "<" + fmt, value)
    if value_type == _T.STRING:
        return _pack_string(value)
    if value_type == _T.ARRAY:
        return _pack_array(value, sub_type)
    raise ValueError(f"invalid GGUF metadata value type {value_type!r}")


def header_bytes(writer: gguf.GGUFWriter) -> bytes:
    """Header, metadata and tensor infos collected in ``writer``, padded to the alignment."""
    if writer.endianess != gguf.GGUFEndian.LITTLE or len(writer.tensors) != 1:
        raise ValueError("only single-file little-endian GGUF output is supported")
    kv_data = writer.kv_data[0]
    tensors = writer.tensors[0]
    alignment = writer.data_alignment
    parts = [
        _U32.pack(gguf.GGUF_MAGIC),
        _U32.pack(gguf.GGUF_VERSION),
        _U64.pack(len(tensors)),
        _U64.pack(len(kv_data)),
    ]
    for key, val in kv_data.items():
        parts += [
            _pack_string(key),
            _U32.pack(val.type),
            pack_value(val.value, val.type, val.sub_type),
        ]
    offset = 0
    for name, info in tensors.items():
        dims = tuple(reversed(info.shape))
        parts += [
            _pack_string(name),
            _U32.pack(len(dims)),
            struct.pack(f"<{len(dims)}Q", *dims),
            _U32.pack(info.dtype),
            _U64.pack(offset),
        ]
        offset += pad_to(info.nbytes, alignment)
    data = b"".join(parts)
    return data + bytes(pad_to(len(data), alignment) - len(data))


class DataWriter:
    """Appends tensor data, each tensor padded to the alignment, to an open output file."""

    def __init__(self, fd: int, alignment: int) -> None:
        self.fd = fd
        self.alignment = alignment
        self.copy_range = hasattr(os, "copy_file_range")

    def _write_all(self, data: memoryview) -> None:
        while len(data):
            written = os.write(self.fd, data)
            data = data[written:]

    def pad(self, nbytes: int) -> None:
        """Zeros after a tensor of ``nbytes`` up to the next alignment boundary."""
        padding = pad_to(nbytes, self.alignment) - nbytes
        if padding:
            self._write_all(memoryview(bytes(padding)))

    def write_padded(self, data: bytes | np.ndarray) -> None:
        """Write bytes or an array's bytes (C order), then the padding."""
        if isinstance(data, np.ndarray):
            data = np.ascontiguousarray(data)
        view = memoryview(data).cast("B")
        self._write_all(view)
        self.pad(view.nbytes)

    def copy_file(self, src: Path, offset: int, nbytes: int, what: str) -> None:
        """Copy ``nbytes`` at ``offset`` of ``src`` as they are, then the padding."""
        with open(src, "rb") as f:
            done = self._copy_with_range(f.fileno(), offset, nbytes) if self.copy_range else 0
            while done < nbytes:
                chunk = os.pread(f.fileno(), min(_FALLBACK_CHUNK, nbytes - done), offset + done)
                if not chunk:
                    raise ConversionError(
                        f"{src} is truncated: tensor {what} is incomplete; "
                        "re-download the checkpoint"
                    )
                self._write_all(memoryview(chunk))
                done += len(chunk)
        self.pad(nbytes)

    def _copy_with_range(self, src_fd: int, offset: int, nbytes: int) -> int:
        """Copy in the kernel as far as possible; returns the bytes copied (the rest, if
        any, is left to plain reads: the file system refused, or the source ended)."""
        done = 0
        while done < nbytes:
            try:
                n = os.copy_file_range(
                    src_fd, self.fd, min(_COPY_CHUNK, nbytes - done), offset + done
                )
            except OSError as err:
                if err.errno not in _NO_COPY_RANGE:
                    raise
                self.copy_range = False
                break
            if n == 0:
                break
            done += n
        return done
