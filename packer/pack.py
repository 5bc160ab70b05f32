"""Assemble model.run: the stub (launcher + runtime archive), then the zstd-compressed GGUF,
the manifest and the trailer.

The layout is defined once, in :mod:`packer.runtime.payload`, which the launcher and runtime read back.
A stub without a footer (a test stand-in) is copied whole and recorded as having no runtime.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from packer import __version__
from packer.errors import OutputError
from packer.runtime.payload import (
    FORMAT_VERSION,
    NO_RUNTIME_KEY,
    STUB_FOOTER,
    encode_manifest,
    pack_trailer,
    read_stub_footer,
)

log = logging.getLogger(__name__)

CHUNK = 8 << 20
ZSTD_LEVEL = 3  # quantized weights barely compress; level 3 is fast and still trims F16/embeddings


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _copy_prefix(src: Path, dst: Any, size: int) -> None:
    with open(src, "rb") as s:
        left = size
        while left and (chunk := s.read(min(CHUNK, left))):
            dst.write(chunk)
            left -= len(chunk)
    if left:
        raise OSError(errno.EIO, f"{src} shrank while being copied")


def pack(stub: Path, gguf: Path, out: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write ``out`` atomically and return the full manifest written into it."""
    import zstandard

    info = read_stub_footer(stub)
    if info is None:
        stub_bytes, runtime = stub.stat().st_size, (0, 0, NO_RUNTIME_KEY)
    else:
        stub_bytes = stub.stat().st_size - STUB_FOOTER.size
        runtime = (info.launcher_size, info.archive_size, info.key)

    out = out.resolve()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as exc:
        raise OutputError(
            f"cannot write {out}: {exc.strerror}: choose another place with -o"
        ) from exc
    tmp = Path(tmp_name)
    gguf_size = gguf.stat().st_size
    try:
        with os.fdopen(fd, "wb") as dst:
            _copy_prefix(stub, dst, stub_bytes)
            payload_offset = dst.tell()
            digest = hashlib.sha256()
            cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1, write_content_size=True)
            with (
                open(gguf, "rb") as src,
                cctx.stream_writer(dst, size=gguf_size, closefd=False) as zw,
            ):
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    zw.write(chunk)
            payload_size = dst.tell() - payload_offset
            full = {
                **manifest,
                "format": FORMAT_VERSION,
                "gguf_size": gguf_size,
                "gguf_sha256": digest.hexdigest(),
                "payload_size": payload_size,
                "compression": "zstd",
                "packer_version": __version__,
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            }
            raw = encode_manifest(full)
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
            dst.flush()
            os.fsync(dst.fileno())
        mode = os.stat(tmp).st_mode
        os.chmod(
            tmp, mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH
        )
        os.replace(tmp, out)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise OutputError(
                f"disk full while writing {out}: free some space or write elsewhere with -o"
            ) from exc
        raise OutputError(f"cannot write {out}: {exc.strerror}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    log.info(
        "packed %s: stub %.1f MB + model %.1f MB (zstd, from %.1f MB)",
        out.name,
        payload_offset / 1e6,
        payload_size / 1e6,
        gguf_size / 1e6,
    )
    return full
