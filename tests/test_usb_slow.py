"""End to end on the real demo model.run: ``packer build --split`` parts run and answer as the
unsplit file does; ``--verify`` good and bad; ``--uninstall`` leaves no cache entry for the
file; ``packer usb`` onto a real vfat loop mount (skipped with the reason where the kernel or
the machine allows none; then the FAT32 limit is checked with a small fake one).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from answers import DEMO_QUESTION

from packer.runtime.payload import read_bundle

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PART = "40M"  # the runtime (~30 MB) fits in model.run; the ~100 MB model goes in 3 parts


def run_clean(exe: Path, *args: str, cache: Path, timeout: int = 300):  # type: ignore[no-untyped-def]
    """A user on a bare machine (`env -i`), with the cache folder in tmp."""
    return subprocess.run(
        ["env", "-i", f"PACKER_CACHE={cache}", "LANG=C.UTF-8", str(exe), *args],
        cwd=exe.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ask(exe: Path, cache: Path) -> str:
    proc = run_clean(exe, "-p", DEMO_QUESTION, "--temp", "0", "-n", "32", cache=cache)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 1]))


@pytest.fixture(scope="module")
def split_run(demo_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("split") / "demo.run"
    proc = subprocess.run(
        [sys.executable, "-m", "packer", "build", str(demo_checkpoint), "--quant", "Q5_K_M"]
        + ["--split", PART, "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    return out


def test_split_build_runs_like_the_unsplit_one(
    split_run: Path, demo_run: Path, tmp_path: Path
) -> None:
    files = sorted(p.name for p in split_run.parent.iterdir())
    m = read_bundle(split_run).manifest
    assert len(m.parts) >= 2
    assert files == ["demo.run"] + [f"demo.run.part{i}" for i in range(2, len(m.parts) + 2)]
    assert all(p.stat().st_size <= 40_000_000 for p in split_run.parent.iterdir())
    assert m.gguf_sha256 == read_bundle(demo_run).manifest.gguf_sha256
    first = run_clean(
        split_run, "-p", DEMO_QUESTION, "--temp", "0", "-n", "32", cache=tmp_path / "a"
    )
    assert first.returncode == 0, first.stderr
    assert "first start: unpacking the model into" in first.stderr
    assert first.stdout == ask(demo_run, tmp_path / "b")


def test_verify_good_and_bad(split_run: Path, demo_run: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    good = run_clean(split_run, "--verify", cache=cache)
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.splitlines()[-1] == "verdict: demo.run is complete and undamaged"
    assert "runtime archive: ok" in good.stdout and "part demo.run.part3: ok" in good.stdout
    # a damaged part
    copy = tmp_path / "copy"
    shutil.copytree(split_run.parent, copy)
    flip(copy / "demo.run.part3", 12345)
    bad = run_clean(copy / "demo.run", "--verify", cache=cache)
    assert bad.returncode == 1
    assert "part demo.run.part3: DAMAGED" in bad.stdout
    # a damaged runtime archive: the launcher runs the unpacked runtime (same key), --verify
    # still reads the archive in the file
    one = tmp_path / "one.run"
    shutil.copy2(demo_run, one)
    b = read_bundle(one)
    assert run_clean(one, "--verify", cache=cache).returncode == 0
    flip(one, b.runtime_offset + b.runtime_size // 2)
    bad = run_clean(one, "--verify", cache=cache)
    assert bad.returncode == 1 and "runtime archive: DAMAGED" in bad.stdout, bad.stdout + bad.stderr


def test_uninstall_leaves_no_cache_entry(split_run: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    ask(split_run, cache)
    b = read_bundle(split_run)
    model_id = b.gguf_sha256[:32]
    assert list((cache / "models").glob(model_id + "*"))
    assert (cache / "runtime" / b.runtime_key).is_dir()
    proc = run_clean(split_run, "--uninstall", cache=cache)
    assert proc.returncode == 0, proc.stderr
    assert "freed" in proc.stdout
    assert not list((cache / "models").glob(model_id + "*")), list((cache / "models").iterdir())
    assert not list((cache / "runtime").glob(b.runtime_key + "*"))
    # and it starts again afterwards
    assert ask(split_run, cache)


@pytest.fixture()
def vfat(tmp_path: Path):  # type: ignore[no-untyped-def]
    if not shutil.which("mkfs.vfat"):
        pytest.skip("mkfs.vfat missing: install dosfstools (build/system-deps.sh)")
    if os.geteuid() != 0:
        pytest.skip("a loop mount needs root")
    img, mnt = tmp_path / "stick.img", tmp_path / f"stick-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", "400M", str(img)], check=True)
    subprocess.run(["mkfs.vfat", "-F", "32", str(img)], check=True, capture_output=True)
    proc = subprocess.run(
        ["mount", "-o", "loop", str(img), str(mnt)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"no vfat loop mount here: {proc.stderr.strip().splitlines()[0]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_usb_onto_a_real_vfat_mount(vfat: Path, demo_run: Path, tmp_path: Path) -> None:
    from packer import usb
    from packer.mounts import mount_of

    mount = mount_of(vfat)
    assert mount is not None and mount.fstype == "vfat" and mount.max_file == 2**32 - 1
    usb.copy_to_usb(vfat, [demo_run], max_file=40_000_000)  # a small fake FAT32 limit
    assert all(p.stat().st_size <= 40_000_000 for p in vfat.iterdir())
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=vfat, capture_output=True)
    assert check.returncode == 0
    copied = tmp_path / "home"
    shutil.copytree(vfat, copied)  # as the README says: to the home folder first
    exe = copied / demo_run.name
    assert ask(exe, tmp_path / "c") == ask(demo_run, tmp_path / "d")


def test_usb_fat32_limit_without_loop_mount(
    demo_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where no vfat mount is possible: the same path with the filesystem type mocked."""
    from packer import usb
    from packer.mounts import Mount

    stick = tmp_path / "stick"
    stick.mkdir()
    monkeypatch.setattr(usb, "mount_of", lambda p: Mount(stick, "vfat"))
    monkeypatch.setattr(Mount, "max_file", property(lambda self: 40_000_000))
    usb.copy_to_usb(stick, [demo_run])
    assert len(list(stick.glob("*.part*"))) >= 2
    assert subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=stick).returncode == 0
    verify = run_clean(stick / demo_run.name, "--verify", cache=tmp_path / "c")
    assert verify.returncode == 0, verify.stdout
    assert ask(stick / demo_run.name, tmp_path / "c") == ask(demo_run, tmp_path / "d")


def test_full_stick_on_a_small_tmpfs(demo_run: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    stick = tmp_path / "small"
    stick.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=50M", "tmpfs", str(stick)]).returncode:
        pytest.skip("no tmpfs mount here")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "packer", "usb", str(stick), str(demo_run)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert proc.returncode != 0
        assert proc.stderr.count("\n") == 1 and "not enough space" in proc.stderr
        assert list(stick.iterdir()) == []
    finally:
        subprocess.run(["umount", str(stick)], check=False)
