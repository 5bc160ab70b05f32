"""``packer usb DEST FILE...``: checks before copying, FAT32 splitting, atomic copies, texts and
SHA256SUMS. Fast: fake model files, the filesystem type mocked (a real vfat loop mount is in
``test_usb_slow.py``)."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from packer import usb
from packer.errors import OutputError, SourceError, UsageError
from packer.mounts import Mount
from packer.pack import pack
from packer.runtime.manifest import LicenseFile, Manifest
from packer.runtime.payload import pack_stub_footer, read_bundle
from packer.runtime.verify import verify

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 500_000  # a fake FAT32 limit


def _stub(folder: Path) -> Path:
    launcher = b"\x7fELF fake launcher\n" * 40
    archive = random.Random(5).randbytes(40_000)
    key = hashlib.sha256(archive).hexdigest()[:32]
    p = folder / "stub"
    p.write_bytes(launcher + archive + pack_stub_footer(len(launcher), len(archive), key))
    return p


def _model(folder: Path, name: str, seed: int, licence: str | None = "llama3.2") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    gguf = folder / f"{name}.gguf"
    gguf.write_bytes(b"GGUF" + random.Random(seed).randbytes(1_200_000))
    out = folder / name
    manifest = Manifest(
        name=name.removesuffix(".run"),
        quant="Q4_K_M",
        license=licence,
        license_name="Llama 3.2 Community License" if licence == "llama3.2" else None,
        license_files=(LicenseFile("LICENSE", "the licence text"),) if licence else (),
    )
    pack(_stub(folder), gguf, out, manifest)
    gguf.unlink()
    (folder / "stub").unlink()
    return out


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    return _model(tmp_path / "src", "llama.run", 1)


@pytest.fixture()
def stick(tmp_path: Path) -> Path:
    p = tmp_path / "stick"
    p.mkdir()
    return p


def fs(monkeypatch: pytest.MonkeyPatch, fstype: str, point: Path) -> None:
    monkeypatch.setattr(usb, "mount_of", lambda path: Mount(point, fstype))


def sha256sum_c(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sha256sum", "-c", "SHA256SUMS"], cwd=folder, capture_output=True, text=True
    )


def test_fat32_splits_big_files(model: Path, stick: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fs(monkeypatch, "vfat", stick)
    monkeypatch.setattr("packer.mounts.FAT32_MAX", LIMIT)
    monkeypatch.setattr(Mount, "max_file", property(lambda self: LIMIT if self.is_fat else None))
    written = usb.copy_to_usb(stick, [model])
    names = sorted(p.name for p in stick.iterdir())
    assert names == sorted(
        ["llama.run", "llama.run.part2", "llama.run.part3", "llama.run.part4"]
        + ["README.txt", "LEEME.txt", "SHA256SUMS"]
    )
    assert sorted(p.name for p in written) == names
    assert all(p.stat().st_size <= LIMIT for p in stick.iterdir())
    assert os.access(stick / "llama.run", os.X_OK)
    check = sha256sum_c(stick)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(": OK") == 6  # all but SHA256SUMS itself
    lines: list[str] = []
    assert verify(stick / "llama.run", lines.append), lines
    # the same model: payload bytes and checksums as the source
    src, dst = read_bundle(model).manifest, read_bundle(stick / "llama.run").manifest
    assert (dst.payload_sha256, dst.gguf_sha256, dst.runtime_sha256) == (
        src.payload_sha256,
        src.gguf_sha256,
        src.runtime_sha256,
    )
    assert dst.license_files == src.license_files
    readme = (stick / "README.txt").read_text()
    assert "llama.run + llama.run.part2, llama.run.part3, llama.run.part4" in readme


def test_exfat_and_ext4_get_plain_copies(
    model: Path, stick: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for fstype in ("exfat", "ntfs3", "ext4"):
        fs(monkeypatch, fstype, stick)
        usb.copy_to_usb(stick, [model])
        assert (stick / "llama.run").read_bytes() == model.read_bytes()
        assert not list(stick.glob("*.part*"))
        assert sha256sum_c(stick).returncode == 0


def test_split_source_copied_with_its_parts(
    tmp_path: Path, stick: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    gguf = src / "m.gguf"
    gguf.write_bytes(random.Random(2).randbytes(900_000))
    model = src / "m.run"
    pack(_stub(src), gguf, model, Manifest(name="m"), split=300_000)
    fs(monkeypatch, "exfat", stick)
    usb.copy_to_usb(stick, [model])
    for part in ("m.run.part2", "m.run.part3", "m.run.part4"):
        assert (stick / part).read_bytes() == (src / part).read_bytes()
    assert sha256sum_c(stick).returncode == 0
    assert verify(stick / "m.run", lambda line: None)


def test_texts_say_how_to_run_it(model: Path, stick: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fs(monkeypatch, "vfat", stick)
    usb.copy_to_usb(stick, [model])
    en = (stick / "README.txt").read_text(encoding="utf-8")
    es = (stick / "LEEME.txt").read_text(encoding="utf-8")
    for text in (en, es):
        for needed in ("chmod +x", "--server", "showexec", "noexec", "WSL", "sha256sum -c"):
            assert needed in text, needed
        assert "llama.run" in text and "Llama 3.2 Community License" in text
        assert "--license" in text and "--uninstall" in text and "--verify" in text
    assert "carpeta personal" in es and "Licencia" in es and "memoria USB" in es
    assert "home folder" in en and "Licence" in en


def test_second_run_keeps_earlier_models_in_the_sums(
    model: Path, tmp_path: Path, stick: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs(monkeypatch, "ext4", stick)
    usb.copy_to_usb(stick, [model])
    other = _model(tmp_path / "src2", "qwen.run", 2, licence="apache-2.0")
    usb.copy_to_usb(stick, [other])
    sums = (stick / "SHA256SUMS").read_text()
    assert "llama.run" in sums and "qwen.run" in sums
    assert sha256sum_c(stick).returncode == 0
    readme = (stick / "README.txt").read_text()
    assert "llama.run" in readme and "qwen.run" in readme and "apache-2.0" in readme


def test_full_stick_is_refused_before_copying(
    model: Path, stick: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs(monkeypatch, "vfat", stick)
    total = shutil.disk_usage(stick)
    monkeypatch.setattr(usb.shutil, "disk_usage", lambda p: total._replace(free=100_000))
    with pytest.raises(OutputError, match="not enough space on .*needed.*free; nothing was copied"):
        usb.copy_to_usb(stick, [model])
    assert list(stick.iterdir()) == []


def test_stick_filling_up_mid_copy_leaves_nothing_half_written(
    model: Path, stick: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs(monkeypatch, "ext4", stick)
    real_copy = usb._copy_file

    def copy(src, stack, target, bar):  # type: ignore[no-untyped-def]
        real_copy(src, stack, target, bar)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(usb, "_copy_file", copy)
    with pytest.raises(OutputError, match="stick is full.*not left half-written"):
        usb.copy_to_usb(stick, [model])
    assert list(stick.iterdir()) == [], "no model, no temp file"


def test_split_copy_failing_leaves_nothing(
    model: Path, stick: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs(monkeypatch, "vfat", stick)
    monkeypatch.setattr(Mount, "max_file", property(lambda self: LIMIT))
    import packer.pack as pack_mod

    real = pack_mod.PayloadSink._roll
    calls = {"n": 0}

    def roll(self):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self)

    monkeypatch.setattr(pack_mod.PayloadSink, "_roll", roll)
    with pytest.raises(OutputError, match="stick is full"):
        usb.copy_to_usb(stick, [model])
    assert list(stick.iterdir()) == []


def test_bad_destinations_and_files(model: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        usb.copy_to_usb(tmp_path / "nope", [model])
    with pytest.raises(UsageError, match="not a folder"):
        usb.copy_to_usb(model, [model])
    not_model = tmp_path / "notes.txt"
    not_model.write_text("hello")
    stick = tmp_path / "s"
    stick.mkdir()
    with pytest.raises(SourceError, match="notes.txt"):
        usb.copy_to_usb(stick, [not_model])
    with pytest.raises(SourceError, match="is not a file"):
        usb.copy_to_usb(stick, [tmp_path / "missing.run"])
    assert list(stick.iterdir()) == []


def test_missing_part_of_source_is_refused(tmp_path: Path, stick: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    gguf = src / "m.gguf"
    gguf.write_bytes(random.Random(2).randbytes(900_000))
    pack(_stub(src), gguf, src / "m.run", Manifest(name="m"), split=300_000)
    (src / "m.run.part3").unlink()
    with pytest.raises(SourceError, match=r"m\.run\.part3 is missing"):
        usb.copy_to_usb(stick, [src / "m.run"])
    assert list(stick.iterdir()) == []


def test_damaged_source_is_not_blessed_with_new_checksums(
    model: Path, stick: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = read_bundle(model)
    with open(model, "r+b") as f:
        f.seek(b.payload_offset + 1000)
        f.write(b"\x00\x01\x02")
    fs(monkeypatch, "vfat", stick)
    monkeypatch.setattr(Mount, "max_file", property(lambda self: LIMIT))
    with pytest.raises(SourceError, match="damaged"):
        usb.copy_to_usb(stick, [model])
    assert list(stick.iterdir()) == []


@pytest.mark.parametrize("where", ["payload", "runtime", "part"])
def test_damaged_source_is_refused_before_a_plain_copy(
    tmp_path: Path, stick: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """exFAT/ext4 copy a model as it is: its recorded checksums are checked first, so a damaged
    file is not given fresh SHA256SUMS lines on the stick."""
    from packer.runtime.payload import payload_pieces

    src = tmp_path / "src"
    src.mkdir()
    gguf = src / "m.gguf"
    gguf.write_bytes(random.Random(4).randbytes(900_000))
    model = src / "m.run"
    pack(_stub(src), gguf, model, Manifest(name="m"), split=300_000 if where == "part" else None)
    b = read_bundle(model)
    target, offset = {
        "payload": (model, b.payload_offset + 100),
        "runtime": (model, b.runtime_offset + 100),
        "part": (payload_pieces(b)[0].path, payload_pieces(b)[0].size // 2),
    }[where]
    assert where != "part" or target != model  # a part of its own
    with open(target, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    fs(monkeypatch, "ext4", stick)
    with pytest.raises(SourceError, match="is damaged .*nothing was copied"):
        usb.copy_to_usb(stick, [model])
    assert list(stick.iterdir()) == []


def test_cli(model: Path, stick: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "packer", "usb", str(stick), str(model)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        str(stick / n) for n in ("llama.run", "README.txt", "LEEME.txt", "SHA256SUMS")
    ]
    assert "sha256sum -c SHA256SUMS" in proc.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "packer", "usb", str(stick / "nope"), str(model)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "does not exist" in bad.stderr
    helptext = subprocess.run(
        [sys.executable, "-m", "packer", "usb", "--help"], capture_output=True, text=True, env=env
    ).stdout
    assert "Examples:" in helptext and "FAT32" in helptext


def test_real_full_stick_mid_copy(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stick that says it has room but fills up (a small tmpfs; the free-space check
    fooled): the copy fails in one line and leaves nothing on it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    stick = tmp_path / "tiny"
    stick.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(stick)]).returncode:
        pytest.skip("no tmpfs mount here")
    try:
        real = shutil.disk_usage(stick)
        monkeypatch.setattr(usb.shutil, "disk_usage", lambda p: real._replace(free=10**9))
        with pytest.raises(OutputError, match="stick is full"):
            usb.copy_to_usb(stick, [model])
        assert list(stick.iterdir()) == []
    finally:
        subprocess.run(["umount", str(stick)], check=False)
