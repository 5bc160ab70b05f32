"""The Debian 11 build root (#5 item 4): build/build-root.sh, build/root-cc, and how
build/llama-wheel.sh and packer/stub.py choose between the root and this machine.

Fast: the compiler wrapper with stand-in compilers, the scripts' folder/key logic, the
freezing choice. The root itself (making it takes about 10 minutes, compiling the wheel in it
an hour) is exercised by `make install`; its result is checked by
tests/test_launcher.py::test_glibc_baseline and tests/test_noinstall.py.
Run: .venv/bin/pytest -q tests/test_build_root.py
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from packer import stub as stub_mod
from packer.errors import RuntimeStubError

ROOT = Path(__file__).resolve().parents[1]
BUILD_ROOT = ROOT / "build" / "build-root.sh"
WHEEL = ROOT / "build" / "llama-wheel.sh"


@pytest.fixture
def fake_compilers(tmp_path: Path) -> tuple[Path, Path]:
    """gcc-10, g++-10, gcc-12, g++-12, clang-16, clang++-16 that print their name and
    arguments; and the wrapper installed as packer-cc / packer-c++ (as build/llama-wheel.sh
    installs it)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("gcc-10", "g++-10", "gcc-12", "g++-12", "clang-16", "clang++-16"):
        f = bin_dir / name
        f.write_text(f'#!/bin/sh\necho {name} "$@"\n')
        f.chmod(0o755)
    for name in ("packer-cc", "packer-c++"):
        (bin_dir / name).write_bytes((ROOT / "build" / "root-cc").read_bytes())
        (bin_dir / name).chmod(0o755)
    return bin_dir / "packer-cc", bin_dir / "packer-c++"


def _call(exe: Path, *args: str) -> list[str]:
    env = {**os.environ, "PATH": f"{exe.parent}:{os.environ['PATH']}"}
    proc = subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, check=True)
    return proc.stdout.split()


# what root-cc adds to every gcc 10 command: unaligned 256-bit AVX loads and stores are not
# split in two (gcc 10's generic tuning; 5-7 % of prompt speed), and the command line is kept
GCC_TUNE = [
    "-mno-avx256-split-unaligned-load",
    "-mno-avx256-split-unaligned-store",
    "-frecord-gcc-switches",
]
VARIANTS_SCRIPT = ROOT / "build" / "llama-cpu-variants.sh"


def _avx_variants() -> list[str]:
    """The variants build/llama-cpu-variants.sh compiles again with them over the wheel's."""
    text = VARIANTS_SCRIPT.read_text()
    listed = text[text.index("\nVARIANTS=(") + 11 :]
    return listed[: listed.index(")")].split()


# the variants root-cc hands to gcc 12 and to clang 16 (all others, and everything not a
# variant, to gcc 10)
GCC12_VARIANTS = {
    "skylakex", "cannonlake", "cascadelake", "icelake", "cooperlake", "zen4", "alderlake",
    "sandybridge", "ivybridge", "piledriver",
}  # fmt: skip
CLANG_VARIANTS = {"sse42", "sapphirerapids"}
# gcc 12 has no C++ headers in the root: it compiles against gcc 10's
GCC10_CXX_HEADERS = [
    "-nostdinc++",
    "-isystem", "/usr/include/c++/10",
    "-isystem", "/usr/include/x86_64-linux-gnu/c++/10",
    "-isystem", "/usr/include/c++/10/backward",
]  # fmt: skip


@pytest.mark.parametrize(
    "flags",
    [
        (),  # everything that is not a CPU variant, and x64
        ("-msse4.2", "-mf16c", "-mfma", "-mbmi2", "-mavx", "-mavx2"),  # haswell
    ],
)
def test_gcc_compiles_the_other_variants(
    fake_compilers: tuple[Path, Path], flags: tuple[str, ...]
) -> None:
    cc, cxx = fake_compilers
    args = ("-DGGML_USE_OPENMP", *flags, "-fopenmp", "-c", "ggml-cpu.c")
    assert _call(cc, *args) == ["gcc-10", *GCC_TUNE, *args]  # OpenMP stays
    assert _call(cxx, "-c", "x.cpp") == ["g++-10", *GCC_TUNE, "-c", "x.cpp"]


