"""Quantize a GGUF with llama.cpp's own quantizer (``llama_model_quantize``) via llama-cpp-python."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from packer.errors import OutputError, QuantizeError, UsageError
from packer.quants import QuantType

log = logging.getLogger(__name__)


def quantize(
    src: Path, dst: Path, quant: QuantType, *, threads: int = 0, verbose: bool = False
) -> Path:
    """Write ``src`` quantized to ``quant`` at ``dst`` (atomically: nothing is left on failure).

    llama.cpp runs in a child process: it logs every tensor on stderr (shown with --verbose,
    summarised on failure) and may abort() on input it rejects, which must not take the CLI down.
    """
    if quant.needs_imatrix:
        raise UsageError(
            f"{quant.name} needs an importance matrix, which packer cannot make yet: "
            "choose Q4_K_M or larger (see `packer quants`)"
        )
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    except OSError as exc:
        raise OutputError(f"cannot write to {dst.parent}: {exc.strerror}") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        log.info("quantizing to %s with llama.cpp", quant.name)
        cmd = [
            sys.executable,
            "-m",
            "packer.quantize",
            str(src),
            str(tmp),
            str(quant.ftype),
            str(threads),
        ]
        proc = subprocess.run(
            cmd, stdout=subprocess.DEVNULL, stderr=None if verbose else subprocess.PIPE, text=True
        )
        if proc.returncode != 0:
            free = _free_bytes(dst.parent)
            if free is not None and free < 64 << 20:
                raise OutputError(f"disk full while quantizing into {dst.parent}: free some space")
            lines = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()]
            errors = [ln for ln in lines if "fail" in ln.lower() or "error" in ln.lower()]
            last = (errors or lines)[-1] if lines else ""
            why = (
                ": " + last[last.find("failed") :].strip()
                if "failed" in last
                else f": {last.strip()}"
            )
            raise QuantizeError(
                f"llama.cpp could not quantize {src.name} to {quant.name}{why} "
                "(run with --verbose to see llama.cpp's log)"
            )
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def _worker(argv: list[str]) -> int:
    """Child process: ``python -m packer.quantize SRC DST FTYPE THREADS``."""
    import llama_cpp

    src, dst, ftype, threads = argv
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(ftype)
    params.nthread = int(threads)
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params)
    return 1 if rc else 0


def _free_bytes(folder: Path) -> int | None:
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
