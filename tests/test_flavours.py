"""Runtime flavours (issue #5): ``cpu`` (CPU variants + Vulkan) and ``cuda``.

The cuda flavour's llama-cpp-python takes an hour or more to compile on this 2-core machine and
there is no NVIDIA GPU here, so these tests check everything around that compile: where its
wheel and site folder go, that ``packer build --runtime cuda`` refuses clearly (before any
download or conversion) until ``packer runtime build --flavour cuda`` made it, that the latter
refuses clearly without the CUDA toolkit, that a built site changes the stub key, and (slow)
that the PyInstaller spec freezes the flavour's own llama-cpp-python, not this Python's.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from answers import DEMO_QUESTION
from conftest import smollm_gguf_path

from packer import stub as stub_mod
from packer.errors import RuntimeStubError

ROOT = Path(__file__).resolve().parents[1]


def packer(
    *args: str, env: dict[str, str], cwd: Path, timeout: int = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "packer", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def wheel_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty wheel cache: no flavour other than cpu is built."""
    cache = tmp_path / "wheels"
    cache.mkdir()
    monkeypatch.setenv("PACKER_WHEEL_CACHE", str(cache))
    return cache


def test_flavour_sites_follow_the_wheel_cache(wheel_cache: Path) -> None:
    assert stub_mod.flavour_site("cpu") is None  # this Python's own llama-cpp-python
    site = stub_mod.flavour_site("cuda")
    assert site is not None and site.parent == wheel_cache
    assert site.name.startswith("llama-cpp-python-") and "-cuda-" in site.name
    assert site.name.endswith(".site")
    assert stub_mod.flavour_site("cuda") == site  # stable: the key hashes version and flags
    with pytest.raises(RuntimeStubError, match="unknown runtime flavour 'rocm'.*cpu, cuda"):
        stub_mod.flavour_site("rocm")