@pytest.mark.parametrize(
    "flags",
    [
        ("-msse4.2", "-mavx"),  # sandybridge
        ("-msse4.2", "-mavx", "-mf16c"),  # ivybridge
        ("-msse4.2", "-mf16c", "-mfma", "-mavx"),  # piledriver
        ("-mavx2", "-mavxvnni"),  # alderlake
        ("-mavx2", "-mavx512f"),  # skylakex
        ("-mavx2", "-mavx512f", "-mavx512vbmi", "-mavx512vnni", "-mavx512bf16"),  # zen4
    ],
)
def test_gcc12_compiles_these_variants(
    fake_compilers: tuple[Path, Path], flags: tuple[str, ...]
) -> None:
    cc, cxx = fake_compilers
    args = ("-DGGML_USE_OPENMP", *flags, "-fopenmp", "-c", "ggml-cpu.c")
    # OpenMP stays; none of gcc 10's tuning flags (gcc 12 does not split unaligned loads)
    assert _call(cc, *args) == ["gcc-12", "-frecord-gcc-switches", *args]
    cxx_args = (*flags, "-fopenmp", "-c", "repack.cpp")
    assert _call(cxx, *cxx_args) == [
        "g++-12", "-frecord-gcc-switches", *GCC10_CXX_HEADERS, *cxx_args
    ]  # fmt: skip
    # only compiling: gcc 10 links (its libstdc++ and libgcc are the ones the root has)
    link = ("-shared", *flags, "-o", "libggml-cpu-x.so", "a.o", "-fopenmp")
    assert _call(cxx, *link) == ["g++-10", *GCC_TUNE, *link]


@pytest.mark.parametrize(
    "flags",
    [
        ("-mavx2", "-mavx512f", "-mamx-tile"),  # sapphirerapids
        ("-mavx2", "-mavx512f", "-mamx-int8"),
        ("-msse4.2",),  # sse42
    ],
)
def test_clang_compiles_these_variants(
    fake_compilers: tuple[Path, Path], flags: tuple[str, ...]
) -> None:
    cc, cxx = fake_compilers
    out = _call(cc, "-DGGML_USE_OPENMP", *flags, "-fopenmp", "-c", "ggml-cpu.c")
    # clang 16 has no libgomp code generation: those variants use ggml's own thread pool
    # (and none of gcc's tuning flags: clang does not split unaligned loads)
    assert out == ["clang-16", "-Wno-unknown-warning-option", *flags, "-c", "ggml-cpu.c"]
    assert _call(cxx, *flags, "-c", "repack.cpp")[0] == "clang++-16"


def _script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", *args], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


def test_build_root_folder_is_versioned(tmp_path: Path) -> None:
    env = {"PACKER_ROOTS_DIR": str(tmp_path)}
    path = _script(str(BUILD_ROOT), "--path", env=env)
    assert path.returncode == 0
    assert Path(path.stdout.strip()).parent == tmp_path
    assert Path(path.stdout.strip()).name.startswith("build-bullseye-amd64-v")
    assert _script(str(BUILD_ROOT), "--ready", env=env).returncode == 1
    run = _script(str(BUILD_ROOT), "--run", "true", env=env)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        "build-root.sh: the build root is not made: run build/build-root.sh first"
    ]
    assert not any(tmp_path.iterdir()), "asking must not start making anything"


def test_wheel_base_and_key(tmp_path: Path) -> None:
    """The wheel compiled in the root has its own cache key: a wheel compiled on this machine
    (needing its newer glibc) is never taken for it, nor the other way round."""
    env = {"PACKER_WHEEL_CACHE": str(tmp_path)}

    def ask(*args: str, **extra: str) -> str:
        proc = _script(str(WHEEL), *args, env={**env, **extra})
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    root_base = ask("--print-base", PACKER_BUILD_ROOT="1")
    assert root_base.startswith("bullseye-amd64-v")
    assert ask("--print-base", PACKER_BUILD_ROOT="0") == "host"
    assert ask("--print-base", "--flavour", "cuda", PACKER_BUILD_ROOT="1") == "host"
    in_root = ask("--print-cache", PACKER_BUILD_ROOT="1")
    on_host = ask("--print-cache", PACKER_BUILD_ROOT="0")
    assert in_root != on_host and Path(in_root).parent == Path(on_host).parent == tmp_path


