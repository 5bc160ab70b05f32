"""Split model files (--split), model.run --verify and --uninstall, the first-start lines.

Fast: a fake stub with a footer (a launcher and a "runtime archive" of random bytes) and a
fake GGUF; the runtime runs unfrozen (``python -m packer.runtime --bundle FILE``), which
reaches --verify and --uninstall without ever loading a model.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from packer.errors import OutputError, UsageError
from packer.pack import pack
from packer.runtime import i18n
from packer.runtime.cache import cached_gguf_path, ensure_gguf, uninstall, uninstall_main
from packer.runtime.manifest import Manifest, seal_matches
from packer.runtime.payload import (
    BundleError,
    pack_stub_footer,
    read_bundle,
)
from packer.runtime.sizes import format_size, parse_size
from packer.runtime.verify import verify

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = b"\x7fELF fake launcher\n" * 50
SPLIT = 400_000


@pytest.fixture()
def gguf(tmp_path: Path) -> Path:
    rng = random.Random(7)
    p = tmp_path / "in.gguf"
    p.write_bytes(b"GGUF" + rng.randbytes(1_000_000) + b"\0" * 100_000)
    return p


@pytest.fixture()
def stub(tmp_path: Path) -> Path:
    """A stub as packer.stub writes it: [launcher][runtime archive][footer]."""
    archive = random.Random(3).randbytes(50_000)
    key = hashlib.sha256(archive).hexdigest()[:32]
    p = tmp_path / "stub"
    p.write_bytes(LAUNCHER + archive + pack_stub_footer(len(LAUNCHER), len(archive), key))
    return p


@pytest.fixture()
def whole(tmp_path: Path, stub: Path, gguf: Path) -> Path:
    out = tmp_path / "whole" / "model.run"
    pack(stub, gguf, out, Manifest(name="tiny", license="apache-2.0"))
    return out


@pytest.fixture()
def split(tmp_path: Path, stub: Path, gguf: Path) -> Path:
    out = tmp_path / "split" / "model.run"
    pack(stub, gguf, out, Manifest(name="tiny", license="apache-2.0"), split=SPLIT)
    return out


def run_runtime(bundle: Path, *args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "LANG": "C.UTF-8", **(env or {})}
    full_env.pop("PACKER_BUNDLE", None)
    full_env.pop("LANGUAGE", None)
    return subprocess.run(
        [sys.executable, "-m", "packer.runtime", "--bundle", str(bundle), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
    )


@contextlib.contextmanager
def spanish() -> Iterator[None]:
    """model.run's messages in Spanish, in this process (main.py chooses from the locale)."""
    i18n.setup("es")
    try:
        yield
    finally:
        i18n.setup("en")


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


# -- sizes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4G", 4_000_000_000),
        ("3900M", 3_900_000_000),
        ("3.5GB", 3_500_000_000),
        ("4GiB", 4 * 2**30),
        ("20m", 20_000_000),
        ("512KiB", 512 * 1024),
        ("1000000", 1_000_000),
        (" 2 G ", 2_000_000_000),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "G", "4X", "-1G", "0", "4 GG", "four"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_4g_fits_fat32() -> None:
    from packer.mounts import FAT32_MAX

    assert parse_size("4G") <= FAT32_MAX < parse_size("4GiB")


def test_format_size() -> None:
    assert format_size(4_600_000_000) == "4.6 GB"
    assert format_size(103_000_000) == "103 MB"
    assert format_size(12_000) == "12 kB"


# -- split writing and reading -----------------------------------------------------------------


