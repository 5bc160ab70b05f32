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


def needs_imatrix_message(quant: QuantType) -> str:
    """Why ``quant`` is refused without ``--imatrix``, and what to do."""
    from packer.imatrix import HOW_TO_MAKE

    return (
        f"{quant.name} needs an importance matrix: pass --imatrix FILE ({HOW_TO_MAKE}) "
        "or choose Q4_K_M or larger (see `packer quants`)"
    )


def quantize(
    src: Path,
    dst: Path,
    quant: QuantType,
    *,
    threads: int = 0,
    verbose: bool = False,
    imatrix: Path | None = None,
) -> Path:
    """Write ``src`` quantized to ``quant`` at ``dst`` (atomically: nothing is left on failure).

    ``imatrix`` is an importance matrix file (GGUF or legacy .dat, see :mod:`packer.imatrix`),
    required by the types marked ``needs_imatrix`` and used by llama.cpp to improve the others.
    llama.cpp runs in a child process: it logs every tensor on stderr (shown with --verbose,
    summarised on failure) and may abort() on input it rejects, which must not take the CLI down.
    """
    if quant.needs_imatrix and imatrix is None:
        raise UsageError(needs_imatrix_message(quant))
    if imatrix is not None:
        from packer import imatrix as imx

        imatrix = imx.check_file(imatrix)
        covered = imx.check_model(imx.load(imatrix), src, imatrix.name)
        log.info("using importance matrix %s (%d tensors)", imatrix.name, covered)
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
        if imatrix is not None:
            cmd.append(str(imatrix))
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
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 is for the temp file, not the result
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def _worker(argv: list[str]) -> int:
    """Child process: ``python -m packer.quantize SRC DST FTYPE THREADS [IMATRIX]``."""
    import ctypes

    import llama_cpp

    src, dst, ftype, threads, *rest = argv
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(ftype)
    params.nthread = int(threads)
    keep: list[object] = []  # the buffers llama.cpp reads during the call
    if rest:
        from packer.imatrix import load

        vectors = load(Path(rest[0]))
        entries = (llama_cpp.llama_model_imatrix_data * (len(vectors) + 1))()
        for i, (name, vec) in enumerate(sorted(vectors.items())):
            buf = (ctypes.c_float * vec.size).from_buffer_copy(vec.tobytes())
            keep.append(buf)
            entries[i].name = name.encode()
            entries[i].data = ctypes.cast(buf, ctypes.POINTER(ctypes.c_float))
            entries[i].size = vec.size  # floats: ne[0] per expert
        # the last entry stays zeroed: name NULL ends the list
        keep.append(entries)
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        # recorded in the output's metadata, as llama-quantize does (an empty key ends the list)
        kv = (llama_cpp.llama_model_kv_override * 3)()
        kv[0].key = b"quantize.imatrix.file"
        kv[0].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
        kv[0].value.val_str = Path(rest[0]).name.encode()[:127]
        kv[1].key = b"quantize.imatrix.entries_count"
        kv[1].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
        kv[1].value.val_i64 = len(vectors)
        keep.append(kv)
        params.kv_overrides = ctypes.cast(kv, ctypes.POINTER(llama_cpp.llama_model_kv_override))
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params)
    del keep
    return 1 if rc else 0


def _free_bytes(folder: Path) -> int | None:
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
