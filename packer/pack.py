"""Assemble model.run: the stub (launcher + runtime archive), then the zstd-compressed GGUF,
the manifest and the trailer; with ``--split``, the compressed GGUF goes into parts next to it
(layout in :mod:`packer.runtime.payload`), and ``packer usb`` re-splits a file with
:func:`write_model`.

The layout is defined once, in :mod:`packer.runtime.payload`, which the launcher and runtime read back.
A stub without a footer (a test stand-in) is copied whole and recorded as having no runtime.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import glob
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from packer import __version__
from packer.errors import OutputError
from packer.runtime.atomic_write import atomic_write
from packer.runtime.manifest import FORMAT_VERSION, Manifest, PayloadPart
from packer.runtime.payload import (
    FIRST_PART,
    NO_RUNTIME_KEY,
    PART_SUFFIX,
    STUB_FOOTER,
    TRAILER,
    pack_trailer,
    part_name,
    read_stub_footer,
)
from packer.runtime.sizes import format_size

log = logging.getLogger(__name__)

CHUNK = 8 << 20
ZSTD_LEVEL = 3  # quantized weights barely compress; level 3 is fast and still trims F16/embeddings
# zstd's multi-threaded output is the same for any number of workers >= 1, but differs from
# its single-threaded (0 workers) output. threads=-1 would give 0 where the CPU count is
# unknown: ask for at least one worker so that every machine writes the same bytes.
ZSTD_THREADS = max(1, os.cpu_count() or 1)
EXECUTABLE = 0o755  # model.run's mode
PARTS_ROOM = 64 << 10  # what the list of parts and the checksums add to a manifest, at most


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


@dataclass(frozen=True)
class Head:
    """The bytes model.run starts with: ``[launcher][runtime archive]`` (``size`` bytes of
    ``path``), and where the archive lies in them (offset, size, key; (0, 0, none) for a file
    without a runtime, e.g. a test stand-in)."""

    path: Path
    size: int
    runtime: tuple[int, int, str]


class PayloadSink:
    """Where the compressed payload is written: into model.run itself, or (``split``) into
    parts of at most ``split`` bytes next to it (``<name>.part2``, ...), each written
    atomically by ``stack`` (renamed into place when the build succeeds, removed otherwise).
    Records the payload's size and sha256 and each part's."""

    def __init__(
        self, dst: BinaryIO, out: Path, split: int | None, stack: contextlib.ExitStack
    ) -> None:
        self._dst, self._out, self._split, self._stack = dst, out, split, stack
        self._part: BinaryIO | None = None
        self._part_hash = hashlib.sha256()
        self._part_size = 0
        self._names: list[str] = []
        self.parts: list[PayloadPart] = []
        self.digest = hashlib.sha256()
        self.size = 0

    @property
    def inline_size(self) -> int:
        return 0 if self._split else self.size

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        self.digest.update(view)
        self.size += len(view)
        if not self._split:
            self._dst.write(view)
            return len(view)
        while view:
            if self._part is None or self._part_size >= self._split:
                self._roll()
            n = min(len(view), self._split - self._part_size)
            self._part.write(view[:n])  # type: ignore[union-attr]
            self._part_hash.update(view[:n])
            self._part_size += n
            view = view[n:]
        return len(data)

    def flush(self) -> None:
        pass

    def _roll(self) -> None:
        self._end_part()
        name = part_name(self._out.name, FIRST_PART + len(self._names))
        self._names.append(name)
        self._part = self._stack.enter_context(atomic_write(self._out.with_name(name)))
        self._part_hash, self._part_size = hashlib.sha256(), 0

    def _end_part(self) -> None:
        if self._part is not None:
            self.parts.append(
                PayloadPart(self._names[-1], self._part_size, self._part_hash.hexdigest())
            )
            self._part = None

    def close(self) -> None:
        self._end_part()


def _copy_head(head: Head, dst: BinaryIO) -> tuple[str, str]:
    """Copy the head into ``dst``; returns the sha256 of its launcher and of its archive."""
    r_off, r_size, _key = head.runtime
    launcher_end = r_off if r_size else head.size
    launcher, runtime = hashlib.sha256(), hashlib.sha256()
    with open(head.path, "rb") as s:
        pos = 0
        while pos < head.size and (chunk := s.read(min(CHUNK, head.size - pos))):
            dst.write(chunk)
            for lo, hi, h in ((0, launcher_end, launcher), (r_off, r_off + r_size, runtime)):
                a, b = max(lo, pos), min(hi, pos + len(chunk))
                if a < b:
                    h.update(chunk[a - pos : b - pos])
            pos += len(chunk)
    if pos != head.size:
        raise OSError(errno.EIO, f"{head.path} shrank while being copied")
    return launcher.hexdigest(), runtime.hexdigest() if r_size else ""


def write_model(
    out: Path,
    head: Head,
    fill: Callable[[PayloadSink], dict[str, object]],
    manifest: Manifest,
    *,
    split: int | None = None,
) -> Manifest:
    """Write model.run at ``out`` (and its parts, with ``split``) atomically: ``head``, the
    payload that ``fill`` writes into the sink (it returns the manifest fields it knows, e.g.
    the GGUF's size and sha256), the sealed manifest and the trailer. Parts of an earlier
    file of that name that this one does not have are removed. Returns the manifest written.
    Raises OSError (each caller words its own message) or OutputError (``split`` too small)."""
    first = head.size + len(manifest.to_json()) + PARTS_ROOM + TRAILER.size
    if split is not None and first > split:
        raise OutputError(
            f"--split {format_size(split)} is too small: the first file holds the runtime "
            f"({format_size(head.size)}) and the manifest; give at least {format_size(first)}"
        )
    with contextlib.ExitStack() as stack:
        dst = stack.enter_context(atomic_write(out, mode=EXECUTABLE))
        launcher_sha, runtime_sha = _copy_head(head, dst)
        payload_offset = dst.tell()
        sink = PayloadSink(dst, out, split, stack)
        known = fill(sink)
        sink.close()
        full = dataclasses.replace(
            manifest,
            **known,  # type: ignore[arg-type]
            format=FORMAT_VERSION,
            compression="zstd",
            payload_size=sink.size,
            payload_sha256=sink.digest.hexdigest(),
            launcher_sha256=launcher_sha,
            runtime_sha256=runtime_sha,
            parts=tuple(sink.parts),
            packer_version=__version__,
        )
        raw = full.sealed_json()
        manifest_offset = dst.tell()
        end = manifest_offset + len(raw) + TRAILER.size
        if split is not None and end > split:
            raise OutputError(
                f"--split {format_size(split)} is too small: the first file needs "
                f"{format_size(end)} (the runtime and the manifest)"
            )
        dst.write(raw)
        dst.write(
            pack_trailer(
                payload_offset,
                sink.inline_size,
                manifest_offset,
                len(raw),
                runtime_offset=head.runtime[0],
                runtime_size=head.runtime[1],
                runtime_key=head.runtime[2],
            )
        )
    # renamed: the parts first, model.run last (the ExitStack unwinds in reverse)
    remove_stale_parts(out, len(full.parts))
    return dataclasses.replace(full, manifest_sha256=json.loads(raw)["manifest_sha256"])


def remove_stale_parts(out: Path, keep: int) -> None:
    """Remove ``<out>.partN`` files beyond the ``keep`` parts model.run now has."""
    prefix = out.name + PART_SUFFIX
    for path in out.parent.glob(glob.escape(prefix) + "*"):
        index = path.name[len(prefix) :]
        if index.isdigit() and int(index) >= FIRST_PART + keep:
            with contextlib.suppress(OSError):
                path.unlink()


def stub_head(stub: Path) -> Head:
    """The head of a stub from ``packer.stub`` (its footer says where the archive is), or of a
    stand-in without a footer, copied whole and recorded as having no runtime."""
    info = read_stub_footer(stub)
    if info is None:
        return Head(stub, stub.stat().st_size, (0, 0, NO_RUNTIME_KEY))
    return Head(
        stub,
        stub.stat().st_size - STUB_FOOTER.size,
        (info.launcher_size, info.archive_size, info.key),
    )


def pack(
    stub: Path, gguf: Path, out: Path, manifest: Manifest, *, split: int | None = None
) -> Manifest:
    """Write ``out`` atomically and return the full manifest written into it: ``manifest``
    with the payload's fields (size, checksums, parts, packer version) filled in. ``split``:
    the payload goes into parts of at most that many bytes next to ``out``.

    The same stub, GGUF and manifest give the same bytes: nothing here depends on the time,
    the output's path or the number of CPUs (see :data:`ZSTD_THREADS`).
    """
    import zstandard

    head = stub_head(stub)
    out = out.resolve()
    gguf_size = gguf.stat().st_size

    def fill(sink: PayloadSink) -> dict[str, object]:
        digest = hashlib.sha256()
        cctx = zstandard.ZstdCompressor(  # the checksum: a damaged payload is an error
            level=ZSTD_LEVEL, threads=ZSTD_THREADS, write_content_size=True, write_checksum=True
        )
        with open(gguf, "rb") as src, cctx.stream_writer(sink, size=gguf_size, closefd=False) as zw:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                zw.write(chunk)
        return {"gguf_size": gguf_size, "gguf_sha256": digest.hexdigest()}

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot write {out}: {exc.strerror}: choose another place with -o"
        ) from exc
    try:
        full = write_model(out, head, fill, manifest, split=split)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise OutputError(
                f"disk full while writing {out}: free some space or write elsewhere with -o"
            ) from exc
        raise OutputError(
            f"cannot write {out}: {exc.strerror}: choose another place with -o"
        ) from exc
    parts = f" in {1 + len(full.parts)} files" if full.parts else ""
    log.info(
        "packed %s%s: stub %s + model %s (zstd, from %s)",
        out.name,
        parts,
        format_size(head.size),
        format_size(full.payload_size),
        format_size(gguf_size),
    )
    return full