def test_split_parts_read_as_one_file(whole: Path, split: Path, gguf: Path, tmp_path: Path) -> None:
    b = read_bundle(split)
    parts = b.manifest.parts
    names = sorted(p.name for p in split.parent.iterdir())
    assert names == ["model.run"] + [f"model.run.part{i}" for i in range(2, len(parts) + 2)]
    assert len(parts) == 3 and all(p.size <= SPLIT for p in parts)
    assert all((split.parent / p.name).stat().st_size <= SPLIT for p in parts)
    assert split.stat().st_size <= SPLIT
    assert b.payload_size == 0, "the payload is all in the parts"
    # the same payload bytes as the unsplit build
    w = read_bundle(whole)
    with open(whole, "rb") as f:
        f.seek(w.payload_offset)
        payload = f.read(w.payload_size)
    assert b"".join((split.parent / p.name).read_bytes() for p in parts) == payload
    assert b.manifest.payload_sha256 == w.manifest.payload_sha256
    out = ensure_gguf(b, tmp_path / "cache")
    assert out.read_bytes() == gguf.read_bytes()


def test_split_then_unsplit_removes_old_parts(stub: Path, gguf: Path, split: Path) -> None:
    pack(stub, gguf, split, Manifest(name="tiny"))
    assert sorted(p.name for p in split.parent.iterdir()) == ["model.run"]
    assert read_bundle(split).manifest.parts == ()


def test_renamed_split_file_finds_its_parts(split: Path, tmp_path: Path) -> None:
    for p in split.parent.iterdir():
        p.rename(p.with_name(p.name.replace("model.run", "classroom.run")))
    b = read_bundle(split.with_name("classroom.run"))
    assert ensure_gguf(b, tmp_path / "cache").is_file()


