"""The ``packer`` command: a thin click layer over :mod:`packer.build` and friends.

Data goes to stdout; progress, warnings and hints to stderr (progress bars only on a terminal).
Every :class:`~packer.errors.PackerError` is caught by :func:`main` and printed as one line.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from packer import __version__
from packer.errors import PackerError

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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="packer")
@click.option("-v", "--verbose", is_flag=True, help="Show debug logs and llama.cpp's own output.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, quiet: bool) -> None:
    """Turn a Hugging Face checkpoint into one executable file that runs offline.

    \b
    Examples:
      packer build ./SmolLM2-135M-Instruct --quant Q5_K_M
      packer build model.f16.gguf --quant Q4_K_M -o classroom.run
      packer convert ./SmolLM2-135M-Instruct -o smollm2.gguf
      packer quants
    """
    _setup_logging(verbose, quiet)
    ctx.obj = {"verbose": verbose}


@cli.command()
@click.argument("source")
@click.option(
    "--quant",
    "-Q",
    metavar="TYPE",
    help="Quantization type, case-insensitive (default Q5_K_M for checkpoints; a .gguf is packed as it is). See `packer quants`.",
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
    "--runtime", "flavour", default="cpu", show_default=True, help="Runtime stub flavour."
)
@click.option(
    "-t", "--threads", type=int, default=0, help="Threads for quantizing (default: all cores)."
)
@click.pass_context
def build(
    ctx: click.Context,
    source: str,
    quant: str | None,
    output: Path | None,
    baked_args: str | None,
    flavour: str,
    threads: int,
) -> None:
    """Build one executable model file from SOURCE.

    SOURCE is a Hugging Face checkpoint folder (config.json + *.safetensors + tokenizer files)
    or a .gguf file. The output runs on any x86-64 Linux without Python:

    \b
      packer build ./SmolLM2-135M-Instruct --quant Q5_K_M
      ./SmolLM2-135M-Instruct.Q5_K_M.run -p "What is the capital of France?"

    \b
    Examples:
      packer build ./TinyLlama-1.1B-Chat-v1.0 --quant q4_k_m
      packer build model.BF16.gguf --quant Q8_0 -o model.run
      packer build ./my-model --args "--temp 0.2 --system 'Responde en español.'"
    """
    from packer.build import execute, plan

    p = plan(source, quant, output, baked_args, flavour)
    log.info("%s", p.describe())
    manifest = execute(
        p, threads=threads, verbose=ctx.obj["verbose"], progress=_progress_bar("converting")
    )
    size = p.output.stat().st_size
    log.info(
        'done: %s (%.1f MB); run it with: %s -p "Hello"',
        p.output.name,
        size / 1e6,
        _shell_path(p.output),
    )
    log.debug("manifest: %s", manifest)
    click.echo(str(p.output))


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
    type=click.Choice(["auto", "f32", "f16", "bf16"], case_sensitive=False),
    default="auto",
    show_default=True,
    help="Precision of the weights; auto keeps the checkpoint's.",
)
def convert(source: str, output: Path, outtype: str) -> None:
    """Convert a Hugging Face checkpoint folder to a GGUF file (no quantization, no runtime).

    \b
    Examples:
      packer convert ./SmolLM2-135M-Instruct -o smollm2.gguf
      packer convert ./TinyLlama-1.1B-Chat-v1.0 -o tinyllama.f16.gguf --outtype f16
    """
    from packer.build import _check_writable
    from packer.convert import convert_checkpoint
    from packer.source import resolve

    src = resolve(source)
    if src.kind != "checkpoint":
        raise click.ClickException(f"{source} is already a GGUF file: nothing to convert")
    out = output.expanduser().absolute()
    _check_writable(out)
    convert_checkpoint(src.path, out, outtype=outtype.lower(), progress=_progress_bar("converting"))
    click.echo(str(out))


@cli.command()
@click.option(
    "--params",
    type=float,
    metavar="N",
    help="Model size in billions of parameters, to show the expected file size (e.g. 1.1).",
)
def quants(params: float | None) -> None:
    """List the quantization types, with bits per weight and a quality note.

    \b
    Examples:
      packer quants
      packer quants --params 1.1
    """
    from packer.quants import DEFAULT_QUANT, QUANT_TYPES

    for q in QUANT_TYPES.values():
        size = f"  ~{params * q.bpw / 8:5.2f} GB" if params else ""
        mark = "*" if q.name == DEFAULT_QUANT else " "
        click.echo(f"{mark}{q.name:<8} {q.bpw:5.2f} bpw{size}  {q.note}")


@cli.group()
def runtime() -> None:
    """Manage the frozen runtime stub every model.run starts from."""


@runtime.command("build")
@click.option("--flavour", default="cpu", show_default=True, help="Runtime flavour to build.")
@click.option("--force", is_flag=True, help="Rebuild even if a cached stub exists.")
@click.pass_context
def runtime_build(ctx: click.Context, flavour: str, force: bool) -> None:
    """Build (or find in the cache) the runtime stub with PyInstaller and print its path.

    \b
    Examples:
      packer runtime build
      packer runtime build --force
    """
    from packer.stub import ensure_stub

    click.echo(str(ensure_stub(flavour, rebuild=force, verbose=ctx.obj["verbose"])))


def main() -> None:
    """Console entry point: one handler for every packer error, stable exit codes."""
    try:
        cli.main(standalone_mode=False, prog_name="packer")
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
