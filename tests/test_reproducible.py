"""Reproducible output: the same inputs and the same packer give a byte-identical model.run.

Nothing time-, path- or random-dependent may reach the file: no timestamp in the manifest, no
output or temp folder names in it or in the GGUF, the same zstd output on any number of CPUs.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import smollm_gguf_path
from test_cli import run_cli

from packer.pack import sha256_file
from packer.runtime.payload import read_bundle

PACKER = [sys.executable, "-m", "packer"]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.usefixtures("fake_stub")
def test_same_gguf_packs_to_the_same_bytes(tmp_path: Path) -> None:
    """Two builds of one GGUF with one stub, into other folders under other names, at another
    second of the clock: the same file."""
    gguf = str(smollm_gguf_path())
    outs = []
    for name in ("first", "second"):
        folder = tmp_path / name
        folder.mkdir()
        out = folder / f"{name}-model.run"
        code, _, err = run_cli("build", gguf, "-o", str(out), "--args", "--temp 0.2", cwd=folder)
        assert code == 0, err
        outs.append(out)
        if name == "first":
            time.sleep(1.1)  # a timestamp with one-second resolution would differ
    assert _digest(outs[0]) == _digest(outs[1])
    raw = outs[0].read_bytes()
    for leak in (str(tmp_path), "first", "second"):
        assert leak.encode() not in raw, f"{leak!r} is in the file"


def test_pack_output_does_not_depend_on_the_zstd_thread_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """zstd's multi-threaded frames are the same for any number of workers >= 1 (but not for
    0, its single-threaded mode): a 1-CPU machine writes what a 64-CPU machine writes."""
    from packer import pack as pack_mod
    from packer.runtime.manifest import Manifest

    stub = tmp_path / "stub"
    stub.write_bytes(b"\x7fELF stub\n" * 100)
    gguf = tmp_path / "in.gguf"
    rng = __import__("random").Random(3)
    gguf.write_bytes(rng.randbytes(3_000_000) + bytes(6_000_000) + rng.randbytes(3_000_000))
    digests = set()
    for threads in (1, 2, 5):
        monkeypatch.setattr(pack_mod, "ZSTD_THREADS", threads)
        out = tmp_path / f"t{threads}" / "model.run"
        pack_mod.pack(stub, gguf, out, Manifest(name="x"))
        digests.add(_digest(out))
    assert len(digests) == 1
    assert pack_mod.ZSTD_THREADS >= 1


def test_conversion_is_reproducible(tiny_llama_bpe: Path, tmp_path: Path) -> None:
    """The converter's GGUF: the same bytes from two processes (other hash seeds), other
    output folders and names."""
    outs = []
    for i, seed in enumerate(("1", "2")):
        out = tmp_path / f"run{i}" / f"model-{i}.gguf"
        out.parent.mkdir()
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run(
            [*PACKER, "convert", str(tiny_llama_bpe), "-o", str(out)],
            cwd=out.parent,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        outs.append(out)
    assert _digest(outs[0]) == _digest(outs[1])
    assert str(tmp_path).encode() not in outs[0].read_bytes()


@pytest.mark.slow
def test_demo_build_is_reproducible(demo_checkpoint: Path, tmp_path: Path) -> None:
    """The whole pipeline with the real runtime stub (convert, quantize, pack): two builds of
    the demo checkpoint, into two folders, the second starting over a minute after the first."""
    outs = []
    started = time.monotonic()
    for name in ("a", "b"):
        if name == "b":
            time.sleep(max(0.0, 61 - (time.monotonic() - started)))
        folder = tmp_path / name
        folder.mkdir()
        proc = subprocess.run(
            [*PACKER, "build", str(demo_checkpoint), "--quant", "Q5_K_M"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert proc.returncode == 0, f"packer build failed ({proc.returncode}):\n{proc.stderr}"
        outs.append(Path(proc.stdout.strip()))
    assert time.monotonic() - started >= 61
    assert [p.parent for p in outs] == [tmp_path / "a", tmp_path / "b"]
    assert sha256_file(outs[0]) == sha256_file(outs[1])
    m = read_bundle(outs[0]).manifest
    assert m.source == demo_checkpoint.name and m.quant == "Q5_K_M" and m.runtime.stub
