"""Quantize a GGUF with llama.cpp's own quantizer (``llama_model_quantize``) via llama-cpp-python."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from packer.errors import OutputError, QuantizeError, UsageError
from packer.quants import QuantType

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _quiet_llama(verbose: bool) -> Iterator[None]:
    """llama.cpp logs every tensor it quantizes; keep that off stderr unless asked for."""
    lg = logging.getLogger("llama-cpp-python")
    old = lg.level
    lg.setLevel(logging.DEBUG if verbose else logging.ERROR)
    try:
        yield
    finally:
        lg.setLevel(old)


def quantize(
    src: Path, dst: Path, quant: QuantType, *, threads: int = 0, verbose: bool = False
) -> Path:
    """Write ``src`` quantized to ``quant`` at ``dst`` (atomically: nothing is left on failure)."""
    if quant.needs_imatrix:
        raise UsageError(
            f"{quant.name} needs an importance matrix, which packer cannot make yet: "
            "choose Q4_K_M or larger (see `packer quants`)"
        )
    import llama_cpp  # heavy: only when quantizing

    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    except OSError as exc:
        raise OutputError(f"cannot write to {dst.parent}: {exc.strerror}") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = quant.ftype
        params.nthread = threads
        log.info("quantizing to %s with llama.cpp", quant.name)
        with _quiet_llama(verbose):
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if rc != 0:
            free = _free_bytes(dst.parent)
            if free is not None and free < 64 << 20:
                raise OutputError(f"disk full while quantizing into {dst.parent}: free some space")
            raise QuantizeError(
                f"llama.cpp could not quantize {src.name} to {quant.name} (code {rc}): "
                "run with --verbose to see llama.cpp's log"
            )
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def _free_bytes(folder: Path) -> int | None:
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize
