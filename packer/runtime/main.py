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

from packer.runtime import __version__, api_key, desktop
from packer.runtime.backend import BackendError
from packer.runtime.cache import (
    CacheError,
    ensure_gguf,
    optional_cache_dir,
    resolve_cache_dir,
    uninstall_main,
)
from packer.runtime.cli import UsageError, choose_language, parse, redact_args
from packer.runtime.cpu_variant import SELF_TEST_FLAG, self_test_main
from packer.runtime.generate import TERMINAL_EVERY_S, PromptError
from packer.runtime.i18n import _, os_reason
from packer.runtime.log_text import LogFormatter
from packer.runtime.payload import Bundle, BundleError, read_bundle
from packer.runtime.quality import FLAG as EVAL_FLAG
from packer.runtime.quantize import FLAG as QUANTIZE_FLAG
from packer.runtime.quantize import run as quantize_main
from packer.runtime.server_options import ServerFeatures

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
    handler.setFormatter(LogFormatter(f"{_prog()}: %(message)s"))
    root = logging.getLogger("packer.runtime")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def run(argv: list[str]) -> int:
    choose_language(argv)  # before anything is said; parse() chooses again with the baked args
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
            raise BundleError(_("--info needs a model.run (or --bundle/--gguf FILE when unfrozen)"))
        backend_info = _backend_info(args)  # a summary on stderr; details in the JSON (--verbose)
        if bundle is not None:
            from packer.runtime.quality import summary

            measured = summary(bundle.manifest)
            if measured:
                log.info(_("quality: {summary}").format(summary=measured))
        info = bundle.manifest.to_dict() if bundle else {}
        if "args" in info:
            info["args"] = redact_args(info["args"])
        if not args.verbose:  # the texts themselves: --license
            info["license_files"] = [
                {"name": f["name"], "chars": len(f["text"])} for f in info.get("license_files", [])
            ]
            if info.get("model_card") is not None:
                info["model_card"] = {"chars": len(info["model_card"])}
        if args.verbose:
            info["backend"] = backend_info
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return EXIT_OK

    if args.license:  # what the manifest carries: nothing is unpacked
        if not bundle:
            raise BundleError(_("--license needs a model.run (or --bundle FILE when unfrozen)"))
        from packer.runtime import licence

        return licence.show(bundle.manifest, bundle.path.name)

    if args.verify or args.uninstall:  # before the sandbox: neither loads a model
        target = bundle.path if bundle else damaged
        if target is None:
            raise BundleError(_("--verify and --uninstall need a model.run (or --bundle FILE)"))
        if args.verify:
            from packer.runtime.verify import verify

            return EXIT_OK if verify(Path(target)) else EXIT_ERROR
        assert bundle is not None
        return uninstall_main(bundle, resolve_cache_dir(args.cache_dir))

    if args.rpc_server:  # a worker: no model, no bundle needed
        from packer.runtime import rpc

        if args.announce:
            from packer.runtime.rpc_announce import start_announcing

            start_announcing(args.host, args.port)
        rpc.serve(
            args.host,
            args.port,
            device=args.device,
            threads=args.threads,
            cache=Path(args.cache) if args.cache else None,
            cpu=args.cpu_variant,
            verbose=args.verbose,
        )
        return EXIT_ERROR

    desktop_start = desktop.is_desktop_start(args)  # a double-click: serve, open the browser
    args.server = args.server or desktop_start
    args.api_key = api_key.resolve(args, argv, os.environ)

    chat_template = None
    if args.chat_template_file:  # before unpacking or loading: a bad file is said at once
        from packer.runtime.chat_template import read_template

        chat_template = read_template(args.chat_template_file)
    if args.model:
        if args.extract:
            raise UsageError(
                _("--extract writes out the model inside this file: leave out -m/--model")
            )
        check_gguf(Path(args.model))

    # resolved once: each resolution checks every candidate folder and warns about a fallback
    cache_dir: Path | None
    instance: desktop.Instance | None = None
    if bundle and not args.model:
        if args.extract and not Path(args.extract).resolve().parent.is_dir():  # before unpacking
            raise CacheError(
                _("cannot write {path}: there is no folder {folder}").format(
                    path=args.extract, folder=Path(args.extract).resolve().parent
                )
            )
        cache_dir = resolve_cache_dir(args.cache_dir)  # required: the model is unpacked there
        if desktop_start:
            running = _desktop_begin(cache_dir, bundle.manifest.name, bundle.gguf_sha256)
            if isinstance(running, str):
                return EXIT_OK
            instance = running
        gguf = ensure_gguf(bundle, cache_dir)
        if args.extract:
            _copy_atomic(gguf, Path(args.extract))
            print(args.extract)
            return EXIT_OK
        name = args.alias or bundle.manifest.name or gguf.stem
    elif args.model or args.gguf:  # -m: another GGUF, run by this file's runtime
        cache_dir = optional_cache_dir(args.cache_dir)  # only the CPU verdict goes there
        gguf = Path(args.model or args.gguf)
        if not gguf.is_file():
            raise BundleError(_("no such GGUF file: {path}").format(path=gguf))
        name = args.alias or gguf.stem
        if desktop_start and cache_dir is not None:
            running = _desktop_begin(cache_dir, name, str(gguf.resolve()))
            if isinstance(running, str):
                return EXIT_OK
            instance = running
    else:
        raise BundleError(_("this runtime has no model attached: build one with `packer build`"))

    # before the sandbox: after it no file can be opened for writing, and what model.run starts
    # is bound by it (the browser's opener is started now and told the URL once it listens)
    if desktop_start:
        running_url = desktop.served_elsewhere(args.host, args.port, gguf)
        if running_url:  # the same model, served from a terminal: no second copy in memory
            desktop.open_running(running_url)
            return EXIT_OK
        args.port = desktop.free_port(args.host, args.port)
    opener = desktop.browser_opener(
        desktop_start=desktop_start, server=args.server, nobrowser=args.nobrowser
    )
    if args.server:
        desktop.stop_on_hangup()
    watch = desktop.session_watch() if desktop_start else None

    def on_listening(url: str) -> None:
        page = url + "/"
        if instance is not None:
            instance.publish(page)
        if opener is not None:
            opener.open(page)
        if watch is not None:
            watch.start()

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
    from packer.runtime.context_size import for_gguf

    # GPU layers are planned for the context the engine will take (0: trained, memory-capped)
    planned = for_gguf(gguf, args.ctx_size)
    _backends, placement = plan(
        args.gpu,
        args.gpu_layers,
        gguf,
        planned.n_ctx if planned else args.ctx_size,
        verbose=args.verbose,
        cpu=args.cpu_variant,
        cache_dir=cache_dir,
    )
    if args.rpc:  # the workers' devices count as GPUs: registered before the model loads
        from packer.runtime import rpc

        if args.rpc == "auto":
            from packer.runtime.rpc_announce import discover

            args.rpc = discover(args.rpc_wait)

        placement = rpc.use_workers(args.rpc, placement, args.gpu_layers, gguf, args.tensor_split)
    options = EngineOptions(
        n_ctx=args.ctx_size,
        n_threads=args.threads,
        n_threads_batch=args.threads_batch,
        n_gpu_layers=placement.n_gpu_layers,
        tensor_split=args.tensor_split,
        use_mmap=not args.no_mmap,
        flash_attn=args.flash_attn,
        seed=args.seed,
        verbose=args.verbose,
        n_parallel=args.parallel or (SERVER_SLOTS if args.server else 1),
        max_queue=args.max_queue,
        cache_ram=None if args.cache_ram is None else max(-1, args.cache_ram) << 20,
        chat_template=chat_template,
    )
    history = None
    chat = args.chat or (args.prompt is None and sys.stdin.isatty())
    if not args.server and chat:  # the terminal chat
        from packer.runtime.chat_history import ChatHistory

        history = ChatHistory.open(cache_dir)  # its file is opened before writes end
    sandbox.before_model(gpu=placement.backend != "cpu")  # from here on: no writes
    engine = Engine(gguf, options, name=name)
    try:
        if args.embed is not None:  # before --server: a typed --embed wins over a baked one
            return _print_embedding(engine, args.embed)
        if engine.embedding is not None and not args.server:
            raise UsageError(
                _(
                    "this file makes embeddings, not text: run it with --embed TEXT, or "
                    "--server for the embeddings API"
                )
            )
        if args.server:
            import dataclasses

            from packer.runtime.server import serve
            from packer.runtime.webpage import PageInfo

            page = PageInfo.from_manifest(bundle.manifest) if bundle and not args.model else None
            serve(
                engine,
                args.host,
                args.port,
                model_alias=name,
                api_key=args.api_key,
                sampling=sampling,
                http=dataclasses.replace(
                    _http_options(args), page=page or PageInfo(size=gguf.stat().st_size)
                ),
                ready=on_listening,
                features=server_features(args),
            )
            return EXIT_OK
        prompt = args.prompt
        if prompt is None and not chat:
            prompt = sys.stdin.read()  # `echo question | ./model.run`
        if prompt is not None:
            code = _one_shot(
                engine,
                prompt,
                sampling,
                raw=args.raw,
                system=args.system,
                show_thinking=args.show_thinking,
            )
            if args.stats and engine.last_result is not None:
                timings = engine.last_result.timings()
                print(json.dumps({k: round(v, 3) for k, v in timings.items()}), file=sys.stderr)
            return code
        from packer.runtime.chat import chat_loop

        return chat_loop(
            engine,
            sampling,
            system=args.system,
            history=history,
            show_thinking=args.show_thinking,
        )
    finally:
        engine.close()


