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

from packer import source as sources
from packer.errors import OutputError, UsageError
from packer.evaluate import EvalText
from packer.licence import Licence, for_source
from packer.mounts import FAT32_MAX, mount_of
from packer.quants import DEFAULT_QUANT, QuantType, parse_quant
from packer.runtime.manifest import Manifest, Quality, RuntimeInfo
from packer.runtime.sizes import format_size

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

DEFAULT_CTX = 4096  # model.run's default --ctx-size, for the RAM estimate
STUB_BYTES = 50_000_000  # the frozen runtime stub, roughly


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
    kv_bytes_per_token: int | None = None  # f16 K+V cache, all layers
    imatrix: Path | None = None  # importance matrix for the quantizer (--imatrix)
    licence: Licence = field(default_factory=Licence)  # the texts and id the file carries
    split: int | None = None  # --split: the payload in parts of at most this many bytes
    eval_text: EvalText | None = None  # --eval: measure against the unquantized conversion

    @property
    def quant_label(self) -> str:
        return self.quant.name if self.quant else (self.source.gguf_type or "as-is")

    @property
    def weights_bytes(self) -> int | None:
        """Size of the GGUF that goes into the file (estimated unless packed as it is)."""
        if self.quant is None and self.source.kind == "gguf":
            return self.source.path.stat().st_size
        if self.quant and self.n_params:
            return int(self.n_params * self.quant.bpw / 8)
        return None

    @property
    def output_bytes(self) -> int | None:
        """Estimated size of model.run (weights barely compress once quantized)."""
        w = self.weights_bytes
        return w + STUB_BYTES if w is not None else None

    @property
    def ram_bytes(self) -> int | None:
        """RAM to run it: the weights plus the KV cache of the default context."""
        w = self.weights_bytes
        if w is None:
            return None
        return w + (self.kv_bytes_per_token or 0) * DEFAULT_CTX

    def describe(self) -> str:
        from packer.hub import fmt_params

        src = self.source
        if src.repo_id:
            rev = f"@{src.revision}" if src.revision else ""
            commit = f", commit {src.commit[:10]}" if src.commit else ""
            bits = [f"source {src.repo_id}{rev} ({src.kind}{commit})"]
        else:
            bits = [f"source {src.spec} ({src.kind})"]
        if self.architecture:
            bits.append(self.architecture)
        if self.n_params:
            bits.append(f"{fmt_params(self.n_params)} parameters")
        bits.append(f"quant {self.quant_label}")
        if self.imatrix is not None:
            bits.append(f"imatrix {self.imatrix.name}")
        if self.output_bytes:
            bits.append(f"~{format_size(self.output_bytes)} file")
        if self.ram_bytes:
            bits.append(f"~{format_size(self.ram_bytes)} RAM to run ({DEFAULT_CTX}-token context)")
        return ", ".join(bits) + f" -> {self.output}"

    @property
    def warnings(self) -> list[str]:
        out = []
        if self.output_bytes and self.output_bytes > FAT32_MAX and not self.split:
            out.append(
                f"the output will be ~{format_size(self.output_bytes)}, over 4 GiB: it will not "
                "fit on a FAT32 USB stick as one file (`packer usb` splits it there, or build "
                "with --split 4G; or use exFAT/ext4, or a smaller --quant)"
            )
        out += self.licence.notes
        return out

    def check_destination(self) -> None:
        """On a FAT32 destination, a file over 4 GiB - 1 cannot be written: say so before any
        work (the output size estimated from the weights and the quant's bits per weight)."""
        mount = mount_of(self.output.parent)
        if mount is None or mount.max_file is None:
            return
        if self.split is not None and self.split > mount.max_file:
            raise UsageError(
                f"--split {format_size(self.split)} makes parts over 4 GiB, which {mount.point} "
                f"({mount.fstype}, FAT32) cannot hold: give --split 4G or less"
            )
        if self.split is None and self.output_bytes and self.output_bytes > mount.max_file:
            raise OutputError(
                f"{self.output} would be ~{format_size(self.output_bytes)}, but {mount.point} is "
                f"FAT32 ({mount.fstype}), which holds no file over 4 GiB: add --split 4G (model.run "
                "reads its parts as one file), or build elsewhere and copy with `packer usb`"
            )


