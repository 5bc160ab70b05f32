"""Where model.run unpacks its GGUF, and the unpacking itself.

The first run decompresses the payload once into a per-user cache, verifying its sha256,
writing to a temp file and renaming it atomically; later runs reuse it without reading the
payload. A file lock makes two copies started at once wait for one another instead of both
writing (or one reading a half-written file).

Trust: a cache folder must be a real folder (not a symlink) owned by the effective uid that no
one else can write, on a filesystem that allows running programs (the launcher execs its
runtime from there); one that is not is skipped, or refused in one line when it was named by
--cache-dir or PACKER_CACHE. ``models/`` is made 0700, and only a model file this uid owns
counts as unpacked: it was written here after its sha256 matched the manifest.

Old models: a running model.run holds a shared lock on ``models/<id>.inuse`` until it exits
and sets that file's mtime (its last use). Unpacking a new model removes the other models that
nobody holds and nobody started for KEEP_DAYS days, as the launcher does for old runtimes. Lock
files stay (they are empty): unlinking one that others may have opened would let two
processes "hold" it at once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import pwd
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from packer.runtime.atomic_write import TEMP_SUFFIX, atomic_write
from packer.runtime.errors import BundleError
from packer.runtime.payload import Bundle

log = logging.getLogger("packer.runtime.cache")

CHUNK = 4 << 20
KEEP_DAYS = 30  # an unused unpacked model is removed this long after its last start
_held: list[IO[bytes]] = []  # the in-use locks this process holds until it exits


class CacheError(Exception):
    """No usable cache location, or unpacking failed. The message is one line for the user."""


def _home() -> Path | None:
    home = os.environ.get("HOME")
    if home:
        return Path(home)
    try:  # `env -i` leaves no HOME: ask the password database
        return Path(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:
        return None


def candidate_dirs(explicit: str | None = None) -> list[Path]:
    """Cache folders in order of preference. An explicit choice is the only candidate."""
    if explicit:
        return [Path(explicit).expanduser()]
    if os.environ.get("PACKER_CACHE"):
        return [Path(os.environ["PACKER_CACHE"]).expanduser()]
    out: list[Path] = []
    if os.environ.get("XDG_CACHE_HOME"):
        out.append(Path(os.environ["XDG_CACHE_HOME"]) / "packer")
    home = _home()
    if home is not None:
        out.append(home / ".cache" / "packer")
    if os.environ.get("XDG_RUNTIME_DIR"):  # private to this user, unlike the temp folder
        out.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "packer")
    out.append(Path(tempfile.gettempdir()) / f"packer-{os.getuid()}")
    return out


CACHE_ADVICE = (
    "set PACKER_CACHE=/some/dir or pass --cache-dir (a folder of your own that no one else can "
    "write, on a filesystem that allows running programs)"
)


def _not_ours(st: os.stat_result) -> str | None:
    """Why ``st`` (from lstat) is no folder of ours: a real folder owned by the effective uid."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symlink"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a folder"
    if st.st_uid != os.geteuid():
        return "is owned by another user"
    return None


def cache_dir_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be the cache folder, as a phrase that follows its name, or None
    when it can; created (0700) when missing. The launcher's ``cache_dir_problem`` checks the
    same."""
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except FileExistsError:
        pass  # a symlink to nothing, or a file: said below
    except OSError as exc:
        return f"cannot be created ({exc.strerror})"
    try:
        st = os.lstat(folder)
    except OSError as exc:
        return f"cannot be created ({exc.strerror})"
    problem = _not_ours(st)
    if problem:
        return problem
    if st.st_mode & 0o022:
        return "is writable by other users"
    if not os.access(folder, os.W_OK | os.X_OK):
        return "is not writable"
    if os.statvfs(folder).f_flag & os.ST_NOEXEC:
        return "is on a filesystem mounted noexec (no program can start from there)"
    return None


def resolve_cache_dir(explicit: str | None = None) -> Path:
    """packer's cache root, created if needed: the first of :func:`candidate_dirs` without a
    :func:`cache_dir_problem`; explicit choices (--cache-dir, PACKER_CACHE) never fall back.

    The one definition of where packer caches things, on both sides: model.run unpacks into
    it, the build side keeps its folders under it (:func:`cache_subdir`); the launcher
    (``build/launcher/launcher.c``, ``resolve_cache_dir``) repeats these rules in C.
    """
    problems = []
    for folder in candidate_dirs(explicit):
        problem = cache_dir_problem(folder)
        if problem is None:
            if problems:
                log.warning("cache: using %s (%s)", folder, "; ".join(problems))
            return folder
        problems.append(f"{folder} {problem}")
    raise CacheError(f"no usable cache folder ({'; '.join(problems)}): {CACHE_ADVICE}")


def private_subdir(folder: Path) -> Path:
    """A subfolder of the cache root: created 0700 if missing; it must be a real folder of ours,
    and is made 0700 if it is not (from then on only this uid can write under it; what others
    wrote there before is not owned by us, and nothing not owned by us is used). The launcher's
    ``private_subdir`` does the same for ``runtime/``."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise CacheError(f"cannot create {folder}: {exc.strerror}") from exc
    try:
        st = os.lstat(folder)
        problem = _not_ours(st)
        if problem:
            raise CacheError(f"the cache folder {folder} {problem}: remove it, or {CACHE_ADVICE}")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(folder, 0o700)
    except OSError as exc:
        raise CacheError(f"cannot use {folder}: {exc.strerror}") from exc
    return folder


def cache_subdir(name: str, override_env: str | None = None) -> Path:
    """``<cache root>/<name>``, or the folder that the environment variable ``override_env``
    names when it is set (e.g. ``PACKER_STUB_CACHE``); the subfolder is not created."""
    override = os.environ.get(override_env) if override_env else None
    return Path(override) if override else resolve_cache_dir() / name


