"""Layout of a model.run file, shared by the writer (``packer.pack``) and the reader (runtime).

    [ frozen runtime stub (ELF) ][ zstd-compressed GGUF ][ manifest JSON ][ trailer ]

The trailer is a fixed-size record at the very end of the file::

    magic(8) | payload_offset u64 | payload_size u64 | manifest_offset u64 | manifest_size u64 | magic(8)

All integers little-endian. Readers find the trailer by seeking to ``-TRAILER.size`` from the end,
so the stub itself never needs to know its own length.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAGIC = b"PACKER\x00\x01"
TRAILER = struct.Struct("<8sQQQQ8s")
FORMAT_VERSION = 1


class BundleError(Exception):
    """The file is not a (complete, intact) packer bundle. The message is one line for the user."""


@dataclass(frozen=True)
class Bundle:
    path: Path
    payload_offset: int
    payload_size: int
    manifest: dict[str, Any]

    @property
    def gguf_sha256(self) -> str:
        return str(self.manifest["gguf_sha256"])

    @property
    def gguf_size(self) -> int:
        return int(self.manifest["gguf_size"])


def pack_trailer(
    payload_offset: int, payload_size: int, manifest_offset: int, manifest_size: int
) -> bytes:
    return TRAILER.pack(MAGIC, payload_offset, payload_size, manifest_offset, manifest_size, MAGIC)


def encode_manifest(manifest: dict[str, Any]) -> bytes:
    return json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False).encode("utf-8")


def read_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Read the trailer and manifest of ``path``. Raises :class:`BundleError` with a clear message."""
    path = Path(path)
    name = path.name
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            if size < TRAILER.size:
                raise BundleError(
                    f"{name} is too small to hold a model: the file is truncated; copy it again"
                )
            f.seek(size - TRAILER.size)
            magic1, p_off, p_size, m_off, m_size, magic2 = TRAILER.unpack(f.read(TRAILER.size))
            if magic1 != MAGIC or magic2 != MAGIC:
                raise BundleError(
                    f"{name} has no model attached (its end is missing or damaged): "
                    "the file is truncated or corrupted; copy it again"
                )
            if not (p_off + p_size <= m_off and m_off + m_size == size - TRAILER.size):
                raise BundleError(
                    f"{name} has an inconsistent layout: the file is corrupted; copy it again"
                )
            f.seek(m_off)
            raw = f.read(m_size)
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(
            f"{name}: the model manifest is damaged: the file is corrupted; copy it again"
        ) from exc
    if int(manifest.get("format", 0)) > FORMAT_VERSION:
        raise BundleError(
            f"{name} was made by a newer packer (format {manifest.get('format')}); this runtime reads format {FORMAT_VERSION}"
        )
    return Bundle(path=path, payload_offset=p_off, payload_size=p_size, manifest=manifest)
