"""What a line typed in the terminal chat means: a slash command, a message, or a message that
goes on over more lines.

Several lines make one message in three ways, as users of llama.cpp's and Ollama's command
lines expect: Alt-Enter (or Esc then Enter) starts a new line, a line ending in ``\\`` goes on
to the next one, and a block between ``\"\"\"`` and ``\"\"\"`` is one message. A paste of
several lines is one message too (bracketed paste, on a terminal that supports it).
"""

from __future__ import annotations

from dataclasses import dataclass

from packer.runtime.i18n import _

QUOTES = '"""'

# command names: the first one is the one /help shows first
HELP = ("/help", "/?", "/ayuda")
RESET = ("/reset", "/clear")
EXIT = ("/exit", "/bye", "/quit", "/salir")
SYSTEM = ("/system",)


@dataclass(frozen=True)
class Command:
    """A slash command: ``name`` is one of help, reset, exit, system, unknown."""

    name: str
    arg: str = ""  # /system's text; the command as typed for an unknown one


def parse_command(text: str) -> Command | None:
    """The command in ``text`` (already stripped), or None when it is a message. A message that
    starts with "/" is typed with "//" (the chat sends it with one)."""
    if not text.startswith("/") or text.startswith("//"):
        return None
    word, _sep, arg = text.partition(" ")
    if "\n" in word:
        word, _sep2, rest = word.partition("\n")
        arg = rest + (" " + arg if arg else "")
    word = word.lower()
    for name, words in (("help", HELP), ("reset", RESET), ("exit", EXIT), ("system", SYSTEM)):
        if word in words:
            return Command(name, arg.strip())
    return Command("unknown", word)


def continued(text: str) -> str | None:
    """When the input typed so far (``text``) goes on to another line: the text to keep, with
    the new line started (a final ``\\`` becomes the line break). None when it is complete."""
    if text.endswith("\\") and not text.endswith("\\\\"):
        return text[:-1] + "\n"
    if _open_block(text):
        return text + "\n"
    return None


def _open_block(text: str) -> bool:
    stripped = text.lstrip()
    return stripped.startswith(QUOTES) and stripped.count(QUOTES) == 1


def message_text(text: str) -> str:
    """The message in a complete input: without the ``\"\"\"`` around a block, stripped."""
    text = text.strip()
    if text.startswith(QUOTES):
        text = text[len(QUOTES) :]
        if text.endswith(QUOTES):
            text = text[: -len(QUOTES)]
    return text.strip()


def help_text(history_file: str | None) -> str:
    """The chat's /help, in the chosen language."""
    keys = [
        (_("Enter"), _("sends the message")),
        (_("Alt-Enter (or Esc, Enter)"), _("starts a new line in the message")),
        (_("a line ending in \\"), _("goes on to the next line")),
        ('""" … """', _("a message of several lines (pasting several lines works too)")),
        (_("Up / Down"), _("your earlier messages")),
        ("Ctrl-A, Ctrl-E, Ctrl-W", _("start of line, end of line, delete a word")),
        ("Ctrl-C", _("stops an answer; twice on an empty line quits")),
        ("Ctrl-D", _("quits")),
    ]
    commands = [
        (", ".join(HELP), _("shows this help")),
        (", ".join(RESET), _("forgets the conversation and starts a new one")),
        (_("/system TEXT"), _("sets the system prompt for the next answers (alone: shows it)")),
        (", ".join(EXIT), _("quits")),
    ]
    width = max(len(k) for k, _d in keys + commands) + 2
    lines = [_("Keys:")] + [f"  {k.ljust(width)}{d}" for k, d in keys]
    lines += [_("Commands:")] + [f"  {k.ljust(width)}{d}" for k, d in commands]
    if history_file:
        lines.append(_("Your messages are kept in {file}.").format(file=history_file))
    return "\n".join(lines)
