"""model.run layout: pack() writes it, the runtime reads it back, unpacks once, detects damage."""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import stat
import time
from pathlib import Path

import pytest

from packer.errors import OutputError
from packer.pack import pack, sha256_file
from packer.runtime.cache import CacheError, cached_gguf_path, ensure_gguf, resolve_cache_dir
from packer.runtime.manifest import Manifest
from packer.runtime.payload import (
    MAGIC,
    MAGIC_V1,
    TRAILER,
    TRAILER_V1,
    BundleError,
    StubInfo,
    pack_stub_footer,
    read_bundle,
    read_stub_footer,
)

FAKE_STUB = b"\x7fELF fake stub for tests\n" * 100


@pytest.fixture()
def fake_gguf(tmp_path: Path) -> Path:
    # compressible but not trivial: a header-like prefix and pseudo-random body
    import random

    rng = random.Random(1)
    p = tmp_path / "in.gguf"
    p.write_bytes(b"GGUF" + bytes(rng.getrandbits(8) for _ in range(300_000)) + b"\0" * 200_000)
    return p


@pytest.fixture()
def bundle_file(tmp_path: Path, fake_gguf: Path) -> Path:
    stub = tmp_path / "stub"
    stub.write_bytes(FAKE_STUB)
    out = tmp_path / "out" / "model.run"
    pack(stub, fake_gguf, out, Manifest(name="tiny", args=("--temp", "0")))
    return out


def test_pack_layout_roundtrip(bundle_file: Path, fake_gguf: Path) -> None:
    data = bundle_file.read_bytes()
    assert data.startswith(FAKE_STUB), "the stub must come first, unchanged"
    assert os.stat(bundle_file).st_mode & stat.S_IXUSR, "model.run must be executable"
    b = read_bundle(bundle_file)
    assert b.payload_offset == len(FAKE_STUB)
    assert b.manifest.name == "tiny"
    assert b.manifest.args == ("--temp", "0")
    assert b.manifest.gguf_sha256 == sha256_file(fake_gguf)
    assert b.manifest.gguf_size == fake_gguf.stat().st_size
    assert b.manifest.compression == "zstd"
    assert b.manifest.payload_size < fake_gguf.stat().st_size  # the zero tail compresses
    assert not [p for p in bundle_file.parent.iterdir() if p.name != "model.run"], "temp files left"


def test_extract_verifies_and_is_reused(bundle_file: Path, fake_gguf: Path, tmp_path: Path) -> None:
    b = read_bundle(bundle_file)
    cache = tmp_path / "cache"
    out = ensure_gguf(b, cache)
    assert out == cached_gguf_path(cache, b)
    assert out.read_bytes() == fake_gguf.read_bytes()
    # second run: must not read the payload again (we make the payload unreadable to prove it)
    mtime = out.stat().st_mtime_ns
    bundle_file.chmod(0)
    try:
        assert ensure_gguf(b, cache) == out
    finally:
        bundle_file.chmod(0o755)
    assert out.stat().st_mtime_ns == mtime
    assert not list((cache / "models").glob("*.tmp")), "no temp file may remain"


def _age(path: Path, days: float) -> None:
    t = time.time() - days * 86400
    os.utime(path, (t, t))


def test_new_model_removes_old_unused_ones(bundle_file: Path, tmp_path: Path) -> None:
    """Unpacking a new model removes the other unpacked models that no process holds and none
    started for 30 days; held and recently used ones stay, as do all lock files."""
    models = tmp_path / "cache" / "models"
    models.mkdir(parents=True)

    def old_model(name: str, days: float, inuse_days: float | None = None) -> Path:
        p = models / f"{name * 32}.gguf"
        p.write_bytes(b"GGUF old model")
        _age(p, days)
        if inuse_days is not None:
            p.with_suffix(".inuse").touch()
            _age(p.with_suffix(".inuse"), inuse_days)
        return p

    unused = old_model("a", 60)  # unpacked before .inuse files existed: its own age counts
    held = old_model("b", 60, 60)
    recent = old_model("c", 60, 5)
    stale = old_model("d", 40, 40)
    leftover = models / ".unpack-x.tmp"
    leftover.write_bytes(b"half")
    _age(leftover, 2)
    with open(held.with_suffix(".inuse"), "rb") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_SH)  # another model.run runs that model
        out = ensure_gguf(read_bundle(bundle_file), tmp_path / "cache")
    assert sorted(p.name for p in models.iterdir() if p.suffix == ".gguf") == sorted(
        [out.name, held.name, recent.name]
    )
    assert not unused.exists() and not stale.exists() and not leftover.exists()
    assert unused.with_suffix(".inuse").exists()  # lock files stay
    # this process holds its own model: a pruner elsewhere cannot take it
    with open(out.with_suffix(".inuse"), "rb") as fh, pytest.raises(BlockingIOError):
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    # a start that unpacks nothing removes nothing
    again = old_model("e", 90)
    assert ensure_gguf(read_bundle(bundle_file), tmp_path / "cache") == out
    assert again.exists()


