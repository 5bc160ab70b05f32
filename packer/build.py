"""``packer build``: source -> GGUF -> quantized GGUF -> model.run, as a library call.

:func:`plan` checks everything cheap first (source readable, quant valid, output writable) so a
mistake is reported before minutes of work; :func:`execute` does the work and leaves nothing
half-written behind.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packer import source as sources
from packer.errors import OutputError, UsageError
from packer.quants import DEFAULT_QUANT, QuantType, parse_quant

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass
class BuildPlan:
    source: sources.Source
    quant: QuantType | None  # None = pack the GGUF source as it is
    output: Path
    args: list[str] = field(default_factory=list)
    flavour: str = "cpu"
    architecture: str | None = None
    n_params: int | None = None
    context_length: int | None = None

    @property
    def quant_label(self) -> str:
        return self.quant.name if self.quant else (self.source.gguf_type or "as-is")

    def describe(self) -> str:
        bits = [f"source {self.source.spec} ({self.source.kind})"]
        if self.architecture:
            bits.append(self.architecture)
        if self.n_params:
            bits.append(f"{self.n_params / 1e6:,.0f}M parameters")
        bits.append(f"quant {self.quant_label}")
        if self.quant and self.n_params:
            bits.append(f"~{self.n_params * self.quant.bpw / 8 / 1e6:,.0f} MB of weights")
        bits.append(f"-> {self.output}")
        return ", ".join(bits)


def _check_writable(output: Path) -> None:
    folder = output.parent
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(
            f"cannot write {output}: {probe} is not a writable folder; choose another place with -o"
        )
    if output.is_dir():
        raise OutputError(f"{output} is a folder: give a file name with -o")


def plan(
    spec: str,
    quant: str | None = None,
    output: str | os.PathLike[str] | None = None,
    args: str | list[str] | None = None,
    flavour: str = "cpu",
) -> BuildPlan:
    src = sources.resolve(spec)
    qt = parse_quant(quant) if quant and quant.lower() != "keep" else None
    info = None
    if src.kind == "checkpoint":
        from packer.convert import inspect_checkpoint

        info = inspect_checkpoint(src.path)
        if qt is None:
            if quant and quant.lower() == "keep":
                raise UsageError(
                    "--quant keep only applies to a .gguf source: choose a type such as Q5_K_M"
                )
            qt = parse_quant(DEFAULT_QUANT)
    else:
        if qt is not None and src.gguf_type and qt.name == src.gguf_type:
            qt = None  # already what was asked for
        if qt is not None and src.gguf_type not in ("F32", "F16", "BF16"):
            raise UsageError(
                f"{src.path.name} is already quantized ({src.gguf_type or 'unknown type'}); re-quantizing it to "
                f"{qt.name} would compound the loss: pack it as is (omit --quant) or start from the "
                "F16/BF16 GGUF or the Hugging Face checkpoint"
            )
    label = qt.name if qt else (src.gguf_type or "gguf")
    out = Path(output) if output else Path.cwd() / f"{src.name}.{label}.run"
    out = out.expanduser().absolute()
    _check_writable(out)
    baked = shlex.split(args) if isinstance(args, str) else list(args or [])
    if baked:
        from runtime.cli import build_parser

        try:
            build_parser().parse_args(baked)
        except SystemExit as exc:
            raise UsageError(
                f"--args {shlex.join(baked)!r} are not valid model.run flags (see model.run --help)"
            ) from exc
    return BuildPlan(
        source=src,
        quant=qt,
        output=out,
        args=baked,
        flavour=flavour,
        architecture=info.architecture if info else src.architecture,
        n_params=info.n_params if info else None,
        context_length=info.context_length if info else None,
    )


def execute(
    p: BuildPlan, *, threads: int = 0, verbose: bool = False, progress: Progress | None = None
) -> dict[str, Any]:
    """Do the build; returns the manifest written into the output file."""
    from packer.pack import pack
    from packer.quantize import quantize
    from packer.stub import ensure_stub, stub_key

    stub = ensure_stub(p.flavour, verbose=verbose)
    try:
        work = Path(tempfile.mkdtemp(prefix=".packer-build-", dir=p.output.parent))
    except OSError as exc:
        raise OutputError(f"cannot write in {p.output.parent}: {exc.strerror}") from exc
    try:
        gguf = p.source.path
        if p.source.kind == "checkpoint":
            from packer.convert import convert_checkpoint

            outtype = p.quant.name.lower() if p.quant and p.quant.is_float else "auto"
            gguf = work / "model.gguf"
            log.info("converting %s to GGUF (%s)", p.source.path.name, outtype)
            convert_checkpoint(p.source.path, gguf, outtype=outtype, progress=progress)
            if p.quant and not p.quant.is_float:
                gguf = quantize(
                    gguf,
                    work / f"model.{p.quant.name}.gguf",
                    p.quant,
                    threads=threads,
                    verbose=verbose,
                )
        elif p.quant is not None:
            gguf = quantize(
                gguf, work / f"model.{p.quant.name}.gguf", p.quant, threads=threads, verbose=verbose
            )
        manifest = {
            "name": p.source.name,
            "source": p.source.spec,
            "source_kind": p.source.kind,
            "architecture": p.architecture,
            "quant": p.quant_label,
            "n_params": p.n_params,
            "context_length": p.context_length,
            "args": p.args,
            "runtime": {"flavour": p.flavour, "stub": stub_key(p.flavour)},
        }
        return pack(stub, gguf, p.output, manifest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
