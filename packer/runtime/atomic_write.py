"""Write a file atomically: readers see the old file or the complete new one, never a part.

:func:`atomic_write` writes to a hidden temp file in the target's folder (the same file system,
so the final rename is atomic), fsyncs it and renames it over the target. On any exception,
KeyboardInterrupt included, the temp file is removed and the target is left as it was. Both
sides use it: model.run (unpacking its GGUF, ``--extract``, the CPU-variant verdict) and the
build (model.run itself, converted GGUFs). :func:`write_json` is the same for a JSON value
(the CPU-variant verdict, the build's verified digests, the benchmarks' ``--json``). OS errors
propagate unchanged: each caller turns them into its own one-line message.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

TEMP_SUFFIX = ".tmp"  # temp files are ".<target name>.<random>.tmp"
_NAME_KEPT = 200  # characters of the target's name kept in the temp name (NAME_MAX is 255)
_TRIES = 100


def temp_path(target: Path) -> Path:
    """A fresh hidden temp name next to ``target``."""
    return target.with_name(f".{target.name[:_NAME_KEPT]}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def _create(target: Path) -> tuple[int, Path]:
    """Create a new temp file as open() would: mode 0o666 masked by the umask (and the folder's
    default ACL), never an existing file (O_EXCL)."""
    for _ in range(_TRIES):
        tmp = temp_path(target)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue
        return fd, tmp
    raise FileExistsError(errno.EEXIST, "no free temp file name", str(target.parent))


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable; best effort (some file systems refuse)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], *, mode: int | None = None) -> Iterator[Path]:
    """:func:`atomic_write` for a writer that takes a path, not a file (a child process, e.g.
    llama.cpp's quantizer): yields the temp file's path, already created (the writer opens it
    for writing, truncating), then fsyncs and renames it over ``target`` the same way."""
    with _atomic(target, mode) as (_fh, tmp):
        yield tmp


@contextlib.contextmanager
def atomic_write(target: str | os.PathLike[str], *, mode: int | None = None) -> Iterator[BinaryIO]:
    """Yield a binary file to write ``target``'s new content into; when the block ends without
    an exception it is flushed, fsynced and renamed over ``target``.

    ``mode``: the final file's permission bits, exactly (e.g. ``0o755`` for an executable);
    None gives what ``open(target, "wb")`` would create: ``0o666`` masked by the umask. The
    folder must exist. Raises OSError (from creating, writing or renaming) unchanged; the temp
    file never outlives the block. Writing through ``fh.fileno()`` directly is fine.
    """
    with _atomic(target, mode) as (fh, _tmp):
        yield fh


def write_json(target: str | os.PathLike[str], value: object, *, indent: int | None = None) -> None:
    """``value`` as JSON (one UTF-8 text, a final newline) in ``target``, through
    :func:`atomic_write`: the old file or the whole new one, never part of it. OSError and
    json's TypeError/ValueError propagate unchanged."""
    data = (json.dumps(value, indent=indent) + "\n").encode("utf-8")
    with atomic_write(target) as fh:
        fh.write(data)


@contextlib.contextmanager
def _atomic(target: str | os.PathLike[str], mode: int | None) -> Iterator[tuple[BinaryIO, Path]]:
    target = Path(target)
    fd, tmp = _create(target)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh, tmp
            fh.flush()
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_folder(target.parent)
