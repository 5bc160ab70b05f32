"""Assemble model.run: the stub (launcher + runtime archive), then the zstd-compressed GGUF,
the manifest and the trailer.

The layout is defined once, in :mod:`packer.runtime.payload`, which the launcher and runtime read back.
A stub without a footer (a test stand-in) is copied whole and recorded as having no runtime.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import logging
import os
from pathlib import Path
from typing import BinaryIO

from packer import __version__
from packer.errors import OutputError
from packer.runtime.atomic_write import atomic_write
from packer.runtime.manifest import FORMAT_VERSION, Manifest
from packer.runtime.payload import NO_RUNTIME_KEY, STUB_FOOTER, pack_trailer, read_stub_footer

log = logging.getLogger(__name__)

CHUNK = 8 << 20
ZSTD_LEVEL = 3  # quantized weights barely compress; level 3 is fast and still trims F16/embeddings
# zstd's multi-threaded output is the same for any number of workers >= 1, but differs from
# its single-threaded (0 workers) output. threads=-1 would give 0 where the CPU count is
# unknown: ask for at least one worker so that every machine writes the same bytes.
ZSTD_THREADS = max(1, os.cpu_count() or 1)
EXECUTABLE = 0o755  # model.run's mode


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def copy_prefix(src: Path, dst: BinaryIO, size: int) -> None:
    """The first ``size`` bytes of ``src`` into ``dst``; OSError (EIO) if it has fewer."""
    with open(src, "rb") as s:
        left = size
        while left and (chunk := s.read(min(CHUNK, left))):
            dst.write(chunk)
            left -= len(chunk)
    if left:
        raise OSError(errno.EIO, f"{src} shrank while being copied")


def pack(stub: Path, gguf: Path, out: Path, manifest: Manifest) -> Manifest:
    """Write ``out`` atomically and return the full manifest written into it: ``manifest``
    with the payload's fields (size, checksum, packer version) filled in.

    The same stub, GGUF and manifest give the same bytes: nothing here depends on the time,
    the output's path or the number of CPUs (see :data:`ZSTD_THREADS`).
    """
    import zstandard

    info = read_stub_footer(stub)
    if info is None:
        stub_bytes, runtime = stub.stat().st_size, (0, 0, NO_RUNTIME_KEY)
    else:
        stub_bytes = stub.stat().st_size - STUB_FOOTER.size
        runtime = (info.launcher_size, info.archive_size, info.key)

    out = out.resolve()
    gguf_size = gguf.stat().st_size
    started = False  # the temp file exists: errors from here on are write errors
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(out, mode=EXECUTABLE) as dst:
            started = True
            copy_prefix(stub, dst, stub_bytes)
            payload_offset = dst.tell()
            digest = hashlib.sha256()
            cctx = zstandard.ZstdCompressor(  # the checksum: a damaged payload is an error
                level=ZSTD_LEVEL, threads=ZSTD_THREADS, write_content_size=True, write_checksum=True
            )
            with (
                open(gguf, "rb") as src,
                cctx.stream_writer(dst, size=gguf_size, closefd=False) as zw,
            ):
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    zw.write(chunk)
            payload_size = dst.tell() - payload_offset
            full = dataclasses.replace(
                manifest,
                format=FORMAT_VERSION,
                compression="zstd",
                gguf_size=gguf_size,
                gguf_sha256=digest.hexdigest(),
                payload_size=payload_size,
                packer_version=__version__,
            )
            raw = full.to_json()
            manifest_offset = dst.tell()
            dst.write(raw)
            dst.write(
                pack_trailer(
                    payload_offset,
                    payload_size,
                    manifest_offset,
                    len(raw),
                    runtime_offset=runtime[0],
                    runtime_size=runtime[1],
                    runtime_key=runtime[2],
                )
            )
    except OSError as exc:
        if not started:
            raise OutputError(
                f"cannot write {out}: {exc.strerror}: choose another place with -o"
            ) from exc
        if exc.errno == errno.ENOSPC:
            raise OutputError(
                f"disk full while writing {out}: free some space or write elsewhere with -o"
            ) from exc
        raise OutputError(f"cannot write {out}: {exc.strerror}") from exc
    log.info(
        "packed %s: stub %.1f MB + model %.1f MB (zstd, from %.1f MB)",
        out.name,
        payload_offset / 1e6,
        payload_size / 1e6,
        gguf_size / 1e6,
    )
    return full