def test_build_refuses_an_unbuilt_cuda_runtime_before_any_work(
    wheel_cache: Path, tiny_llama_bpe: Path, tmp_path: Path
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = {**os.environ, "PACKER_STUB_CACHE": str(tmp_path / "stubs")}
    proc = packer("build", str(tiny_llama_bpe), "--runtime", "cuda", env=env, cwd=out_dir)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "cuda runtime is not built" in lines[0]
    assert "packer runtime build --flavour cuda" in lines[0]
    assert list(out_dir.iterdir()) == []  # nothing converted, nothing half-written
    assert not (tmp_path / "stubs").exists()
    assert list(wheel_cache.iterdir()) == []  # and no compile started


def test_unknown_flavour_lists_the_known_ones(tmp_path: Path) -> None:
    proc = packer("runtime", "build", "--flavour", "rocm", env=dict(os.environ), cwd=tmp_path)
    assert proc.returncode == 2
    assert "'rocm' is not one of 'cpu', 'cuda'" in proc.stderr


def test_runtime_build_cuda_without_the_toolkit_is_one_line(
    wheel_cache: Path, tmp_path: Path
) -> None:
    bindir = tmp_path / "bin"  # the tools the script needs, and no nvcc
    bindir.mkdir()
    for tool in ("bash", "sha256sum", "cut", "sed", "cat", "env"):
        found = shutil.which(tool)
        assert found, tool
        (bindir / tool).symlink_to(found)
    env = {
        **os.environ,
        "PATH": str(bindir),
        "CUDA_HOME": str(tmp_path / "no-cuda"),
        "PACKER_STUB_CACHE": str(tmp_path / "stubs"),
    }
    proc = packer("runtime", "build", "--flavour", "cuda", env=env, cwd=tmp_path)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "needs the CUDA toolkit" in lines[0] and "nvcc" in lines[0]
    assert list(wheel_cache.iterdir()) == []
    assert not (tmp_path / "stubs").exists()


def _fake_cuda_site(wheel_cache: Path) -> Path:
    """What build_flavour_site leaves behind, with a stand-in libggml-cuda.so."""
    site = stub_mod.flavour_site("cuda")
    assert site is not None and site.parent == wheel_cache
    spec = importlib.util.find_spec("llama_cpp")
    assert spec is not None and spec.origin is not None
    llama_pkg = Path(spec.origin).parent
    shutil.copytree(llama_pkg, site / "llama_cpp", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(
        llama_pkg / "lib" / "libggml-cpu-x64.so", site / "llama_cpp" / "lib" / "libggml-cuda.so"
    )
    (site / "llama_cpp_python-0.3.36.dist-info").mkdir()
    return site


def test_a_built_cuda_site_makes_its_own_stub_key(wheel_cache: Path) -> None:
    site = _fake_cuda_site(wheel_cache)
    assert stub_mod.require_flavour("cuda") == site
    assert stub_mod.build_flavour_site("cuda") == site  # built: no compile, no nvcc check
    build_id = stub_mod._llama_build_id(site)
    assert build_id.startswith("0.3.36|") and "libggml-cuda.so" in build_id
    assert "libggml-cuda.so" not in stub_mod._llama_build_id()
    cpu, cuda = stub_mod.stub_path("cpu"), stub_mod.stub_path("cuda")
    assert cpu != cuda and "-cuda-" in cuda.parent.name


def test_a_cuda_site_built_with_other_settings_is_used(
    wheel_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`packer runtime build --flavour cuda` with PACKER_CUDA_ARCHITECTURES set makes a site under
    another key; `packer build --runtime cuda` without that variable still finds it."""
    monkeypatch.setenv("PACKER_CUDA_ARCHITECTURES", "75-virtual")
    site = _fake_cuda_site(wheel_cache)
    monkeypatch.delenv("PACKER_CUDA_ARCHITECTURES")
    assert stub_mod.flavour_site("cuda") != site
    assert stub_mod.require_flavour("cuda") == site


@pytest.mark.slow
def test_spec_freezes_the_flavour_site(wheel_cache: Path, tmp_path: Path) -> None:
    """PyInstaller with PACKER_LLAMA_SITE bundles the site's llama_cpp (here: its stand-in
    libggml-cuda.so), and still leaves the driver's libraries to the machine."""
    site = _fake_cuda_site(wheel_cache)
    work = tmp_path / "work"
    work.mkdir()
    tree = stub_mod.build_onedir(work, site=site)
    libs = {p.name for p in tree.rglob("*.so*")}
    assert "libggml-cuda.so" in libs
    assert "libggml-vulkan.so" in libs and "libllama.so" in libs
    assert not any(n.startswith(("libcuda.so", "libvulkan.so")) for n in libs)
    (frozen_cuda,) = [p for p in tree.rglob("libggml-cuda.so")]
    assert frozen_cuda.parent.name == "lib" and frozen_cuda.parent.parent.name == "llama_cpp"


CUDA_STUB_BUILD_S = 200  # measured: 3 min 36 s for this whole test, the stub build included


@pytest.mark.slow
def test_built_cuda_runtime_runs_without_an_nvidia_driver(tmp_path: Path) -> None:
    """Where `packer runtime build --flavour cuda` has been run on this machine: a cuda model.run
    carries libggml-cuda and cuBLAS, and on a machine without an NVIDIA driver it answers on the
    CPU with a one-line notice; --gpu cuda is a one-line error."""
    try:
        stub_mod.require_flavour("cuda")
    except RuntimeStubError:
        pytest.skip("the cuda runtime is not built here (packer runtime build --flavour cuda)")
    if Path("/proc/driver/nvidia").exists():
        pytest.skip("this machine has an NVIDIA driver: the fallback cannot be shown here")
    out = tmp_path / "cuda.run"
    # after any change to runtime/ this freezes the cuda stub first (PyInstaller, then zstd over
    # 739 MB): far longer than a build with a cached stub
    proc = packer(
        "build", str(smollm_gguf_path()), "--runtime", "cuda", "-o", str(out),
        env=dict(os.environ), cwd=tmp_path, timeout=CUDA_STUB_BUILD_S * 3,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    env = {"HOME": str(tmp_path / "home")}
    ask = [str(out), "-p", DEMO_QUESTION, "--temp", "0", "-n", "16"]
    run = subprocess.run(ask, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip()  # an answer (the PyPI Q4_1 model's own words)
    notice = [line for line in run.stderr.splitlines() if "no usable GPU" in line]
    assert len(notice) == 1 and "CUDA:" in notice[0], run.stderr
    runtime = next((tmp_path / "home" / ".cache" / "packer" / "runtime").glob("*/_internal"))
    names = {p.name for p in runtime.rglob("*.so*")}
    assert "libggml-cuda.so" in names and any(n.startswith("libcublas") for n in names)
    assert not any(n.startswith(("libcuda.so", "libnvidia-")) for n in names)  # the driver's
    forced = subprocess.run([*ask, "--gpu", "cuda"], env=env, capture_output=True, text=True)
    assert forced.returncode != 0
    assert (
        forced.stderr.strip()
        .splitlines()[-1]
        .endswith("--gpu cuda: no CUDA device found; use --gpu auto or --gpu cpu")
    )
