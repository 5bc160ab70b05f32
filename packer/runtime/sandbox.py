"""What model.run gives up once it no longer needs it, where the kernel allows it.

* ``PR_SET_NO_NEW_PRIVS``: nothing this process runs can gain privileges (setuid/setgid
  binaries, file capabilities) any more.
* Landlock (Linux >= 5.13): writing, creating, removing and renaming files is refused anywhere
  but in the folders named, ``/dev`` (writes to existing device files: ``/dev/null``, a GPU's
  nodes; nothing can be created there) and, on a machine with a GPU, the drivers' shader
  caches. Reading and executing stay allowed, as does the network.

Both bind the calling thread and the threads and processes it starts afterwards, not threads
that already run. So model.run applies them in two steps, each before the threads it should
cover exist:

1. :func:`before_backends`, once the model is unpacked (or ``--extract`` is done), before
   llama.cpp and numpy are loaded and start their threads (numpy's OpenBLAS pool, GPU driver
   threads, the CPU-variant self-test): writes stay allowed in model.run's cache folder only
   (the CPU-variant verdict is written next).
2. :func:`before_model`, once the backends are chosen, before the model is loaded and anything
   reads a prompt or a request: a second Landlock layer with no cache folder at all. The decode
   thread, llama.cpp's worker threads and the server's connection threads start after it: they
   can write nowhere, so a process taken over through a request cannot replace the runtime
   that later starts execute.

model.run opens nothing for writing after start-up (the cache's writes and ``--extract``
come before; a start without a terminal opens its log file and its instance file before step 1
and keeps writing to them, and starts the process that opens the browser before it too:
:mod:`packer.runtime.desktop`). Step 1 is skipped where the CUDA backend may be loaded: CUDA may
run the setuid ``nvidia-modprobe`` to create its device nodes, which no_new_privs would stop;
step 2 then sets everything, after the GPU is set up.

Every step is best effort: a kernel without Landlock (or with it disabled), an older Landlock
ABI, an unknown architecture, all give one debug line and model.run runs as before.
``PACKER_SANDBOX=0`` turns it all off (for a driver that must write elsewhere).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import platform
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Sandbox", "before_backends", "before_model", "restrict"]

log = logging.getLogger("packer.runtime.sandbox")

PR_SET_NO_NEW_PRIVS = 38
# the Landlock system calls have the same numbers on every architecture Linux added them to
# after the syscall tables were unified (5.1): x86-64, arm64, riscv64, ...
SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
_ARCHES = ("x86_64", "aarch64", "arm64", "riscv64", "ppc64le", "s390x", "loongarch64")

# access rights (linux/landlock.h); execute, read_file, read_dir and ioctl_dev are not handled:
# reading stays allowed, and a GPU driver keeps its device ioctls
WRITE_FILE = 1 << 1
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2: renames and links across folders
TRUNCATE = 1 << 14  # ABI 3
WRITES_V1 = (
    WRITE_FILE
    | REMOVE_DIR
    | REMOVE_FILE
    | MAKE_CHAR
    | MAKE_DIR
    | MAKE_REG
    | MAKE_SOCK
    | MAKE_FIFO
    | MAKE_BLOCK
    | MAKE_SYM
)
FILE_WRITES = WRITE_FILE | TRUNCATE  # what a rule on a single file (or on /dev) may grant


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]  # the later fields stay 0: not passed


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # __attribute__((packed)) in linux/landlock.h
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


@dataclass
class Sandbox:
    """What :func:`restrict` did, for the debug line and the tests."""

    no_new_privs: bool = False
    landlock_abi: int = 0  # 0: no Landlock
    writable: list[str] = field(default_factory=list)
    why_not: str = ""  # why Landlock is not in force, when it is not

    def describe(self) -> str:
        nnp = "no_new_privs set" if self.no_new_privs else "no_new_privs not set"
        if self.landlock_abi:
            where = ", ".join(self.writable) or "nowhere"
            return f"sandbox: {nnp}; Landlock ABI {self.landlock_abi}: writes only to {where}"
        return f"sandbox: {nnp}; no Landlock ({self.why_not})"


def before_backends(cache_dir: Path | None, gpu: str) -> Sandbox | None:
    """Step 1 (see above): writes only to ``cache_dir`` (and /dev, GPU caches). None when
    skipped because ``--gpu gpu`` may load this runtime's CUDA backend."""
    if gpu in ("auto", "cuda") and _has_cuda_backend():
        log.debug("sandbox: set after the GPU backends are loaded (CUDA may run nvidia-modprobe)")
        return None
    return restrict([cache_dir], gpu=gpu != "cpu" and has_gpu_nodes())


def before_model(gpu: bool) -> Sandbox:
    """Step 2 (see above): no writes but /dev and, with ``gpu``, the GPU drivers' caches."""
    return restrict([], gpu=gpu)


def _has_cuda_backend() -> bool:
    import importlib.util
    import sys

    spec = importlib.util.find_spec("llama_cpp")
    folders = list(spec.submodule_search_locations or []) if spec else []
    meipass = getattr(sys, "_MEIPASS", None)
    if meipass:
        folders.append(str(Path(meipass) / "llama_cpp"))
    return any((Path(f) / "lib" / "libggml-cuda.so").exists() for f in folders)


def has_gpu_nodes() -> bool:
    """A GPU driver's device nodes exist (a DRM render node, NVIDIA's control node)."""
    return Path("/dev/nvidiactl").exists() or any(Path("/dev/dri").glob("renderD*"))


