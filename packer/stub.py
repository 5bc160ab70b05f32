"""The runtime stub every model.run starts with: ``[launcher][runtime archive][stub footer]``.

Built once: ``build/launcher.sh`` compiles the static native launcher, PyInstaller freezes
``runtime/`` + llama-cpp-python as a onedir tree, :mod:`packer.archive` packs that tree into one
zstd stream. Stubs are cached per key (runtime and launcher sources, spec, llama-cpp-python
build, PyInstaller, Python, platform, flavour); ``packer build`` reuses a cached stub.

Flavours differ only in the llama-cpp-python build they freeze:

* ``cpu`` (default): the llama-cpp-python of this Python (``make install`` builds it with
  ``build/llama-wheel.sh``): every CPU variant plus Vulkan.
* ``cuda``: the same plus ``GGML_CUDA``. ``packer runtime build --flavour cuda`` compiles that
  wheel with ``build/llama-wheel.sh --flavour cuda`` (needs the CUDA toolkit; long) and installs
  it into its own folder next to the wheel cache (``<wheel cache>.site``), so this Python's own
  llama-cpp-python is not replaced. ``packer build --runtime cuda`` only uses what that made.

Where the ``cpu`` runtime is frozen decides the oldest glibc model.run runs on (#5 item 4): when
the Debian 11 build root (``build/build-root.sh``) has llama-cpp-python installed, which
``build/llama-wheel.sh`` does when it compiled the wheel there, PyInstaller runs there too, with
that root's Python, so every bundled library needs glibc 2.31 at most. Otherwise (no root
privileges at install time, ``PACKER_BUILD_ROOT=0``, or the ``cuda`` flavour) it runs with this
Python and model.run needs this machine's glibc.

An installed packer (the wheel ``make dist`` builds, see ``build/dist.py``) has no ``build/``
scripts and no llama-cpp-python: it ships the ``cpu`` stub prebuilt in ``packer/_stub/cpu/``
with its :class:`RuntimeBuild` description. :func:`find_stub` prefers that one; the from-source
path above is for checkouts (maintainers). Either way the stub's own runtime also quantizes
(:func:`runtime_command`), so the build machine needs no llama.cpp of its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from packer.errors import RuntimeStubError
from packer.host import GLIBC_FLOOR, version_tuple
from packer.runtime.atomic_write import atomic_write

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(__file__).resolve().parent  # packer/
SPEC = PACKAGE / "templates" / "runtime.spec"
LAUNCHER_SCRIPT = ROOT / "build" / "launcher.sh"
LAUNCHER_SRC = ROOT / "build" / "launcher" / "launcher.c"
RUNTIME_EXE = "packer-runtime"  # the onedir executable; launcher.c execs <dir>/packer-runtime
WHEEL_SCRIPT = ROOT / "build" / "llama-wheel.sh"
DECODE_LOOP_SCRIPT = ROOT / "build" / "decode-loop.sh"  # packer/runtime/decode_loop.py
BUILD_ROOT_SCRIPT = ROOT / "build" / "build-root.sh"
SHIPPED = PACKAGE / "_stub"  # in an installed wheel: _stub/<flavour>/{packer-runtime,runtime.json}
BUILD_INFO = "runtime.json"  # next to every stub: its RuntimeBuild
FLAVOURS = ("cpu", "cuda")
# The llama.cpp commit each llama-cpp-python release vendors (its sdist carries no version of
# it that ggml reports: the library says "unknown"). 0.3.36: verified by comparing all 3665
# files of vendor/llama.cpp with upstream's tree (git hash-object), every one identical.
LLAMA_CPP_COMMITS = {"0.3.36": "0c1e57098bba43ac29e6e3b677cdceebdd22334f"}
FLAVOUR_HELP = (
    "cpu: every CPU variant plus Vulkan (any GPU with a Vulkan driver); "
    "cuda: the same plus CUDA for NVIDIA GPUs (build it first: packer runtime build --flavour cuda)"
)


def stub_cache_root() -> Path:
    from packer.runtime.cache import cache_subdir

    return cache_subdir("stubs", "PACKER_STUB_CACHE")


def _inputs() -> list[Path]:
    files = sorted((PACKAGE / "runtime").glob("*.py"))
    data = [
        p
        for folder in (PACKAGE / "templates", PACKAGE / "runtime" / "locale")
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p != SPEC and "__pycache__" not in p.parts
    ]
    return [
        PACKAGE / "__init__.py",
        *files,
        SPEC,
        *data,
        LAUNCHER_SCRIPT,
        *sorted(LAUNCHER_SRC.parent.glob("*.[ch]")),
        ROOT / "packer" / "archive.py",
    ]


def check_flavour(flavour: str) -> None:
    if flavour not in FLAVOURS:
        raise RuntimeStubError(
            f"unknown runtime flavour {flavour!r}: use one of {', '.join(FLAVOURS)}"
        )


def _wheel_script(*args: str) -> list[str]:
    return ["bash", str(WHEEL_SCRIPT), *args, sys.executable]


def flavour_site(flavour: str) -> Path | None:
    """Where ``flavour``'s llama-cpp-python is installed for freezing: None for ``cpu`` (this
    Python's own), else ``<its wheel cache folder>.site`` (which may not exist yet)."""
    check_flavour(flavour)
    if flavour == "cpu":
        return None
    proc = subprocess.run(
        _wheel_script("--flavour", flavour, "--print-cache"), capture_output=True, text=True
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeStubError(
            f"build/llama-wheel.sh could not name the {flavour} wheel's cache folder: "
            + (proc.stderr.strip().splitlines() or ["no output"])[-1]
        )
    return Path(lines[-1] + ".site")


def find_nvcc() -> str | None:
    """nvcc as build/llama-wheel.sh finds it: on PATH, else $CUDA_HOME/bin (/usr/local/cuda)."""
    found = shutil.which("nvcc")
    if found:
        return found
    candidate = Path(os.environ.get("CUDA_HOME") or "/usr/local/cuda") / "bin" / "nvcc"
    return str(candidate) if os.access(candidate, os.X_OK) else None


def _not_built(flavour: str) -> RuntimeStubError:
    return RuntimeStubError(
        f"the {flavour} runtime is not built on this machine: run `packer runtime build "
        f"--flavour {flavour}` first (it compiles llama.cpp with {flavour.upper()}: needs the "
        "toolkit and takes an hour or more), or build with --runtime cpu"
    )


def _site_built(site: Path) -> bool:
    return (site / "llama_cpp" / "lib").is_dir()


def require_flavour(flavour: str) -> Path | None:
    """Check that ``flavour`` can be frozen now (cheap: builds nothing); returns its site."""
    site = flavour_site(flavour)
    if site is not None and not _site_built(site):
        # built with other settings (e.g. PACKER_CUDA_ARCHITECTURES): the newest of this version
        prefix = site.name.rsplit("-", 1)[0] + "-"
        built = [p for p in site.parent.glob(prefix + "*.site") if _site_built(p)]
        if not built:
            raise _not_built(flavour)
        site = max(built, key=lambda p: p.stat().st_mtime)
    return site


def build_flavour_site(flavour: str, *, verbose: bool = False) -> Path | None:
    """Compile (once, cached) ``flavour``'s llama-cpp-python wheel and install it into its own
    folder; returns that folder. None for ``cpu``: it freezes this Python's own, nothing to do."""
    site = flavour_site(flavour)
    if site is None or _site_built(site):
        return site
    if flavour == "cuda" and find_nvcc() is None:
        raise RuntimeStubError(
            "the cuda runtime needs the CUDA toolkit to compile llama.cpp and nvcc was not "
            "found: install it (Debian: apt-get install nvidia-cuda-toolkit, or NVIDIA's "
            "cuda-toolkit), put nvcc on PATH or set CUDA_HOME, then run this again"
        )
    log.warning(
        "compiling llama-cpp-python with %s: this takes an hour or more on a small machine "
        "(once; the wheel is cached)",
        flavour.upper(),
    )
    proc = subprocess.run(
        _wheel_script("--flavour", flavour, "--build-only"),
        stdout=subprocess.PIPE,
        stderr=None if verbose else subprocess.PIPE,
        text=True,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        raise RuntimeStubError(
            f"building the {flavour} llama-cpp-python wheel failed"
            + (": " + " | ".join(tail) if tail else "")
            + " (rerun with --verbose for its full log)"
        )
    cached = Path(proc.stdout.strip().splitlines()[-1])
    wheels = sorted(cached.glob("llama_cpp_python-*.whl"))
    if not wheels:
        raise RuntimeStubError(f"build/llama-wheel.sh made no {flavour} wheel")
    # PyPI's cuBLAS, when the CUDA toolkit had none, was cached next to it: frozen with it
    extra = sorted(cached.glob("nvidia_*.whl"))
    tmp = Path(tempfile.mkdtemp(prefix=site.name + ".", dir=site.parent))
    try:
        _run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
             str(tmp), str(wheels[-1]), *map(str, extra)],
            f"installing the {flavour} wheel",
            verbose=verbose,
        )  # fmt: skip
        _run(
            ["bash", str(DECODE_LOOP_SCRIPT), "--into", str(tmp)],
            f"compiling the decode loop for the {flavour} wheel",
            verbose=verbose,
        )
        os.replace(tmp, site)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return site


