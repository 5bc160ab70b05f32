"""Quantize a GGUF with llama.cpp's own quantizer (``llama_model_quantize``), run by the runtime
that will run the model (:mod:`packer.runtime.quantize`)."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from packer.errors import OutputError, QuantizeError, UsageError
from packer.quants import QuantType
from packer.runtime.atomic_write import atomic_path
from packer.runtime.quantize import FLAG as QUANTIZE_FLAG

log = logging.getLogger(__name__)

UNFROZEN = [sys.executable, "-m", "packer.runtime"]  # the runtime from this checkout's sources


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
    runtime: list[str] | None = None,
    threads: int = 0,
    verbose: bool = False,
    imatrix: Path | None = None,
) -> Path:
    """Write ``src`` quantized to ``quant`` at ``dst`` (atomically: nothing is left on failure).

    ``runtime``: the command that starts the runtime that will run the model
    (:func:`packer.stub.runtime_command`; None: this checkout's, unfrozen); llama.cpp's
    quantizer runs there, in its hidden ``--packer-quantize`` mode (:mod:`packer.runtime.quantize`), so quantizer and inference are
    the same build. A child process also keeps llama.cpp's abort() on input it rejects from
    taking the CLI down; it logs every tensor on stderr (shown with --verbose, summarised on
    failure).

    ``imatrix`` is an importance matrix file (GGUF or legacy .dat, see :mod:`packer.imatrix`),
    required by the types marked ``needs_imatrix`` and used by llama.cpp to improve the others;
    it is read and checked here and handed to the runtime as plain arrays.
    """
    if quant.needs_imatrix and imatrix is None:
        raise UsageError(needs_imatrix_message(quant))
    vectors = None
    if imatrix is not None:
        from packer import imatrix as imx

        imatrix = imx.check_file(imatrix)
        vectors = imx.load(imatrix)
        covered = imx.check_model(vectors, src, imatrix.name)
        log.info("using importance matrix %s (%d tensors)", imatrix.name, covered)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        job_dir = Path(tempfile.mkdtemp(prefix=f".{dst.name}.job-", dir=dst.parent))
    except OSError as exc:
        raise OutputError(f"cannot write to {dst.parent}: {exc.strerror}") from exc
    try:
        with atomic_path(dst) as tmp:
            _run_quantizer(
                src, tmp, quant, runtime or UNFROZEN, job_dir, threads, verbose, imatrix, vectors
            )
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise OutputError(
                f"disk full while quantizing into {dst.parent}: free some space"
            ) from exc
        raise OutputError(f"cannot write {dst}: {exc.strerror}") from exc
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)
    return dst


def _run_quantizer(
    src: Path,
    tmp: Path,
    quant: QuantType,
    runtime: list[str],
    job_dir: Path,
    threads: int,
    verbose: bool,
    imatrix: Path | None,
    vectors: dict[str, Any] | None,
) -> None:
    """Run the runtime's quantizer: ``src`` quantized into ``tmp``; one-line errors."""
    job = {
        "src": str(src.absolute()),
        "dst": str(tmp.absolute()),
        "ftype": quant.ftype,
        "threads": threads,
        "imatrix": None,
        "imatrix_name": imatrix.name if imatrix is not None else "",
    }
    if vectors is not None:
        import numpy as np

        np.savez(job_dir / "imatrix.npz", **vectors)
        job["imatrix"] = str((job_dir / "imatrix.npz").absolute())
    job_file = job_dir / "job.json"
    job_file.write_text(json.dumps(job), encoding="utf-8")
    log.info("quantizing to %s with llama.cpp", quant.name)
    try:
        proc = subprocess.run(
            [*runtime, QUANTIZE_FLAG, str(job_file)],
            stdout=subprocess.DEVNULL,
            stderr=None if verbose else subprocess.PIPE,
            text=True,
            errors="replace",
        )
    except OSError as exc:
        raise QuantizeError(
            f"cannot start the runtime to quantize ({runtime[0]}: {exc.strerror}): "
            "reinstall packer, or rebuild the runtime with `packer runtime build --force`"
        ) from exc
    if proc.returncode != 0:
        free = _free_bytes(tmp.parent)
        if free is not None and free < 64 << 20:
            raise OutputError(f"disk full while quantizing into {tmp.parent}: free some space")
        lines = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()]
        errors = [ln for ln in lines if "fail" in ln.lower() or "error" in ln.lower()]
        last = (errors or lines)[-1] if lines else ""
        why = (
            ": " + last[last.find("failed") :].strip()
            if "failed" in last
            else f": {last.strip()}"
            if last
            else f" (the runtime exited with status {proc.returncode})"
        )
        raise QuantizeError(
            f"llama.cpp could not quantize {src.name} to {quant.name}{why} "
            "(run with --verbose to see llama.cpp's log)"
        )


def _free_bytes(folder: Path) -> int | None:
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize
