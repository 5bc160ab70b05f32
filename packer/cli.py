"""The ``packer`` command: a thin click layer over :mod:`packer.build` and friends.

Data goes to stdout; progress, warnings and hints to stderr (progress bars only on a terminal).
Every :class:`~packer.errors.PackerError` is caught by :func:`main` and printed as one line.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from pathlib import Path

import click

from packer import __version__
from packer.errors import PackerError
from packer.stub import FLAVOUR_HELP, FLAVOURS, CachedStub

log = logging.getLogger("packer")


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("packer: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG if verbose else logging.ERROR)
    logging.getLogger("gguf").setLevel(logging.DEBUG if verbose else logging.WARNING)


def _progress_bar(label: str):  # type: ignore[no-untyped-def]
    """A callback (done, total) drawing a bar on a terminal, silent otherwise."""
    if not sys.stderr.isatty():
        return None
    state: dict[str, object] = {}

    def update(done: int, total: int) -> None:
        bar = state.get("bar")
        if bar is None:
            bar = click.progressbar(length=total, label=label, file=sys.stderr)
            bar.__enter__()
            state["bar"], state["done"] = bar, 0
        bar.update(done - int(state["done"]))  # type: ignore[union-attr]
        state["done"] = done
        if done >= total:
            bar.__exit__(None, None, None)  # type: ignore[union-attr]

    return update


def _hub_options(f):  # type: ignore[no-untyped-def]
    """--revision / --token for commands that take a hub model."""
    f = click.option(
        "--token",
        metavar="TOKEN",
        help="Hugging Face token for gated/private models (default: $HF_TOKEN or `hf auth login`).",
    )(f)
    return click.option(
        "--revision",
        metavar="REV",
        help="Hub branch, tag or commit to download (same as SOURCE@REV; default: main).",
    )(f)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from packer.stub import describe_runtime

    click.echo(f"packer {__version__}")
    for line in describe_runtime("cpu"):
        click.echo(line)
    ctx.exit(0)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show packer's version, the llama.cpp build it ships and its runtime stub, and exit.",
)
@click.option("-v", "--verbose", is_flag=True, help="Show debug logs and llama.cpp's own output.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, quiet: bool) -> None:
    """Turn a Hugging Face checkpoint into one executable file that runs offline.

    \b
    Examples:
      packer build TinyLlama --quant Q5_K_M
      packer build ./SmolLM2-135M-Instruct --quant Q5_K_M
      packer build model.f16.gguf --quant Q4_K_M -o classroom.run
      packer convert ./SmolLM2-135M-Instruct -o smollm2.gguf
      packer models
      packer quants
      packer eval model.run --ref model.f16.gguf
      packer compare ./SmolLM2-135M-Instruct --quants Q4_K_M,Q8_0 --plot sizes.svg
      packer usb /media/$USER/STICK model.run
    """
    _setup_logging(verbose, quiet)
    ctx.obj = {"verbose": verbose}


@cli.command()
@click.argument("source")
@click.option(
    "--quant",
    "-Q",
    metavar="TYPE",
    help="Quantization type, case-insensitive (default Q5_K_M for checkpoints; a .gguf is packed as it is; in a GGUF repo it picks the file, like SOURCE:TYPE). See `packer quants`.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output file (default: ./<model>.<quant>.run).",
)
@click.option(
    "--args",
    "baked_args",
    metavar="FLAGS",
    help='model.run flags baked in as defaults, e.g. --args "--temp 0.3 -c 8192".',
)
@click.option(
    "--runtime",
    "flavour",
    type=click.Choice(FLAVOURS),
    default="cpu",
    show_default=True,
    help="Runtime flavour: " + FLAVOUR_HELP + ".",
)
@click.option(
    "-t", "--threads", type=int, default=0, help="Threads for quantizing (default: all cores)."
)
@click.option(
    "--imatrix",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="Importance matrix (.gguf or legacy .dat from llama.cpp's llama-imatrix) for the "
    "quantizer: required by IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, Q2_K_S, improves every "
    "other type, e.g. --quant IQ2_XS --imatrix imatrix.gguf.",
)
@click.option(
    "--split",
    "split",
    metavar="SIZE",
    help="Write the model in parts of at most SIZE (e.g. 4G, 3900M: decimal units; 2GiB "
    "binary) next to model.run, which reads them as one file: for FAT32 USB sticks, which "
    "hold no file over 4 GiB. Keep all the parts in one folder.",
)
@click.option(
    "--eval",
    "eval_text",
    flag_value="en",
    default=None,
    help="Measure the quantized file against its own unquantized conversion (KL divergence, "
    "top-1 agreement, perplexity; see `packer eval`) and record the figures in it: "
    "model.run --info and its web page show them.",
)
@click.option(
    "--eval-text",
    "eval_text_spec",
    metavar="TEXT",
    help="With --eval: en (default), es or a UTF-8 text file.",
)
@_hub_options
@click.pass_context
def build(
    ctx: click.Context,
    source: str,
    quant: str | None,
    output: Path | None,
    baked_args: str | None,
    flavour: str,
    threads: int,
    imatrix: Path | None,
    split: str | None,
    eval_text: str | None,
    eval_text_spec: str | None,
    revision: str | None,
    token: str | None,
) -> None:
    """Build one executable model file from SOURCE.

    SOURCE is a Hugging Face checkpoint folder (config.json + *.safetensors + tokenizer files),
    a .gguf file, a model alias (`packer models`) or a hub model, downloaded into the shared
    Hugging Face cache (HF_HOME, HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE apply): org/name[@revision],
    hf.co/org/name, or its page URL https://huggingface.co/org/name (also .../tree/REV and
    .../blob/REV/FILE.gguf). An existing local path always wins, ':' in it or not.

    In a GGUF repo, a :QUANT tag or --quant picks the file, as Ollama's and llama.cpp's
    hf.co/org/name:Q4_K_M do (case-insensitive; a tag such as :UD-Q4_K_XL is matched in the
    file names). Without either (or with :latest) the repo's only file, or its Q5_K_M, is used.
    Given both, they must agree. A safetensors repo has no file to pick: to quantize it, give
    --quant QUANT instead of the tag. The output runs on any x86-64 Linux without Python:

    \b
      packer build ./SmolLM2-135M-Instruct --quant Q5_K_M
      ./SmolLM2-135M-Instruct.Q5_K_M.run -p "What is the capital of Japan?"

    \b
    Examples:
      packer build TinyLlama --quant q4_k_m
      packer build HuggingFaceTB/SmolLM2-360M-Instruct@main
      packer build bartowski/Llama-3.2-1B-Instruct-GGUF --quant Q4_K_M
      packer build hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M
      packer build https://huggingface.co/HuggingFaceTB/SmolLM2-360M-Instruct
      packer build model.BF16.gguf --quant Q8_0 -o model.run
      packer build ./my-model --args "--temp 0.2 --system 'Responde en español.'"
      packer build ./my-model --quant IQ2_XS --imatrix imatrix.gguf
      packer build ./my-model --runtime cuda   # after: packer runtime build --flavour cuda
      packer build ./my-model --quant Q4_K_M --split 4G -o /media/stick/model.run
      packer build ./my-model --quant Q4_K_M --eval --eval-text es

    \b
    The 1-2 bit types (IQ1_*, IQ2_XXS/XS/S, Q2_K_S) need an importance matrix: make one with
    llama.cpp's `llama-imatrix -m model.f16.gguf -f calibration.txt -o imatrix.gguf`.
    """
    from packer.build import execute, plan

    p = plan(
        source,
        quant,
        output,
        baked_args,
        flavour,
        token=token,
        revision=revision,
        imatrix=imatrix,
        split=_size_option("--split", split),
        eval_text=_eval_text(eval_text, eval_text_spec),
    )
    log.info("%s", p.describe())
    log.info("%s", p.licence.notice())
    for warning in p.warnings:
        log.warning("warning: %s", warning)
    manifest = execute(
        p,
        threads=threads,
        verbose=ctx.obj["verbose"],
        progress=_progress_bar("converting"),
        eval_progress=_progress_bar("measuring"),
    )
    size = p.output.stat().st_size + sum(part.size for part in manifest.parts)
    parts = f" + {len(manifest.parts)} parts next to it" if manifest.parts else ""
    from packer.convert.bert import makes_embeddings

    log.info(
        'done: %s%s (%.1f MB); run it with: %s %s "Hello"',
        p.output.name,
        parts,
        size / 1e6,
        _shell_path(p.output),
        "--embed" if makes_embeddings(p.architecture) else "-p",
    )
    log.debug("manifest: %s", manifest)
    click.echo(str(p.output))


def _eval_text(flag: str | None, spec: str | None) -> str | None:
    """``--eval`` and ``--eval-text``: the text to measure on, None without --eval."""
    if spec is not None and flag is None:
        from packer.errors import UsageError

        raise UsageError("--eval-text only applies with --eval: add --eval")
    return spec or flag


def _size_option(flag: str, text: str | None) -> int | None:
    from packer.errors import UsageError
    from packer.runtime.sizes import parse_size

    if text is None:
        return None
    try:
        return parse_size(text)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from exc


def _shell_path(path: Path) -> str:
    try:
        rel = path.relative_to(Path.cwd())
        return f"./{rel}" if rel.parent == Path(".") else str(rel)
    except ValueError:
        return str(path)


@cli.command()
@click.argument("source")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output .gguf file.",
)
@click.option(
    "--outtype",
    type=click.Choice(["auto", "f32", "f16", "bf16", "q8_0"], case_sensitive=False),
    default="auto",
    show_default=True,
    help="Precision of the weights; auto keeps the checkpoint's, q8_0 goes through llama.cpp's quantizer.",
)
@_hub_options
def convert(
    source: str, output: Path, outtype: str, revision: str | None, token: str | None
) -> None:
    """Convert a Hugging Face checkpoint to a GGUF file (no quantization, no runtime).

    SOURCE is a checkpoint folder, a model alias or a hub model: org/name[@revision],
    hf.co/org/name or https://huggingface.co/org/name.

    \b
    Examples:
      packer convert ./SmolLM2-135M-Instruct -o smollm2.gguf
      packer convert TinyLlama -o tinyllama.f16.gguf --outtype f16
      packer convert ./SmolLM2-135M-Instruct -o smollm2.q8_0.gguf --outtype q8_0
    """
    from packer.build import check_writable, convert_to_gguf
    from packer.source import resolve

    out = output.expanduser().absolute()
    check_writable(out)
    src = resolve(source, revision=revision, token=token, need_checkpoint=True)
    if src.kind != "checkpoint":
        raise click.ClickException(f"{source} is already a GGUF file: nothing to convert")
    convert_to_gguf(src.path, out, outtype.lower(), progress=_progress_bar("converting"))
    click.echo(str(out))


_TEXT_HELP = (
    "Text to measure on: en (built-in English, the default), es (built-in Spanish) or a UTF-8 "
    "text file of at least one --ctx window."
)


@cli.command("eval")
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--ref",
    type=click.Path(path_type=Path),
    metavar="REF",
    help="The unquantized GGUF (F16/BF16/F32) of the same checkpoint, or its model.run: adds "
    "KL divergence, top-1 agreement and the difference in perplexity.",
)
@click.option("--text", "text_spec", metavar="TEXT", help=_TEXT_HELP)
@click.option(
    "--ctx",
    "n_ctx",
    type=click.IntRange(16),
    default=512,
    show_default=True,
    help="Tokens per window (llama-perplexity's -c): the second half of each is scored.",
)
@click.option(
    "-t", "--threads", type=int, default=0, help="Threads for llama.cpp (default: all cores)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@click.pass_context
def eval_cmd(
    ctx: click.Context,
    file: Path,
    ref: Path | None,
    text_spec: str | None,
    n_ctx: int,
    threads: int,
    as_json: bool,
) -> None:
    """Measure how good FILE (a model.run or .gguf) is: perplexity on a text and, with --ref,
    how far it is from the unquantized model.

    The definitions are llama.cpp's llama-perplexity ones (its --kl-divergence mode): the text
    is cut into --ctx windows and the second half of each is scored. Perplexity: lower is
    better. KL divergence (nats per token, 0 = the same predictions) and top-1 (how often both
    models find the same most likely next token) compare FILE with REF, run side by side.

    \b
    Examples:
      packer eval SmolLM2-135M-Instruct.Q4_K_M.run
      packer eval model.Q4_K_M.gguf --ref model.f16.gguf
      packer eval model.run --ref model.f16.gguf --text es --json
      packer eval model.gguf --text my-notes.txt --ctx 1024
    """
    import json

    from packer import evaluate

    text = evaluate.load_text(text_spec)
    model = evaluate.gguf_of(file)
    ref_gguf = evaluate.gguf_of(ref) if ref is not None else None
    with evaluate.runtime_for_eval() as runtime:
        figures = evaluate.measure(
            model,
            text,
            ref=ref_gguf,
            ctx=n_ctx,
            threads=threads,
            runtime=runtime,
            verbose=ctx.obj["verbose"],
            progress=_progress_bar("measuring"),
        )
    info = evaluate.describe(
        figures,
        file,
        evaluate.gguf_type(model),
        ref,
        evaluate.gguf_type(ref_gguf) if ref_gguf is not None else "",
        text,
    )
    if as_json:
        click.echo(json.dumps(info, indent=2, ensure_ascii=False))
    else:
        for line in evaluate.table(info):
            click.echo(line)


@cli.command()
@click.argument("source")
@click.option(
    "--quants",
    "quant_list",
    metavar="TYPES",
    default="Q4_K_M,Q5_K_M,Q8_0",
    show_default=True,
    help="Comma-separated quantization types to compare (see `packer quants`).",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Also draw file size against KL divergence: FILE.svg (needs nothing) or FILE.png "
    "(needs matplotlib: pip install 'packer-llm[plot]').",
)
@click.option("--text", "text_spec", metavar="TEXT", help=_TEXT_HELP)
@click.option(
    "--ctx",
    "n_ctx",
    type=click.IntRange(16),
    default=512,
    show_default=True,
    help="Tokens per window (llama-perplexity's -c): the second half of each is scored.",
)
@click.option(
    "-t", "--threads", type=int, default=0, help="Threads for llama.cpp (default: all cores)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@_hub_options
@click.pass_context
def compare(
    ctx: click.Context,
    source: str,
    quant_list: str,
    plot: Path | None,
    text_spec: str | None,
    n_ctx: int,
    threads: int,
    as_json: bool,
    revision: str | None,
    token: str | None,
) -> None:
    """Quantize SOURCE to several types and measure each: which one fits the lab's machines?

    SOURCE is a checkpoint folder, a model alias, a hub model or an F16/BF16/F32 GGUF. It is
    converted once (the reference), quantized to each type and measured against it as
    `packer eval --ref` does. The table: the file size, RAM to run it (with model.run's default
    context), perplexity on the text (lower is better) and its difference from the
    reference's, KL divergence (0 = the same predictions as the unquantized model) and top-1
    (how often both pick the same most likely next token). Nothing is left on disk but --plot.

    \b
    Examples:
      packer compare ./SmolLM2-135M-Instruct
      packer compare SmolLM2-360M-Instruct --quants Q4_K_M,Q5_K_M,Q6_K,Q8_0 --plot sizes.svg
      packer compare ./my-model --text es --plot calidad.png
      packer compare model.BF16.gguf --quants Q4_0,Q4_K_M --json
    """
    import json

    from packer import compare as cmp
    from packer import evaluate

    quants = cmp.parse_quants(quant_list)
    text = evaluate.load_text(text_spec)
    if plot is not None:
        from packer.plot import check_plot_path

        check_plot_path(plot)
    rows = cmp.compare(
        source,
        quants,
        text,
        ctx=n_ctx,
        threads=threads,
        verbose=ctx.obj["verbose"],
        revision=revision,
        token=token,
        progress=_progress_bar("comparing"),
    )
    if plot is not None:
        from packer.plot import Point, write_plot

        points = [Point(r.quant, r.size, r.kl) for r in rows[1:]]
        title = f"{Path(source).name}: size and KL divergence vs {rows[0].quant}"
        log.info("plot: %s", write_plot(plot, points, title))
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in rows], indent=2))
    else:
        for line in cmp.table(rows):
            click.echo(line)


@cli.command()
@click.argument("source", required=False)
@click.option(
    "--params",
    type=float,
    metavar="N",
    help="Model size in billions of parameters, to show the expected file size (e.g. 1.1).",
)
@click.option("--token", metavar="TOKEN", help="Hugging Face token (for a gated/private SOURCE).")
def quants(source: str | None, params: float | None, token: str | None) -> None:
    """List the quantization types, with bits per weight and a quality note.

    With SOURCE (a folder, .gguf, alias, hub id or hf.co/ URL) or --params, also the expected
    weights size for that model. Types marked "needs an importance matrix" need
    `packer build --imatrix FILE`.

    \b
    Examples:
      packer quants
      packer quants --params 1.1
      packer quants TinyLlama
      packer quants ./SmolLM2-135M-Instruct
    """
    from packer.quants import DEFAULT_QUANT, QUANT_TYPES

    if source and params:
        raise click.UsageError("give SOURCE or --params, not both")
    if source:
        from packer.source import param_count

        n, origin = param_count(source, token=token)
        from packer.hub import fmt_params

        params = n / 1e9
        log.info("%s: %s parameters (%s)", source, fmt_params(n), origin)
    for q in QUANT_TYPES.values():
        size = f"  ~{params * q.bpw / 8:5.2f} GB" if params else ""
        mark = "*" if q.name == DEFAULT_QUANT else " "
        click.echo(f"{mark}{q.name:<8} {q.bpw:5.2f} bpw{size}  {q.note}")


@cli.command()
def models() -> None:
    """List the model aliases `packer build NAME` accepts, with their size and a note.

    Any other hub model works too, as org/name[@revision], hf.co/org/name[:QUANT] or its
    https://huggingface.co/org/name URL. Gated models need their licence
    accepted on the model page and HF_TOKEN (or --token) set.

    \b
    Examples:
      packer models
      packer build SmolLM2-360M-Instruct --quant Q8_0
    """
    from packer.convert import SUPPORTED_ARCHITECTURES
    from packer.hub import aliases
    from packer.quants import DEFAULT_QUANT, QUANT_TYPES

    bpw = QUANT_TYPES[DEFAULT_QUANT].bpw
    click.echo(f"{'ALIAS':<24} {'PARAMS':>7} {DEFAULT_QUANT + ' SIZE':>12}  {'REPO':<40} NOTE")
    for a in aliases().values():
        flags = []
        if a.gated:
            flags.append("gated")
        if a.architecture and a.architecture not in SUPPORTED_ARCHITECTURES:
            flags.append(f"{a.architecture}: not convertible yet")
        extra = f" [{'; '.join(flags)}]" if flags else ""
        size = a.params_b * bpw / 8
        size_txt = f"~{size:.1f} GB" if size >= 1 else f"~{size * 1000:.0f} MB"
        click.echo(f"{a.name:<24} {a.params_b:>6g}B {size_txt:>12}  {a.repo:<40} {a.note}{extra}")


@cli.command()
@click.argument("dest", type=click.Path(path_type=Path))
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def usb(dest: Path, files: tuple[Path, ...]) -> None:
    """Copy model files onto a USB stick mounted at DEST, ready to hand out.

    Checks first that DEST is a writable folder and that everything fits, then copies each
    FILE (a model.run, with its .partN files if it is split) with a progress bar. FAT32
    sticks hold no file over 4 GiB: bigger models are split there on the way (model.run reads
    its parts as one file); exFAT, NTFS and ext4 get plain copies. Each file is written under
    a temp name and renamed when complete, so a full stick leaves nothing half-written.
    Adds README.txt (English) and LEEME.txt (Spanish) on how to run the models (chmod +x,
    double-click, --server, sticks mounted without exec, Windows via WSL, licences) and
    SHA256SUMS: `cd DEST && sha256sum -c SHA256SUMS` checks the copy.

    \b
    Examples:
      packer usb /media/$USER/STICK SmolLM2-135M-Instruct.Q5_K_M.run
      packer usb /media/$USER/STICK llama-3.2-3b.run qwen2.5-1.5b.run
      cd /media/$USER/STICK && sha256sum -c SHA256SUMS
    """
    from packer.usb import copy_to_usb

    written = copy_to_usb(dest, list(files))
    for path in written:
        click.echo(str(path))
    log.info("done: %d file(s) on %s; check them with: sha256sum -c SHA256SUMS", len(written), dest)


@cli.group()
def runtime() -> None:
    """Manage the frozen runtime stub every model.run starts from."""


@runtime.command("build")
@click.option(
    "--flavour",
    type=click.Choice(FLAVOURS),
    default="cpu",
    show_default=True,
    help="Runtime flavour to build: " + FLAVOUR_HELP + ".",
)
@click.option("--force", is_flag=True, help="Rebuild even if a cached stub exists.")
@click.pass_context
def runtime_build(ctx: click.Context, flavour: str, force: bool) -> None:
    """Build (or find in the cache) the runtime stub with PyInstaller and print its path.

    \b
    Examples:
      packer runtime build
      packer runtime build --force
      packer runtime build --flavour cuda   # compiles llama.cpp with CUDA first (long)
    """
    from packer.stub import ensure_stub

    stub = ensure_stub(flavour, rebuild=force, verbose=ctx.obj["verbose"], build_llama=True)
    click.echo(str(stub))


def _row(kind: str, size: str, built: str, state: str, path: object) -> str:
    """One line of the `packer runtime list`/`prune` table (the header is a row too)."""
    return f"{kind:<7} {size:>10}  {built:<16}  {state:<7}  {path}"


def _stub_line(stub: CachedStub) -> str:
    built = time.strftime("%Y-%m-%d %H:%M", time.localtime(stub.built))
    mark = "current" if stub.current else "old"
    return _row(stub.flavour, f"{stub.size / 1e6:.1f} MB", built, mark, stub.path)


@runtime.command("list")
def runtime_list() -> None:
    """List the runtime stubs in the cache, newest first.

    "current" marks the stub `packer build` uses now for that flavour; "old" ones were built
    from other sources or another llama-cpp-python and are only taking space
    (`packer runtime prune` removes them). Built model.run files never need their stub again.

    \b
    Examples:
      packer runtime list
    """
    from packer.stub import abandoned_builds, cached_stubs, folder_size, stub_cache_root

    stubs = cached_stubs()
    if not stubs:
        click.echo(f"no runtime stubs in {stub_cache_root()}", err=True)
    else:
        click.echo(_row("FLAVOUR", "SIZE", "BUILT", "STATE", "PATH"))
    for stub in stubs:
        click.echo(_stub_line(stub))
    old = [s for s in stubs if not s.current]
    if old:
        total = sum(s.size for s in old) / 1e6
        click.echo(f"{len(old)} old stub(s), {total:.0f} MB: `packer runtime prune`", err=True)
    builds = abandoned_builds()
    if builds:
        total = sum(folder_size(b) for b in builds) / 1e6
        click.echo(
            f"{len(builds)} folder(s) left by killed stub builds, {total:.0f} MB: "
            "`packer runtime prune`",
            err=True,
        )


@runtime.command("prune")
@click.option("--all", "everything", is_flag=True, help="Remove the current stubs too.")
@click.option("--dry-run", "-n", is_flag=True, help="Only print what would be removed.")
def runtime_prune(everything: bool, dry_run: bool) -> None:
    """Remove the cached runtime stubs no build would use now, and print them.

    Folders left by stub builds that were killed (Ctrl-C during PyInstaller, out of memory)
    go too; a build that is running is never touched.

    Built model.run files keep working: each carries its own copy of the runtime. With --all
    the next `packer build` rebuilds the stub (a few minutes).

    \b
    Examples:
      packer runtime prune
      packer runtime prune --dry-run
      packer runtime prune --all
    """
    from packer.stub import prune_stubs

    removed, builds = prune_stubs(everything=everything, dry_run=dry_run)
    for stub in removed:
        click.echo(_stub_line(stub))
    for folder, size in builds:
        click.echo(_row("build", f"{size / 1e6:.1f} MB", "", "killed", folder))
    verb = "would remove" if dry_run else "removed"
    total = sum(s.size for s in removed) / 1e6
    line = f"{verb} {len(removed)} stub(s), {total:.0f} MB"
    if builds:
        line += f", and {len(builds)} folder(s) of killed builds, "
        line += f"{sum(size for _, size in builds) / 1e6:.0f} MB"
    click.echo(line, err=True)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Terminated(BaseException):
    """SIGTERM or SIGHUP, raised where the program is (as Ctrl-C raises KeyboardInterrupt) so
    that the ``finally`` blocks remove the build's scratch folder and temp files: the default
    action of these signals ends the process without running them. A BaseException, so that no
    ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum: int, frame: object) -> None:
    # one exception only: a second signal must not cut the clean-up short
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def _catch_stop_signals() -> dict[int, object]:
    """Route SIGINT/SIGTERM/SIGHUP to :func:`_stop`; a signal the caller ignores (``nohup``)
    stays ignored. Returns the handlers to put back."""
    previous: dict[int, object] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous  # only the main thread may set handlers (packer called as a library)
    for sig in STOP_SIGNALS:
        handler = signal.getsignal(sig)
        if handler is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, _stop)
    return previous


def main() -> None:
    """Console entry point: one handler for every packer error, stable exit codes."""
    previous = _catch_stop_signals()
    try:
        _main()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


def _main() -> None:
    try:
        cli.main(standalone_mode=False, prog_name="packer")
    except Terminated as exc:
        click.echo(f"packer: stopped by {signal.Signals(exc.signum).name}", err=True)
        sys.exit(128 + exc.signum)
    except PackerError as exc:
        click.echo(f"packer: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("packer: interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("packer: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
