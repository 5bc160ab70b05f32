"""Command-line flags of model.run, llamafile/llama.cpp style, with defaults baked in at build time.

Every text ``--help`` shows is translated (:mod:`packer.runtime.i18n`), argparse's own words
included, so the language is chosen before the parser is built (:func:`parse`)."""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from packer.runtime import i18n, llama_env
from packer.runtime.backend import GPU_CHOICES, parse_gpu_layers
from packer.runtime.connections import CONNECTIONS_MARGIN
from packer.runtime.engine import FLASH_ATTN_CHOICES
from packer.runtime.i18n import _
from packer.runtime.rpc import DEFAULT_PORT as RPC_DEFAULT_PORT
from packer.runtime.rpc import DEVICE_CHOICES as RPC_DEVICE_CHOICES
from packer.runtime.rpc import Endpoint, is_loopback, parse_endpoints
from packer.runtime.rpc_announce import ANNOUNCE_PORT
from packer.runtime.server_options import REASONING_FORMATS

SECRET_FLAGS = ("--api-key",)  # never shown by --help or --info
LANG_FLAG = "--lang"


def description() -> str:
    """The text at the top of ``--help`` (``%(prog)s`` is the file's name)."""
    return _(
        """\
Run the language model inside this file: no installation, no network.

  %(prog)s                         chat in the terminal
  %(prog)s -p "What is a GGUF?"    one answer on stdout
  %(prog)s --server                HTTP API (llama.cpp, OpenAI) + web chat on http://127.0.0.1:8080
  %(prog)s --info                  what model this is
"""
    )


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line (no usage block above it) that says what to do."""

    def error(self, message: str) -> NoReturn:
        message = _("{message} (--help lists the options)").format(message=message)
        self.exit(2, _("%(prog)s: error: %(message)s\n") % {"prog": self.prog, "message": message})


def build_parser(prog: str = "model.run") -> argparse.ArgumentParser:
    """The parser, in the language chosen beforehand (:func:`choose_language`)."""
    p = _Parser(
        prog=prog,
        description=description(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    mode = p.add_argument_group(_("what to do (default: terminal chat)"))
    mode.add_argument(
        "-p", "--prompt", metavar=_("TEXT"), help=_("answer TEXT once on stdout and exit")
    )
    mode.add_argument(
        "--server", action="store_true", help=_("serve the HTTP API and the web chat page")
    )
    mode.add_argument(
        "--embed",
        metavar=_("TEXT"),
        help=_("print the embedding of TEXT (a JSON list of numbers) on stdout and exit"),
    )
    mode.add_argument(
        "--cli",
        action="store_true",
        help=_(
            "no server: with -p (or text on stdin) answer once, else chat in the terminal "
            "(llamafile's --cli; add --raw for its plain completion)"
        ),
    )
    mode.add_argument(
        "--chat",
        action="store_true",
        help=_(
            "chat in the terminal, even where --server is baked in; with it, -p TEXT is the "
            "system prompt (llamafile's --chat)"
        ),
    )
    mode.add_argument(
        "--info", action="store_true", help=_("print the model's manifest (JSON) and exit")
    )
    mode.add_argument(
        "--rpc-server",
        action="store_true",
        help=_(
            "be an RPC worker for another machine's --rpc: serve this machine's memory and "
            "compute on --host (default 127.0.0.1) --port (default {port}) until stopped; "
            "loads no model"
        ).format(port=RPC_DEFAULT_PORT),
    )
    mode.add_argument(
        "--extract",
        metavar=_("FILE"),
        help=_("write the model out as a GGUF file (for other tools) and exit"),
    )
    mode.add_argument(
        "--version", action="store_true", help=_("print the runtime version and exit")
    )
    mode.add_argument(
        "--license",
        action="store_true",
        help=_("print the model's licence texts and model card and exit"),
    )
    mode.add_argument(
        "--verify",
        action="store_true",
        help=_(
            "check that this file (and each of its parts) is complete and undamaged, without "
            "running the model, and exit"
        ),
    )
    mode.add_argument(
        "--uninstall",
        "--clean-cache",
        dest="uninstall",
        action="store_true",
        help=_(
            "remove what this file unpacked into the cache folder (model and runtime), say how "
            "much space that freed, and exit"
        ),
    )

    gen = p.add_argument_group(_("generation"))
    gen.add_argument(
        "--raw", action="store_true", help=_("plain completion of the prompt, no chat template")
    )
    gen.add_argument(
        "-sys",
        "--system-prompt",
        "--system",
        dest="system",
        metavar=_("TEXT"),
        help=_(
            "system prompt for chat, -p and the server's chats that bring none (default: the "
            "model's own)"
        ),
    )
    gen.add_argument(
        "--chat-template-file",
        metavar=_("FILE"),
        help=_("a Jinja chat template to use instead of the model's own"),
    )
    gen.add_argument(
        "--show-thinking",
        action="store_true",
        help=_(
            "show a reasoning model's thinking (its <think> section), dimmed on a terminal; "
            "by default it is hidden"
        ),
    )
    gen.add_argument(
        "-n",
        "--n-predict",
        "--predict",
        type=_whole_number,
        default=-1,
        metavar="N",
        help=_("tokens to generate, -1 = until the answer ends (default: %(default)s)"),
    )
    gen.add_argument(
        "--temp",
        type=_number,
        default=0.8,
        metavar="T",
        help=_("temperature, 0 = always the most likely token (default: %(default)s)"),
    )
    default = _("default: %(default)s")
    gen.add_argument("--top-k", type=_whole_number, default=40, metavar="K", help=default)
    gen.add_argument("--top-p", type=_number, default=0.95, metavar="P", help=default)
    gen.add_argument("--min-p", type=_number, default=0.05, metavar="P", help=default)
    gen.add_argument("--repeat-penalty", type=_number, default=1.1, metavar="X", help=default)
    gen.add_argument(
        "-s",
        "--seed",
        type=_whole_number,
        default=-1,
        metavar="N",
        help=_("random seed, -1 = random (default: %(default)s)"),
    )

    res = p.add_argument_group(_("resources"))
    res.add_argument(
        "-m",
        "--model",
        metavar=_("FILE.gguf"),
        help=_("run another GGUF model with this file's runtime instead of the one inside it"),
    )
    res.add_argument(
        "-c",
        "--ctx-size",
        type=_whole_number,
        default=0,
        metavar="N",
        help=_(
            "context size in tokens (default: 0 = the model's trained context, capped by what "
            "fits in memory)"
        ),
    )
    res.add_argument(
        "-t",
        "--threads",
        type=_whole_number,
        default=None,
        metavar="N",
        help=_("CPU threads (default: all available cores)"),
    )
    res.add_argument(
        "-tb",
        "--threads-batch",
        type=_whole_number,
        default=None,
        metavar="N",
        help=_("CPU threads for reading the prompt (default: the same as --threads)"),
    )
    res.add_argument(
        "--gpu",
        choices=GPU_CHOICES,
        default="auto",
        help=_(
            "where to compute: auto = a GPU if this runtime has a backend for one (Vulkan, or "
            "CUDA in the cuda build) and finds a usable device, else the CPU (default: "
            "%(default)s)"
        ),
    )
    res.add_argument(
        "-ngl",
        "--gpu-layers",
        "--n-gpu-layers",
        type=_gpu_layers,
        default="auto",
        metavar="N|auto",
        help=_(
            "layers to offload to the GPU; auto = as many as fit in its free memory "
            "(default: %(default)s)"
        ),
    )
    res.add_argument(
        "--rpc",
        type=_rpc_endpoints,
        metavar="HOST:PORT[,...]",
        help=_(
            "also compute on these RPC workers (other machines running --rpc-server): their "
            "devices count as GPUs for -ngl and layers are spread by free memory; auto = the "
            "workers that announce themselves on the LAN (--rpc-server --announce)"
        ),
    )
    res.add_argument(
        "--rpc-wait",
        type=_seconds,
        default=3.0,
        metavar=_("SECONDS"),
        help=_("with --rpc auto: how long to listen for workers (default: %(default)g)"),
    )
    res.add_argument(
        "--announce",
        action="store_true",
        help=_(
            "with --rpc-server: say every 2 s on the LAN (UDP broadcast, port {port}) that this "
            "worker is here, for main processes started with --rpc auto"
        ).format(port=ANNOUNCE_PORT),
    )
    res.add_argument(
        "-ts",
        "--tensor-split",
        type=_tensor_split,
        metavar="N,N,...",
        help=_(
            "share of the offloaded layers per device, in llama.cpp's device order (RPC "
            "workers first, then local GPUs), e.g. 1,1 or 3,1"
        ),
    )
    res.add_argument(
        "--no-mmap",
        action="store_true",
        help=_(
            "read the weights into memory instead of mapping the model file: with --rpc this "
            "process then holds only the layers it computes itself (as llama-server's --no-mmap)"
        ),
    )
    res.add_argument(
        "--device",
        choices=RPC_DEVICE_CHOICES,
        default="auto",
        help=_(
            "with --rpc-server: the device to serve; auto = a GPU if there is one, else the "
            "CPU (default: %(default)s)"
        ),
    )
    res.add_argument(
        "--cache",
        metavar=_("DIR"),
        help=_(
            "with --rpc-server: keep the tensors main processes send in DIR, so the next run "
            "reads them from disk instead of the network"
        ),
    )
    res.add_argument(
        "--cpu-variant",
        metavar=_("NAME"),
        default=None,
        help=_(
            "the CPU kernel set, e.g. haswell or skylakex (default: $PACKER_CPU_VARIANT, else "
            "the best one this machine runs correctly, self-tested once per machine; "
            "--info --verbose lists them)"
        ),
    )
    res.add_argument(
        "-fa",
        "--flash-attn",
        choices=FLASH_ATTN_CHOICES,
        nargs="?",
        const="on",
        default="auto",
        help=_(
            "flash attention: auto = where the backend supports it, as llama.cpp decides; a "
            "bare -fa means on (default: %(default)s)"
        ),
    )
    res.add_argument(
        "--cache-dir",
        metavar=_("DIR"),
        help=_(
            "where the model is unpacked on first run (default: $PACKER_CACHE, "
            "$XDG_CACHE_HOME/packer or ~/.cache/packer)"
        ),
    )
    res.add_argument(
        "--stats",
        action="store_true",
        help=_("after a one-shot answer, print llama.cpp's timings as one JSON line on stderr"),
    )
    res.add_argument(
        "-v",
        "--verbose",
        "--log-verbose",
        action="store_true",
        help=_("show llama.cpp's own log on stderr"),
    )

    srv = p.add_argument_group(
        _("server"),
        _(
            "Server flags also read llama-server's LLAMA_ARG_* variables, e.g. "
            "LLAMA_ARG_PORT=8081\n"
            "(README lists them); a flag on the command line wins over its variable."
        ),
    )
    srv.add_argument(
        "--host",
        default="127.0.0.1",
        metavar=_("ADDRESS"),
        help=_("address to listen on; 0.0.0.0 = the whole network (default: %(default)s)"),
    )
    srv.add_argument("--port", type=_whole_number, default=8080, metavar=_("PORT"), help=default)
    srv.add_argument(
        "--api-key",
        metavar=_("KEY"),
        help=_(
            "require 'Authorization: Bearer KEY' (all but /health); --info and --help never "
            "show a key baked into the file"
        ),
    )
    srv.add_argument(
        "--api-key-file",
        metavar=_("FILE"),
        help=_(
            "read the API key from the first line of FILE; or set $PACKER_API_KEY (unlike "
            "--api-key, neither shows the key to other users in `ps`)"
        ),
    )
    srv.add_argument(
        "--alias",
        metavar=_("NAME"),
        help=_("model name reported by the API (default: the model's name)"),
    )
    srv.add_argument(
        "--ollama-port",
        type=_whole_number,
        metavar=_("PORT"),
        help=_("also serve Ollama's API on PORT of the same host (Ollama's own is 11434)"),
    )
    srv.add_argument(
        "--cors",
        action="append",
        default=[],
        metavar=_("ORIGIN"),
        help=_(
            "let web pages from ORIGIN call the API (repeat or comma-separate; * = any); "
            "default: none, only the server's own page"
        ),
    )
    srv.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar=_("NAME"),
        help=_(
            "on a loopback --host, also answer requests whose Host header is NAME, e.g. the "
            "public name a reverse proxy passes on (repeat or comma-separate; * = any); "
            "default: localhost and loopback addresses only"
        ),
    )
    srv.add_argument(
        "--max-body-mb",
        type=_number,
        default=8.0,
        metavar="MB",
        help=_("largest request body accepted (default: %(default)s)"),
    )
    srv.add_argument(
        "--max-tokens",
        type=_whole_number,
        default=-1,
        metavar="N",
        help=_(
            "most tokens one request may generate, -1 = up to the context (default: %(default)s)"
        ),
    )
    srv.add_argument(
        "--no-webui",
        action="store_true",
        help=_("do not serve the web chat page; / then answers like Ollama"),
    )
    srv.add_argument(
        "-np",
        "--parallel",
        type=_whole_number,
        default=None,
        metavar="N",
        help=_(
            "requests generated at once (slots), decoded together in one batch; they share the "
            "context, and any one may use all of it (default: 4 with --server, else 1)"
        ),
    )
    srv.add_argument(
        "--max-queue",
        type=_whole_number,
        default=64,
        metavar="N",
        help=_(
            "requests that may wait for a free slot; more get HTTP 503 with Retry-After "
            "(default: %(default)s)"
        ),
    )
    srv.add_argument(
        "-cram",
        "--cache-ram",
        type=int,
        default=None,
        metavar="MIB",
        help=_(
            "host memory for the prompts of idle slots, in MiB: when a request starts, the "
            "other idle slots' context moves there, so it does not slow the running requests, "
            "and comes back for a prompt that starts the same way; 0 = keep it in the context, "
            "-1 = no limit (as llama-server's; default: 8192, at most a quarter of the free "
            "memory)"
        ),
    )
    srv.add_argument(
        "--max-connections",
        type=_whole_number,
        default=0,
        metavar="N",
        help=_(
            "connections served at once; more get HTTP 503 at once, 0 = slots + --max-queue + "
            "{margin} (default: %(default)s)"
        ).format(margin=CONNECTIONS_MARGIN),
    )
    srv.add_argument(
        "--nobrowser",
        action="store_true",
        help=_(
            "do not open the chat page in a web browser (by default --server, and a start "
            "without a terminal, open it when a desktop session is present)"
        ),
    )
    srv.add_argument(
        "--metrics",
        action="store_true",
        help=_("serve GET /metrics in Prometheus text format (as llama-server's --metrics)"),
    )
    srv.add_argument(
        "--reasoning-format",
        type=_reasoning_format,
        choices=REASONING_FORMATS,
        default="deepseek",
        help=_(
            "deepseek = a reasoning model's <think> text goes to reasoning_content (OpenAI) and "
            "thinking (Ollama); none = it stays inside the answer (default: %(default)s)"
        ),
    )

    compat = p.add_argument_group(_("accepted for llamafile and llama-server command lines"))
    compat.add_argument(
        "--embedding",
        "--embeddings",
        action="store_true",
        help=_("nothing to do: the embeddings endpoints are always served"),
    )
    compat.add_argument(
        "--jinja",
        action="store_true",
        help=_("nothing to do: the chat template is always run as Jinja"),
    )
    compat.add_argument(
        "--log-disable",
        action="store_true",
        help=_("nothing to do: llama.cpp's log is off unless -v"),
    )

    p.add_argument(
        LANG_FLAG,
        metavar=_("CODE"),
        help=_(
            "language of messages and help, e.g. en or es (default: $PACKER_LANG, else the "
            "locale: $LANGUAGE, $LC_ALL, $LC_MESSAGES, $LANG; English when there is no "
            "translation)"
        ),
    )

    # development hooks (not shown): run the unfrozen runtime on a GGUF or a model.run
    p.add_argument("--gguf", help=argparse.SUPPRESS)
    p.add_argument("--bundle", help=argparse.SUPPRESS)
    return p


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            _("{value!r} is not a whole number").format(value=text)
        ) from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            _("{value!r} is not a number").format(value=text)
        ) from None


def _rpc_endpoints(text: str) -> list[Endpoint] | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return parse_endpoints(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(
            _("expected seconds from 0 to 3600, not {value!r}").format(value=text)
        )
    return value


def _tensor_split(text: str) -> list[float]:
    try:
        parts = [float(part) for part in text.replace("/", ",").split(",")]
    except ValueError:
        parts = []
    if not parts or any(part < 0 for part in parts) or not any(parts) or len(parts) > 128:
        raise argparse.ArgumentTypeError(
            _("expected shares such as 1,1 or 3,1 (numbers, 0 or more), not {value!r}").format(
                value=text
            )
        )
    return parts


def _reasoning_format(text: str) -> str:
    # llama-server's default, auto, is what deepseek does here: reasoning split off where found
    return "deepseek" if text == "auto" else text


def _gpu_layers(text: str) -> int | str:
    try:
        return parse_gpu_layers(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def requested_language(args: Sequence[str]) -> str | None:
    """The value of the last ``--lang X``/``--lang=X`` in ``args`` (None when there is none),
    found before parsing: the parser itself speaks the language."""
    found = None
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == LANG_FLAG and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith(LANG_FLAG + "="):
            found = arg.split("=", 1)[1]
    return found


def choose_language(argv: Sequence[str], baked: Sequence[str] = ()) -> str:
    """Speak the language asked for by ``--lang`` (the command line's over the baked one), else
    by ``PACKER_LANG`` or the locale (:func:`packer.runtime.i18n.resolve`); its code. An unknown
    one raises :class:`UsageError`, said in the locale's language."""
    requested = requested_language(argv) or requested_language(baked)
    try:
        return i18n.setup(requested)
    except i18n.LanguageError as exc:
        environ = {k: v for k, v in os.environ.items() if k != "PACKER_LANG"}
        i18n.setup(None, environ)  # say it in the locale's language
        raise UsageError(str(exc)) from None


def parse(
    argv: list[str],
    baked: list[str],
    prog: str = "model.run",
    environ: Mapping[str, str] | None = None,
) -> argparse.Namespace:
    """Parse ``argv`` on top of llama-server's ``LLAMA_ARG_*`` variables in ``environ`` (default:
    the process's; :mod:`packer.runtime.llama_env`) on top of the ``baked`` default arguments,
    which --help shows as defaults. Chooses the language first (:func:`choose_language`)."""
    choose_language(argv, baked)
    parser = build_parser(prog)
    given: dict[str, Any] = {}
    if baked:
        given.update(_explicit(vars(parser.parse_args(baked)), parser))
        parser.epilog = _("defaults baked into this file: {args}").format(
            args=shlex.join(redact_args(baked))
        )
    env_error = None
    try:
        given.update(llama_env.defaults(parser, os.environ if environ is None else environ))
    except ValueError as exc:
        env_error = str(exc)
    parser.set_defaults(**given)
    args = parser.parse_args(argv)  # --help and a bad flag end here, a bad variable after it
    if env_error:
        raise UsageError(env_error)
    plain = build_parser(prog)
    typed = _explicit(vars(plain.parse_args(argv)), plain)  # what the command line says itself
    _choose_mode(args, typed)
    if args.rpc_server:
        if args.rpc:
            raise UsageError(
                _("--rpc-server serves other machines and --rpc uses them: pass only one")
            )
        if "port" not in typed:  # the server's 8080 is not a worker's port
            args.port = RPC_DEFAULT_PORT
        if args.announce and is_loopback(args.host):
            raise UsageError(
                _(
                    "--announce tells the LAN about this worker, which listens only on "
                    "{host}: add --host 0.0.0.0 (or this machine's address)"
                ).format(host=args.host)
            )
    elif args.announce:
        raise UsageError(_("--announce goes with --rpc-server"))
    key = args.api_key
    if key is not None and not key.strip():
        raise UsageError(
            _(
                "--api-key is empty: give the key clients must send, or leave --api-key out to "
                "serve without one"
            )
        )
    if key is not None and key != key.strip():
        raise UsageError(
            _(
                "--api-key is padded with spaces, which clients cannot send: give the key "
                "clients must send, or leave --api-key out to serve without one"
            )
        )
    return args


def _choose_mode(args: argparse.Namespace, typed: dict[str, Any]) -> None:
    """--server against --cli/--chat: the one typed wins over the one baked in; both typed (or
    both baked) is an error. ``--chat -p TEXT``: TEXT is the system prompt, as in llamafile."""
    terminal = [flag for flag in ("cli", "chat") if getattr(args, flag)]
    if args.server and terminal:
        typed_terminal = any(flag in typed for flag in terminal)
        if ("server" in typed) == typed_terminal:
            raise UsageError(
                _("--server and --{mode} ask for different things: pass only one").format(
                    mode=terminal[-1]
                )
            )
        if typed_terminal:
            args.server = False
        else:
            args.cli = args.chat = False
    if args.chat and args.prompt is not None:
        if "chat" not in typed and "prompt" in typed:  # -p typed, --chat baked: one answer
            args.chat = False
            return
        if "system" in typed:
            raise UsageError(
                _("with --chat, -p TEXT is the system prompt and -sys gives one too: pass only one")
            )
        args.system, args.prompt = args.prompt, None


class UsageError(ValueError):
    """A command line that parses but cannot be right; ``str()`` is one line for the user."""


def redact_args(args: list[str] | tuple[str, ...]) -> list[str]:
    """``args`` with the values of secret flags (``--api-key``) replaced by ``REDACTED``."""
    out: list[str] = []
    hide_next = False
    for arg in args:
        if hide_next:
            out.append("REDACTED")
            hide_next = False
        elif arg in SECRET_FLAGS:
            out.append(arg)
            hide_next = True
        elif arg.startswith(tuple(f"{flag}=" for flag in SECRET_FLAGS)):
            out.append(arg.split("=", 1)[0] + "=REDACTED")
        else:
            out.append(arg)
    return out


def _explicit(values: dict[str, Any], parser: argparse.ArgumentParser) -> dict[str, Any]:
    defaults = {a.dest: a.default for a in parser._actions}
    return {k: v for k, v in values.items() if defaults.get(k) != v}
