"""An installed packer (the wheel): the shipped runtime stub, the platform it needs, and the
one-line errors when it is missing or the machine cannot run it. No PyInstaller, no model run:
the stub is a stand-in; its runtime is started only through a stand-in command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import test_cli
from click.testing import CliRunner
from conftest import smollm_gguf_path

from packer import host
from packer import stub as stub_mod
from packer.errors import QuantizeError
from packer.quants import parse_quant
from packer.runtime.payload import pack_stub_footer, read_bundle

SMOLLM_GGUF = smollm_gguf_path()


def run_cli(*args: str) -> tuple[int, str, str]:
    """`packer` through its real entry point (one top-level handler, stable exit codes)."""
    result = CliRunner().invoke(test_cli._main_wrapper, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _build_info(key: str = "0123456789abcdef") -> stub_mod.RuntimeBuild:
    return stub_mod.RuntimeBuild(
        flavour="cpu",
        key=key,
        llama_cpp_python="0.3.36",
        llama_cpp_commit="0c1e57098bba43ac29e6e3b677cdceebdd22334f",
        ggml="0.25.3",
        glibc="2.30",
        frozen_with="a test",
    )


@pytest.fixture
def shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An install's packer/_stub/cpu/ with a stand-in stub (a shell script, no footer)."""
    root = tmp_path / "_stub"
    folder = root / "cpu"
    folder.mkdir(parents=True)
    exe = folder / stub_mod.STUB_FILE
    exe.write_bytes(b"#!/bin/sh\necho shipped stub\n")
    exe.chmod(0o755)
    (folder / stub_mod.BUILD_INFO).write_bytes(_build_info().to_json())
    monkeypatch.setattr(stub_mod, "SHIPPED", root)
    monkeypatch.setattr(stub_mod, "is_checkout", lambda: False)
    return exe


@pytest.fixture
def installed_without_stub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stub_mod, "SHIPPED", tmp_path / "_stub")
    monkeypatch.setattr(stub_mod, "is_checkout", lambda: False)


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_the_shipped_stub_is_packed(shipped: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "m.run"
    code, stdout, err = run_cli("build", str(SMOLLM_GGUF), "-o", str(out))
    assert code == 0, err
    assert stdout.strip() == str(out)
    b = read_bundle(out)
    assert b.manifest.runtime.stub == "0123456789abcdef"
    assert b.manifest.runtime.llama_cpp.startswith("llama.cpp 0c1e57098bba (ggml 0.25.3")
    assert subprocess.run([str(out)], capture_output=True, text=True).stdout == "shipped stub\n"


@pytest.mark.parametrize(
    ("machine", "libc", "shown"),
    [("aarch64", "2.36", "Linux aarch64, glibc 2.36"), ("x86_64", "2.28", "x86_64, glibc 2.28")],
)
def test_an_unsupported_machine_is_one_line_and_writes_nothing(
    shipped: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    machine: str,
    libc: str,
    shown: str,
) -> None:
    monkeypatch.setattr(host, "machine", lambda: machine)
    monkeypatch.setattr(host, "glibc", lambda: libc)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, stdout, err = run_cli("build", str(SMOLLM_GGUF), "-o", str(out_dir / "m.run"))
    assert code == 9, err
    assert stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("packer: error: "), err
    assert "x86-64 Linux with glibc 2.31 or newer" in lines[0] and shown in lines[0]
    assert _listing(out_dir) == []


def test_no_glibc_at_all_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "glibc", lambda: None)
    with pytest.raises(Exception, match="no glibc"):
        host.check_host()


