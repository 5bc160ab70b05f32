"""``model.run --verify``: is this file (and each of its parts) complete and undamaged?

Checks, without loading the model, one line each: the trailer and layout; the launcher, the
runtime archive and the manifest against the sha256 recorded at build time (the manifest's own
is over its JSON with that value zeroed, see :func:`packer.runtime.manifest.seal_matches`;
the archive's also against the key in the trailer); the compressed payload, part by part, and
the GGUF it decompresses to (sha256 of every byte, nothing written to disk). So a flipped byte
anywhere but the trailer's padding is caught. Exit 0 when all is good, 1 otherwise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from packer.runtime.errors import BundleError
from packer.runtime.i18n import _
from packer.runtime.manifest import seal_matches
from packer.runtime.payload import (
    Bundle,
    PayloadPiece,
    PayloadReader,
    payload_pieces,
    read_bundle,
)
from packer.runtime.progress import ProgressBar
from packer.runtime.sizes import format_size

CHUNK = 4 << 20


def _sha256_region(path: Path, offset: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        left = size
        while left and (chunk := f.read(min(CHUNK, left))):
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def verify(
    path: Path, out: Callable[[str], None] | None = None, *, decompress: bool = True
) -> bool:
    """Check ``path``; print one line per item (``out``, default stdout) and a verdict.
    ``decompress=False``: the compressed payload against its recorded sha256 only, not the
    GGUF it decompresses to (``packer usb`` checking a source before copying it)."""
    say = out or (lambda line: print(line, flush=True))
    good = True

    def item(what: str, fine: bool, detail: str = "") -> None:
        nonlocal good
        good = good and fine
        line = (_("{item}: ok") if fine else _("{item}: DAMAGED")).format(item=what)
        say(f"{line} ({detail})" if detail else line)

    name = path.name
    try:
        bundle = read_bundle(path)
    except BundleError as exc:
        item(_("layout and manifest"), False, str(exc))
        say(_("verdict: {name} is damaged: copy it again").format(name=name))
        return False
    item(_("layout (trailer)"), True)
    m = bundle.manifest
    try:
        good = _check_head(bundle, item) and good
        good = _check_payload(bundle, item, decompress) and good
    except OSError as exc:
        item(_("reading {name}").format(name=name), False, exc.strerror or str(exc))
    if good:
        say(_("verdict: {name} is complete and undamaged").format(name=name))
    elif m.parts:
        say(_("verdict: {name} is damaged: copy the damaged files again").format(name=name))
    else:
        say(_("verdict: {name} is damaged: copy it again").format(name=name))
    return good


def _check_head(bundle: Bundle, item: Callable[..., None]) -> bool:
    m, path = bundle.manifest, bundle.path
    good = True
    with open(path, "rb") as f:
        f.seek(bundle.payload_offset + bundle.payload_size)  # == the manifest's offset
        raw = f.read(path.stat().st_size - f.tell())
    raw = raw[: len(raw) - _trailer_size(raw)]
    if m.manifest_sha256:
        fine = seal_matches(raw, m.manifest_sha256)
        item(_("manifest"), fine, "" if fine else _("checksum mismatch"))
        good = fine
    else:
        item(_("manifest"), True, _("no checksum recorded: only its form was checked"))
    launcher_end = bundle.runtime_offset if bundle.runtime_size else bundle.payload_offset
    if m.launcher_sha256:
        fine = _sha256_region(path, 0, launcher_end) == m.launcher_sha256
        item(_("launcher"), fine, format_size(launcher_end))
        good = good and fine
    if bundle.runtime_size:
        digest = _sha256_region(path, bundle.runtime_offset, bundle.runtime_size)
        fine = digest.startswith(bundle.runtime_key) and (
            not m.runtime_sha256 or digest == m.runtime_sha256
        )
        item(_("runtime archive"), fine, format_size(bundle.runtime_size))
        good = good and fine
    return good


def _trailer_size(raw_tail: bytes) -> int:
    from packer.runtime.payload import MAGIC, MAGIC_V1, TRAILER, TRAILER_V1

    if raw_tail.endswith(MAGIC):
        return TRAILER.size
    if raw_tail.endswith(MAGIC_V1):
        return TRAILER_V1.size
    return 0


def _check_payload(bundle: Bundle, item: Callable[..., None], decompress: bool = True) -> bool:
    import zstandard

    m = bundle.manifest
    try:
        pieces = payload_pieces(bundle)
    except BundleError as exc:
        item(_("parts of the file"), False, str(exc))
        return False
    total = sum(p.size for p in pieces)

    def checked(piece: PayloadPiece) -> None:
        item(_("part {name}").format(name=piece.label), True, format_size(piece.size))

    reader = PayloadReader(pieces, checked=checked)
    good = True
    gguf = hashlib.sha256()
    written = 0
    try:
        with ProgressBar(total, _("checking the model")) as bar:
            last = 0
            stream = (
                zstandard.ZstdDecompressor().stream_reader(reader, read_across_frames=True)
                if decompress
                else reader
            )
            while chunk := stream.read(CHUNK):
                bar.advance(reader.read_bytes - last)
                last = reader.read_bytes
                if not decompress:
                    continue
                gguf.update(chunk)
                written += len(chunk)
                if written > m.gguf_size:
                    break
            reader.finish()
    except BundleError as exc:  # a part's checksum, or a truncated part
        item(_("part {name}").format(name=reader.current), False, str(exc))
        return False
    except zstandard.ZstdError as exc:
        where = reader.current if m.parts else _("compressed model")
        item(where, False, _("cannot decompress: {error}").format(error=exc))
        return False
    finally:
        reader.close()
    if m.payload_sha256:
        fine = reader.digest.hexdigest() == m.payload_sha256
        item(_("compressed model"), fine, format_size(total))
        good = fine
    if not decompress:
        return good
    fine = written == m.gguf_size and gguf.hexdigest() == m.gguf_sha256
    item(
        _("model (GGUF sha256 {digest})").format(digest=m.gguf_sha256[:16]),
        fine,
        format_size(m.gguf_size),
    )
    return good and fine
