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

Split files (``packer build --split``, ``packer usb`` onto FAT32, which holds no file over
4 GiB - 1): model.run keeps the launcher, the runtime archive, the manifest and the trailer,
with an empty payload (``payload_offset == manifest_offset``, ``payload_size == 0``), and the
manifest's ``parts`` list the files next to it that hold the payload, in order, each with its
size and sha256: ``model.run.part2``, ``model.run.part3``, ... The launcher reads only the
first file, so it is the same for both; :class:`PayloadReader` reads the pieces as one stream.
A part is looked for under the name model.run has now (``<name>.partN``), then under the name
it was written with.

The manifest is JSON (:mod:`packer.runtime.manifest`). All integers little-endian. Readers find
the trailer by seeking to the end, so no part needs to know its own length. The stub that
``packer.stub`` caches is ``[launcher][runtime archive]`` followed by a :data:`STUB_FOOTER`
telling ``packer.pack`` where the archive starts.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from packer.runtime.errors import BundleError
from packer.runtime.i18n import _
from packer.runtime.manifest import Manifest, PayloadPart

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


# -- the payload, inside the file or split into parts --------------------------------------

PART_SUFFIX = ".part"  # model.run's parts: model.run.part2, model.run.part3, ...
FIRST_PART = 2  # model.run itself is part 1


def part_name(base: str, index: int) -> str:
    """The file name of part ``index`` (2, 3, ...) of the model file named ``base``."""
    return f"{base}{PART_SUFFIX}{index}"


@dataclass(frozen=True)
class PayloadPiece:
    """Where one piece of the compressed payload lies: a region of model.run, or a part."""

    label: str  # the file's name, for messages
    path: Path
    offset: int
    size: int
    sha256: str  # the part's recorded sha256; "" for the region inside model.run


def _find_part(bundle: Bundle, index: int, part: PayloadPart) -> Path:
    count = len(bundle.manifest.parts) + 1
    written = part.name
    if not written or "/" in written or written.startswith(".") or "\x00" in written:
        raise BundleError(
            _("{name} has a damaged list of parts: the file is corrupted; copy it again").format(
                name=bundle.path.name
            )
        )
    now = part_name(bundle.path.name, index)
    for candidate in dict.fromkeys((now, written)):
        path = bundle.path.parent / candidate
        if path.is_file():
            return path
    raise BundleError(
        _(
            "{part} is missing: {name} is split into {count} files that must stay together in "
            "one folder; copy {part} next to {name}"
        ).format(part=now, name=bundle.path.name, count=count)
    )


def payload_pieces(bundle: Bundle) -> list[PayloadPiece]:
    """The payload's pieces in order; every part is there with its recorded size, or a
    :class:`BundleError` names the first one that is missing or of the wrong size."""
    pieces = []
    if bundle.payload_size:
        pieces.append(
            PayloadPiece(
                bundle.path.name, bundle.path, bundle.payload_offset, bundle.payload_size, ""
            )
        )
    for index, part in enumerate(bundle.manifest.parts, start=FIRST_PART):
        path = _find_part(bundle, index, part)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise BundleError(
                _("cannot read {part}: {error}").format(part=path.name, error=exc.strerror)
            ) from exc
        if size != part.size:
            raise BundleError(
                _(
                    "{part} is damaged (it has {size} bytes, {expected} expected): copy it again"
                ).format(part=path.name, size=size, expected=part.size)
            )
        pieces.append(PayloadPiece(path.name, path, 0, part.size, part.sha256))
    return pieces


class PartDamaged(BundleError):
    """A part's sha256 is not the one recorded; ``label`` names it."""

    def __init__(self, label: str) -> None:
        super().__init__(
            _("{part} is damaged (checksum mismatch): copy it again").format(part=label)
        )
        self.label = label


class PayloadReader:
    """The compressed payload as one read-only stream over its pieces. Each part's sha256 is
    checked when its last byte is read (:class:`PartDamaged` otherwise); ``digest`` is the
    sha256 of everything read; ``current`` names the piece being read, for messages."""

    def __init__(
        self,
        pieces: list[PayloadPiece],
        progress: Callable[[int], None] | None = None,
        checked: Callable[[PayloadPiece], None] | None = None,
    ) -> None:
        self._pieces = list(pieces)
        self._progress = progress
        self._checked = checked  # called with each part whose sha256 matched
        self._fh: object | None = None
        self._left = 0
        self._piece_hash = hashlib.sha256()
        self.digest = hashlib.sha256()
        self.current = pieces[0].label if pieces else ""
        self.read_bytes = 0

    def _next(self) -> bool:
        self._close()
        if not self._pieces:
            return False
        piece = self._pieces[0]
        try:
            fh = open(piece.path, "rb")  # noqa: SIM115 - closed by _close
            fh.seek(piece.offset)
        except OSError as exc:
            raise BundleError(
                _("cannot read {part}: {error}").format(part=piece.label, error=exc.strerror)
            ) from exc
        self._fh, self._left = fh, piece.size
        self._piece_hash = hashlib.sha256()
        self.current = piece.label
        return True

    def _close(self) -> None:
        if self._fh is not None:
            self._fh.close()  # type: ignore[attr-defined]
            self._fh = None

    def read(self, n: int = -1) -> bytes:
        while self._left <= 0:
            if self._fh is not None:
                piece = self._pieces.pop(0)
                if piece.sha256 and self._piece_hash.hexdigest() != piece.sha256:
                    self._close()
                    raise PartDamaged(piece.label)
                if piece.sha256 and self._checked is not None:
                    self._checked(piece)
            if not self._next():
                return b""
        want = self._left if n is None or n < 0 else min(n, self._left)
        data = self._fh.read(want)  # type: ignore[attr-defined]
        if not data:
            self._close()
            raise BundleError(_("{part} is truncated: copy it again").format(part=self.current))
        self._left -= len(data)
        self._piece_hash.update(data)
        self.digest.update(data)
        self.read_bytes += len(data)
        if self._progress is not None:
            self._progress(len(data))
        return data

    def readinto(self, buf) -> int:  # type: ignore[no-untyped-def]
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def finish(self) -> None:
        """Read what is left (the decompressor may stop before the end) and check the last
        part's sha256."""
        while self.read(1 << 20):
            pass

    def close(self) -> None:
        self._close()
