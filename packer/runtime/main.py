"""Entry point of model.run: read the manifest appended to this file, unpack once, then run."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from packer.runtime import __version__
from packer.runtime.backend import BackendError
from packer.runtime.cache import (
    CacheError,
    ensure_gguf,
    optional_cache_dir,
    resolve_cache_dir,
    uninstall_main,
)
from packer.runtime.cli import UsageError, parse, redact_args
from packer.runtime.cpu_variant import SELF_TEST_FLAG, self_test_main
from packer.runtime.generate import PromptError
from packer.runtime.i18n import _
from packer.runtime.payload import Bundle, BundleError, read_bundle
from packer.runtime.quantize import FLAG as QUANTIZE_FLAG
from packer.runtime.quantize import run as quantize_main

if TYPE_CHECKING:
    from packer.runtime.server import HttpOptions

log = logging.getLogger("packer.runtime")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
SERVER_SLOTS = 4  # --server's default -np: llama-server's default slot count
COPY_CHUNK = 16 << 20  # --extract's copy buffer


def _frozen() -> bool:
    return bool(getattr(sys, "frozen", False))


def _prog() -> str:
    # PACKER_PROG: the launcher gives the runtime its own path as argv[0] where /proc is missing
    name = os.environ.get("PACKER_PROG") or Path(sys.argv[0]).name
    return name if _frozen() else "python -m packer.runtime"


def _dev_flag(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _bundle_path(argv: list[str]) -> str | None:
    # the native launcher (build/launcher/) execs the unpacked runtime with the model.run's path
    launched_by = os.environ.pop("PACKER_BUNDLE", None)
    if launched_by:
        return launched_by
    if _frozen():  # a layout-v1 model.run: the onefile stub is the model.run itself
        return sys.executable
    return _dev_flag(argv, "--bundle")


def _find_bundle(argv: list[str]) -> Bundle | None:
    path = _bundle_path(argv)
    try:
        return read_bundle(path) if path else None
    except BundleError as exc:
        exc.path = path  # type: ignore[attr-defined]  # --verify still checks it, item by item
        raise


def _version_text(bundle: Bundle | None) -> str:
    """``--version``: packer's version, the llama.cpp build and the runtime this file carries."""
    if bundle is None or not bundle.manifest.runtime.stub:  # unfrozen, or a test stand-in
        import importlib.metadata

        try:
            llama = f"llama-cpp-python {importlib.metadata.version('llama-cpp-python')}"
        except importlib.metadata.PackageNotFoundError:
            llama = "llama-cpp-python (not installed)"
        built = f", built by packer {bundle.manifest.packer_version}" if bundle else ""
        return f"packer {__version__} (runtime from source{built})\n{llama}"
    m = bundle.manifest
    lines = [f"packer {m.packer_version or __version__}"]
    if m.runtime.llama_cpp:
        lines.append(m.runtime.llama_cpp)
    lines.append(
        f"runtime {m.runtime.flavour} stub {m.runtime.stub} (archive {bundle.runtime_key})"
    )
    return "\n".join(lines)


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{_prog()}: %(message)s"))
    root = logging.getLogger("packer.runtime")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def run(argv: list[str]) -> int:
    damaged: str | None = None  # a file too damaged to read, for --verify
    try:
        bundle = _find_bundle(argv)
    except BundleError as exc:
        if not parse(argv, [], prog=_prog()).verify:
            raise
        bundle, damaged = None, getattr(exc, "path", None)
    baked = list(bundle.manifest.args if bundle else ()) + shlex.split(
        os.environ.get("PACKER_ARGS", "")
    )
    args = parse(argv, baked, prog=_prog())
    _setup_logging(args.verbose)

    if args.version:
        print(_version_text(bundle))
        return EXIT_OK
    if args.info:
        if not bundle and not args.gguf:
            raise BundleError("--info needs a model.run (or --bundle/--gguf FILE when unfrozen)")
        backend_info = _backend_info(args)  # a summary on stderr; details in the JSON (--verbose)
        info = bundle.manifest.to_dict() if bundle else {}
        if "args" in info:
            info["args"] = redact_args(info["args"])
        if args.verbose:
            info["backend"] = backend_info
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return EXIT_OK

    if args.verify or args.uninstall:  # before the sandbox: neither loads a model
        target = bundle.path if bundle else damaged
        if target is None:
            raise BundleError(_("--verify and --uninstall need a model.run (or --bundle FILE)"))
        if args.verify:
            from packer.runtime.verify import verify

            return EXIT_OK if verify(Path(target)) else EXIT_ERROR
        assert bundle is not None
        return uninstall_main(bundle, resolve_cache_dir(args.cache_dir))

    # resolved once: each resolution checks every candidate folder and warns about a fallback
    cache_dir: Path | None
    if bundle:
        cache_dir = resolve_cache_dir(args.cache_dir)  # required: the model is unpacked there
        gguf = ensure_gguf(bundle, cache_dir)
        if args.extract:
            _copy_atomic(gguf, Path(args.extract))
            print(args.extract)
            return EXIT_OK
        name = args.alias or bundle.manifest.name or gguf.stem
    elif args.gguf:
        cache_dir = optional_cache_dir(args.cache_dir)  # only the CPU verdict goes there
        gguf = Path(args.gguf)
        if not gguf.is_file():
            raise BundleError(f"no such GGUF file: {gguf}")
        name = args.alias or gguf.stem
    else:
        raise BundleError("this runtime has no model attached: build one with `packer build`")

    from packer.runtime import sandbox  # what model.run gives up, in two steps

    sandbox.before_backends(cache_dir, args.gpu)
    from packer.runtime.engine import Engine, EngineOptions, Sampling

    sampling = Sampling(
        max_tokens=args.n_predict,
        temperature=args.temp,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repeat_penalty=args.repeat_penalty,
        seed=args.seed,
    )
    from packer.runtime.backend import plan

    _backends, placement = plan(
        args.gpu,
        args.gpu_layers,
        gguf,
        args.ctx_size,
        verbose=args.verbose,
        cpu=args.cpu_variant,
        cache_dir=cache_dir,
    )
    options = EngineOptions(
        n_ctx=args.ctx_size,
        n_threads=args.threads,
        n_gpu_layers=placement.n_gpu_layers,
        flash_attn=args.flash_attn,
        seed=args.seed,
        verbose=args.verbose,
        n_parallel=args.parallel or (SERVER_SLOTS if args.server else 1),
        max_queue=args.max_queue,
    )
    sandbox.before_model(gpu=placement.backend != "cpu")  # from here on: no writes
    engine = Engine(gguf, options, name=name)
    try:
        if args.server:
            from packer.runtime.server import serve

            serve(
                engine,
                args.host,
                args.port,
                model_alias=name,
                api_key=args.api_key,
                sampling=sampling,
                http=_http_options(args),
            )
            return EXIT_OK
        prompt = args.prompt
        if prompt is None and not sys.stdin.isatty():
            prompt = sys.stdin.read()  # `echo question | ./model.run`
        if prompt is not None:
            code = _one_shot(engine, prompt, sampling, raw=args.raw, system=args.system)
            if args.stats and engine.last_result is not None:
                timings = engine.last_result.timings()
                print(json.dumps({k: round(v, 3) for k, v in timings.items()}), file=sys.stderr)
            return code
        from packer.runtime.chat import chat_loop

        return chat_loop(engine, sampling, system=args.system)
    finally:
        engine.close()