def test_truncated_file_is_reported(bundle_file: Path) -> None:
    data = bundle_file.read_bytes()
    bundle_file.write_bytes(data[: len(data) - 1000])
    with pytest.raises(BundleError, match="truncated"):
        read_bundle(bundle_file)


def test_not_a_bundle(tmp_path: Path) -> None:
    p = tmp_path / "plain"
    p.write_bytes(b"x" * 10)
    with pytest.raises(BundleError, match="truncated"):
        read_bundle(p)
    p.write_bytes(b"y" * (TRAILER.size + 100))
    with pytest.raises(BundleError, match="no model attached"):
        read_bundle(p)


def test_corrupted_payload_checksum(bundle_file: Path, tmp_path: Path) -> None:
    b = read_bundle(bundle_file)
    raw = bytearray(bundle_file.read_bytes())
    # flip bytes in the middle of the compressed payload
    mid = b.payload_offset + b.payload_size // 2
    raw[mid : mid + 16] = bytes(x ^ 0xFF for x in raw[mid : mid + 16])
    bundle_file.write_bytes(bytes(raw))
    cache = tmp_path / "cache"
    with pytest.raises(BundleError, match="corrupted"):
        ensure_gguf(read_bundle(bundle_file), cache)
    assert not cached_gguf_path(cache, b).exists()
    assert not list((cache / "models").glob("*.tmp"))


def _extract_worker(path: str, cache: str, q: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    try:
        q.put(str(ensure_gguf(read_bundle(path), Path(cache))))
    except Exception as exc:  # pragma: no cover - reported to the parent
        q.put(f"ERR {exc}")


def test_concurrent_first_runs_do_not_corrupt(
    bundle_file: Path, fake_gguf: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    q: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    procs = [
        multiprocessing.Process(target=_extract_worker, args=(str(bundle_file), str(cache), q))
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert len(set(results)) == 1 and not results[0].startswith("ERR"), results
    assert Path(results[0]).read_bytes() == fake_gguf.read_bytes()


def test_cache_dir_falls_back_when_unwritable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.geteuid() == 0:
        # root writes anywhere: simulate an unwritable folder with a file in its place
        blocked = tmp_path / "blocked"
        blocked.write_text("not a folder")
    else:
        blocked = tmp_path / "ro"
        blocked.mkdir(mode=0o500)
    monkeypatch.delenv("PACKER_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_cache_dir() == tmp_path / "home" / ".cache" / "packer"


def test_explicit_cache_dir_does_not_fall_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file, not a folder")
    monkeypatch.setenv("PACKER_CACHE", str(blocked))
    with pytest.raises(CacheError, match="PACKER_CACHE"):
        resolve_cache_dir()


def test_pack_to_unwritable_place(tmp_path: Path, fake_gguf: Path) -> None:
    stub = tmp_path / "stub"
    stub.write_bytes(FAKE_STUB)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot write"):
        pack(stub, fake_gguf, blocker / "model.run", Manifest(name="x"))


def test_manifest_is_plain_json(bundle_file: Path) -> None:
    b = read_bundle(bundle_file)
    data = bundle_file.read_bytes()
    raw = data[b.payload_offset + b.payload_size : len(data) - TRAILER.size]
    assert raw == b.manifest.to_json()
    assert json.loads(raw) == b.manifest.to_dict()
    assert "created" not in json.loads(raw)


def test_stub_footer_places_the_runtime_archive(tmp_path: Path, fake_gguf: Path) -> None:
    launcher, archive, key = b"\x7fELF launcher" * 50, b"runtime archive bytes" * 30, "ab" * 16
    stub = tmp_path / "stub"
    stub.write_bytes(launcher + archive + pack_stub_footer(len(launcher), len(archive), key))
    info = read_stub_footer(stub)
    assert info == StubInfo(len(launcher), len(archive), key)
    out = tmp_path / "model.run"
    pack(stub, fake_gguf, out, Manifest(name="x"))
    b = read_bundle(out)
    data = out.read_bytes()
    assert data.startswith(launcher + archive), "the stub footer is not copied into model.run"
    assert (b.runtime_offset, b.runtime_size, b.runtime_key) == (len(launcher), len(archive), key)
    assert b.payload_offset == len(launcher) + len(archive)
    assert data[-8:] == MAGIC and len(
        data
    ) - TRAILER.size == b.payload_offset + b.payload_size + len(b.manifest.to_json())
    assert read_stub_footer(fake_gguf) is None


def test_layout_v1_is_still_read(tmp_path: Path) -> None:
    # as an old packer wrote it (with a timestamp the manifest no longer has)
    manifest = json.dumps(
        {"name": "old", "gguf_sha256": "0" * 64, "gguf_size": 3, "created": "2024-01-01"}
    ).encode()
    body = FAKE_STUB + b"zzz"
    p = tmp_path / "old.run"
    p.write_bytes(
        body
        + manifest
        + TRAILER_V1.pack(MAGIC_V1, len(FAKE_STUB), 3, len(body), len(manifest), MAGIC_V1)
    )
    b = read_bundle(p)
    assert (b.payload_offset, b.payload_size, b.runtime_size) == (len(FAKE_STUB), 3, 0)
    assert b.manifest.name == "old"
