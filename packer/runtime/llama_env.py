"""llama-server's ``LLAMA_ARG_*`` environment variables, read as the model.run flags they name.

A container or service set up for llama-server keeps working with a model.run in its place:
``LLAMA_ARG_PORT=8081`` is ``--port 8081``. The order, lowest first: built-in defaults, the
defaults baked into the file (and ``$PACKER_ARGS``), these variables, the command line.

Each value is checked as its flag's would be; a bad one is a one-line error naming the
variable. Yes/no variables take what llama.cpp takes: ``1``, ``true``, ``on``, ``enabled`` or
``0``, ``false``, ``off``, ``disabled`` (any case here); anything else is an error, where
llama-server would quietly ignore it. The API key's variables (``LLAMA_API_KEY``,
``LLAMA_ARG_API_KEY_FILE``) are read with ``$PACKER_API_KEY`` by :mod:`packer.runtime.api_key`.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from packer.runtime.i18n import _

TRUTHY = ("1", "true", "on", "enabled")
FALSEY = ("0", "false", "off", "disabled")


@dataclass(frozen=True)
class EnvFlag:
    var: str
    flag: str  # the model.run flag it stands for
    inverted: bool = False  # a yes/no variable whose "yes" is the flag's "no" (LLAMA_ARG_WEBUI)


# names as llama.cpp's common/arg.cpp spells them (llama-server --help shows each as "env:")
VARIABLES = (
    EnvFlag("LLAMA_ARG_CTX_SIZE", "--ctx-size"),
    EnvFlag("LLAMA_ARG_N_PREDICT", "--n-predict"),
    EnvFlag("LLAMA_ARG_THREADS", "--threads"),
    EnvFlag("LLAMA_ARG_THREADS_BATCH", "--threads-batch"),
    EnvFlag("LLAMA_ARG_CACHE_RAM", "--cache-ram"),
    EnvFlag("LLAMA_ARG_N_GPU_LAYERS", "--gpu-layers"),
    EnvFlag("LLAMA_ARG_FLASH_ATTN", "--flash-attn"),
    EnvFlag("LLAMA_ARG_N_PARALLEL", "--parallel"),
    EnvFlag("LLAMA_ARG_HOST", "--host"),
    EnvFlag("LLAMA_ARG_PORT", "--port"),
    EnvFlag("LLAMA_ARG_ALIAS", "--alias"),
    EnvFlag("LLAMA_ARG_ENDPOINT_METRICS", "--metrics"),
    EnvFlag("LLAMA_ARG_EMBEDDINGS", "--embedding"),
    EnvFlag("LLAMA_ARG_JINJA", "--jinja"),
    EnvFlag("LLAMA_ARG_CHAT_TEMPLATE_FILE", "--chat-template-file"),
    EnvFlag("LLAMA_ARG_THINK", "--reasoning-format"),
    EnvFlag("LLAMA_ARG_TEMPERATURE", "--temp"),
    EnvFlag("LLAMA_ARG_TOP_K", "--top-k"),
    EnvFlag("LLAMA_ARG_TOP_P", "--top-p"),
    EnvFlag("LLAMA_ARG_MIN_P", "--min-p"),
    EnvFlag("LLAMA_ARG_REPEAT_PENALTY", "--repeat-penalty"),
    EnvFlag("LLAMA_ARG_NO_WEBUI", "--no-webui"),
    EnvFlag("LLAMA_ARG_WEBUI", "--no-webui", inverted=True),
    EnvFlag("LLAMA_ARG_UI", "--no-webui", inverted=True),
)


def parse_bool(var: str, raw: str) -> bool:
    """A yes/no variable's value, as llama.cpp reads one; ValueError naming ``var`` otherwise."""
    word = raw.strip().lower()
    if word in TRUTHY:
        return True
    if word in FALSEY:
        return False
    raise ValueError(
        _(
            "${name}={value!r} is not a yes/no value: use 1, true, on or enabled, or 0, false, "
            "off or disabled"
        ).format(name=var, value=raw)
    )


def defaults(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> dict[str, Any]:
    """The parser's defaults the variables set in ``environ`` give (``{dest: value}``). Raises
    ValueError with one line naming the variable when a value is not valid for its flag."""
    actions = {s: a for a in parser._actions for s in a.option_strings}
    out: dict[str, Any] = {}
    for entry in VARIABLES:
        raw = environ.get(entry.var)
        if raw is None:
            continue
        action = actions[entry.flag]
        out[action.dest] = _value(entry, action, raw)
    return out


def _value(entry: EnvFlag, action: argparse.Action, raw: str) -> Any:
    if action.nargs == 0:  # an on/off flag
        on = parse_bool(entry.var, raw)
        return not on if entry.inverted else on
    text = raw
    if action.choices is not None and "on" in action.choices:  # -fa on|off|auto takes 1/0 too
        word = raw.strip().lower()
        text = "on" if word in TRUTHY else "off" if word in FALSEY else word
    try:
        value = action.type(text) if callable(action.type) else text
    except (argparse.ArgumentTypeError, ValueError) as exc:
        raise ValueError(
            _("${name} (for {flag}): {reason}").format(name=entry.var, flag=entry.flag, reason=exc)
        ) from None
    if action.choices is not None and value not in action.choices:
        raise ValueError(
            _("${name}={value!r} is not one of: {choices}").format(
                name=entry.var, value=raw, choices=", ".join(map(str, action.choices))
            )
        )
    return value
