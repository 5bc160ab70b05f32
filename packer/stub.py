"""The frozen runtime stub: PyInstaller builds ``runtime/`` + llama-cpp-python into one ELF, once.

Stubs are cached per key (runtime sources, spec, llama-cpp-python build, PyInstaller, Python,
platform, flavour); ``packer build`` reuses a cached stub and never re-runs PyInstaller.
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

from packer.errors import RuntimeStubError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "templates" / "runtime.spec"
FLAVOURS = ("cpu",)


def stub_cache_root() -> Path:
    env = os.environ.get("PACKER_STUB_CACHE")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "packer" / "stubs"


def _inputs() -> list[Path]:
    files = sorted((ROOT / "runtime").glob("*.py"))
    return [*files, SPEC, ROOT / "templates" / "chat.html"]


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


def ensure_stub(flavour: str = "cpu", *, rebuild: bool = False, verbose: bool = False) -> Path:
    """Return the cached stub for ``flavour``, building it with PyInstaller the first time."""
    if flavour not in FLAVOURS:
        raise RuntimeStubError(
            f"unknown runtime flavour {flavour!r}: available: {', '.join(FLAVOURS)}"
        )
    target = stub_path(flavour)
    if target.is_file() and not rebuild:
        log.debug("using cached runtime stub %s", target)
        return target
    log.info("building the %s runtime stub with PyInstaller (once; takes a minute or two)", flavour)
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".stub-build-", dir=target.parent.parent))
    try:
        env = {**os.environ, "PACKER_ROOT": str(ROOT), "PACKER_STUB_NAME": target.name}
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
        proc = subprocess.run(cmd, env=env, cwd=work, capture_output=not verbose, text=True)
        built = work / "dist" / target.name
        if proc.returncode != 0 or not built.is_file():
            tail = (proc.stderr or "").strip().splitlines()[-5:] if not verbose else []
            raise RuntimeStubError(
                "PyInstaller failed to build the runtime stub"
                + (": " + " | ".join(tail) if tail else "")
                + " (rerun with --verbose for its full log)"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(built, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("runtime stub ready: %s (%.1f MB)", target, target.stat().st_size / 1e6)
    return target
