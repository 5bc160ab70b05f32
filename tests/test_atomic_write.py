"""packer.runtime.atomic_write: the one "temp file + fsync + rename" both sides use."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest

from packer.runtime import atomic_write as mod
from packer.runtime.atomic_write import atomic_write


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writes_the_file_with_the_mode_open_would_give(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with atomic_write(target) as fh:
        fh.write(b"hello ")
        fh.write(b"world")
        assert not target.exists(), "nothing at the target before the block ends"
    assert target.read_bytes() == b"hello world"
    assert _mode(target) == 0o666 & ~_umask()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_default_mode_follows_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        with atomic_write(tmp_path / "f") as fh:
            fh.write(b"x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "f") == 0o666 & ~umask


def test_an_explicit_mode_is_exact(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        with atomic_write(tmp_path / "model.run", mode=0o755) as fh:
            fh.write(b"#!/bin/sh\n")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "model.run") == 0o755


def test_replaces_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    with atomic_write(target) as fh:
        fh.write(b"new")
    assert target.read_bytes() == b"new"


@pytest.mark.parametrize("error", [ValueError("bad"), KeyboardInterrupt()])
def test_an_exception_leaves_the_target_untouched_and_no_temp_file(
    tmp_path: Path, error: BaseException
) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"previous")
    with pytest.raises(type(error)), atomic_write(target) as fh:
        fh.write(b"half of the new content")
        raise error
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_a_failed_first_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_write(tmp_path / "new") as fh:
        fh.write(b"x")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_writing_through_the_file_descriptor(tmp_path: Path) -> None:
    """The converter writes with os.write/copy_file_range on fh.fileno()."""
    target = tmp_path / "f"
    with atomic_write(target) as fh:
        os.write(fh.fileno(), b"raw bytes")
    assert target.read_bytes() == b"raw bytes"


def test_fsync_failure_is_an_oserror_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mod.os, "fsync", no_space)
    target = tmp_path / "f"
    with pytest.raises(OSError) as info, atomic_write(target) as fh:
        fh.write(b"data")
    assert info.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_missing_folder_is_an_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError), atomic_write(tmp_path / "no" / "f"):
        pass  # pragma: no cover - not reached


def test_temp_file_is_hidden_next_to_the_target(tmp_path: Path) -> None:
    target = tmp_path / ("n" * 250)  # a long name still leaves room for the temp suffix
    with atomic_write(target) as fh:
        temps = [p for p in tmp_path.iterdir() if p != target]
        assert len(temps) == 1
        assert temps[0].name.startswith(".n") and temps[0].name.endswith(mod.TEMP_SUFFIX)
        assert os.path.samefile(temps[0], f"/proc/self/fd/{fh.fileno()}")
    assert target.is_file()


def test_an_existing_temp_name_is_never_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = tmp_path / ".f.taken.tmp"
    taken.write_bytes(b"someone else's")
    names = iter([taken, tmp_path / ".f.free.tmp"])
    monkeypatch.setattr(mod, "temp_path", lambda target: next(names))
    with atomic_write(tmp_path / "f") as fh:
        fh.write(b"mine")
    assert taken.read_bytes() == b"someone else's"
    assert (tmp_path / "f").read_bytes() == b"mine"


def test_write_json(tmp_path: Path) -> None:
    """One JSON text with a final newline; a value json cannot encode leaves the old file and
    no temp file (it fails before anything is opened)."""
    target = tmp_path / "v.json"
    mod.write_json(target, {"variant": "zen4", "n": [1, 2]}, indent=1)
    assert target.read_bytes() == b'{\n "variant": "zen4",\n "n": [\n  1,\n  2\n ]\n}\n'
    mod.write_json(target, ["ñ"])
    assert json.loads(target.read_text(encoding="utf-8")) == ["ñ"]
    with pytest.raises(TypeError):
        mod.write_json(target, {"bad": object()})
    assert json.loads(target.read_text(encoding="utf-8")) == ["ñ"]
    assert [p.name for p in tmp_path.iterdir()] == ["v.json"]