def _desktop_begin(cache_dir: Path, name: str, key: str) -> desktop.Instance | str:
    """A start without a terminal: the log file, then this model's one instance; the URL of
    the instance already running (now opened in the browser) instead, if there is one."""
    desktop.start_log(cache_dir, name or "model", _prog())
    running = desktop.claim_instance(cache_dir, key)
    if isinstance(running, str):
        desktop.open_running(running)
    return running


def server_features(args: argparse.Namespace) -> ServerFeatures:
    """What --metrics, --reasoning-format and -sys/--system-prompt ask of the server."""
    return ServerFeatures(
        metrics=args.metrics, reasoning_format=args.reasoning_format, system_prompt=args.system
    )


def check_gguf(path: Path) -> None:
    """-m FILE: a GGUF file, else a one-line error saying what it is instead."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise BundleError(_("-m {path}: no such file").format(path=path)) from None
    except IsADirectoryError:
        raise BundleError(_("-m {path}: a folder, not a GGUF file").format(path=path)) from None
    except OSError as exc:
        raise BundleError(
            _("-m {path}: cannot read it ({reason})").format(path=path, reason=os_reason(exc))
        ) from None
    if magic == b"GGUF":
        return
    if magic in (b"\x7fELF", b"MZ\x90\x00") or magic.startswith(b"#!"):
        raise BundleError(
            _("-m {path}: a program (a model.run?), not a GGUF file: run it itself").format(
                path=path
            )
        )
    raise BundleError(
        _("-m {path}: not a GGUF file (it does not begin with GGUF)").format(path=path)
    )


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
        log.info(_("backend: {summary}").format(summary=exc))
        return {"error": str(exc)}
    try:
        placement = backend.choose(backends, args.gpu, args.gpu_layers, args.gguf, args.ctx_size)
    except backend.BackendError as exc:
        log.info(_("backend: {summary}").format(summary=exc))
        return {**backend.info(backends, None), "error": str(exc)}
    log.info(_("backend: {summary}").format(summary=backend.summary(backends, placement)))
    return backend.info(backends, placement)


def _http_options(args: argparse.Namespace) -> HttpOptions:
    """The server's --cors/--allowed-host/--max-body-mb/--max-tokens/--max-connections/
    --no-webui/--ollama-port settings."""
    from packer.runtime.server import HttpOptions

    cors = tuple(o.strip() for arg in args.cors for o in arg.split(",") if o.strip())
    if args.max_body_mb <= 0:
        raise BundleError(_("--max-body-mb must be above 0"))
    if args.ollama_port is not None and not 0 <= args.ollama_port <= 65535:
        raise BundleError(_("--ollama-port must be a port number from 0 to 65535"))
    if args.max_connections < 0:
        raise BundleError(_("--max-connections must be 0 (automatic) or more"))
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
        raise CacheError(
            _("cannot write {path}: {reason}").format(path=dst, reason=os_reason(exc))
        ) from exc


def _print_embedding(engine, text: str) -> int:  # type: ignore[no-untyped-def]
    """--embed TEXT: the vector (pooled and normalised as the model says) as JSON on stdout."""
    from packer.runtime.embed import Embedder

    vectors, _n_tokens = Embedder(engine).embed([text])
    print(json.dumps(vectors[0]))
    return EXIT_OK


def _one_shot(
    engine, prompt: str, sampling, *, raw: bool, system: str | None, show_thinking: bool
) -> int:  # type: ignore[no-untyped-def]
    out = sys.stdout
    if raw or not engine.has_chat_template:
        # raw: the text as generated
        for piece in engine.complete(prompt, sampling, TERMINAL_EVERY_S):
            out.write(piece)
            out.flush()
        out.write("\n")
        return EXIT_OK
    from packer.runtime.think import ThinkView, prompt_opens_thinking, write_answer

    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
    view = ThinkView(out, sys.stderr, show_thinking)
    try:
        pieces = engine.chat(messages, sampling, TERMINAL_EVERY_S)
        write_answer(pieces, view, prompt_opens_thinking(engine))
    finally:
        view.close()
    out.write("\n")
    if view.only_thought():
        print(view.only_thought_hint(), file=sys.stderr)
    return EXIT_OK


def _error(message: str) -> None:
    """The one line model.run ends with: ``model.run: error: ...``, the words argparse uses."""
    print(
        _("%(prog)s: error: %(message)s\n") % {"prog": _prog(), "message": message},
        end="",
        file=sys.stderr,
    )


def main(argv: list[str] | None = None) -> None:
    """Run, then leave with os._exit: llama-cpp-python's finalizers raise during interpreter
    shutdown inside a frozen app, and the model has already been closed explicitly."""
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    # numpy (imported with llama_cpp) starts OpenBLAS's worker threads, which spin a core for
    # ~0.1 s while the model loads; nothing here multiplies matrices with numpy
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [SELF_TEST_FLAG]:  # a child of packer.runtime.cpu_variant: nothing else happens
        os._exit(self_test_main(argv[1:]))
    if argv[:1] == [QUANTIZE_FLAG]:  # packer build quantizing with this runtime (packer.quantize)
        sys.stdout.flush()
        os._exit(quantize_main(argv[1:]))
    if argv[:1] == [EVAL_FLAG]:  # packer eval/compare/build --eval measuring with this runtime
        from packer.runtime.quality import run as eval_main

        code = eval_main(argv[1:])
        sys.stdout.flush()
        os._exit(code)
    try:
        code = run(argv)
    except UsageError as exc:
        _error(str(exc))
        code = EXIT_USAGE
    except (BundleError, CacheError, PromptError, BackendError) as exc:
        _error(str(exc))
        code = EXIT_ERROR
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except SystemExit as exc:  # argparse: --help (0) or bad flags (2)
        code = exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except OSError as exc:  # e.g. the server's port is taken
        _error(f"{exc.filename}: {os_reason(exc)}" if exc.filename else os_reason(exc))
        code = EXIT_ERROR
    except Exception as exc:  # a bug or llama.cpp refusing the model: one line, no traceback soup
        logging.getLogger("packer.runtime").debug("unexpected error", exc_info=True)
        _error(
            _("{error}: {message} (run with --verbose for details)").format(
                error=type(exc).__name__, message=exc
            )
        )
        code = EXIT_ERROR
    try:
        sys.stdout.flush()
    except Exception:
        code = code or EXIT_ERROR
    sys.stderr.flush()
    os._exit(code)
