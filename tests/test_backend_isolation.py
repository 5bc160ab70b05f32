"""No ggml backend library is loaded from the folder model.run runs in (issue #14, H4).

ggml's default loader, ``ggml_backend_load_all()``, dlopen()s every ``libggml-NAME-*.so`` in the
executable's folder *and the working directory* (and ``$GGML_BACKEND_PATH``); llama.cpp calls it
from ``llama_backend_init()`` when no backend is registered yet. The runtime registers its own
backends by absolute path first (runtime/backend.py), so the default loader must never run.

Each test plants shared libraries named like ggml's backends (and like the libraries those
depend on) whose constructor writes a marker file and a line on stderr, in the working folder
and in the model's folder, then runs the model (a prompt, ``--info``, the server) and asserts
the marker never appears. A control test shows the planted libraries are found and loaded by
ggml's default loader from the working folder, so that a missing marker means something.
The sandbox is off in these runs (``PACKER_SANDBOX=0``): it would stop the marker being written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port, smollm_gguf_path

PLANTED = (
    "libggml-cpu.so",
    "libggml-cpu-x64.so",
    "libggml-cpu-sse42.so",
    "libggml-cpu-haswell.so",
    "libggml-cpu-zen4.so",
    "libggml-vulkan.so",
    "libggml-cuda.so",
    "libggml-blas.so",
    "libggml-rpc.so",
    "libggml-base.so",
    "libggml-base.so.0",
    "libggml.so.0",
    "libllama.so.0",
    "libvulkan.so.1",
)
EVIL = "libggml-evil.so"  # named by $GGML_BACKEND_PATH, which only ggml's default loader reads
SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

__attribute__((constructor)) static void planted(void) {
    Dl_info info;
    char line[4096];
    const char *name = dladdr((void *)planted, &info) && info.dli_fname ? info.dli_fname : "?";
    int n = snprintf(line, sizeof line, "PLANTED LIBRARY LOADED: %s (pid %d)\n", name, getpid());
    int fd = open(MARKER, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
        (void)!write(fd, line, n);
        close(fd);
    }
    (void)!write(2, line, n);
}

/* what ggml's loader looks up: the highest score wins */
int ggml_backend_score(void) { return 1 << 20; }
void *ggml_backend_init(void) { return 0; }
"""


def plant(folders: list[Path], work: Path) -> Path:
    """Compile the planted library once, copy it under every name into ``folders``; returns the
    marker file its constructor writes."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler (cc) to build the planted libraries")
    marker = work / "planted-marker.txt"
    src = work / "planted.c"
    src.write_text(SOURCE)
    lib = work / "planted.so"
    subprocess.run(
        ["cc", "-shared", "-fPIC", "-O1", f'-DMARKER="{marker}"', "-o", str(lib), str(src), "-ldl"],
        check=True,
        capture_output=True,
    )
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        for name in (*PLANTED, EVIL):
            shutil.copy(lib, folder / name)
    return marker


def clean_env(folder: Path, **extra: str) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "PACKER_SANDBOX": "0",
        "GGML_BACKEND_PATH": str(folder / EVIL),
        **extra,
    }


def assert_not_loaded(marker: Path, *outputs: str) -> None:
    text = marker.read_text() if marker.exists() else ""
    assert not text, f"a planted library was loaded:\n{text}"
    for out in outputs:
        assert "PLANTED LIBRARY LOADED" not in out, out


# -- the control: the planted libraries are what ggml's own loader picks up ------------------
def test_ggml_default_loader_would_load_them(tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    marker = plant([cwd], tmp_path)
    code = "import llama_cpp.llama_cpp as l; l._lib.ggml_backend_load_all()"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env={**os.environ, "PACKER_SANDBOX": "0"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert marker.exists(), proc.stderr
    assert f"{cwd}/libggml-cpu-haswell.so" in marker.read_text()


# -- the runtime, unfrozen -------------------------------------------------------------------
def _runtime(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "packer.runtime", *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_runtime_loads_nothing_from_the_working_or_model_folder(tmp_path: Path) -> None:
    cwd, model_dir = tmp_path / "cwd", tmp_path / "model"
    marker = plant([cwd, model_dir], tmp_path)
    gguf = model_dir / "model.gguf"
    gguf.symlink_to(smollm_gguf_path())
    env = clean_env(cwd, PACKER_CACHE=str(tmp_path / "cache"))
    answer = _runtime("--gguf", str(gguf), "-p", "Hi", "-n", "2", "--temp", "0", cwd=cwd, env=env)
    info = _runtime("--gguf", str(gguf), "--info", "--verbose", cwd=cwd, env=env)
    assert_not_loaded(marker, answer.stderr, info.stderr)
    assert answer.returncode == 0, answer.stderr[-3000:]
    assert info.returncode == 0, info.stderr[-3000:]
    assert json.loads(info.stdout)["backend"]["library_dir"] != str(cwd)


# -- the real model.run ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real model.run of the SmolLM2 GGUF, packed as it is (no conversion)."""
    folder = tmp_path_factory.mktemp("smollm-run")
    exe = folder / "smollm.run"
    proc = subprocess.run(
        [sys.executable, "-m", "packer", "build", str(smollm_gguf_path()), "-o", str(exe)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr
    return exe


def wait_healthy(base: str, proc: subprocess.Popen[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(base + "/health", timeout=5) as r:
                if json.loads(r.read()).get("status") == "ok":
                    return
        except OSError:
            pass
        assert proc.poll() is None, (proc.communicate()[1] or "")[-3000:]
        assert time.monotonic() < deadline, "the server did not come up"
        time.sleep(0.3)


def complete(base: str) -> str:
    req = urllib.request.Request(
        base + "/completion",
        data=json.dumps({"prompt": "Hi", "n_predict": 2}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return str(json.loads(r.read())["content"])


def stop(proc: subprocess.Popen[str]) -> str:
    """Stop a server; its stderr when it was a pipe."""
    proc.terminate()
    try:
        return proc.communicate(timeout=30)[1] or ""
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[1] or ""


@pytest.mark.slow
def test_model_run_loads_nothing_from_the_working_or_its_own_folder(
    smollm_run: Path, tmp_path: Path
) -> None:
    cwd = tmp_path / "cwd"
    marker = plant([cwd, smollm_run.parent], tmp_path)
    env = clean_env(cwd, PACKER_CACHE=str(tmp_path / "cache"))
    runs = []
    for args in (["-p", "Hi", "-n", "2"], ["--info", "--verbose"]):
        proc = subprocess.run(
            [str(smollm_run), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
        )
        runs.append(proc.stderr)
        assert_not_loaded(marker, proc.stderr)
        assert proc.returncode == 0, proc.stderr[-3000:]
    port = free_port()
    server = subprocess.Popen(
        [str(smollm_run), "--server", "--port", str(port), "-t", "2"],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", server)
        assert isinstance(complete(f"http://127.0.0.1:{port}"), str)
    finally:
        runs.append(stop(server))
    assert_not_loaded(marker, *runs)