def test_split_too_small_is_one_line_before_writing(stub: Path, gguf: Path, tmp_path: Path) -> None:
    out = tmp_path / "o" / "model.run"
    with pytest.raises(OutputError, match="--split .* too small"):
        pack(stub, gguf, out, Manifest(name="x"), split=100_000)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_failed_split_build_leaves_nothing(
    stub: Path, gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import packer.pack as pack_mod

    calls = {"n": 0}
    real = pack_mod.PayloadSink._roll

    def roll(self):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        real(self)

    monkeypatch.setattr(pack_mod.PayloadSink, "_roll", roll)
    out = tmp_path / "o" / "model.run"
    with pytest.raises(OutputError, match="disk full"):
        pack(stub, gguf, out, Manifest(name="x"), split=SPLIT)
    assert list(out.parent.iterdir()) == [], "no part and no temp file may stay"


def test_missing_part_is_one_line_naming_it(split: Path, tmp_path: Path) -> None:
    (split.parent / "model.run.part3").unlink()
    with pytest.raises(BundleError, match=r"model\.run\.part3 is missing") as err:
        ensure_gguf(read_bundle(split), tmp_path / "cache")
    assert "\n" not in str(err.value)
    proc = run_runtime(split, "-p", "hi", "--cache-dir", str(tmp_path / "cache"))
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "model.run.part3 is missing" in proc.stderr
    with spanish():
        lines: list[str] = []
        assert not verify(split, lines.append)
    assert any("falta model.run.part3" in line for line in lines)


def test_corrupted_part_is_one_line_naming_it(split: Path, tmp_path: Path) -> None:
    flip(split.parent / "model.run.part2", 1234)
    cache = tmp_path / "cache"
    proc = run_runtime(split, "-p", "hi", "--cache-dir", str(cache))
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "model.run.part2 is damaged" in errors[0], proc.stderr
    assert not cached_gguf_path(cache, read_bundle(split)).exists()
    assert not [p for p in (cache / "models").iterdir() if p.name.endswith(".tmp")]


def test_truncated_part_is_one_line(split: Path, tmp_path: Path) -> None:
    part = split.parent / "model.run.part4"
    part.write_bytes(part.read_bytes()[:-10])
    proc = run_runtime(split, "-p", "hi", "--cache-dir", str(tmp_path / "cache"))
    assert proc.returncode == 1 and "model.run.part4 is damaged" in proc.stderr


# -- --verify ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["whole", "split"])
def test_verify_good(fixture: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(fixture)
    proc = run_runtime(path, "--verify")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for item in ("layout (trailer): ok", "manifest: ok", "launcher: ok", "runtime archive: ok"):
        assert any(line.startswith(item) for line in lines), item
    assert any(line.startswith("compressed model: ok") for line in lines)
    assert any(line.startswith("model (GGUF sha256") and ": ok" in line for line in lines)
    if fixture == "split":
        assert sum(line.startswith("part model.run.part") for line in lines) == 3
    assert lines[-1] == "verdict: model.run is complete and undamaged"


def _regions(path: Path) -> dict[str, tuple[int, int]]:
    b = read_bundle(path)
    m_off = b.payload_offset + b.payload_size
    return {
        "launcher": (0, b.runtime_offset),
        "runtime archive": (b.runtime_offset, b.runtime_size),
        "payload": (b.payload_offset, b.payload_size),
        "manifest": (m_off, path.stat().st_size - 96 - m_off),
    }


@pytest.mark.parametrize("region", ["launcher", "runtime archive", "payload", "manifest"])
@pytest.mark.parametrize("where", [0.0, 0.5, 0.999])
def test_verify_catches_a_flipped_byte(whole: Path, region: str, where: float) -> None:
    off, size = _regions(whole)[region]
    flip(whole, off + int(size * where))
    proc = run_runtime(whole, "--verify")
    assert proc.returncode == 1, proc.stdout
    assert "DAMAGED" in proc.stdout
    assert proc.stdout.splitlines()[-1].startswith("verdict: model.run is damaged")


def test_verify_catches_a_flipped_byte_in_a_part(split: Path) -> None:
    flip(split.parent / "model.run.part3", 5)
    proc = run_runtime(split, "--verify")
    assert proc.returncode == 1
    assert "part model.run.part3: DAMAGED" in proc.stdout
    assert "part model.run.part2: ok" in proc.stdout


def test_verify_on_a_damaged_trailer(whole: Path) -> None:
    flip(whole, whole.stat().st_size - 3)
    proc = run_runtime(whole, "--verify")
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[0].startswith("layout and manifest: DAMAGED")


def test_verify_in_spanish(whole: Path) -> None:
    lines: list[str] = []
    with spanish():
        assert verify(whole, lines.append)
    assert lines[-1] == "resultado: model.run está completo y en buen estado"
    assert lines[0] == "estructura (cola del archivo): correcto"


def test_manifest_seal() -> None:
    raw = Manifest(name="x", gguf_size=1, gguf_sha256="a" * 64).sealed_json()
    m = Manifest.from_json(raw)
    assert seal_matches(raw, m.manifest_sha256)
    assert not seal_matches(raw.replace(b'"x"', b'"y"'), m.manifest_sha256)


# -- first start, --uninstall ----------------------------------------------------------------


def test_first_start_says_what_it_costs(split: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "runtime" / read_bundle(split).runtime_key).mkdir(parents=True)
    (cache / "runtime" / read_bundle(split).runtime_key / "lib.so").write_bytes(b"x" * 100_000)
    proc = run_runtime(split, "--extract", str(tmp_path / "x.gguf"), "--cache-dir", str(cache))
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stderr.splitlines() if "first start" in x)
    assert str(cache / "models") in line and "MB on disk" in line and "--uninstall" in line
    assert "runtime takes" in line
    assert "[###" not in proc.stderr, "no progress bar off a terminal"


def test_progress_bar_on_a_terminal(whole: Path, tmp_path: Path) -> None:
    import pty

    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LANG": "C.UTF-8"}
    env.pop("PACKER_BUNDLE", None)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "packer.runtime", "--bundle", str(whole)]
        + ["--extract", str(tmp_path / "x.gguf"), "--cache-dir", str(cache)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    proc.communicate(timeout=120)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.returncode == 0
    assert b"unpacking the model [" in out and b"100%" in out


def test_uninstall_removes_model_and_runtime(split: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    b = read_bundle(split)
    rt = cache / "runtime" / b.runtime_key
    rt.mkdir(parents=True)
    (rt / "packer-runtime").write_bytes(b"x" * 200_000)
    (cache / "runtime" / f"{b.runtime_key}.inuse").touch()
    other = cache / "models" / ("f" * 32 + ".gguf")
    assert (
        run_runtime(
            split, "--extract", str(tmp_path / "x.gguf"), "--cache-dir", str(cache)
        ).returncode
        == 0
    )
    gguf = cached_gguf_path(cache, b)
    assert gguf.is_file()
    other.write_bytes(b"another model")
    proc = run_runtime(split, "--uninstall", "--cache-dir", str(cache))
    assert proc.returncode == 0, proc.stderr
    assert "freed" in proc.stdout and str(cache) in proc.stdout
    left = sorted(p.name for p in (cache / "models").iterdir())
    assert left == [other.name], "only this file's entries go"
    assert not [p for p in (cache / "runtime").iterdir() if p.name.startswith(b.runtime_key)]
    assert not gguf.exists()
    again = run_runtime(split, "--clean-cache", "--cache-dir", str(cache))
    assert again.returncode == 0 and "nothing to remove" in again.stdout


def test_uninstall_skips_what_another_copy_holds(whole: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    b = read_bundle(whole)
    gguf = ensure_gguf(b, cache)  # this process holds it (a shared lock on its .inuse)
    result = uninstall(b, cache)
    assert result.busy == [gguf] and gguf.exists()
    with open(gguf.with_suffix(".inuse"), "rb") as fh, pytest.raises(BlockingIOError):
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: the lock stays
    proc = run_runtime(whole, "--uninstall", "--cache-dir", str(cache))
    assert proc.returncode == 1
    assert "in use by another running model.run" in proc.stderr and gguf.exists()


def test_uninstall_in_spanish(
    whole: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    run_runtime(whole, "--extract", str(tmp_path / "x.gguf"), "--cache-dir", str(cache))
    with spanish():
        assert uninstall_main(read_bundle(whole), cache) == 0
    assert "se borró lo que model.run había descomprimido" in capsys.readouterr().out


# -- packer build --split / FAT32 ---------------------------------------------------------------


def test_build_split_option_is_parsed(fake_stub: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "packer", "build", str(tmp_path / "x.gguf"), "--split", "4X"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--split" in proc.stderr


def test_fat32_destination_without_split_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from packer import build
    from packer.mounts import Mount

    monkeypatch.setattr(build, "mount_of", lambda p: Mount(Path("/media/stick"), "vfat"))
    plan = build.BuildPlan(
        source=None,  # type: ignore[arg-type]
        quant=build.parse_quant("Q4_K_M"),
        output=tmp_path / "model.run",
        n_params=8_000_000_000,
    )
    with pytest.raises(OutputError, match="FAT32.*--split 4G"):
        plan.check_destination()
    plan.split = parse_size("4G")
    plan.check_destination()
    plan.split = parse_size("4GiB")
    with pytest.raises(UsageError, match="4 GiB"):
        plan.check_destination()
    monkeypatch.setattr(build, "mount_of", lambda p: Mount(Path("/media/stick"), "exfat"))
    plan.split = None
    plan.check_destination()


def test_mountinfo_parsing(tmp_path: Path) -> None:
    from packer.mounts import mount_of

    info = tmp_path / "mountinfo"
    stick = tmp_path / "my stick"
    (stick / "sub").mkdir(parents=True)
    esc = str(stick).replace(" ", "\\040")
    info.write_text(
        "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"
        f"40 22 8:17 / {esc} rw,nosuid,nodev - vfat /dev/sdb1 rw,showexec,utf8\n"
    )
    m = mount_of(stick / "sub", info)
    assert m is not None and m.point == stick and m.is_fat and m.max_file == 4 * 2**30 - 1
    root = mount_of(tmp_path, info)
    assert root is not None and root.fstype == "ext4" and root.max_file is None
