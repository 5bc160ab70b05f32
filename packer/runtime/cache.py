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

The first start shows a progress bar (on a terminal) and one line saying what the model and
its runtime take on disk, and where. ``model.run --uninstall`` (:func:`uninstall`) removes
this file's model and runtime and their lock files, taking both locks first (so it skips what
another copy is running or unpacking), and reports what it freed.
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
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from packer.runtime.atomic_write import TEMP_SUFFIX, atomic_write
from packer.runtime.errors import BundleError
from packer.runtime.i18n import _
from packer.runtime.payload import (
    NO_RUNTIME_KEY,
    Bundle,
    PayloadPiece,
    PayloadReader,
    payload_pieces,
)
from packer.runtime.progress import ProgressBar
from packer.runtime.sizes import format_size

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


def cache_advice() -> str:
    """What to do about an unusable cache folder, in the chosen language."""
    return _(
        "set PACKER_CACHE=/some/dir or pass --cache-dir (a folder of your own that no one else "
        "can write, on a filesystem that allows running programs)"
    )


def _not_ours(st: os.stat_result) -> str | None:
    """Why ``st`` (from lstat) is no folder of ours: a real folder owned by the effective uid."""
    if stat.S_ISLNK(st.st_mode):
        return _("is a symlink")
    if not stat.S_ISDIR(st.st_mode):
        return _("is not a folder")
    if st.st_uid != os.geteuid():
        return _("is owned by another user")
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
        return _("cannot be created ({error})").format(error=exc.strerror)
    try:
        st = os.lstat(folder)
    except OSError as exc:
        return _("cannot be created ({error})").format(error=exc.strerror)
    problem = _not_ours(st)
    if problem:
        return problem
    if st.st_mode & 0o022:
        return _("is writable by other users")
    if not os.access(folder, os.W_OK | os.X_OK):
        return _("is not writable")
    if os.statvfs(folder).f_flag & os.ST_NOEXEC:
        return _("is on a filesystem mounted noexec (no program can start from there)")
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
                log.warning(
                    _("cache: using {folder} ({problems})").format(
                        folder=folder, problems="; ".join(problems)
                    )
                )
            return folder
        problems.append(f"{folder} {problem}")
    raise CacheError(
        _("no usable cache folder ({problems}): {advice}").format(
            problems="; ".join(problems), advice=cache_advice()
        )
    )


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
        raise CacheError(
            _("cannot create {folder}: {error}").format(folder=folder, error=exc.strerror)
        ) from exc
    try:
        st = os.lstat(folder)
        problem = _not_ours(st)
        if problem:
            raise CacheError(
                _("the cache folder {folder} {problem}: remove it, or {advice}").format(
                    folder=folder, problem=problem, advice=cache_advice()
                )
            )
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(folder, 0o700)
    except OSError as exc:
        raise CacheError(
            _("cannot use {folder}: {error}").format(folder=folder, error=exc.strerror)
        ) from exc
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
    The model is held (see :func:`hold`) until this process exits. Every part of a split
    file must be there, with its size (one line naming a missing part), even when the model
    is already unpacked: a copy missing a part is found on the machine it was made on."""
    pieces = payload_pieces(bundle)
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
                _(
                    "not enough disk space in {folder} to unpack the model ({needed} needed, "
                    "{free} free): free some space or set PACKER_CACHE to another disk"
                ).format(
                    folder=target.parent,
                    needed=format_size(bundle.gguf_size),
                    free=format_size(free),
                )
            )
        _first_start_line(bundle, cache_dir, target)
        _unpack(bundle, pieces, target)
    removed = prune_models(target.parent, target)
    if removed:
        log.info(
            _("removed {count} unpacked model(s) that no model.run started for {days} days").format(
                count=len(removed), days=KEEP_DAYS
            )
        )
    return target


def disk_usage(path: Path) -> int:
    """Bytes ``path`` (a file, or a folder and everything under it) takes on disk."""
    total = 0
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    total += st.st_blocks * 512
    if stat.S_ISDIR(st.st_mode):
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def runtime_dir(cache_dir: Path, bundle: Bundle) -> Path | None:
    """Where the launcher unpacked this file's runtime; None for a file without one."""
    if not bundle.runtime_size or bundle.runtime_key == NO_RUNTIME_KEY:
        return None
    return cache_dir / "runtime" / bundle.runtime_key


def _first_start_line(bundle: Bundle, cache_dir: Path, target: Path) -> None:
    """The one line that says what the first start costs on disk, and where."""
    rt = runtime_dir(cache_dir, bundle)
    rt_bytes = disk_usage(rt) if rt is not None else 0
    if rt is not None and rt_bytes:
        log.info(
            _(
                "first start: unpacking the model into {folder} ({size} on disk; its runtime "
                "takes {runtime} in {runtime_folder}); --uninstall removes both"
            ).format(
                folder=target.parent,
                size=format_size(bundle.gguf_size),
                runtime=format_size(rt_bytes),
                runtime_folder=rt,
            )
        )
    else:
        log.info(
            _(
                "first start: unpacking the model into {folder} ({size} on disk); "
                "--uninstall removes it"
            ).format(folder=target.parent, size=format_size(bundle.gguf_size))
        )


