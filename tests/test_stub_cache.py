"""`packer runtime list` / `packer runtime prune`: the stub cache on the build machine.

Every change to runtime/ or to llama-cpp-python makes a new stub (23-470 MB each); nothing
else ever removes the old ones."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import pytest
from test_cli import run_cli

from packer import stub as stub_mod

PREFIX = f"{platform.system().lower()}-{platform.machine()}-"


def make_stub(cache: Path, flavour: str, key: str, size: int, age_days: float) -> Path:
    exe = cache / f"{PREFIX}{flavour}-{key}" / "packer-runtime"
    exe.parent.mkdir(parents=True)
    exe.write_bytes(b"\0" * size)
    then = time.time() - age_days * 86400
    os.utime(exe, (then, then))
    return exe


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stub cache with a current and an old cpu stub, an old cuda stub, a build in progress
    and a stranger's file; the current keys are what a checkout would compute."""
    root = tmp_path / "stubs"
    monkeypatch.setenv("PACKER_STUB_CACHE", str(root))
    make_stub(root, "cpu", "aaaaaaaaaaaaaaaa", 3_000_000, 0.1)
    make_stub(root, "cpu", "bbbbbbbbbbbbbbbb", 2_000_000, 3)
    make_stub(root, "cuda", "cccccccccccccccc", 5_000_000, 10)
    (root / ".stub-build-x1y2").mkdir()
    (root / ".stub-build-x1y2" / "stub").write_bytes(b"half")
    (root / "notes.txt").write_text("mine")
    monkeypatch.setattr(stub_mod, "current_stub_keys", lambda: {"cpu": "aaaaaaaaaaaaaaaa"})
    return root


def test_list_marks_the_current_stub_newest_first(cache: Path) -> None:
    code, out, err = run_cli("runtime", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["FLAVOUR", "SIZE", "BUILT", "STATE", "PATH"]
    rows = [line.split() for line in lines[1:]]
    assert [(r[0], r[1], r[-2]) for r in rows] == [
        ("cpu", "3.0", "current"),
        ("cpu", "2.0", "old"),
        ("cuda", "5.0", "old"),
    ]
    assert rows[0][-1] == str(cache / f"{PREFIX}cpu-aaaaaaaaaaaaaaaa" / "packer-runtime")
    assert "2 old stub(s), 7 MB: `packer runtime prune`" in err


def test_list_of_an_empty_cache_says_so_on_stderr(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PACKER_STUB_CACHE", str(tmp_path / "none"))
    code, out, err = run_cli("runtime", "list")
    assert (code, out) == (0, "")
    assert "no runtime stubs in" in err


def test_prune_keeps_the_current_stub_and_what_is_not_a_stub(cache: Path) -> None:
    code, out, err = run_cli("runtime", "prune")
    assert code == 0
    assert sorted(os.listdir(cache)) == [
        ".stub-build-x1y2",
        f"{PREFIX}cpu-aaaaaaaaaaaaaaaa",
        "notes.txt",
    ]
    assert [line.split()[0] for line in out.splitlines()] == ["cpu", "cuda"]
    assert "removed 2 stub(s), 7 MB" in err
    # a second prune has nothing left to do
    code, out, err = run_cli("runtime", "prune")
    assert (code, out) == (0, "")
    assert "removed 0 stub(s)" in err


def test_prune_dry_run_removes_nothing(cache: Path) -> None:
    before = sorted(p.relative_to(cache) for p in cache.rglob("*"))
    code, out, err = run_cli("runtime", "prune", "--dry-run")
    assert code == 0
    assert len(out.splitlines()) == 2
    assert "would remove 2 stub(s), 7 MB" in err
    assert sorted(p.relative_to(cache) for p in cache.rglob("*")) == before


def test_prune_all_removes_the_current_one_too(cache: Path) -> None:
    code, _, err = run_cli("runtime", "prune", "--all")
    assert code == 0
    assert "removed 3 stub(s), 10 MB" in err
    assert sorted(os.listdir(cache)) == [".stub-build-x1y2", "notes.txt"]


def test_current_keys_leave_out_flavours_that_are_not_built(monkeypatch) -> None:
    def fake_key(flavour: str) -> str:
        if flavour == "cuda":
            raise stub_mod.RuntimeStubError("not built")
        return "k-" + flavour

    monkeypatch.setattr(stub_mod, "stub_key", fake_key)
    assert stub_mod.current_stub_keys() == {"cpu": "k-cpu"}


def test_prune_removes_what_killed_builds_left_and_never_a_running_build(
    cache: Path,
) -> None:
    """A stub build works in a `.stub-build-*` folder that it locks; a killed build (Ctrl-C,
    out of memory, a timeout) leaves it unlocked, with hundreds of MB in it."""
    dead = cache / ".stub-build-dead"
    (dead / "dist").mkdir(parents=True)
    (dead / "dist" / "libggml-cuda.so").write_bytes(b"\0" * 4_000_000)
    (dead / stub_mod.BUILD_LOCK).touch()  # its build is gone: nobody holds the lock
    old = cache / ".stub-build-old"  # from before build folders were locked, two hours old
    old.mkdir()
    then = time.time() - 2 * 3600
    os.utime(old, (then, then))
    with stub_mod._build_folder(cache) as running:
        (running / "partial").write_bytes(b"\0" * 1000)
        code, _, err = run_cli("runtime", "list")
        assert "2 folder(s) left by killed stub builds, 4 MB: `packer runtime prune`" in err
        code, out, err = run_cli("runtime", "prune", "--dry-run")
        assert "would remove 2 stub(s), 7 MB, and 2 folder(s) of killed builds, 4 MB" in err
        assert dead.is_dir() and old.is_dir()
        code, out, err = run_cli("runtime", "prune")
        assert code == 0
        assert "removed 2 stub(s), 7 MB, and 2 folder(s) of killed builds, 4 MB" in err
        killed = [line.split() for line in out.splitlines() if line.startswith("build")]
        assert sorted(row[-1] for row in killed) == [str(dead), str(old)]
        assert not dead.exists() and not old.exists()
        assert (running / "partial").is_file()  # the running build is untouched
        assert (cache / ".stub-build-x1y2").is_dir()  # just started: no lock yet, fresh
    assert not running.exists()  # a build removes its own folder when it ends


def test_a_failed_build_removes_its_folder(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), stub_mod._build_folder(tmp_path) as work:
        assert not stub_mod._abandoned(work)  # locked while the build runs
        raise RuntimeError("PyInstaller failed")
    assert list(tmp_path.iterdir()) == []


def test_prune_that_cannot_remove_is_one_line(cache: Path, monkeypatch) -> None:
    def refuse(path: object, *a: object, **kw: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(stub_mod.shutil, "rmtree", refuse)
    code, out, err = run_cli("runtime", "prune")
    assert code != 0 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("packer: error: could not remove ")
    assert "Permission denied; check who owns" in lines[0] and "Traceback" not in err