def _kv_bytes_per_token(src: sources.Source) -> int | None:
    """f16 K+V bytes per token of context, from config.json or the GGUF's metadata."""
    try:
        if src.kind == "checkpoint":
            import json

            cfg = json.loads((src.path / "config.json").read_text(encoding="utf-8"))
            cfg = cfg.get("text_config", cfg)
            layers = int(cfg["num_hidden_layers"])
            heads = int(cfg["num_attention_heads"])
            kv_heads = int(cfg.get("num_key_value_heads") or heads)
            head_dim = int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads)
        else:
            import gguf

            reader = gguf.GGUFReader(src.path)
            arch = str(reader.fields["general.architecture"].contents())

            def field(key: str) -> int | None:
                f = reader.fields.get(f"{arch}.{key}")
                return int(f.contents()) if f is not None else None

            layers = field("block_count") or 0
            heads = field("attention.head_count") or 0
            kv_heads = field("attention.head_count_kv") or heads
            head_dim = field("attention.key_length") or (
                (field("embedding_length") or 0) // heads if heads else 0
            )
        return 2 * layers * kv_heads * head_dim * 2 or None
    except Exception as exc:  # an estimate only: never fail a build over it
        log.debug("no KV-cache estimate for %s: %s", src.path, exc)
        return None


def check_writable(output: Path) -> None:
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
    *,
    token: str | None = None,
    revision: str | None = None,
    imatrix: str | os.PathLike[str] | None = None,
    split: int | None = None,
    eval_text: str | None = None,
) -> BuildPlan:
    """Check everything cheap and return what :func:`execute` will do. ``eval_text``: measure
    the quantized file against its unquantized conversion on this text (``--eval``: en, es or
    a file; see :func:`packer.evaluate.load_text`)."""
    from packer.stub import check_runtime

    check_runtime(flavour)  # before any download: a runtime that can run here, or how to get one
    qt = parse_quant(quant) if quant and quant.lower() != "keep" else None
    imx_path: Path | None = None
    imx_data = None
    if imatrix is not None:  # before any download: a typo must not cost minutes
        from packer import imatrix as imx

        imx_path = imx.check_file(Path(imatrix))
        imx_data = imx.load(imx_path)
    if qt is not None and qt.needs_imatrix and imx_path is None:
        from packer.quantize import needs_imatrix_message

        raise UsageError(needs_imatrix_message(qt))
    src = sources.resolve(spec, quant=quant, revision=revision, token=token)
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
    if imx_path is not None and (qt is None or qt.is_float):
        raise UsageError(
            "--imatrix only applies when quantizing: give --quant TYPE (e.g. IQ2_XS, Q4_K_M)"
        )
    if imx_data is not None and src.kind == "gguf":
        from packer.imatrix import check_model

        check_model(imx_data, src.path, imx_path.name)  # type: ignore[union-attr]
    text = None
    if eval_text is not None:
        if qt is None or qt.is_float:
            raise UsageError(
                "--eval measures a quantized file against its unquantized conversion: give "
                "--quant with a quantized type (e.g. Q4_K_M), from a checkpoint or an "
                "F16/BF16/F32 GGUF"
            )
        from packer.evaluate import load_text

        text = load_text(eval_text)
    label = qt.name if qt else (src.gguf_type or "gguf")
    out = Path(output) if output else Path.cwd() / f"{src.name}.{label}.run"
    out = out.expanduser().absolute()
    check_writable(out)
    baked = shlex.split(args) if isinstance(args, str) else list(args or [])
    if baked:
        from packer.runtime.cli import build_parser, requested_language
        from packer.runtime.i18n import LanguageError, resolve

        try:
            build_parser().parse_args(baked)
        except SystemExit as exc:
            raise UsageError(
                f"--args {shlex.join(baked)!r} are not valid model.run flags (see model.run --help)"
            ) from exc
        try:  # a baked --lang without a catalog would stop every start of the file
            resolve(requested_language(baked), {})
        except LanguageError as exc:
            raise UsageError(f"--args: {exc}") from None
    bp = BuildPlan(
        source=src,
        quant=qt,
        output=out,
        args=baked,
        flavour=flavour,
        architecture=info.architecture if info else src.architecture,
        n_params=info.n_params if info else src.n_params,
        context_length=info.context_length if info else None,
        kv_bytes_per_token=_kv_bytes_per_token(src),
        imatrix=imx_path,
        licence=for_source(src),
        split=split,
        eval_text=text,
    )
    bp.check_destination()
    return bp


