"""packer.runtime.manifest: the typed manifest, its JSON, and reading old or damaged ones."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from packer import __version__
from packer.pack import pack
from packer.runtime.errors import BundleError
from packer.runtime.manifest import FORMAT_VERSION, Manifest, RuntimeInfo

FULL = Manifest(
    name="SmolLM2-135M-Instruct",
    architecture="LlamaForCausalLM",
    n_params=134_515_008,
    context_length=8192,
    quant="Q5_K_M",
    imatrix="imatrix.dat",
    source="HuggingFaceTB/SmolLM2-135M-Instruct",
    source_kind="checkpoint",
    source_repo="HuggingFaceTB/SmolLM2-135M-Instruct",
    source_revision="main",
    source_commit="a" * 40,
    args=("--temp", "0.2"),
    runtime=RuntimeInfo(flavour="cpu", stub="b" * 16, llama_cpp="b6000"),
    gguf_size=123,
    gguf_sha256="c" * 64,
    payload_size=100,
    packer_version="0.1.0",
)
PAYLOAD = {"gguf_size": 3, "gguf_sha256": "0" * 64}


def test_round_trip() -> None:
    assert Manifest.from_json(FULL.to_json()) == FULL
    assert Manifest.from_json(FULL.to_json().decode()) == FULL
    bare = Manifest(gguf_size=1, gguf_sha256="d" * 64)
    assert Manifest.from_json(bare.to_json()) == bare


def test_json_is_deterministic_and_sorted() -> None:
    raw = FULL.to_json()
    assert raw == FULL.to_json()
    data = json.loads(raw)
    assert list(data) == sorted(data)
    assert list(data["runtime"]) == sorted(data["runtime"])
    assert data["args"] == ["--temp", "0.2"]
    assert data["format"] == FORMAT_VERSION
    assert "created" not in data
    # every field is written, so a reader sees the whole schema
    assert set(data) == set(FULL.to_dict())
    assert data["runtime"] == {"flavour": "cpu", "stub": "b" * 16, "llama_cpp": "b6000"}


def test_non_ascii_stays_readable() -> None:
    m = Manifest(name="modèle-日本", gguf_size=1, gguf_sha256="0" * 64)
    assert "modèle-日本".encode() in m.to_json()
    assert Manifest.from_json(m.to_json()).name == "modèle-日本"


def test_unknown_keys_are_ignored() -> None:
    data = {
        **json.loads(FULL.to_json()),
        "created": "2025-01-01T00:00:00+00:00",  # older packers wrote a timestamp
        "something_new": {"x": 1},
    }
    data["runtime"]["future"] = True
    assert Manifest.from_json(json.dumps(data)) == FULL


def test_missing_optional_keys_get_defaults() -> None:
    """A manifest from an early packer: no runtime section, no source details."""
    m = Manifest.from_json(json.dumps({"name": "old", "args": ["-n", "5"], **PAYLOAD}))
    assert (m.name, m.args, m.gguf_size, m.gguf_sha256) == ("old", ("-n", "5"), 3, "0" * 64)
    assert m.runtime == RuntimeInfo()
    assert m.runtime.llama_cpp == ""
    assert (m.quant, m.source, m.source_kind) == ("", "", "")
    assert m.source_repo is None and m.architecture is None and m.n_params is None
    assert m.compression == "zstd" and m.format == 0  # no "format": an early file
    nulls = {"name": None, "architecture": None, "args": None, "runtime": None, **PAYLOAD}
    assert Manifest.from_json(json.dumps(nulls)).name == ""


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{not json",
        b"\xff\xfe\x00garbage",
        b"[1, 2, 3]",
        b'"a string"',
        b"null",
        json.dumps({"name": "no payload fields"}).encode(),
        json.dumps({**PAYLOAD, "gguf_size": "3"}).encode(),
        json.dumps({**PAYLOAD, "args": "--temp 0"}).encode(),
        json.dumps({**PAYLOAD, "args": [1]}).encode(),
        json.dumps({**PAYLOAD, "runtime": ["cpu"]}).encode(),
        json.dumps({**PAYLOAD, "n_params": True}).encode(),
    ],
)
def test_damaged_manifest_is_one_bundle_error(raw: bytes) -> None:
    with pytest.raises(BundleError) as info:
        Manifest.from_json(raw, "model.run")
    msg = str(info.value)
    assert msg == "model.run: the model manifest is damaged: the file is corrupted; copy it again"


def test_newer_format_is_refused() -> None:
    raw = json.dumps({**PAYLOAD, "format": FORMAT_VERSION + 1, "shape": "unknown"})
    with pytest.raises(BundleError, match=r"x\.run was made by a newer packer \(format 3\)"):
        Manifest.from_json(raw, "x.run")


def test_manifest_is_frozen() -> None:
    with pytest.raises(AttributeError):
        FULL.name = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        FULL.runtime.stub = "other"  # type: ignore[misc]


def test_info_shows_what_the_file_was_built_from(tmp_path: Path) -> None:
    """model.run --info prints the manifest: source, quant, packer version, runtime stub."""
    stub = tmp_path / "stub"
    stub.write_bytes(b"\x7fELF stub\n" * 10)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(1000))
    out = tmp_path / "m.run"
    pack(stub, gguf, out, dataclasses.replace(FULL, gguf_size=0, gguf_sha256=""))
    env = {**os.environ, "PACKER_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "packer.runtime", "--bundle", str(out), "--info", "--gpu", "cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["source_repo"] == FULL.source_repo and info["source_commit"] == FULL.source_commit
    assert info["quant"] == "Q5_K_M" and info["runtime"]["stub"] == FULL.runtime.stub
    assert info["packer_version"] == __version__
    assert info["gguf_size"] == 1004 and info["args"] == ["--temp", "0.2"]
    assert list(info)[0] == "name"  # declaration order: the model first