def test_a_missing_stub_says_how_to_get_it(installed_without_stub: None, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, stdout, err = run_cli("build", str(SMOLLM_GGUF), "-o", str(out_dir / "m.run"))
    assert code == 7, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "has no cpu runtime" in lines[0] and "pipx install --force" in lines[0]
    assert "make install" in lines[0]
    assert _listing(out_dir) == []


def test_the_cuda_flavour_is_a_checkout_feature(installed_without_stub: None) -> None:
    with pytest.raises(stub_mod.RuntimeStubError, match="source checkout only"):
        stub_mod.find_stub("cuda")


def test_runtime_build_in_an_install_points_to_a_checkout(shipped: Path) -> None:
    code, _, err = run_cli("runtime", "build")
    assert code == 7, err
    (line,) = err.strip().splitlines()
    assert "needs packer's source checkout" in line and "ships a prebuilt cpu runtime" in line


def test_version_names_the_shipped_llama_cpp_and_stub(shipped: Path) -> None:
    code, stdout, err = run_cli("--version")
    assert code == 0, err
    lines = stdout.splitlines()
    from packer import __version__

    assert lines[0] == f"packer {__version__}"
    assert lines[1] == "llama.cpp 0c1e57098bba (ggml 0.25.3, llama-cpp-python 0.3.36)"
    assert lines[2].startswith("runtime cpu stub 0123456789abcdef (shipped with packer")


def test_python_m_packer_is_the_cli() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "packer", "--help"], capture_output=True, text=True, check=True
    )
    assert "packer build" in proc.stdout or "build" in proc.stdout


def test_runtime_command_makes_a_model_less_bundle_the_launcher_accepts(tmp_path: Path) -> None:
    launcher, archive = b"\x7fELF launcher bytes", b"PKRARCH1 archive bytes" * 10
    stub = tmp_path / "stub"
    stub.write_bytes(launcher + archive + pack_stub_footer(len(launcher), len(archive), "a" * 32))
    (cmd,) = stub_mod.runtime_command(stub, tmp_path)
    exe = Path(cmd)
    assert os.access(exe, os.X_OK)
    b = read_bundle(exe)
    assert (b.runtime_offset, b.runtime_size, b.runtime_key) == (
        len(launcher),
        len(archive),
        "a" * 32,
    )
    assert b.payload_size == 0
    assert exe.read_bytes().startswith(launcher + archive)


def test_runtime_command_of_a_stand_in_is_this_checkouts_runtime(tmp_path: Path) -> None:
    stand_in = tmp_path / "stub.sh"
    stand_in.write_bytes(b"#!/bin/sh\n")
    assert stub_mod.runtime_command(stand_in, tmp_path) == [sys.executable, "-m", "packer.runtime"]


def test_a_runtime_that_fails_to_quantize_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    from packer.quantize import quantize

    failing = tmp_path / "runtime.sh"
    failing.write_text(
        "#!/bin/sh\necho 'llama_model_quantize: failed to quantize: boom' >&2\nexit 1\n"
    )
    failing.chmod(0o755)
    out_dir = tmp_path / "out"
    with pytest.raises(QuantizeError, match="failed to quantize: boom"):
        quantize(SMOLLM_GGUF, out_dir / "q.gguf", parse_quant("Q8_0"), runtime=[str(failing)])
    assert _listing(out_dir) == []


def test_glibc_needed_reads_the_newest_symbol_version(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "liba.so").write_bytes(b"\x7fELF....GLIBC_2.17\x00GLIBC_2.2.5\x00")
    (tmp_path / "lib" / "libb.so").write_bytes(b"\x7fELF....GLIBC_2.30\x00GLIBC_2.4\x00")
    (tmp_path / "notes.txt").write_bytes(b"GLIBC_2.99\x00")  # not an ELF file: ignored
    assert stub_mod.glibc_needed(tmp_path) == "2.30"


def test_runtime_build_round_trips() -> None:
    b = _build_info()
    assert stub_mod.RuntimeBuild.from_json(b.to_json()) == b


def test_a_stub_frozen_with_the_hosts_python_warns_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import dataclasses
    import logging

    stub = tmp_path / "stubs" / "linux-x86_64-cpu-0123456789abcdef" / stub_mod.STUB_FILE
    stub.parent.mkdir(parents=True)
    stub.write_bytes(b"#!/bin/sh\n")
    newer = dataclasses.replace(_build_info(), glibc="2.36", frozen_with="this machine's Python")
    (stub.parent / stub_mod.BUILD_INFO).write_bytes(newer.to_json())
    monkeypatch.setattr(stub_mod, "SHIPPED", tmp_path / "none")
    monkeypatch.setattr(stub_mod, "ensure_stub", lambda flavour="cpu", **kw: stub)
    with caplog.at_level(logging.WARNING, logger="packer.stub"):
        found = stub_mod.find_stub("cpu")
    assert found.path == stub and not found.shipped and found.build == newer
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "needs glibc 2.36 or newer" in warning and "make install` as root" in warning
    assert "\n" not in warning
