"""The server's API key, from one of three places (a key on the command line shows in ``ps``).

First match wins:

1. the command line: ``--api-key KEY`` or ``--api-key-file FILE`` (both at once: a usage
   error);
2. ``$PACKER_API_KEY``, else llama-server's ``$LLAMA_API_KEY`` (empty: as if unset), else the
   file named by llama-server's ``$LLAMA_ARG_API_KEY_FILE``;
3. the defaults baked into the file (``--api-key`` or ``--api-key-file`` given to ``packer
   build``), so a key baked in keeps working.

A key file's first line is the key, surrounding spaces and the line end (``\\n`` or ``\\r\\n``)
removed; a missing, unreadable or empty file is a one-line error before the model loads.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from packer.runtime.cli import UsageError
from packer.runtime.i18n import _

ENV_VAR = "PACKER_API_KEY"
LLAMA_ENV_VAR = "LLAMA_API_KEY"  # llama-server's names for --api-key and --api-key-file
LLAMA_FILE_VAR = "LLAMA_ARG_API_KEY_FILE"
MAX_LINE = 4096  # a key is short; a huge first line is the wrong file


def _given(argv: list[str], flag: str) -> bool:
    for arg in argv:
        if arg == "--":
            return False
        if arg == flag or arg.startswith(flag + "="):
            return True
    return False


def resolve(args: argparse.Namespace, argv: list[str], environ: Mapping[str, str]) -> str | None:
    """The key clients must send, or None for no key (see the module's docstring).
    ``argv``: the command line as typed (without the baked defaults)."""
    on_key, on_file = _given(argv, "--api-key"), _given(argv, "--api-key-file")
    if on_key and on_file:
        raise UsageError(_("--api-key and --api-key-file both give a key: pass only one"))
    if on_key:
        return str(args.api_key)
    if on_file:
        return read_key_file(args.api_key_file)
    for var in (ENV_VAR, LLAMA_ENV_VAR):
        env = environ.get(var)
        if env:
            key = env.strip()
            if not key:
                raise UsageError(
                    _("${name} is only spaces: set it to the key clients must send").format(
                        name=var
                    )
                )
            return key
    if environ.get(LLAMA_FILE_VAR):
        try:
            return read_key_file(environ[LLAMA_FILE_VAR])
        except UsageError as exc:
            raise UsageError(f"${LLAMA_FILE_VAR}: {exc}") from None
    if args.api_key_file:
        if args.api_key is not None:
            raise UsageError(_("--api-key and --api-key-file both give a key: pass only one"))
        return read_key_file(args.api_key_file)
    return str(args.api_key) if args.api_key is not None else None


def read_key_file(path: str) -> str:
    """The first line of ``path``, stripped; a one-line :class:`UsageError` when there is none."""
    try:
        with open(path, "rb") as f:
            raw = f.readline(MAX_LINE + 1)
    except FileNotFoundError:
        raise UsageError(_("--api-key-file {path}: no such file").format(path=path)) from None
    except OSError as exc:
        raise UsageError(
            _("--api-key-file {path}: cannot read it ({reason})").format(
                path=path, reason=exc.strerror or exc
            )
        ) from None
    if len(raw) > MAX_LINE:
        raise UsageError(
            _("--api-key-file {path}: its first line is too long to be a key").format(path=path)
        )
    try:
        key = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise UsageError(
            _("--api-key-file {path}: its first line is not text (UTF-8)").format(path=path)
        ) from None
    if not key:
        raise UsageError(
            _("--api-key-file {path}: the first line is empty: write the key there").format(
                path=path
            )
        )
    return key
