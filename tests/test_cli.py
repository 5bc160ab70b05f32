"""`packer` CLI: commands, and a clear one-line error for every bad input, nothing left behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import smollm_gguf_path

from packer import cli as cli_mod
from packer.runtime.payload import read_bundle

SMOLLM_GGUF = smollm_gguf_path()


def run_cli(*args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    """Run `packer` through its real entry point (one top-level handler, stable exit codes)."""
    runner = CliRunner()
    old = Path.cwd()
    if cwd:
        os.chdir(cwd)
    try:
        result = runner.invoke(_main_wrapper, list(args), catch_exceptions=False)
    finally:
        os.chdir(old)
    return result.exit_code, result.stdout, result.stderr


import click  # noqa: E402


@click.command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def _main_wrapper(args: tuple[str, ...]) -> None:
    import sys

    sys.argv = ["packer", *args]
    cli_mod.main()


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_help_has_examples() -> None:
    code, out, _ = run_cli("build", "--help")
    assert code == 0
    assert "Examples:" in out and "--quant" in out


def test_quants_lists_types() -> None:
    code, out, _ = run_cli("quants", "--params", "1.1")
    assert code == 0
    assert "Q5_K_M" in out and "Q8_0" in out and "GB" in out


def test_unknown_quant_lists_valid_ones(tmp_path: Path) -> None:
    code, _, err = run_cli("build", str(SMOLLM_GGUF), "--quant", "Q9_X", cwd=tmp_path)
    assert code == 2
    assert "unknown quantization type 'Q9_X'" in err and "Q4_K_M" in err
    assert err.count("\n") == 1, err
    assert listing(tmp_path) == []


def test_missing_folder(tmp_path: Path) -> None:
    code, _, err = run_cli("build", str(tmp_path / "nope"), cwd=tmp_path)
    assert code == 3 and "no such folder or .gguf file" in err and err.count("\n") == 1


def test_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli("build", str(tmp_path / "empty"), cwd=tmp_path)
    assert code == 3 and "has no config.json" in err
    assert listing(tmp_path) == ["empty"]


def test_requantize_refused(tmp_path: Path) -> None:
    code, _, err = run_cli("build", str(SMOLLM_GGUF), "--quant", "q5_k_m", cwd=tmp_path)
    assert code == 2
    assert "already quantized (Q4_1)" in err and "compound" in err
    assert listing(tmp_path) == []


def test_bad_baked_args(tmp_path: Path) -> None:
    code, _, err = run_cli("build", str(SMOLLM_GGUF), "--args", "--temp hot", cwd=tmp_path)
    assert code == 2 and "not valid model.run flags" in err


def test_output_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    code, _, err = run_cli("build", str(SMOLLM_GGUF), "-o", str(blocker / "m.run"), cwd=tmp_path)
    assert code == 8 and "not a writable folder" in err


def test_build_gguf_as_is(tmp_path: Path, fake_stub: Path) -> None:
    code, out, err = run_cli("build", str(SMOLLM_GGUF), "--args", "--temp 0.2", cwd=tmp_path)
    assert code == 0, err
    produced = tmp_path / "SmolLM2-135M-Instruct.Q4_1.run"
    assert out.strip() == str(produced)
    assert listing(tmp_path) == [produced.name], "no temp/work files may remain"
    b = read_bundle(produced)
    assert b.manifest.quant == "Q4_1"
    assert b.manifest.args == ("--temp", "0.2")
    assert b.manifest.gguf_size == SMOLLM_GGUF.stat().st_size
    assert subprocess.run([str(produced)], capture_output=True, text=True).stdout == "fake stub\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tiny tmpfs needs root")
def test_disk_full_leaves_nothing(tmp_path: Path, fake_stub: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        code, _, err = run_cli("build", str(SMOLLM_GGUF), "-o", str(mnt / "m.run"))
        assert code == 8, err
        last = err.strip().splitlines()[-1]
        assert last.startswith("packer: error: disk full while writing"), err
        assert listing(mnt) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_convert_q8_0(tiny_llama_bpe: Path, tmp_path: Path) -> None:
    import gguf

    out = tmp_path / "tiny.q8_0.gguf"
    code, stdout, err = run_cli("convert", str(tiny_llama_bpe), "-o", str(out), "--outtype", "Q8_0")
    assert code == 0, err
    assert stdout.strip() == str(out)
    assert listing(tmp_path) == [out.name], "work files left behind"
    assert int(gguf.GGUFReader(out).fields["general.file_type"].contents()) == 7  # MOSTLY_Q8_0
    assert out.stat().st_mode & 0o044, "the GGUF must be readable like any file the user writes"
