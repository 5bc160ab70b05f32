"""End to end: build real model.run files and run them as a user would (`env -i`, other folder).

Slow: the first run builds the runtime stub (launcher + PyInstaller onedir; cached afterwards)
and the demo checkpoint.
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
from answers import DEMO_ANSWER, DEMO_QUESTION
from conftest import free_port

from packer.pack import sha256_file
from packer.runtime.payload import read_bundle

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PACKER = [sys.executable, "-m", "packer"]
# The demo question (Makefile, README): clear up to "Tokyo" on every CPU variant, on Vulkan and
# in the exact computation; not France, a near tie on the demo model (tests/answers.py).
QUESTION = DEMO_QUESTION


def packer(
    *args: str, cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*PACKER, *args], cwd=cwd, capture_output=True, text=True, timeout=1200)
    if check and proc.returncode != 0:
        raise AssertionError(f"packer {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def run_clean(
    exe: Path, *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    """Run like a user on a bare machine: empty environment (`env -i`), another folder."""
    return subprocess.run(
        ["env", "-i", *(f"{k}={v}" for k, v in (env or {}).items()), str(exe), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# demo_checkpoint and demo_run (built once per session) are in conftest.py


@pytest.fixture()
def elsewhere(tmp_path: Path) -> Path:
    d = tmp_path / "elsewhere"
    d.mkdir()
    return d


def test_demo_answers_tokyo_with_empty_env(demo_run: Path, elsewhere: Path) -> None:
    proc = run_clean(demo_run, "-p", QUESTION, "--temp", "0", "-n", "64", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert DEMO_ANSWER in proc.stdout, proc.stdout
    assert "Traceback" not in proc.stderr and "Exception" not in proc.stderr, proc.stderr
    assert "unpacking" not in proc.stdout and "loading" not in proc.stdout, (
        "logs must stay on stderr"
    )
    # second start reuses the cache and says nothing about unpacking
    again = run_clean(demo_run, "-p", "Say hi.", "-n", "8", cwd=elsewhere)
    assert again.returncode == 0, again.stderr
    assert "unpacking" not in again.stderr


def test_info_and_help(demo_run: Path, elsewhere: Path) -> None:
    info = run_clean(demo_run, "--info", cwd=elsewhere)
    assert info.returncode == 0, info.stderr
    manifest = json.loads(info.stdout)
    assert manifest["name"] == "SmolLM2-135M-Instruct"
    assert manifest["quant"] == "Q5_K_M"
    assert manifest["architecture"] == "LlamaForCausalLM"
    assert len(manifest["gguf_sha256"]) == 64
    # what the file was built from: source, quant, packer version, runtime stub
    assert manifest["source"].endswith("SmolLM2-135M-Instruct")
    assert manifest["packer_version"] and manifest["runtime"]["stub"]
    assert "created" not in manifest  # same inputs, same bytes
    version = run_clean(demo_run, "--version", cwd=elsewhere)
    assert version.returncode == 0, version.stderr
    from packer import __version__
    from packer.stub import LLAMA_CPP_COMMITS

    lines = version.stdout.splitlines()
    assert lines[0] == f"packer {__version__}"
    commit = LLAMA_CPP_COMMITS["0.3.36"][:12]
    assert lines[1].startswith(f"llama.cpp {commit} (ggml "), lines  # the frozen library's ggml
    assert lines[1].endswith("llama-cpp-python 0.3.36)")
    assert lines[2] == (
        f"runtime cpu stub {manifest['runtime']['stub']} (archive {read_bundle(demo_run).runtime_key})"
    )
    helptext = run_clean(demo_run, "--help", cwd=elsewhere).stdout
    for flag in (
        "--server",
        "--ctx-size",
        "--threads",
        "--n-predict",
        "--temp",
        "--seed",
        "--info",
        "-p",
    ):
        assert flag in helptext


def test_baked_args_become_defaults(demo_run: Path, tmp_path: Path, elsewhere: Path) -> None:
    gguf_dir = tmp_path / "g"
    gguf_dir.mkdir()
    # repack the demo's own GGUF (written out by --extract) with baked defaults: no re-quantization
    gguf = gguf_dir / "SmolLM2-135M-Instruct.Q5_K_M.gguf"
    ex = run_clean(demo_run, "--extract", str(gguf), cwd=elsewhere)
    assert ex.returncode == 0, ex.stderr
    assert gguf.stat().st_size == read_bundle(demo_run).gguf_size
    out = tmp_path / "baked.run"
    packer(
        "build",
        str(gguf_dir / "SmolLM2-135M-Instruct.Q5_K_M.gguf"),
        "-o",
        str(out),
        "--args",
        "--temp 0 -n 12 --system 'Answer in one word.'",
    )
    helptext = run_clean(out, "--help", cwd=elsewhere).stdout
    assert "defaults baked into this file: --temp 0 -n 12" in helptext
    assert "(default: 0.0)" in helptext  # --temp's shown default is the baked one
    a = run_clean(out, "-p", QUESTION, cwd=elsewhere)
    b = run_clean(out, "-p", QUESTION, cwd=elsewhere)
    assert a.returncode == 0 and a.stdout == b.stdout, (a.stderr, b.stdout)  # temp 0: deterministic


def _post(url: str, body: dict) -> dict:  # type: ignore[type-arg]
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def test_server_from_empty_env(demo_run: Path, elsewhere: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        ["env", "-i", str(demo_run), "--server", "--port", str(port), "-t", "2"],
        cwd=elsewhere,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
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
        # llama.cpp shape, as LangChain's Llamafile client sends it
        r = _post(
            base + "/completion",
            {
                "prompt": "The capital of France is",
                "n_predict": 8,
                "temperature": 0,
                "seed": -1,
                "top_k": 40,
                "n_keep": 0,
                "tfs_z": 1.0,
            },
        )
        assert isinstance(r["content"], str) and r["content"].strip()
        assert r["stop"] is True
        # OpenAI chat shape
        c = _post(
            base + "/v1/chat/completions",
            {
                "messages": [{"role": "user", "content": QUESTION}],
                "temperature": 0,
                "max_tokens": 32,
            },
        )
        assert DEMO_ANSWER in c["choices"][0]["message"]["content"]
        assert c["usage"]["completion_tokens"] > 0
        with urllib.request.urlopen(base + "/v1/models", timeout=10) as m:
            assert json.loads(m.read())["data"][0]["id"]
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert "Traceback" not in err, err


def test_truncated_and_corrupted_files(demo_run: Path, tmp_path: Path, elsewhere: Path) -> None:
    data = demo_run.read_bytes()
    trunc = tmp_path / "trunc.run"
    trunc.write_bytes(data[: len(data) // 2])
    trunc.chmod(0o755)
    p = run_clean(trunc, "-p", "hi", cwd=elsewhere)
    assert p.returncode != 0
    assert "truncated" in p.stderr and "copy it again" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr

    b = read_bundle(demo_run)
    bad = bytearray(data)
    mid = b.payload_offset + b.payload_size // 2
    bad[mid : mid + 64] = bytes(64)
    corrupt = tmp_path / "corrupt.run"
    corrupt.write_bytes(bytes(bad))
    corrupt.chmod(0o755)
    cache = tmp_path / "fresh-cache"
    p = run_clean(corrupt, "-p", "hi", cwd=elsewhere, env={"PACKER_CACHE": str(cache)})
    assert p.returncode != 0
    assert "corrupted" in p.stderr.splitlines()[-1], p.stderr
    assert not list(cache.rglob("*.gguf")) and not list(cache.rglob("*.tmp")), (
        "nothing half-written"
    )


def test_unwritable_cache_falls_back(demo_run: Path, tmp_path: Path, elsewhere: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a folder should be")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {"XDG_CACHE_HOME": str(blocked), "HOME": str(blocked), "TMPDIR": str(tmpdir)}
    p = run_clean(demo_run, "-p", "Hi", "-n", "4", cwd=elsewhere, env=env)
    assert p.returncode == 0, p.stderr
    assert f"cache: using {tmpdir / f'packer-{os.getuid()}'} (" in p.stderr
    assert p.stderr.count("cache: using") == 1, p.stderr  # said once, not per use of the cache
    assert list((tmpdir / f"packer-{os.getuid()}" / "models").glob("*.gguf"))
    # an explicit choice that is unusable says what to set
    p = run_clean(demo_run, "-p", "Hi", cwd=elsewhere, env={"PACKER_CACHE": str(blocked)})
    assert p.returncode != 0 and "PACKER_CACHE" in p.stderr


def test_two_first_runs_at_once(demo_run: Path, tmp_path: Path, elsewhere: Path) -> None:
    env = {"PACKER_CACHE": str(tmp_path / "shared-cache")}
    args = [
        "env",
        "-i",
        *(f"{k}={v}" for k, v in env.items()),
        str(demo_run),
        "-p",
        "Hi",
        "-n",
        "4",
        "-t",
        "1",
    ]
    procs = [
        subprocess.Popen(
            args, cwd=elsewhere, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    ggufs = list((tmp_path / "shared-cache" / "models").glob("*.gguf"))
    assert len(ggufs) == 1 and ggufs[0].stat().st_size == read_bundle(demo_run).gguf_size


@pytest.mark.parametrize("quant", ["Q8_0", "q4_k_m", "F16"])
def test_tiny_checkpoint_builds_and_runs(
    tiny_llama_bpe: Path, tmp_path: Path, elsewhere: Path, quant: str
) -> None:
    out = tmp_path / "tiny.run"
    packer("build", str(tiny_llama_bpe), "--quant", quant, "-o", str(out))
    assert read_bundle(out).manifest.quant == quant.upper()
    p = run_clean(out, "-p", "hola", "--raw", "-n", "8", "--temp", "0", cwd=elsewhere)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr


def test_spm_checkpoint_and_f16_gguf_requantized(
    tiny_llama_spm: Path, tmp_path: Path, elsewhere: Path
) -> None:
    f16 = tmp_path / "tiny-spm.F16.gguf"
    packer("convert", str(tiny_llama_spm), "-o", str(f16), "--outtype", "f16")
    out = tmp_path / "spm.run"
    packer("build", str(f16), "--quant", "Q8_0", "-o", str(out))
    m = read_bundle(out).manifest
    assert m.quant == "Q8_0" and m.source_kind == "gguf"
    p = run_clean(out, "-p", "hello", "--raw", "-n", "8", cwd=elsewhere)
    assert p.returncode == 0, p.stderr


def test_terminal_chat(demo_run: Path, elsewhere: Path) -> None:
    import pexpect

    child = pexpect.spawn(
        "env",
        ["-i", "TERM=dumb", str(demo_run), "--temp", "0", "-n", "48"],
        cwd=str(elsewhere),
        encoding="utf-8",
        timeout=180,
    )
    try:
        child.expect_exact("> ")
        child.sendline(QUESTION)
        child.expect(DEMO_ANSWER)
        child.expect_exact("> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before


def test_read_only_media_and_extract(demo_run: Path, tmp_path: Path, elsewhere: Path) -> None:
    """model.run on a read-only mount, empty env but HOME, another cwd: caches go to HOME."""
    if os.geteuid() != 0:
        pytest.skip("needs root for a read-only bind mount")
    src, media = tmp_path / "media-src", tmp_path / "media"
    src.mkdir()
    media.mkdir()
    shutil.copy2(demo_run, src / demo_run.name)
    if subprocess.run(["mount", "--bind", str(src), str(media)], capture_output=True).returncode:
        pytest.skip("mount --bind is not permitted here")
    try:
        ro = subprocess.run(["mount", "-o", "remount,ro,bind", str(media)], capture_output=True)
        assert ro.returncode == 0, ro.stderr
        exe = media / demo_run.name
        home = tmp_path / "home"
        p = run_clean(
            exe, "-p", QUESTION, "--temp", "0", "-n", "64", cwd=elsewhere, env={"HOME": str(home)}
        )
        assert p.returncode == 0, p.stderr
        assert DEMO_ANSWER in p.stdout
        b = read_bundle(exe)
        cache = home / ".cache" / "packer"
        assert (cache / "runtime" / b.runtime_key / ".packer-complete").is_file()
        assert len(list((cache / "models").glob("*.gguf"))) == 1
        out = tmp_path / "out.gguf"
        ex = run_clean(exe, "--extract", str(out), cwd=elsewhere, env={"HOME": str(home)})
        assert ex.returncode == 0, ex.stderr
        assert out.stat().st_size == b.gguf_size
        assert sha256_file(out) == b.gguf_sha256
        assert sorted(p.name for p in media.iterdir()) == [demo_run.name], "nothing written there"
    finally:
        subprocess.run(["umount", str(media)], capture_output=True)
