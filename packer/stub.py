"""The runtime stub every model.run starts with: ``[launcher][runtime archive][stub footer]``.

Built once: ``build/launcher.sh`` compiles the static native launcher, PyInstaller freezes
``runtime/`` + llama-cpp-python as a onedir tree, :mod:`packer.archive` packs that tree into one
zstd stream. Stubs are cached per key (runtime and launcher sources, spec, llama-cpp-python
build, PyInstaller, Python, platform, flavour); ``packer build`` reuses a cached stub.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from packer.errors import RuntimeStubError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "templates" / "runtime.spec"
LAUNCHER_SCRIPT = ROOT / "build" / "launcher.sh"
LAUNCHER_SRC = ROOT / "build" / "launcher" / "launcher.c"
RUNTIME_EXE = "packer-runtime"  # the onedir executable; launcher.c execs <dir>/packer-runtime
FLAVOURS = ("cpu",)


def stub_cache_root() -> Path:
    env = os.environ.get("PACKER_STUB_CACHE")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "packer" / "stubs"


def _inputs() -> list[Path]:
    files = sorted((ROOT / "runtime").glob("*.py"))
    return [
        *files,
        SPEC,
        ROOT / "templates" / "chat.html",
        LAUNCHER_SCRIPT,
        LAUNCHER_SRC,
        ROOT / "packer" / "archive.py",
    ]


def _llama_build_id() -> str:
    """Version of llama-cpp-python plus the CMake flags its wheel was built with, when known."""
    try:
        version = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError as exc:
        raise RuntimeStubError(
            "llama-cpp-python is not installed: run `make install` (it builds the portable wheel)"
        ) from exc
    spec = importlib.util.find_spec("llama_cpp")  # locate only: importing loads libllama
    assert spec is not None and spec.origin is not None
    libdir = Path(spec.origin).parent / "lib"
    libs = (
        sorted(p.name + str(p.stat().st_size) for p in libdir.glob("*.so*"))
        if libdir.is_dir()
        else []
    )
    return version + "|" + ",".join(libs)


def stub_key(flavour: str = "cpu") -> str:
    h = hashlib.sha256()
    for f in _inputs():
        h.update(f.name.encode())
        h.update(f.read_bytes())
    for part in (
        _llama_build_id(),
        importlib.metadata.version("pyinstaller"),
        importlib.metadata.version("zstandard"),
        sys.version,
        platform.machine(),
        flavour,
    ):
        h.update(part.encode())
    return h.hexdigest()[:16]


def stub_path(flavour: str = "cpu") -> Path:
    return (
        stub_cache_root()
        / f"{platform.system().lower()}-{platform.machine()}-{flavour}-{stub_key(flavour)}"
        / "packer-runtime"
    )


def _run(cmd: list[str], what: str, *, verbose: bool, **kw: Any) -> None:
    proc = subprocess.run(cmd, capture_output=not verbose, text=True, **kw)
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-5:] if not verbose else []
        raise RuntimeStubError(
            f"{what} failed"
            + (": " + " | ".join(tail) if tail else "")
            + " (rerun with --verbose for its full log)"
        )


def build_launcher(out: Path, *, verbose: bool = False) -> Path:
    """Compile the static launcher (gcc + libzstd.a) to ``out``."""
    try:
        _run(["bash", str(LAUNCHER_SCRIPT), str(out)], "compiling the launcher", verbose=verbose)
    except FileNotFoundError as exc:
        raise RuntimeStubError("bash is needed to build the launcher") from exc
    return out


def build_onedir(work: Path, *, verbose: bool = False) -> Path:
    """Freeze ``runtime/`` with PyInstaller as a onedir tree; returns the tree's folder."""
    env = {**os.environ, "PACKER_ROOT": str(ROOT), "PACKER_STUB_NAME": RUNTIME_EXE}
    cmd = [
        sys.executable,
        "-m",
        "PyInstaller",
        "--noconfirm",
        "--clean",
        "--distpath",
        str(work / "dist"),
        "--workpath",
        str(work / "work"),
        str(SPEC),
    ]
    _run(cmd, "PyInstaller (building the runtime)", verbose=verbose, env=env, cwd=work)
    tree = work / "dist" / RUNTIME_EXE
    if not (tree / RUNTIME_EXE).is_file():
        raise RuntimeStubError(f"PyInstaller did not produce {tree / RUNTIME_EXE}")
    return tree


def _has_debug_info(path: Path) -> bool:
    with open(path, "rb") as f:
        if f.read(4) != b"\x7fELF":
            return False
    proc = subprocess.run(["readelf", "-S", "-W", str(path)], capture_output=True, text=True)
    return proc.returncode == 0 and " .debug_" in proc.stdout


def strip_debug_info(tree: Path) -> int:
    """Drop debug sections (libpython: 23 -> 6 MB) from the ELF files in ``tree`` that carry them.

    Files without debug sections are left untouched, byte for byte: rewriting libraries that
    auditwheel patched (numpy's OpenBLAS) breaks them. Returns the bytes saved.
    """
    if not (shutil.which("strip") and shutil.which("readelf")):
        log.warning("binutils (strip, readelf) not found: the runtime keeps its debug info")
        return 0
    saved = 0
    for path in sorted(tree.rglob("*")):
        if path.is_symlink() or not path.is_file() or not _has_debug_info(path):
            continue
        before = path.stat().st_size
        proc = subprocess.run(["strip", "--strip-debug", str(path)], capture_output=True)
        if proc.returncode == 0:
            saved += before - path.stat().st_size
    return saved


def assemble_stub(launcher: Path, tree: Path, out: Path) -> str:
    """Write ``[launcher][archive(tree)][footer]`` to ``out``; returns the runtime key."""
    from packer.archive import write_archive
    from runtime.payload import KEY_LEN, pack_stub_footer

    with open(out, "wb") as dst:
        dst.write(launcher.read_bytes())
        launcher_size = dst.tell()
        write_archive(tree, dst)
        archive_size = dst.tell() - launcher_size
    h = hashlib.sha256()
    with open(out, "rb") as f:
        f.seek(launcher_size)
        left = archive_size
        while left and (chunk := f.read(min(8 << 20, left))):
            h.update(chunk)
            left -= len(chunk)
    key = h.hexdigest()[:KEY_LEN]
    with open(out, "ab") as dst:
        dst.write(pack_stub_footer(launcher_size, archive_size, key))
    return key


def ensure_stub(flavour: str = "cpu", *, rebuild: bool = False, verbose: bool = False) -> Path:
    """Return the cached stub for ``flavour``, building it the first time."""
    if flavour not in FLAVOURS:
        raise RuntimeStubError(
            f"unknown runtime flavour {flavour!r}: available: {', '.join(FLAVOURS)}"
        )
    target = stub_path(flavour)
    if target.is_file() and not rebuild:
        log.debug("using cached runtime stub %s", target)
        return target
    log.info("building the %s runtime stub (once; takes a few minutes)", flavour)
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".stub-build-", dir=target.parent.parent))
    try:
        launcher = build_launcher(work / "launcher", verbose=verbose)
        tree = build_onedir(work, verbose=verbose)
        log.info("stripped %.1f MB of debug info", strip_debug_info(tree) / 1e6)
        built = work / "stub"
        assemble_stub(launcher, tree, built)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(built, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("runtime stub ready: %s (%.1f MB)", target, target.stat().st_size / 1e6)
    return target