def freeze_root(flavour: str) -> Path | None:
    """The build root ``flavour``'s runtime is frozen in: the Debian 11 root when llama-cpp-python
    is installed there (``make install`` as root), else None: frozen with this Python.
    ``PACKER_BUILD_ROOT=0`` never uses the root, ``=1`` requires it."""
    check_flavour(flavour)
    wanted = os.environ.get("PACKER_BUILD_ROOT", "")
    if flavour != "cpu" or wanted == "0":
        return None
    root = Path(
        subprocess.run(
            ["bash", str(BUILD_ROOT_SCRIPT), "--path"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    if _root_site(root) is not None:
        return root
    if wanted == "1":
        raise RuntimeStubError(
            f"the build root {root} has no llama-cpp-python: run `make install` as root (it "
            "makes the root and compiles the wheel in it), or unset PACKER_BUILD_ROOT to freeze "
            "with this machine's Python (model.run then needs this machine's glibc)"
        )
    return None


def _root_site(root: Path) -> Path | None:
    """The build root Python's site-packages, if llama-cpp-python is installed there."""
    for site in sorted(root.glob("opt/python/lib/python3.*/site-packages")):
        if _site_built(site) and (root / "opt" / "packer-build-root.ready").is_file():
            return site
    return None


def _llama_build_id(site: Path | None = None) -> str:
    """Version of llama-cpp-python plus its backend libraries (names and sizes): this Python's
    own installation, or the one in ``site`` (a flavour's folder)."""
    if site is None:
        try:
            version = importlib.metadata.version("llama-cpp-python")
        except importlib.metadata.PackageNotFoundError as exc:
            raise RuntimeStubError(
                "llama-cpp-python is not installed: run `make install` "
                "(it builds the portable wheel)"
            ) from exc
        spec = importlib.util.find_spec("llama_cpp")  # locate only: importing loads libllama
        assert spec is not None and spec.origin is not None
        libdir = Path(spec.origin).parent / "lib"
    else:
        dists = sorted(site.glob("llama_cpp_python-*.dist-info"))
        version = dists[-1].name.removesuffix(".dist-info").split("-")[1] if dists else "?"
        libdir = site / "llama_cpp" / "lib"
    libs = (
        sorted(p.name + str(p.stat().st_size) for p in libdir.glob("*.so*"))
        if libdir.is_dir()
        else []
    )
    return version + "|" + ",".join(libs)


def stub_key(flavour: str = "cpu") -> str:
    """The key of the stub ``packer build --runtime flavour`` uses: the shipped one's, else the
    cache key of the one built from source. For a flavour whose llama-cpp-python is not built
    yet, or an install without a stub, :class:`RuntimeStubError` saying what to do."""
    shipped = shipped_stub(flavour)
    if shipped is not None:
        return shipped.build.key
    require_checkout(flavour)
    return _stub_key(flavour, require_flavour(flavour), freeze_root(flavour))


@dataclasses.dataclass(frozen=True)
class RuntimeBuild:
    """What a stub was built from, written next to it (``runtime.json``) when it is built and
    carried into every model.run's manifest; ``packer --version`` and ``--info`` show it."""

    flavour: str
    key: str  # the stub's key (its cache folder's name ends with it)
    llama_cpp_python: str  # "0.3.36"
    llama_cpp_commit: str  # the vendored llama.cpp commit, "" when unknown
    ggml: str  # ggml's version as its library reports it, "" when unknown
    glibc: str  # the newest GLIBC_x.y any library in the runtime needs: the oldest it runs on
    frozen_with: str  # "the Debian 11 build root (Python 3.11.13)" or "this machine's Python..."

    @property
    def llama_cpp(self) -> str:
        """One line: ``llama.cpp 0c1e57098bba (ggml 0.25.3, llama-cpp-python 0.3.36)``."""
        commit = self.llama_cpp_commit[:12] or "commit unknown"
        parts = [f"ggml {self.ggml}"] if self.ggml else []
        parts.append(f"llama-cpp-python {self.llama_cpp_python}")
        return f"llama.cpp {commit} ({', '.join(parts)})"

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> RuntimeBuild:
        data = json.loads(raw)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: str(data.get(k, "")) for k in names})


@dataclasses.dataclass(frozen=True)
class Stub:
    """The stub a build packs: its file, what it was built from, and where it came from."""

    path: Path
    build: RuntimeBuild
    shipped: bool  # True: prebuilt in this install (packer/_stub); False: built from source here


def is_checkout() -> bool:
    """True when packer runs from a source checkout, which can build stubs (``build/``)."""
    return LAUNCHER_SRC.is_file() and WHEEL_SCRIPT.is_file()


def shipped_stub(flavour: str) -> Stub | None:
    """The stub prebuilt in this install (the wheel), None in a checkout."""
    folder = SHIPPED / flavour
    exe, info = folder / STUB_FILE, folder / BUILD_INFO
    if not (exe.is_file() and info.is_file()):
        return None
    try:
        build = RuntimeBuild.from_json(info.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise RuntimeStubError(
            f"the runtime shipped with packer is damaged ({info}: {exc}): reinstall packer"
        ) from exc
    return Stub(exe, build, shipped=True)


def usable_shipped_stub(flavour: str) -> Stub | None:
    """:func:`shipped_stub`, checked to run on this machine (:func:`packer.host.check_host`:
    it quantizes here, at build time); None in a checkout."""
    shipped = shipped_stub(flavour)
    if shipped is not None:
        from packer.host import check_host

        check_host()
    return shipped


def require_checkout(flavour: str) -> None:
    if is_checkout():
        return
    raise RuntimeStubError(
        f"this packer install has no {flavour} runtime ({SHIPPED / flavour} is missing): "
        + (
            "reinstall packer from its wheel (pipx install --force packer_llm-*.whl), or build "
            "the runtime from a source checkout (make install)"
            if flavour == "cpu"
            else f"the {flavour} runtime is built from a source checkout only "
            f"(packer runtime build --flavour {flavour}); use --runtime cpu"
        )
    )


def check_runtime(flavour: str = "cpu") -> None:
    """Cheap (builds nothing), before any download: this install can pack ``flavour`` here: its
    shipped stub runs on this machine, or this checkout can build it (a cuda llama-cpp-python
    must be built first). Otherwise a one-line :class:`PackerError` saying what to do."""
    check_flavour(flavour)
    if usable_shipped_stub(flavour) is not None:
        return
    require_checkout(flavour)
    require_flavour(flavour)


def find_stub(flavour: str = "cpu", *, verbose: bool = False) -> Stub:
    """The stub ``packer build --runtime flavour`` packs: the one shipped with this install
    (checked to run here: :func:`packer.host.check_host`), else the one built from source in
    this checkout (built now if needed, cached). A from-source stub that needs a newer glibc
    than model.run promises gets one warning line."""
    shipped = usable_shipped_stub(flavour)
    if shipped is not None:
        return shipped
    require_checkout(flavour)
    path = ensure_stub(flavour, verbose=verbose)
    build = read_build(path)
    if version_tuple(build.glibc or "0") > GLIBC_FLOOR:
        log.warning(
            "warning: this %s runtime needs glibc %s or newer (frozen with %s), so model.run "
            "will not start on older systems; `make install` as root freezes it in the Debian 11 "
            "root (glibc %s)",
            flavour,
            build.glibc,
            build.frozen_with,
            ".".join(map(str, GLIBC_FLOOR)),
        )
    return Stub(path, build, shipped=False)


def describe_runtime(flavour: str = "cpu") -> list[str]:
    """Lines for ``packer --version``: the llama.cpp build and the stub ``packer build`` uses
    (never builds anything)."""
    shipped = shipped_stub(flavour)
    if shipped is not None:
        b = shipped.build
        return [
            b.llama_cpp,
            f"runtime {flavour} stub {b.key} (shipped with packer; glibc {b.glibc}+)",
        ]
    if not is_checkout():
        return [f"runtime {flavour}: not installed ({SHIPPED / flavour} is missing)"]
    try:
        path = stub_path(flavour)
    except RuntimeStubError as exc:
        return [f"runtime {flavour}: {exc}"]
    key = _key_of(path)
    if (path.parent / BUILD_INFO).is_file():
        b = read_build(path)
        return [b.llama_cpp, f"runtime {flavour} stub {key} (built from source; glibc {b.glibc}+)"]
    version = _llama_build_id().split("|")[0]
    line = RuntimeBuild(flavour, key, version, LLAMA_CPP_COMMITS.get(version, ""), "", "", "")
    return [line.llama_cpp, f"runtime {flavour} stub {key} (from source, not built yet)"]


def read_build(stub: Path) -> RuntimeBuild:
    """The :class:`RuntimeBuild` written next to ``stub``."""
    try:
        return RuntimeBuild.from_json((stub.parent / BUILD_INFO).read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise RuntimeStubError(
            f"the runtime stub {stub} has no readable {BUILD_INFO} ({exc}): rebuild it with "
            "`packer runtime build --force`"
        ) from exc


_GLIBC_NEED = re.compile(rb"GLIBC_(2\.[0-9]+)(?:\.[0-9]+)?\x00")


def glibc_needed(tree: Path) -> str:
    """The newest ``GLIBC_2.x`` symbol version any ELF file in ``tree`` asks for ("" if none):
    the oldest glibc the frozen runtime can start on."""
    newest = ""
    for path in sorted(tree.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                continue
            data = f.read()
        for m in _GLIBC_NEED.finditer(data):
            found = m.group(1).decode()
            if version_tuple(found) > version_tuple(newest or "0"):
                newest = found
    return newest


def _ggml_version(libdir: Path) -> str:
    """``ggml_version()`` of the libggml-base in ``libdir`` ("" if it cannot be asked)."""
    import ctypes

    libs = sorted(libdir.glob("libggml-base.so*"))
    if not libs:
        return ""
    try:
        fn = ctypes.CDLL(str(libs[0])).ggml_version
    except (OSError, AttributeError):
        return ""
    fn.restype = ctypes.c_char_p
    return (fn() or b"").decode("ascii", "replace")


def _runtime_build(
    flavour: str, key: str, tree: Path, root: Path | None, site: Path | None
) -> RuntimeBuild:
    version = _llama_build_id(_root_site(root) if root is not None else site).split("|")[0]
    if root is not None:
        frozen = f"the {root.name} build root's Python"
    else:
        frozen = f"this machine's Python {platform.python_version()}"
    return RuntimeBuild(
        flavour=flavour,
        key=key,
        llama_cpp_python=version,
        llama_cpp_commit=LLAMA_CPP_COMMITS.get(version, ""),
        ggml=_ggml_version(tree / "_internal" / "llama_cpp" / "lib"),
        glibc=glibc_needed(tree),
        frozen_with=frozen,
    )


def runtime_command(stub: Path, work: Path) -> list[str]:
    """A command that starts ``stub``'s own runtime (for :mod:`packer.runtime.quantize`).

    A real stub has no model, so the launcher would refuse it: this writes, in ``work``, a
    model-less bundle ``[stub][empty payload][manifest][trailer]`` the launcher starts
    (unpacking the runtime once into the user's cache, where model.run finds it later). A stub
    without a footer (a test stand-in) has no runtime: this checkout's llama-cpp-python runs
    the same code unfrozen, when it is installed."""
    from packer.runtime.manifest import Manifest, RuntimeInfo
    from packer.runtime.payload import pack_trailer, read_stub_footer

    info = read_stub_footer(stub)
    if info is None:
        if importlib.util.find_spec("llama_cpp") is None:
            raise RuntimeStubError(
                f"{stub} has no runtime to quantize with and llama-cpp-python is not installed"
            )
        return [sys.executable, "-m", "packer.runtime"]
    from packer.pack import copy_prefix

    size = info.launcher_size + info.archive_size
    exe = work / "packer-runtime.run"
    with open(exe, "wb") as dst:
        try:
            copy_prefix(stub, dst, size)
        except OSError as exc:
            raise RuntimeStubError(f"{stub} is truncated: rebuild or reinstall it") from exc
        manifest = Manifest(name="(no model: the runtime alone)", runtime=RuntimeInfo()).to_json()
        dst.write(manifest)
        dst.write(
            pack_trailer(
                size,
                0,
                size,
                len(manifest),
                runtime_offset=info.launcher_size,
                runtime_size=info.archive_size,
                runtime_key=info.key,
            )
        )
    exe.chmod(0o700)
    return [str(exe)]


def _freezer_id(root: Path | None) -> str:
    """The Python and PyInstaller that freeze the runtime: this Python's, or the build root's."""
    if root is None:
        return sys.version + "|pyinstaller " + importlib.metadata.version("pyinstaller")
    site = _root_site(root)
    assert site is not None
    pyinstaller = sorted(p.name for p in site.glob("pyinstaller-*.dist-info"))
    ready = (root / "opt" / "packer-build-root.ready").read_text().strip()
    return f"{root.name}|{ready}|{','.join(pyinstaller)}"


def _stub_key(flavour: str, site: Path | None, root: Path | None = None) -> str:
    h = hashlib.sha256()
    for f in _inputs():
        h.update(f.name.encode())
        h.update(f.read_bytes())
    for part in (
        _llama_build_id(_root_site(root) if root is not None else site),
        _freezer_id(root),
        importlib.metadata.version("zstandard"),
        *(f"{pkg} {importlib.metadata.version(pkg)}" for pkg in ROOT_EXTRA_PACKAGES),
        platform.machine(),
        flavour,
    ):
        h.update(part.encode())
    return h.hexdigest()[:16]


def stub_path(flavour: str = "cpu") -> Path:
    return _stub_path(flavour, require_flavour(flavour), freeze_root(flavour))


STUB_FILE = "packer-runtime"  # the stub, in its cache folder <platform prefix><flavour>-<key>


def _key_of(stub: Path) -> str:
    """The key in a cached stub's folder name (``<platform prefix><flavour>-<key>``)."""
    return stub.parent.name.rsplit("-", 1)[-1]


def _platform_prefix() -> str:
    """How every stub folder's name starts on this machine (``linux-x86_64-``)."""
    return f"{platform.system().lower()}-{platform.machine()}-"


def _stub_path(flavour: str, site: Path | None, root: Path | None = None) -> Path:
    key = _stub_key(flavour, site, root)
    return stub_cache_root() / f"{_platform_prefix()}{flavour}-{key}" / STUB_FILE


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


def build_onedir(
    work: Path, *, site: Path | None = None, root: Path | None = None, verbose: bool = False
) -> Path:
    """Freeze ``runtime/`` with PyInstaller as a onedir tree; returns the tree's folder.

    ``site``: a folder whose llama-cpp-python is frozen instead of this Python's own.
    ``root``: freeze inside this build root, with its Python (see :func:`freeze_root`)."""
    if root is not None:
        return _build_onedir_in_root(work, root, verbose=verbose)
    env = {**os.environ, "PACKER_ROOT": str(ROOT), "PACKER_STUB_NAME": RUNTIME_EXE}
    if site is not None:
        env["PACKER_LLAMA_SITE"] = str(site)
        # the CUDA runtime libraries libggml-cuda.so links to (cudart, cublas) are bundled;
        # PyInstaller finds them through the library path (the driver's libcuda is not bundled)
        # (and PyPI's cuBLAS installed into the site, when the toolkit had none)
        cuda_lib = Path(os.environ.get("CUDA_HOME") or "/usr/local/cuda") / "lib64"
        lib_dirs = [str(d) for d in sorted(site.glob("nvidia/*/lib")) if d.is_dir()]
        if cuda_lib.is_dir():
            lib_dirs.append(str(cuda_lib))
        if lib_dirs:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(
                p for p in (*lib_dirs, os.environ.get("LD_LIBRARY_PATH")) if p
            )
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


def _build_onedir_in_root(work: Path, root: Path, *, verbose: bool) -> Path:
    """PyInstaller run by the build root's Python on a copy of ``runtime/`` and the spec; the
    frozen tree is moved out to ``work``."""
    scratch = root / "work"
    scratch.mkdir(parents=True, exist_ok=True)
    inner = Path(tempfile.mkdtemp(prefix="stub-", dir=scratch))
    try:
        src = inner / "src"
        skip = shutil.ignore_patterns("__pycache__")
        for part in ("runtime", "templates"):
            shutil.copytree(PACKAGE / part, src / "packer" / part, ignore=skip)
        shutil.copy2(PACKAGE / "__init__.py", src / "packer" / "__init__.py")
        for pkg in ROOT_EXTRA_PACKAGES:  # pure-Python, from this Python: the root lacks them
            shutil.copytree(_package_dir(pkg), src / pkg, ignore=skip)
        at = "/work/" + inner.name  # the same folder, seen from inside the root
        script = (
            f"cd {at} && exec env PACKER_ROOT={at}/src PACKER_STUB_NAME={RUNTIME_EXE} "
            f"python3 -m PyInstaller --noconfirm --clean --distpath {at}/dist "
            f"--workpath {at}/work {at}/src/packer/templates/{SPEC.name}"
        )
        _run(
            ["bash", str(BUILD_ROOT_SCRIPT), "--run", "bash", "-c", script],
            "PyInstaller in the build root (building the runtime)",
            verbose=verbose,
        )
        frozen = inner / "dist" / RUNTIME_EXE
        if not (frozen / RUNTIME_EXE).is_file():
            raise RuntimeStubError(f"PyInstaller did not produce {frozen / RUNTIME_EXE}")
        tree = work / "dist" / RUNTIME_EXE
        tree.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(frozen), tree)
        return tree
    finally:
        shutil.rmtree(inner, ignore_errors=True)


# Pure-Python packages the runtime imports that the build root does not install (its pins are
# fixed when the root is made): copied from this Python next to the sources being frozen.
ROOT_EXTRA_PACKAGES = ("segno", "prompt_toolkit", "wcwidth")


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeStubError(
            f"the runtime needs the Python package {name!r}: pip install -e '.[runtime-build]'"
        )
    return Path(next(iter(spec.submodule_search_locations)))


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
    from packer.runtime.payload import KEY_LEN, pack_stub_footer

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
        dst.flush()
        os.fsync(dst.fileno())  # durable before ensure_stub renames it into the cache
    return key


def ensure_stub(
    flavour: str = "cpu",
    *,
    rebuild: bool = False,
    verbose: bool = False,
    build_llama: bool = False,
) -> Path:
    """Return the cached stub for ``flavour``, building it the first time.

    ``build_llama``: also compile the flavour's llama-cpp-python when it is missing (``packer
    runtime build``); otherwise a missing one is a :class:`RuntimeStubError` naming that
    command (``packer build`` must not start an hour-long compile by surprise)."""
    if not is_checkout():  # an install has no build/ scripts: say so, not a traceback
        raise RuntimeStubError(
            "building a runtime needs packer's source checkout (clone it, then `make install`); "
            + (
                "this install ships a prebuilt cpu runtime, which packer build uses"
                if shipped_stub("cpu") is not None
                else "this install has none: reinstall packer from its wheel"
            )
        )
    site = build_flavour_site(flavour, verbose=verbose) if build_llama else require_flavour(flavour)
    root = freeze_root(flavour)
    target = _stub_path(flavour, site, root)
    if target.is_file() and (target.parent / BUILD_INFO).is_file() and not rebuild:
        log.debug("using cached runtime stub %s", target)
        return target
    log.info(
        "building the %s runtime stub (once; takes a few minutes) with %s",
        flavour,
        f"the build root's Python ({root.name})" if root else "this Python",
    )
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    with _build_folder(target.parent.parent) as work:
        launcher = build_launcher(work / "launcher", verbose=verbose)
        tree = build_onedir(work, site=site, root=root, verbose=verbose)
        log.info("stripped %.1f MB of debug info", strip_debug_info(tree) / 1e6)
        build = _runtime_build(flavour, _key_of(target), tree, root, site)
        built = work / "stub"
        assemble_stub(launcher, tree, built)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(target.parent / BUILD_INFO) as fh:  # first: no stub without it
            fh.write(build.to_json())
        os.replace(built, target)
    log.info("runtime stub ready: %s (%.1f MB)", target, target.stat().st_size / 1e6)
    return target


BUILD_PREFIX = ".stub-build-"  # scratch folders of stub builds, next to the stubs
BUILD_LOCK = ".building"  # in each: flock-ed by the build that owns it
ABANDONED_AFTER_S = 3600  # a build folder with no lock file is left alone this long


@contextlib.contextmanager
def _build_folder(parent: Path) -> Iterator[Path]:
    """A scratch folder for one stub build, locked while the build runs and removed after it.
    A build that is killed leaves it behind unlocked; :func:`prune_stubs` removes those."""
    work = Path(tempfile.mkdtemp(prefix=BUILD_PREFIX, dir=parent))
    try:
        with open(work / BUILD_LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _abandoned(folder: Path) -> bool:
    """True for a stub build folder no running build holds."""
    try:
        with open(folder / BUILD_LOCK) as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # its build is running
            return True
    except FileNotFoundError:  # a build that is just starting, or one from before the lock
        return time.time() - folder.stat().st_mtime > ABANDONED_AFTER_S


def abandoned_builds() -> list[Path]:
    """Scratch folders of stub builds that were killed (interrupted, out of memory, timed out)."""
    root = stub_cache_root()
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob(BUILD_PREFIX + "*") if p.is_dir() and _abandoned(p))


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


@dataclasses.dataclass(frozen=True)
class CachedStub:
    """One stub in the stub cache (see :func:`_stub_path`)."""

    path: Path
    flavour: str
    key: str
    size: int
    built: float  # mtime, seconds since the epoch
    current: bool  # what `packer build --runtime <flavour>` would use now


def current_stub_keys() -> dict[str, str]:
    """The stub key each flavour would have now; flavours whose llama-cpp-python is not built
    (no stub can be current for them) are left out."""
    keys = {}
    for flavour in FLAVOURS:
        try:
            keys[flavour] = stub_key(flavour)
        except RuntimeStubError:
            continue
    return keys


def cached_stubs() -> list[CachedStub]:
    """The stubs in the cache, newest first. Folders of builds in progress (``.stub-build-*``)
    and anything else not shaped like a stub are skipped."""
    root = stub_cache_root()
    if not root.is_dir():
        return []
    prefix = _platform_prefix()
    current = current_stub_keys()
    stubs = []
    for folder in root.iterdir():
        name = folder.name
        exe = folder / STUB_FILE
        if not name.startswith(prefix) or not exe.is_file():
            continue
        flavour, _, key = name.removeprefix(prefix).partition("-")
        st = exe.stat()
        stubs.append(
            CachedStub(exe, flavour, key, st.st_size, st.st_mtime, current.get(flavour) == key)
        )
    return sorted(stubs, key=lambda s: s.built, reverse=True)


def prune_stubs(
    *, everything: bool = False, dry_run: bool = False
) -> tuple[list[CachedStub], list[tuple[Path, int]]]:
    """Remove the cached stubs no build would use now (every one with ``everything``) and the
    folders killed builds left behind; returns both (folders with their sizes). A model.run
    already built never needs its stub again: the stub is copied into it."""
    removed = []
    for stub in cached_stubs():
        if stub.current and not everything:
            continue
        if not dry_run:
            try:
                shutil.rmtree(stub.path.parent)
            except OSError as exc:
                raise RuntimeStubError(
                    f"could not remove {stub.path.parent}: {exc.strerror or exc}; "
                    f"check who owns {stub_cache_root()} (PACKER_STUB_CACHE)"
                ) from exc
        removed.append(stub)
    builds = []
    for folder in abandoned_builds():
        builds.append((folder, folder_size(folder)))
        if not dry_run:
            shutil.rmtree(folder, ignore_errors=True)
    return removed, builds
