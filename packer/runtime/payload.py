"""Layout of a model.run file, shared by the writer (``packer.pack``) and the reader (runtime).

Layout v2 (current)::

    [ launcher (static ELF) ][ runtime archive ][ zstd-compressed GGUF ][ manifest JSON ][ trailer v2 ]

The launcher (``build/launcher/launcher.c``) unpacks the runtime archive (the PyInstaller onedir
runtime, format in ``packer/archive.py``) once into ``<cache>/runtime/<runtime_key>/`` and execs
it with ``PACKER_BUNDLE`` set to this file. The trailer is a fixed-size record at the very end::

    magic(8) | runtime_offset u64 | runtime_size u64 | payload_offset u64 | payload_size u64
           | manifest_offset u64 | manifest_size u64 | runtime_key (32 ASCII hex) | magic(8)

Layout v1 (PyInstaller onefile stub, no runtime archive) is still read::

    magic(8) | payload_offset u64 | payload_size u64 | manifest_offset u64 | manifest_size u64 | magic(8)

The manifest is JSON (:mod:`packer.runtime.manifest`). All integers little-endian. Readers find
the trailer by seeking to the end, so no part needs to know its own length. The stub that
``packer.stub`` caches is ``[launcher][runtime archive]`` followed by a :data:`STUB_FOOTER`
telling ``packer.pack`` where the archive starts.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from packer.runtime.errors import BundleError
from packer.runtime.manifest import Manifest

MAGIC_V1 = b"PACKER\x00\x01"
MAGIC = b"PACKER\x00\x02"
TRAILER_V1 = struct.Struct("<8sQQQQ8s")
TRAILER = struct.Struct("<8sQQQQQQ32s8s")
KEY_LEN = 32
NO_RUNTIME_KEY = "0" * KEY_LEN
STUB_MAGIC = b"PKRSTUB\x01"
STUB_FOOTER = struct.Struct("<8sQQ32s8s")  # magic | launcher_size | archive_size | key | magic


@dataclass(frozen=True)
class Bundle:
    path: Path
    payload_offset: int
    payload_size: int
    manifest: Manifest
    runtime_offset: int = 0
    runtime_size: int = 0
    runtime_key: str = NO_RUNTIME_KEY

    @property
    def gguf_sha256(self) -> str:
        return self.manifest.gguf_sha256

    @property
    def gguf_size(self) -> int:
        return self.manifest.gguf_size


@dataclass(frozen=True)
class StubInfo:
    """Where the runtime archive sits in a stub file ``[launcher][archive][footer]``."""

    launcher_size: int
    archive_size: int
    key: str


def pack_trailer(
    payload_offset: int,
    payload_size: int,
    manifest_offset: int,
    manifest_size: int,
    *,
    runtime_offset: int = 0,
    runtime_size: int = 0,
    runtime_key: str = NO_RUNTIME_KEY,
) -> bytes:
    key = runtime_key.encode("ascii")
    if len(key) != KEY_LEN:
        raise ValueError(f"runtime key must be {KEY_LEN} hex characters")
    return TRAILER.pack(
        MAGIC,
        runtime_offset,
        runtime_size,
        payload_offset,
        payload_size,
        manifest_offset,
        manifest_size,
        key,
        MAGIC,
    )


def pack_stub_footer(launcher_size: int, archive_size: int, key: str) -> bytes:
    return STUB_FOOTER.pack(
        STUB_MAGIC, launcher_size, archive_size, key.encode("ascii"), STUB_MAGIC
    )


def read_stub_footer(path: str | os.PathLike[str]) -> StubInfo | None:
    """The footer of a stub built by ``packer.stub``; None for any other file (e.g. a test stub)."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size < STUB_FOOTER.size:
            return None
        f.seek(size - STUB_FOOTER.size)
        m1, launcher, archive, key, m2 = STUB_FOOTER.unpack(f.read(STUB_FOOTER.size))
    if m1 != STUB_MAGIC or m2 != STUB_MAGIC or launcher + archive + STUB_FOOTER.size != size:
        return None
    return StubInfo(launcher, archive, key.decode("ascii"))


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
            tail = f.read(TRAILER.size)
            r_off, r_size, key = 0, 0, NO_RUNTIME_KEY
            if tail[-8:] == MAGIC:
                magic1, r_off, r_size, p_off, p_size, m_off, m_size, raw_key, magic2 = (
                    TRAILER.unpack(tail)
                )
                key = raw_key.decode("ascii", "replace")
                trailer_size = TRAILER.size
            elif tail[-8:] == MAGIC_V1:
                magic1, p_off, p_size, m_off, m_size, magic2 = TRAILER_V1.unpack(
                    tail[-TRAILER_V1.size :]
                )
                magic2 = MAGIC
                magic1 = MAGIC if magic1 == MAGIC_V1 else magic1
                trailer_size = TRAILER_V1.size
            else:
                magic1 = magic2 = b""
            if magic1 != MAGIC or magic2 != MAGIC:
                raise BundleError(
                    f"{name} has no model attached (its end is missing or damaged): "
                    "the file is truncated or corrupted; copy it again"
                )
            if not (
                r_off + r_size <= p_off
                and p_off + p_size <= m_off
                and m_off + m_size == size - trailer_size
            ):
                raise BundleError(
                    f"{name} has an inconsistent layout: the file is corrupted; copy it again"
                )
            f.seek(m_off)
            raw = f.read(m_size)
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror}") from exc
    return Bundle(
        path=path,
        payload_offset=p_off,
        payload_size=p_size,
        manifest=Manifest.from_json(raw, name),
        runtime_offset=r_off,
        runtime_size=r_size,
        runtime_key=key,
    )
