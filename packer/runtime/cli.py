"""Command-line flags of model.run, llamafile/llama.cpp style, with defaults baked in at build time."""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from packer.runtime.backend import GPU_CHOICES, parse_gpu_layers
from packer.runtime.connections import CONNECTIONS_MARGIN
from packer.runtime.engine import FLASH_ATTN_CHOICES

SECRET_FLAGS = ("--api-key",)  # never shown by --help or --info

DESCRIPTION = """\
Run the language model inside this file: no installation, no network.

  %(prog)s                         chat in the terminal
  %(prog)s -p "What is a GGUF?"    one answer on stdout
  %(prog)s --server                HTTP API (llama.cpp, OpenAI) + web chat on http://127.0.0.1:8080
  %(prog)s --info                  what model this is
"""


def build_parser(prog: str = "model.run") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    mode = p.add_argument_group("what to do (default: terminal chat)")
    mode.add_argument("-p", "--prompt", metavar="TEXT", help="answer TEXT once on stdout and exit")
    mode.add_argument(
        "--server", action="store_true", help="serve the HTTP API and the web chat page"
    )
    mode.add_argument(
        "--info", action="store_true", help="print the model's manifest (JSON) and exit"
    )
    mode.add_argument(
        "--extract",
        metavar="FILE",
        help="write the model out as a GGUF file (for other tools) and exit",
    )
    mode.add_argument("--version", action="store_true", help="print the runtime version and exit")
    mode.add_argument(
        "--license",
        action="store_true",
        help="print the model's licence texts and model card and exit",
    )
    mode.add_argument(
        "--verify",
        action="store_true",
        help="check that this file (and each of its parts) is complete and undamaged, without "
        "running the model, and exit",
    )
    mode.add_argument(
        "--uninstall",
        "--clean-cache",
        dest="uninstall",
        action="store_true",
        help="remove what this file unpacked into the cache folder (model and runtime), say how "
        "much space that freed, and exit",
    )

    gen = p.add_argument_group("generation")
    gen.add_argument(
        "--raw", action="store_true", help="plain completion of the prompt, no chat template"
    )
    gen.add_argument(
        "--system", metavar="TEXT", help="system prompt for chat (default: the model's own)"
    )
    gen.add_argument(
        "--show-thinking",
        action="store_true",
        help="show a reasoning model's thinking (its <think> section), dimmed on a terminal; "
        "by default it is hidden",
    )
    gen.add_argument(
        "-n",
        "--n-predict",
        type=int,
        default=-1,
        metavar="N",
        help="tokens to generate, -1 = until the answer ends (default: %(default)s)",
    )
    gen.add_argument(
        "--temp",
        type=float,
        default=0.8,
        metavar="T",
        help="temperature, 0 = always the most likely token (default: %(default)s)",
    )
    gen.add_argument("--top-k", type=int, default=40, metavar="K", help="default: %(default)s")
    gen.add_argument("--top-p", type=float, default=0.95, metavar="P", help="default: %(default)s")
    gen.add_argument("--min-p", type=float, default=0.05, metavar="P", help="default: %(default)s")
    gen.add_argument(
        "--repeat-penalty", type=float, default=1.1, metavar="X", help="default: %(default)s"
    )
    gen.add_argument(
        "--seed",
        type=int,
        default=-1,
        metavar="N",
        help="random seed, -1 = random (default: %(default)s)",
    )

    res = p.add_argument_group("resources")
    res.add_argument(
        "-c",
        "--ctx-size",
        type=int,
        default=4096,
        metavar="N",
        help="context size in tokens, 0 = the model's own (default: %(default)s)",
    )
    res.add_argument(
        "-t",
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads (default: all available cores)",
    )
    res.add_argument(
        "--gpu",
        choices=GPU_CHOICES,
        default="auto",
        help="where to compute: auto = a GPU if this runtime has a backend for one (Vulkan, or "
        "CUDA in the cuda build) and finds a usable device, else the CPU (default: %(default)s)",
    )
    res.add_argument(
        "-ngl",
        "--gpu-layers",
        type=_gpu_layers,
        default="auto",
        metavar="N|auto",
        help="layers to offload to the GPU; auto = as many as fit in its free memory "
        "(default: %(default)s)",
    )
    res.add_argument(
        "--cpu-variant",
        metavar="NAME",
        default=None,
        help="the CPU kernel set, e.g. haswell or skylakex (default: $PACKER_CPU_VARIANT, else "
        "the best one this machine runs correctly, self-tested once per machine; "
        "--info --verbose lists them)",
    )
    res.add_argument(
        "-fa",
        "--flash-attn",
        choices=FLASH_ATTN_CHOICES,
        nargs="?",
        const="on",
        default="auto",
        help="flash attention: auto = where the backend supports it, as llama.cpp decides; a "
        "bare -fa means on (default: %(default)s)",
    )
    res.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="where the model is unpacked on first run (default: $PACKER_CACHE, $XDG_CACHE_HOME/packer or ~/.cache/packer)",
    )
    res.add_argument(
        "--stats",
        action="store_true",
        help="after a one-shot answer, print llama.cpp's timings as one JSON line on stderr",
    )
    res.add_argument("--verbose", action="store_true", help="show llama.cpp's own log on stderr")

    srv = p.add_argument_group("server")
    srv.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; 0.0.0.0 = the whole network (default: %(default)s)",
    )
    srv.add_argument("--port", type=int, default=8080, help="default: %(default)s")
    srv.add_argument(
        "--api-key",
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' (all but /health); --info and --help never "
        "show a key baked into the file",
    )
    srv.add_argument(
        "--api-key-file",
        metavar="FILE",
        help="read the API key from the first line of FILE; or set $PACKER_API_KEY (unlike "
        "--api-key, neither shows the key to other users in `ps`)",
    )
    srv.add_argument(
        "--alias", metavar="NAME", help="model name reported by the API (default: the model's name)"
    )
    srv.add_argument(
        "--ollama-port",
        type=int,
        metavar="PORT",
        help="also serve Ollama's API on PORT of the same host (Ollama's own is 11434)",
    )
    srv.add_argument(
        "--cors",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let web pages from ORIGIN call the API (repeat or comma-separate; * = any); "
        "default: none, only the server's own page",
    )
    srv.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="on a loopback --host, also answer requests whose Host header is NAME, e.g. the "
        "public name a reverse proxy passes on (repeat or comma-separate; * = any); default: "
        "localhost and loopback addresses only",
    )
    srv.add_argument(
        "--max-body-mb",
        type=float,
        default=8.0,
        metavar="MB",
        help="largest request body accepted (default: %(default)s)",
    )
    srv.add_argument(
        "--max-tokens",
        type=int,
        default=-1,
        metavar="N",
        help="most tokens one request may generate, -1 = up to the context (default: %(default)s)",
    )
    srv.add_argument(
        "--no-webui",
        action="store_true",
        help="do not serve the web chat page; / then answers like Ollama",
    )
    srv.add_argument(
        "-np",
        "--parallel",
        type=int,
        default=None,
        metavar="N",
        help="requests generated at once (slots), decoded together in one batch; each slot gets "
        "--ctx-size / N tokens (default: 4 with --server, else 1)",
    )
    srv.add_argument(
        "--max-queue",
        type=int,
        default=64,
        metavar="N",
        help="requests that may wait for a free slot; more get HTTP 503 with Retry-After "
        "(default: %(default)s)",
    )
    srv.add_argument(
        "--max-connections",
        type=int,
        default=0,
        metavar="N",
        help="connections served at once; more get HTTP 503 at once, 0 = slots + --max-queue + "
        f"{CONNECTIONS_MARGIN} (default: %(default)s)",
    )
    srv.add_argument(
        "--nobrowser",
        action="store_true",
        help="do not open the chat page in a web browser (by default --server, and a start "
        "without a terminal, open it when a desktop session is present)",
    )

    p.add_argument(
        "--lang",
        metavar="CODE",
        help="language of messages and help, e.g. en or es (default: $PACKER_LANG, else the "
        "locale: $LANGUAGE, $LC_ALL, $LC_MESSAGES, $LANG; English when there is no translation)",
    )

    # development hooks (not shown): run the unfrozen runtime on a GGUF or a model.run
    p.add_argument("--gguf", help=argparse.SUPPRESS)
    p.add_argument("--bundle", help=argparse.SUPPRESS)
    return p


def _gpu_layers(text: str) -> int | str:
    try:
        return parse_gpu_layers(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse(argv: list[str], baked: list[str], prog: str = "model.run") -> argparse.Namespace:
    """Parse ``argv`` on top of the ``baked`` default arguments, which --help shows as defaults."""
    parser = build_parser(prog)
    if baked:
        base = parser.parse_args(baked)
        parser.set_defaults(**_explicit(vars(base), parser))
        parser.epilog = "defaults baked into this file: " + shlex.join(redact_args(baked))
    args = parser.parse_args(argv)
    key = args.api_key
    if key is not None and (not key.strip() or key != key.strip()):
        what = "empty" if not key.strip() else "padded with spaces, which clients cannot send"
        raise UsageError(
            f"--api-key is {what}: give the key clients must send, or leave --api-key out to "
            "serve without one"
        )
    return args


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
