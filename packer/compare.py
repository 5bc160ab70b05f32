"""``packer compare``: one checkpoint, several quantization types, measured side by side.

The checkpoint is converted once (its own precision: the reference); each type is quantized
from that conversion and measured against it (:mod:`packer.evaluate`); the work files go when
it ends. What a teacher reads: size, RAM to run it, perplexity, KL divergence, top-1.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from packer import source as sources
from packer.errors import OutputError, UsageError
from packer.evaluate import DEFAULT_CTX, EvalText, gguf_type, measure, runtime_for_eval
from packer.quants import QuantType, parse_quant
from packer.runtime.quality import Figures
from packer.runtime.sizes import format_size

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

# the one progress bar's units: converting, then per type quantizing and measuring
CONVERT_UNITS, QUANTIZE_UNITS, MEASURE_UNITS = 20, 20, 80


@dataclass(frozen=True)
class Row:
    quant: str
    bpw: float | None  # None for the reference
    size: int  # bytes of the GGUF
    ram: int  # bytes to run it: the GGUF plus the KV cache of model.run's default context
    figures: Figures | None  # None for the reference (its perplexity is in every other row)
    ref_perplexity: float

    @property
    def perplexity(self) -> float:
        return self.figures.perplexity if self.figures else self.ref_perplexity

    @property
    def kl(self) -> float:
        return self.figures.kl_divergence or 0.0 if self.figures else 0.0

    @property
    def top1(self) -> float:
        return self.figures.top1 or 0.0 if self.figures else 1.0

    def to_dict(self) -> dict[str, object]:
        return {
            "quant": self.quant,
            "bpw": self.bpw,
            "size": self.size,
            "ram": self.ram,
            "perplexity": round(self.perplexity, 4),
            "delta_perplexity": round(self.perplexity - self.ref_perplexity, 4),
            "kl_divergence": round(self.kl, 6),
            "top1": round(self.top1, 6),
        }


def parse_quants(text: str) -> list[QuantType]:
    """``--quants Q4_K_M,Q5_K_M,Q8_0``: quantized types (no imatrix), each once."""
    out: list[QuantType] = []
    for name in (t.strip() for t in text.split(",")):
        if not name:
            continue
        q = parse_quant(name)
        if q.is_float:
            raise UsageError(
                f"--quants: {q.name} is not quantized (the reference already is the unquantized "
                "model): give types such as Q4_K_M,Q5_K_M,Q8_0"
            )
        if q.needs_imatrix:
            raise UsageError(
                f"--quants: {q.name} needs an importance matrix, which compare does not take: "
                "give Q2_K or larger (see `packer quants`)"
            )
        if q not in out:
            out.append(q)
    if not out:
        raise UsageError("--quants: give at least one type, e.g. Q4_K_M,Q5_K_M,Q8_0")
    return out


def compare(
    spec: str,
    quants: list[QuantType],
    text: EvalText,
    *,
    ctx: int = DEFAULT_CTX,
    threads: int = 0,
    verbose: bool = False,
    revision: str | None = None,
    token: str | None = None,
    progress: Progress | None = None,
) -> list[Row]:
    """Convert ``spec`` once, quantize it to each of ``quants`` and measure each against the
    conversion; the reference's row first, then the types from the smallest file."""
    from packer.build import DEFAULT_CTX as RUN_CTX
    from packer.build import _kv_bytes_per_token
    from packer.quantize import quantize

    src = sources.resolve(spec, revision=revision, token=token)
    if src.kind == "gguf" and src.gguf_type not in ("F32", "F16", "BF16"):
        raise UsageError(
            f"{src.path.name} is already quantized ({src.gguf_type or 'unknown type'}): compare "
            "needs the Hugging Face checkpoint or its F16/BF16/F32 GGUF"
        )
    kv = _kv_bytes_per_token(src) or 0
    total = CONVERT_UNITS + len(quants) * (QUANTIZE_UNITS + MEASURE_UNITS)
    done = 0

    def step(units: int) -> None:
        nonlocal done
        done += units
        if progress is not None:
            progress(done, total)

    try:
        work = Path(tempfile.mkdtemp(prefix="packer-compare-"))
    except OSError as exc:
        raise OutputError(f"cannot make a work folder: {exc.strerror}") from exc
    try:
        reference = src.path
        if src.kind == "checkpoint":
            from packer.convert import convert_checkpoint

            reference = work / "model.gguf"
            log.info("converting %s to GGUF", src.path.name)
            convert_checkpoint(src.path, reference, outtype="auto")
        step(CONVERT_UNITS)
        ref_type = gguf_type(reference) or "reference"
        measured: list[tuple[QuantType, int, Figures]] = []
        with runtime_for_eval() as runtime:
            for q in quants:
                log.info("quantizing to %s", q.name)
                out = quantize(
                    reference,
                    work / f"model.{q.name}.gguf",
                    q,
                    runtime=runtime,
                    threads=threads,
                    verbose=verbose,
                )
                step(QUANTIZE_UNITS)
                start = done

                def windows(k: int, n: int, start: int = start) -> None:
                    nonlocal done
                    done = start + MEASURE_UNITS * k // max(n, 1)
                    if progress is not None:
                        progress(done, total)

                log.info("measuring %s against %s", q.name, ref_type)
                figures = measure(
                    out,
                    text,
                    ref=reference,
                    ctx=ctx,
                    threads=threads,
                    runtime=runtime,
                    verbose=verbose,
                    progress=windows,
                )
                done = start + MEASURE_UNITS
                measured.append((q, out.stat().st_size, figures))
                out.unlink()  # one quantized file on disk at a time
        ref_size = reference.stat().st_size
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if progress is not None:
        progress(total, total)
    ref_ppl = measured[0][2].ref_perplexity or 0.0
    rows = [Row(ref_type, None, ref_size, ref_size + kv * RUN_CTX, None, ref_ppl)]
    for q, size, figures in sorted(measured, key=lambda m: m[1]):
        rows.append(Row(q.name, q.bpw, size, size + kv * RUN_CTX, figures, ref_ppl))
    return rows


def table(rows: list[Row]) -> list[str]:
    """The lines ``packer compare`` prints."""
    head = f"{'TYPE':<8} {'BPW':>5} {'SIZE':>8} {'RAM':>8} {'PPL':>9} {'ΔPPL':>8} {'KL':>8} {'TOP-1':>7}"
    lines = [head]
    for r in rows:
        bpw = f"{r.bpw:.2f}" if r.bpw is not None else "ref"
        delta = r.perplexity - r.ref_perplexity
        lines.append(
            f"{r.quant:<8} {bpw:>5} {format_size(r.size):>8} {format_size(r.ram):>8} "
            f"{r.perplexity:>9.3f} {delta:>+8.3f} {r.kl:>8.4f} {100 * r.top1:>6.1f}%"
        )
    return lines