def _backend_info(args: argparse.Namespace) -> dict[str, object]:
    """What this machine would compute on (CPU variant, GPU devices), for --info. Logged as one
    line on stderr, returned in full; a backend problem is reported, never fatal here."""
    from packer.runtime import backend

    try:
        backends = backend.load_backends(
            args.gpu,
            verbose=args.verbose,
            cpu=args.cpu_variant,
            cache_dir=optional_cache_dir(args.cache_dir),
        )
    except backend.BackendError as exc:
        log.info("backend: %s", exc)
        return {"error": str(exc)}
    try:
        placement = backend.choose(backends, args.gpu, args.gpu_layers, args.gguf, args.ctx_size)
    except backend.BackendError as exc:
        log.info("backend: %s", exc)
        return {**backend.info(backends, None), "error": str(exc)}
    log.info("backend: %s", backend.summary(backends, placement))
    return backend.info(backends, placement)


def _http_options(args: argparse.Namespace) -> HttpOptions:
    """The server's --cors/--allowed-host/--max-body-mb/--max-tokens/--max-connections/
    --no-webui/--ollama-port settings."""
    from packer.runtime.server import HttpOptions

    cors = tuple(o.strip() for arg in args.cors for o in arg.split(",") if o.strip())
    if args.max_body_mb <= 0:
        raise BundleError("--max-body-mb must be above 0")
    if args.ollama_port is not None and not 0 <= args.ollama_port <= 65535:
        raise BundleError("--ollama-port must be a port number from 0 to 65535")
    if args.max_connections < 0:
        raise BundleError("--max-connections must be 0 (automatic) or more")
    hosts = tuple(h.strip() for arg in args.allowed_host for h in arg.split(",") if h.strip())
    return HttpOptions(
        cors=cors,
        max_body=int(args.max_body_mb * 2**20),
        max_tokens=args.max_tokens,
        webui=not args.no_webui,
        ollama_port=args.ollama_port,
        max_connections=args.max_connections,
        allowed_hosts=hosts,
    )