def _unpack(bundle: Bundle, pieces: list[PayloadPiece], target: Path) -> None:
    import zstandard  # only needed on the first run

    name = bundle.path.name
    payload = PayloadReader(pieces)
    try:
        with (
            ProgressBar(bundle.gguf_size, _("unpacking the model")) as bar,
            atomic_write(target) as dst,
        ):
            digest = hashlib.sha256()
            written = 0
            reader = zstandard.ZstdDecompressor().stream_reader(payload, read_across_frames=True)
            while chunk := reader.read(CHUNK):
                written += len(chunk)
                if written > bundle.gguf_size:  # never more than declared: not a disk filler
                    raise BundleError(
                        _(
                            "{name} is corrupted (its model is larger than its manifest says): "
                            "copy the file again"
                        ).format(name=name)
                    )
                digest.update(chunk)
                dst.write(chunk)
                bar.advance(len(chunk))
            payload.finish()  # the last part's checksum
            if written != bundle.gguf_size or digest.hexdigest() != bundle.gguf_sha256:
                raise BundleError(  # before the rename: the temp file goes, nothing is cached
                    _("{name} is corrupted (model checksum mismatch): copy the file again").format(
                        name=_damaged_piece(payload, pieces, name)
                    )
                )
    except zstandard.ZstdError as exc:
        raise BundleError(
            _(
                "{name} is corrupted (cannot decompress the model: {error}): copy the file again"
            ).format(name=_damaged_piece(payload, pieces, name), error=exc)
        ) from exc
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise CacheError(
                _(
                    "disk full while unpacking the model to {folder}: free space or set "
                    "PACKER_CACHE"
                ).format(folder=target.parent)
            ) from exc
        raise CacheError(
            _("cannot unpack the model to {folder}: {error}").format(
                folder=target.parent, error=exc.strerror
            )
        ) from exc
    finally:
        payload.close()


def _damaged_piece(payload: PayloadReader, pieces: list[PayloadPiece], name: str) -> str:
    """The file to blame: model.run, or for a split one the part being read (``name`` when the
    payload is all inside it)."""
    if any(p.sha256 for p in pieces) and payload.current != name:
        return payload.current
    return name


# -- --uninstall --------------------------------------------------------------------------


@dataclass
class Cleanup:
    """What :func:`uninstall` did: bytes freed, what it removed, what it left (and why)."""

    freed: int = 0
    removed: list[Path] = field(default_factory=list)
    busy: list[Path] = field(default_factory=list)


def uninstall(bundle: Bundle, cache_dir: Path) -> Cleanup:
    """Remove this file's unpacked model and runtime from ``cache_dir``, with their lock files;
    skip either while another model.run holds it (its ``.inuse`` lock) or is unpacking it (its
    ``.lock``). The runtime this process runs from is let go first: the launcher passed its
    shared hold on to us; everything is imported already, so removing it is safe (Linux keeps
    open files until they are closed)."""
    out = Cleanup()
    model = cached_gguf_path(cache_dir, bundle)
    entries = [model]
    rt = runtime_dir(cache_dir, bundle)
    if rt is not None:
        _release_inherited(rt.with_name(rt.name + ".inuse"))
        entries.append(rt)
    for entry in entries:
        inuse = entry.with_name(entry.name.removesuffix(".gguf") + ".inuse")
        lock = entry.with_name(entry.name.removesuffix(".gguf") + ".lock")
        _remove_entry(entry, inuse, lock, out)
    return out


def uninstall_main(bundle: Bundle, cache_dir: Path) -> int:
    """``model.run --uninstall``: clean up, then one line per thing skipped (stderr) and one
    saying what was freed (stdout). Exit status 1 when something was in use and stays."""
    result = uninstall(bundle, cache_dir)
    for entry in result.busy:
        print(
            _(
                "{path} is in use by another running model.run (or being unpacked): left as it "
                "is; stop it and run --uninstall again"
            ).format(path=entry),
            file=sys.stderr,
        )
    if result.removed:
        print(
            _("removed what {name} unpacked into {folder}: {size} freed").format(
                name=bundle.path.name, folder=cache_dir, size=format_size(result.freed)
            )
        )
    elif not result.busy:
        print(
            _("nothing to remove: {name} has nothing unpacked in {folder}").format(
                name=bundle.path.name, folder=cache_dir
            )
        )
    sys.stdout.flush()
    return 1 if result.busy else 0


def _release_inherited(inuse: Path) -> None:
    """Drop the shared lock the launcher took on ``inuse`` for this process (an inherited
    descriptor: found in /proc/self/fd)."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return
    real = os.path.realpath(inuse)
    for fd in fds:
        with contextlib.suppress(OSError, ValueError):
            if os.readlink(f"/proc/self/fd/{fd}") == real:
                fcntl.flock(int(fd), fcntl.LOCK_UN)


def _remove_entry(entry: Path, inuse: Path, lock: Path, out: Cleanup) -> None:
    if not (os.path.lexists(entry) or os.path.lexists(inuse) or os.path.lexists(lock)):
        return
    with contextlib.ExitStack() as stack:
        for path in (inuse, lock):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            except OSError:
                continue
            stack.callback(os.close, fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                out.busy.append(entry)
                return
            except OSError:
                continue  # no locks on this filesystem: as when unpacking
        try:
            st = os.lstat(entry)
        except FileNotFoundError:
            st = None
        if st is not None:
            size = disk_usage(entry)
            if stat.S_ISDIR(st.st_mode):
                aside = entry.with_name(f".old-{entry.name}-{os.getpid()}")
                os.rename(entry, aside)  # gone from its name at once, as the launcher does
                shutil.rmtree(aside, ignore_errors=True)
            else:
                entry.unlink()
            out.freed += size
            out.removed.append(entry)
        for path in (inuse, lock):  # while locked: no one else is waiting on them
            with contextlib.suppress(OSError):
                path.unlink()
