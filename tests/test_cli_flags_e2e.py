"""A real model.run started with the flags people paste: LangChain's llamafile recipe
(`--server --nobrowser --embedding`, the port from llama-server's LLAMA_ARG_PORT) serves, and
`-m other.gguf` runs another model with this file's runtime. Slow: builds the demo model.run."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port, smollm_gguf_path

pytestmark = pytest.mark.slow


def clean_env(cache: Path, **extra: str) -> dict[str, str]:
    """An almost empty environment, as a user's bare machine: the cache folder, no desktop."""
    return {"PATH": "/usr/bin:/bin", "PACKER_CACHE": str(cache), "LANG": "C.UTF-8", **extra}


def wait_healthy(url: str, proc: subprocess.Popen[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"model.run exited {proc.returncode}: {proc.communicate()[1]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise AssertionError("no /health 200 in time")


def test_langchain_llamafile_recipe_serves(demo_run: Path, tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [str(demo_run), "--server", "--nobrowser", "--embedding"],
        cwd=tmp_path,
        env=clean_env(tmp_path / "cache", LLAMA_ARG_PORT=str(port), DISPLAY=":0"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        body = json.dumps({"content": "hello"}).encode()  # LangChain's LlamafileEmbeddings
        req = urllib.request.Request(
            url + "/embedding", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 200
            assert json.loads(r.read())  # an embedding came back
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode in (0, 130), err  # 130: stopped by the signal, as from a terminal
    assert "unrecognized" not in err and "Traceback" not in err, err


def test_run_another_gguf(demo_run: Path, tmp_path: Path) -> None:
    other = smollm_gguf_path()
    cache = tmp_path / "cache"
    proc = subprocess.run(
        [str(demo_run), "-m", str(other), "-p", "Say hi.", "-n", "8", "--temp", "0"],
        cwd=tmp_path,
        env=clean_env(cache),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip(), "no answer"
    assert f"loading {other.stem} " in proc.stderr, proc.stderr  # the other file, by its name
    assert not list((cache / "models").glob("*.gguf")), "the model inside was unpacked anyway"


def test_other_gguf_missing_is_one_line(demo_run: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(demo_run), "-m", str(tmp_path / "other.gguf"), "-p", "hi"],
        cwd=tmp_path,
        env=clean_env(tmp_path / "cache"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert proc.stderr.endswith(f"error: -m {tmp_path / 'other.gguf'}: no such file\n")
    assert "Traceback" not in proc.stderr, proc.stderr