def _copy_atomic(src: Path, dst: Path) -> None:
    import shutil

    from packer.runtime.atomic_write import atomic_write

    try:
        with open(src, "rb") as fin, atomic_write(dst) as fout:
            shutil.copyfileobj(fin, fout, COPY_CHUNK)
    except OSError as exc:
        raise CacheError(f"cannot write {dst}: {exc.strerror}") from exc


def _one_shot(engine, prompt: str, sampling, *, raw: bool, system: str | None) -> int:  # type: ignore[no-untyped-def]
    if raw or not engine.has_chat_template:
        pieces = engine.complete(prompt, sampling)
    else:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        pieces = engine.chat(messages, sampling)
    out = sys.stdout
    for piece in pieces:
        out.write(piece)
        out.flush()
    out.write("\n")
    return EXIT_OK


def main(argv: list[str] | None = None) -> None:
    """Run, then leave with os._exit: llama-cpp-python's finalizers raise during interpreter
    shutdown inside a frozen app, and the model has already been closed explicitly."""
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [SELF_TEST_FLAG]:  # a child of packer.runtime.cpu_variant: nothing else happens
        os._exit(self_test_main(argv[1:]))
    if argv[:1] == [QUANTIZE_FLAG]:  # packer build quantizing with this runtime (packer.quantize)
        sys.stdout.flush()
        os._exit(quantize_main(argv[1:]))
    try:
        code = run(argv)
    except UsageError as exc:
        print(f"{_prog()}: error: {exc}", file=sys.stderr)
        code = EXIT_USAGE
    except (BundleError, CacheError, PromptError, BackendError) as exc:
        print(f"{_prog()}: error: {exc}", file=sys.stderr)
        code = EXIT_ERROR
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except SystemExit as exc:  # argparse: --help (0) or bad flags (2)
        code = exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except OSError as exc:  # e.g. the server's port is taken
        print(f"{_prog()}: error: {exc}", file=sys.stderr)
        code = EXIT_ERROR
    except Exception as exc:  # a bug or llama.cpp refusing the model: one line, no traceback soup
        logging.getLogger("packer.runtime").debug("unexpected error", exc_info=True)
        print(
            f"{_prog()}: error: {type(exc).__name__}: {exc} (run with --verbose for details)",
            file=sys.stderr,
        )
        code = EXIT_ERROR
    try:
        sys.stdout.flush()
    except Exception:
        code = code or EXIT_ERROR
    sys.stderr.flush()
    os._exit(code)
