"""Hub downloads checked against the sha256 / git blob id the hub lists (issue #14, M5).

The loopback fake hub (tests/hubserver.py) serves a file damaged on request (``hub.corrupt``:
one byte changed, the size unchanged, so huggingface_hub's own size check passes) while its API
keeps listing the true digest.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from huggingface_hub import constants

from packer import digests
from packer.errors import SourceError
from packer.source import resolve

sys.path.insert(0, str(Path(__file__).resolve().parent))

import test_hub  # noqa: E402
from hubserver import FakeHub  # noqa: E402

hub = test_hub.hub  # the same fixture: a fake hub and a private HF cache per test
tiny_ggufs = test_hub.tiny_ggufs
run_cli = test_hub.run_cli


def _count_hashes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    hashed: list[str] = []
    real = digests.digest_of

    def counting(path: Path, kind: str) -> str:
        hashed.append(path.name)
        return real(path, kind)

    monkeypatch.setattr(digests, "digest_of", counting)
    return hashed


def test_damaged_weights_are_one_line_and_nothing_is_packed(
    hub: FakeHub,
    tiny_llama_bpe: Path,
    fake_stub: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub.add_repo("org/tiny", tiny_llama_bpe)
    hub.corrupt.add("model.safetensors")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, out, err = run_cli(
        "build", "org/tiny", "--quant", "Q8_0", cwd=out_dir, monkeypatch=monkeypatch
    )
    assert code == 3 and out == "", err
    last = err.splitlines()[-1]
    assert [line for line in err.splitlines() if "error" in line] == [last], err
    assert last.startswith("packer: error: model.safetensors of org/tiny is damaged: its sha256")
    assert last.endswith("run again to download it again"), last
    assert list(out_dir.iterdir()) == [], "nothing may be packed from a damaged download"

    # the damaged blob left the cache: once the hub serves the right bytes, a rerun gets them
    hub.corrupt.clear()
    code, out, err = run_cli(
        "build", "org/tiny", "--quant", "Q8_0", cwd=out_dir, monkeypatch=monkeypatch
    )
    assert code == 0, err
    assert sorted(p.name for p in out_dir.iterdir()) == ["tiny.Q8_0.run"]
    weights_gets = [r for r in hub.find("GET") if r.origin == "cdn"]
    assert len(weights_gets) == 2, "the second run downloads the weights again"


def test_damaged_small_file_is_refused_by_its_blob_id(hub: FakeHub, tiny_llama_bpe: Path) -> None:
    hub.add_repo("org/tiny", tiny_llama_bpe)
    hub.corrupt.add("tokenizer.json")
    with pytest.raises(SourceError) as err:
        resolve("org/tiny")
    msg = str(err.value)
    assert "tokenizer.json of org/tiny is damaged: its git blob id is" in msg and "\n" not in msg


def test_damaged_gguf_is_refused(hub: FakeHub, tiny_ggufs: dict[str, bytes]) -> None:
    hub.add_repo("org/tiny-GGUF", tiny_ggufs)
    hub.corrupt.add("tiny.Q8_0.gguf")
    with pytest.raises(SourceError, match=r"tiny\.Q8_0\.gguf of org/tiny-GGUF is damaged"):
        resolve("org/tiny-GGUF", quant="Q8_0")
    hub.corrupt.clear()
    src = resolve("org/tiny-GGUF", quant="Q8_0")
    assert src.path.read_bytes() == tiny_ggufs["tiny.Q8_0.gguf"]


def test_verified_once_then_remembered_online_and_offline(
    hub: FakeHub, tiny_llama_bpe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add_repo("org/tiny", tiny_llama_bpe)
    hashed = _count_hashes(monkeypatch)
    src = resolve("org/tiny")
    first = list(hashed)
    assert len(first) == len({*first}) and len(first) >= 3, first  # each file hashed once
    weights = (src.path / "model.safetensors").resolve()
    assert weights.name == digests.digest_of(weights, "sha256")  # a sha256-named LFS blob
    hashed.clear()

    assert resolve("org/tiny").commit == src.commit
    assert hashed == [], "a file verified before and unchanged is not hashed again"

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    before = len(hub.requests)
    offline = resolve("org/tiny")
    assert offline.commit == src.commit and hashed == []
    assert len(hub.requests) == before

    # the cached blob changes on disk (same size): offline, it is hashed again and refused
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.chmod(0o644)
    weights.write_bytes(bytes(data))
    with pytest.raises(SourceError) as err:
        resolve("org/tiny")
    msg = str(err.value)
    assert msg.startswith("model.safetensors of org/tiny is damaged") and "\n" not in msg
    assert "unset HF_HUB_OFFLINE and run again" in msg
    assert not weights.exists(), "the damaged blob is removed from the cache"

    # online again: downloaded afresh and verified
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    again = resolve("org/tiny")
    assert (again.path / "model.safetensors").read_bytes() == (
        tiny_llama_bpe / "model.safetensors"
    ).read_bytes()