def execute(
    p: BuildPlan,
    *,
    threads: int = 0,
    verbose: bool = False,
    progress: Progress | None = None,
    eval_progress: Progress | None = None,
) -> Manifest:
    """Do the build; returns the manifest written into the output file."""
    from packer.pack import pack
    from packer.quantize import quantize
    from packer.stub import find_stub, runtime_command

    stub = find_stub(p.flavour, verbose=verbose)
    try:
        p.output.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".packer-build-", dir=p.output.parent))
    except OSError as exc:
        raise OutputError(f"cannot write in {p.output.parent}: {exc.strerror}") from exc
    try:
        gguf = p.source.path
        must_quantize = p.quant is not None
        if p.source.kind == "checkpoint":
            from packer.convert import convert_checkpoint

            outtype = p.quant.name.lower() if p.quant and p.quant.is_float else "auto"
            gguf = work / "model.gguf"
            log.info("converting %s to GGUF (%s)", p.source.path.name, outtype)
            convert_checkpoint(p.source.path, gguf, outtype=outtype, progress=progress)
            must_quantize = p.quant is not None and not p.quant.is_float
        quality = None
        if must_quantize:
            assert p.quant is not None
            unquantized = gguf
            runtime = runtime_command(stub.path, work)
            gguf = quantize(
                gguf,
                work / f"model.{p.quant.name}.gguf",
                p.quant,
                runtime=runtime,
                threads=threads,
                verbose=verbose,
                imatrix=p.imatrix,
            )
            if p.eval_text is not None:
                quality = _measure(p, gguf, unquantized, runtime, threads, verbose, eval_progress)
        manifest = Manifest(
            name=p.source.name,
            architecture=p.architecture,
            n_params=p.n_params,
            context_length=p.context_length,
            quant=p.quant_label,
            imatrix=p.imatrix.name if p.imatrix is not None else None,
            # a hub id as given; a local folder or file by its name only: the same file from
            # any folder (reproducible), and no user's home path inside files handed out
            source=p.source.spec if p.source.repo_id else p.source.path.name,
            source_kind=p.source.kind,
            source_repo=p.source.repo_id,
            source_revision=p.source.revision,
            source_commit=p.source.commit,
            license=p.licence.license,
            license_name=p.licence.license_name,
            license_link=p.licence.license_link,
            license_files=p.licence.files,
            model_card=p.licence.model_card,
            args=tuple(p.args),
            quality=quality,
            runtime=RuntimeInfo(
                flavour=p.flavour, stub=stub.build.key, llama_cpp=stub.build.llama_cpp
            ),
        )
        return pack(stub.path, gguf, p.output, manifest, split=p.split)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _measure(
    p: BuildPlan,
    gguf: Path,
    reference: Path,
    runtime: list[str],
    threads: int,
    verbose: bool,
    progress: Progress | None,
) -> Quality:
    """``--eval``: the quantized ``gguf`` against ``reference``, its unquantized conversion."""
    from packer.evaluate import gguf_type, measure, to_quality

    assert p.eval_text is not None and p.quant is not None
    ref_type = gguf_type(reference)
    log.info("measuring %s against %s on the %s text", p.quant.name, ref_type, p.eval_text.key)
    figures = measure(
        gguf,
        p.eval_text,
        ref=reference,
        threads=threads,
        runtime=runtime,
        verbose=verbose,
        progress=progress,
    )
    quality = to_quality(figures, p.eval_text, ref_type)
    log.info(
        "%s: KL divergence %.4f, top-1 %.1f %%, perplexity %.3f (%s: %.3f)",
        p.quant.name,
        quality.kl_divergence,
        100 * quality.top1,
        quality.perplexity,
        ref_type,
        quality.ref_perplexity,
    )
    return quality


def convert_to_gguf(
    checkpoint: Path, out: Path, outtype: str, *, progress: Progress | None = None
) -> Path:
    """``packer convert``: a checkpoint to one GGUF; ``q8_0`` converts, then quantizes with llama.cpp."""
    from packer.convert import convert_checkpoint

    if outtype != "q8_0":
        convert_checkpoint(checkpoint, out, outtype=outtype, progress=progress)
        return out
    from packer.quantize import quantize
    from packer.stub import require_checkout, runtime_command, usable_shipped_stub

    # the llama.cpp model.run files run with: the shipped runtime's, or in a checkout this
    # Python's llama-cpp-python (the one its stubs freeze), unfrozen: no stub build needed
    shipped = usable_shipped_stub("cpu")
    if shipped is None:
        require_checkout("cpu")
    try:
        work = Path(tempfile.mkdtemp(prefix=".packer-convert-", dir=out.parent))
    except OSError as exc:
        raise OutputError(f"cannot write in {out.parent}: {exc.strerror}") from exc
    try:
        full = work / "model.gguf"
        convert_checkpoint(checkpoint, full, outtype="auto", progress=progress)
        runtime = runtime_command(shipped.path, work) if shipped else None
        return quantize(full, out, parse_quant("Q8_0"), runtime=runtime)
    finally:
        shutil.rmtree(work, ignore_errors=True)
