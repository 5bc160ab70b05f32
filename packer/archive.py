"""The runtime archive: a folder tree (the PyInstaller onedir runtime) as one zstd stream.

The native launcher (``build/launcher/launcher.c``) unpacks it once per user. Uncompressed, the
stream is ``b"PKRARCH1"`` followed by entries, each a 17-byte little-endian head::

    type u8 | mode u32 | path_len u32 | size u64

then ``path_len`` bytes of relative path (``/``-separated, no ``.``/``..``), then ``size`` bytes:
the file's content (type ``f``), a relative symlink target (``l``) or nothing (``d``). Type ``e``
(all fields 0) ends the archive. Folders come before their contents. Identical files are stored
once, the copies become relative symlinks (llama_cpp ships each library under 2-3 names).
The zstd frame carries a checksum, so the launcher detects a damaged archive.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

MAGIC = b"PKRARCH1"
ENTRY = struct.Struct("<BIIQ")
ZSTD_LEVEL = 19  # built once per stub, unpacked once per user: small beats fast
CHUNK = 1 << 20


def _entries(root: Path) -> Iterator[tuple[str, str, int, Path | str]]:
    """(type, relpath, mode, source) in a stable order: folders before their contents."""
    seen: dict[tuple[int, str], str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        base = Path(dirpath)
        rel_dir = base.relative_to(root).as_posix()
        for name in dirnames:
            p = base / name
            rel = f"{rel_dir}/{name}" if rel_dir != "." else name
            if p.is_symlink():
                yield from _link_or_copy(root, p, rel, seen)
            else:
                yield "d", rel, 0o755, p
        for name in sorted(filenames):
            p = base / name
            rel = f"{rel_dir}/{name}" if rel_dir != "." else name
            if p.is_symlink():
                yield from _link_or_copy(root, p, rel, seen)
                continue
            yield _file_or_dup(p, rel, seen)


def _file_or_dup(
    p: Path, rel: str, seen: dict[tuple[int, str], str]
) -> tuple[str, str, int, Path | str]:
    st = p.stat()
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    first = seen.setdefault((st.st_size, digest), rel)
    if first != rel:
        return "l", rel, 0o777, os.path.relpath(first, os.path.dirname(rel) or ".")
    return "f", rel, st.st_mode & 0o777, p


def _link_or_copy(
    root: Path, p: Path, rel: str, seen: dict[tuple[int, str], str]
) -> Iterator[tuple[str, str, int, Path | str]]:
    """Keep symlinks that stay inside the tree; store the target of any other as a file."""
    target = os.readlink(p)
    resolved = p.resolve()
    inside = not os.path.isabs(target) and resolved.is_relative_to(root.resolve())
    if inside and resolved.exists():
        yield "l", rel, 0o777, target
    elif resolved.is_file():
        yield _file_or_dup(resolved, rel, seen)
    # dangling links and links to folders outside the tree are dropped


def write_archive(root: Path, dst: BinaryIO, *, level: int = ZSTD_LEVEL) -> None:
    """Write the tree under ``root`` to ``dst`` as one zstd-compressed archive."""
    import zstandard

    cctx = zstandard.ZstdCompressor(level=level, write_checksum=True, threads=-1)
    with cctx.stream_writer(dst, closefd=False) as zw:
        zw.write(MAGIC)
        for kind, rel, mode, src in _entries(root):
            path = rel.encode("utf-8")
            if kind == "f":
                assert isinstance(src, Path)
                size = src.stat().st_size
                zw.write(ENTRY.pack(ord("f"), mode, len(path), size) + path)
                with open(src, "rb") as f:
                    while chunk := f.read(CHUNK):
                        zw.write(chunk)
            elif kind == "l":
                data = str(src).encode("utf-8")
                zw.write(ENTRY.pack(ord("l"), mode, len(path), len(data)) + path + data)
            else:
                zw.write(ENTRY.pack(ord("d"), mode, len(path), 0) + path)
        zw.write(ENTRY.pack(ord("e"), 0, 0, 0))


def read_archive(data: bytes) -> dict[str, tuple[str, int, bytes]]:
    """Decode an archive into ``{relpath: (type, mode, content-or-link-target)}`` (for tests)."""
    import zstandard

    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    if raw[:8] != MAGIC:
        raise ValueError("not a runtime archive")
    pos, out = 8, {}
    while True:
        kind, mode, plen, size = ENTRY.unpack_from(raw, pos)
        pos += ENTRY.size
        if kind == ord("e"):
            return out
        rel = raw[pos : pos + plen].decode("utf-8")
        pos += plen
        out[rel] = (chr(kind), mode, raw[pos : pos + size])
        pos += size