def test_freezing_follows_the_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """packer/stub.py freezes with the Python of wherever the wheel was compiled."""
    monkeypatch.setenv("PACKER_ROOTS_DIR", str(tmp_path))
    monkeypatch.delenv("PACKER_BUILD_ROOT", raising=False)
    assert stub_mod.freeze_root("cpu") is None  # no root: this Python
    monkeypatch.setenv("PACKER_BUILD_ROOT", "1")
    assert stub_mod.freeze_root("cuda") is None  # the cuda wheel is compiled on this machine
    with pytest.raises(RuntimeStubError, match=r"has no llama-cpp-python: run `make install`"):
        stub_mod.freeze_root("cpu")  # required, but the roots folder is empty
    # a made root with the wheel installed: frozen there, and the key says so
    root = Path(_script(str(BUILD_ROOT), "--path").stdout.strip())
    site = root / "opt" / "python" / "lib" / "python3.11" / "site-packages"
    (site / "llama_cpp" / "lib").mkdir(parents=True)
    (site / "llama_cpp" / "lib" / "libllama.so").write_bytes(b"\x7fELF")
    (site / "llama_cpp_python-0.3.36.dist-info").mkdir()
    (site / "pyinstaller-6.0.dist-info").mkdir()
    (root / "opt" / "packer-build-root.ready").write_text("bullseye 2.31 python 3.11.2\n")
    assert stub_mod.freeze_root("cpu") == root
    monkeypatch.delenv("PACKER_BUILD_ROOT")
    assert stub_mod.freeze_root("cpu") == root  # found: used without being asked
    monkeypatch.setenv("PACKER_BUILD_ROOT", "0")
    assert stub_mod.freeze_root("cpu") is None
    assert "bullseye 2.31" in stub_mod._freezer_id(root)
    assert stub_mod._stub_key("cpu", None, root) != stub_mod._stub_key("cpu", None, None)


def test_installed_avx_variants_are_tuned() -> None:
    """After `make install` from the build root, every CPU variant build/llama-cpu-variants.sh
    compiles again is its library (in the venv and in the root's Python, which freezes the
    runtime), not the cached wheel's: gcc 10 with root-cc's tuning flags, gcc 12 for
    GCC12_VARIANTS, or clang 16 for sse42."""
    import importlib.util
    import shutil

    if _script(str(WHEEL), "--print-base").stdout.strip() == "host":
        pytest.skip("the wheel was compiled on this machine: its variants are its compiler's")
    if shutil.which("readelf") is None:
        pytest.skip("no readelf (binutils)")
    spec = importlib.util.find_spec("llama_cpp")
    assert spec is not None and spec.origin is not None
    libdir = Path(spec.origin).parent / "lib"
    root = Path(_script(str(BUILD_ROOT), "--path").stdout.strip())
    root_lib = root / "opt/python/lib/python3.11/site-packages/llama_cpp/lib"
    variants = _avx_variants()
    # the wheel's own sapphirerapids was clang's already: not redone
    assert {"haswell", "zen4", "alderlake", "sse42"} <= set(variants)
    assert "sapphirerapids" not in variants
    for variant in variants:
        lib = libdir / f"libggml-cpu-{variant}.so"
        if variant in CLANG_VARIANTS:
            section, marks = ".comment", ["clang version 16"]
        elif variant in GCC12_VARIANTS:  # C and C++ both compiled by gcc 12
            section, marks = ".GCC.command.line", ["GNU C11 12.", "GNU C++17 12."]
        else:
            section, marks = ".GCC.command.line", GCC_TUNE[:2]
        record = subprocess.run(
            ["readelf", "-p", section, str(lib)], capture_output=True, text=True, check=True
        ).stdout
        assert all(mark in record for mark in marks), f"{lib.name}: not {marks}"
        assert lib.read_bytes() == (root_lib / lib.name).read_bytes(), f"{lib.name}: root differs"