def restrict(writable: Iterable[Path | None], *, gpu: bool = False) -> Sandbox:
    """Set no_new_privs and confine writes to ``writable`` (plus ``/dev`` and, with ``gpu``, the
    GPU drivers' caches) in this thread and all it starts from now on. Never raises."""
    result = Sandbox()
    if os.environ.get("PACKER_SANDBOX", "").strip() == "0":
        result.why_not = "PACKER_SANDBOX=0"
        log.debug("sandbox: off (PACKER_SANDBOX=0)")
        return result
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError as exc:
        result.why_not = f"no C library handle: {exc}"
        log.debug("%s", result.describe())
        return result
    result.no_new_privs = _set_no_new_privs(libc)
    if result.no_new_privs and not _dev_null_is_a_device():
        # a bare root or container with an empty /dev: libraries (llama-cpp-python's quiet
        # mode) open /dev/null for writing and, as root, create it as a plain file; Landlock,
        # which forbids creating files, would make that fail. Leave writes alone there.
        result.why_not = "/dev/null is not a device here"
    elif result.no_new_privs:
        folders = [Path(p) for p in writable if p is not None]
        if gpu:
            folders += gpu_driver_caches()
        _landlock(libc, folders, result)
    else:
        result.why_not = "it needs no_new_privs"
    log.debug("%s", result.describe())
    return result


def _dev_null_is_a_device() -> bool:
    try:
        return stat.S_ISCHR(os.stat("/dev/null").st_mode)
    except OSError:
        return False


def _set_no_new_privs(libc: ctypes.CDLL) -> bool:
    prctl = libc.prctl
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    if prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        log.debug("sandbox: prctl(PR_SET_NO_NEW_PRIVS): %s", os.strerror(ctypes.get_errno()))
        return False
    return True


def _syscall(libc: ctypes.CDLL, number: int, *args: object) -> int:
    fn = libc.syscall
    fn.restype = ctypes.c_long
    return int(fn(ctypes.c_long(number), *args))


def landlock_abi(libc: ctypes.CDLL | None = None) -> tuple[int, str]:
    """The kernel's Landlock ABI version (0 when there is none) and, if 0, why."""
    if platform.system() != "Linux":
        return 0, "not Linux"
    if platform.machine().lower() not in _ARCHES:
        return 0, f"its system call numbers on {platform.machine()} are not known here"
    libc = libc or ctypes.CDLL(None, use_errno=True)
    abi = _syscall(
        libc, SYS_CREATE_RULESET, None, ctypes.c_size_t(0), LANDLOCK_CREATE_RULESET_VERSION
    )
    if abi > 0:
        return abi, ""
    err = ctypes.get_errno()
    if err == errno.ENOSYS:
        return 0, "this kernel has none (Linux 5.13 or later has it)"
    if err == errno.EOPNOTSUPP:
        return 0, "disabled in this kernel (the lsm= boot option)"
    return 0, f"landlock_create_ruleset: {os.strerror(err)}"


def handled_rights(abi: int) -> int:
    """The write rights this kernel's Landlock can deny."""
    rights = WRITES_V1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    return rights


def _landlock(libc: ctypes.CDLL, folders: list[Path], result: Sandbox) -> None:
    abi, why = landlock_abi(libc)
    if not abi:
        result.why_not = why
        return
    handled = handled_rights(abi)
    attr = _RulesetAttr(handled)
    ruleset = _syscall(
        libc, SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), 0
    )
    if ruleset < 0:
        result.why_not = f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}"
        return
    try:
        allowed: list[str] = []
        rules = [(folder, handled) for folder in folders] + [(Path("/dev"), FILE_WRITES & handled)]
        for path, rights in rules:
            if _add_rule(libc, ruleset, path, rights):
                allowed.append(str(path))
        if _syscall(libc, SYS_RESTRICT_SELF, ruleset, 0) != 0:
            result.why_not = f"landlock_restrict_self: {os.strerror(ctypes.get_errno())}"
            return
        result.landlock_abi = abi
        result.writable = allowed
    finally:
        os.close(ruleset)


def _add_rule(libc: ctypes.CDLL, ruleset: int, path: Path, rights: int) -> bool:
    """Allow ``rights`` beneath ``path``; False (and a debug line) when it cannot be opened."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as exc:
        log.debug("sandbox: %s stays unwritable: %s", path, exc.strerror)
        return False
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= FILE_WRITES  # a file: the folder rights would be refused (EINVAL)
        attr = _PathBeneathAttr(rights, fd)
        if _syscall(libc, SYS_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(attr), 0):
            log.debug("sandbox: %s stays unwritable: %s", path, os.strerror(ctypes.get_errno()))
            return False
        return True
    finally:
        os.close(fd)


def gpu_driver_caches() -> list[Path]:
    """Where GPU drivers keep their compiled shaders (Mesa's and NVIDIA's disk caches), made
    if missing so that a rule can name them: without them every start recompiles."""
    home = Path(os.environ.get("HOME") or Path("~").expanduser())
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache")
    wanted = [
        Path(os.environ["MESA_SHADER_CACHE_DIR"])
        if os.environ.get("MESA_SHADER_CACHE_DIR")
        else cache_home / "mesa_shader_cache",
        cache_home / "mesa_shader_cache_db",
        Path(os.environ["CUDA_CACHE_PATH"]) if os.environ.get("CUDA_CACHE_PATH") else home / ".nv",
    ]
    found = []
    for folder in wanted:
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError:
            continue
        found.append(folder)
    return found
