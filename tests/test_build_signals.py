"""`packer build` stopped by a signal mid-build leaves nothing behind (issue #14, Low).

SIGTERM's and SIGHUP's default action ends Python without running ``finally`` blocks, which
left the ``.packer-build-*`` scratch folder (with the converted GGUF in it) in the output
folder. The real CLI runs in a child process; a stand-in stub spares the runtime build, and the
conversion waits after writing its GGUF so that the signal lands while the scratch folder is full.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHILD = r"""
import sys, time
from pathlib import Path
from packer import convert, stub as stub_mod

fake = Path(sys.argv[1])
build = stub_mod.RuntimeBuild(
    flavour="cpu", key="test", llama_cpp_python="0.0", llama_cpp_commit="", ggml="",
    glibc="2.31", frozen_with="a test",
)
found = stub_mod.Stub(fake, build, shipped=False)
stub_mod.find_stub = lambda flavour="cpu", **kw: found
stub_mod.check_runtime = lambda flavour="cpu": None
real = convert.convert_checkpoint

def slow_convert(*args, **kwargs):
    out = real(*args, **kwargs)
    time.sleep(120)  # the signal arrives here, the GGUF written
    return out

convert.convert_checkpoint = slow_convert
sys.argv = ["packer", *sys.argv[2:]]
from packer.cli import main
main()
"""


@pytest.mark.parametrize(
    ("sig", "code", "says"),
    [
        (signal.SIGTERM, 143, "packer: stopped by SIGTERM"),
        (signal.SIGHUP, 129, "packer: stopped by SIGHUP"),
        (signal.SIGINT, 130, "packer: interrupted"),
    ],
)
def test_signal_mid_conversion_leaves_nothing(
    sig: signal.Signals, code: int, says: str, tiny_llama_bpe: Path, tmp_path: Path
) -> None:
    stub = tmp_path / "stub.sh"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(stub), "build", str(tiny_llama_bpe), "--quant", "F16"],
        cwd=out_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PACKER_CACHE": str(tmp_path / "cache")},
    )
    try:
        deadline = time.monotonic() + 120
        while not list(out_dir.glob(".packer-build-*/model.gguf")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the conversion did not start"
            time.sleep(0.05)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code, (proc.returncode, err)
    assert out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == says, err
    assert not [line for line in lines if "error" in line or "Traceback" in line], err
    assert list(out_dir.iterdir()) == [], "scratch folder or temp files left behind"