def optional_cache_dir(explicit: str | None = None) -> Path | None:
    """:func:`resolve_cache_dir`, or None where there is none (for what only saves time there)."""
    try:
        return resolve_cache_dir(explicit)
    except CacheError:
        return None


def cached_gguf_path(cache_dir: Path, bundle: Bundle) -> Path:
    return cache_dir / "models" / f"{bundle.gguf_sha256[:32]}.gguf"


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _is_complete(path: Path, bundle: Bundle) -> bool:
    """The unpacked model is there: a regular file of this uid (written here after its sha256
    matched, see :func:`_unpack`), of the right size, with no other name (a hard link made by
    someone else while the folder was open to them)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (
        stat.S_ISREG(st.st_mode)
        and st.st_uid == os.geteuid()
        and st.st_nlink == 1
        and st.st_size == bundle.gguf_size
    )


def hold(target: Path) -> None:
    """Hold a shared lock on ``target``'s ``.inuse`` file for the rest of this process and
    mark it used now, so that no other model.run removes it meanwhile. Best effort."""
    try:
        fh = open(target.with_suffix(".inuse"), "a+b")  # noqa: SIM115 - kept open on purpose
    except OSError:
        return
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
        os.utime(fh.fileno())
    except OSError:
        fh.close()
        return
    _held.append(fh)


def prune_models(models: Path, keep: Path, keep_days: float = KEEP_DAYS) -> list[Path]:
    """Remove the unpacked models in ``models`` other than ``keep`` that no process holds and
    that were last started more than ``keep_days`` ago; returns them. Errors skip a model."""
    cutoff = time.time() - keep_days * 86400
    removed = []
    for gguf in sorted(models.glob("*.gguf")):
        if gguf == keep:
            continue
        inuse = gguf.with_suffix(".inuse")
        try:
            last = gguf.stat().st_mtime  # unpack time: models unpacked before .inuse files
            had = inuse.exists()
            with open(inuse, "a+b") as fh:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a model.run is using it
                if had:
                    last = max(last, os.fstat(fh.fileno()).st_mtime)
                else:  # keep the model's age as its last use
                    os.utime(fh.fileno(), (last, last))
                if last < cutoff:
                    gguf.unlink()
                    removed.append(gguf)
        except OSError:
            continue
    day_ago = time.time() - 86400
    for tmp in models.glob(f".*{TEMP_SUFFIX}"):  # left by an unpack that was killed
        with contextlib.suppress(OSError):
            if tmp.stat().st_mtime < day_ago:
                tmp.unlink()
    return removed


def ensure_gguf(bundle: Bundle, cache_dir: Path) -> Path:
    """Return the path of the bundle's GGUF in ``cache_dir``, unpacking it first if needed.
    The model is held (see :func:`hold`) until this process exits."""
    target = cached_gguf_path(cache_dir, bundle)
    private_subdir(target.parent)
    hold(target)  # before the check: a pruning model.run cannot remove it under us
    if _is_complete(target, bundle):  # fast path: no lock, no payload read
        return target
    with _locked(target.with_suffix(".lock")):
        if _is_complete(target, bundle):  # another copy finished it while we waited
            return target
        free = shutil.disk_usage(target.parent).free
        if free < bundle.gguf_size + (64 << 20):
            raise CacheError(
                f"not enough disk space in {target.parent} to unpack the model "
                f"({bundle.gguf_size / 1e9:.2f} GB needed, {free / 1e9:.2f} GB free): "
                "free some space or set PACKER_CACHE to another disk"
            )
        _unpack(bundle, target)
    removed = prune_models(target.parent, target)
    if removed:
        log.info(
            "removed %d unpacked model(s) that no model.run started for %d days",
            len(removed),
            KEEP_DAYS,
        )
    return target


def _unpack(bundle: Bundle, target: Path) -> None:
    import zstandard  # only needed on the first run

    log.info(
        "unpacking the model (%.0f MB) to %s (first run only)",
        bundle.gguf_size / 1e6,
        target.parent,
    )
    try:
        with open(bundle.path, "rb") as src, atomic_write(target) as dst:
            digest = hashlib.sha256()
            written = 0
            src.seek(bundle.payload_offset)
            limited = _LimitedReader(src, bundle.payload_size)
            reader = zstandard.ZstdDecompressor().stream_reader(limited, read_across_frames=True)
            while chunk := reader.read(CHUNK):
                written += len(chunk)
                if written > bundle.gguf_size:  # never more than declared: not a disk filler
                    raise BundleError(
                        f"{bundle.path.name} is corrupted (its model is larger than its manifest "
                        "says): copy the file again"
                    )
                digest.update(chunk)
                dst.write(chunk)
            if written != bundle.gguf_size or digest.hexdigest() != bundle.gguf_sha256:
                raise BundleError(  # before the rename: the temp file goes, nothing is cached
                    f"{bundle.path.name} is corrupted (model checksum mismatch): copy the file again"
                )
    except zstandard.ZstdError as exc:
        raise BundleError(
            f"{bundle.path.name} is corrupted (cannot decompress the model: {exc}): copy the file again"
        ) from exc
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise CacheError(
                f"disk full while unpacking the model to {target.parent}: free space or set PACKER_CACHE"
            ) from exc
        raise CacheError(f"cannot unpack the model to {target.parent}: {exc.strerror}") from exc


class _LimitedReader:
    """A read-only view of ``size`` bytes of a file from its current position."""

    def __init__(self, fh, size: int) -> None:  # type: ignore[no-untyped-def]
        self._fh = fh
        self._left = size

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = self._fh.read(n)
        self._left -= len(data)
        return data

    def readinto(self, buf) -> int:  # type: ignore[no-untyped-def]
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)
