"""One cache root (packer.runtime.cache.resolve_cache_dir); the build side's folders derive from it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from packer.runtime.cache import cache_subdir, candidate_dirs, resolve_cache_dir
from packer.stub import stub_cache_root


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No packer variables, no XDG_CACHE_HOME, HOME in tmp_path."""
    for var in ("PACKER_CACHE", "PACKER_STUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_default_is_home_cache(env: Path) -> None:
    root = env / "home" / ".cache" / "packer"
    assert resolve_cache_dir() == root
    assert stub_cache_root() == root / "stubs"
    assert cache_subdir("hub") == root / "hub"


def test_xdg_cache_home(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(env / "xdg"))
    assert resolve_cache_dir() == env / "xdg" / "packer"
    assert stub_cache_root() == env / "xdg" / "packer" / "stubs"


def test_packer_cache_and_explicit(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACKER_CACHE", str(env / "pc"))
    assert resolve_cache_dir() == env / "pc"
    assert stub_cache_root() == env / "pc" / "stubs"
    assert resolve_cache_dir(str(env / "flag")) == env / "flag"  # --cache-dir wins


def test_stub_cache_override_is_used_as_is(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACKER_STUB_CACHE", str(env / "stubs-here"))
    assert stub_cache_root() == env / "stubs-here"
    assert not (env / "home").exists(), "the cache root is not even looked at"
    monkeypatch.setenv("PACKER_STUB_CACHE", "")  # empty: as if unset
    assert stub_cache_root() == env / "home" / ".cache" / "packer" / "stubs"


def test_no_home_uses_the_password_database(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pwd

    monkeypatch.delenv("HOME")
    home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    assert candidate_dirs()[0] == home / ".cache" / "packer"
    assert candidate_dirs()[-1] == Path(tempfile.gettempdir()) / f"packer-{os.getuid()}"


def test_unwritable_home_falls_back_to_temp(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocked = env / "blocked"
    blocked.write_text("a file where a folder should be")
    monkeypatch.setenv("HOME", str(blocked))
    monkeypatch.setenv("TMPDIR", str(env / "tmp"))
    (env / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() caches its answer
    assert stub_cache_root() == env / "tmp" / f"packer-{os.getuid()}" / "stubs"
