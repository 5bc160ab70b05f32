"""Reading the terminal chat's input: line editing, history and multi-line messages.

On a terminal (stdin and stdout both) with prompt_toolkit (BSD licence, pure Python, frozen
into the runtime; the runtime's Python has no readline module): Emacs-style editing (arrows,
Home/End, Ctrl-A/E/W/K/U, Alt-B/F), Up/Down through :class:`ChatHistory`, Alt-Enter for a new
line, bracketed paste. Elsewhere, or when prompt_toolkit cannot start, plain :func:`input`.
Both read the multi-line forms of :mod:`packer.runtime.chat_commands`. ``read`` raises
EOFError for Ctrl-D on an empty line and KeyboardInterrupt for Ctrl-C on an empty line (a
Ctrl-C on a line with text clears it).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from typing import Any, Protocol

from packer.runtime.chat_commands import continued
from packer.runtime.chat_history import ChatHistory

log = logging.getLogger("packer.runtime.chat")

PROMPT, CONTINUATION = "> ", ". "


class LineReader(Protocol):
    def read(self) -> str: ...


class PlainReader:
    """:func:`input`, for a pipe or a terminal prompt_toolkit cannot drive."""

    def __init__(self, history: ChatHistory) -> None:
        self.history = history

    def read(self) -> str:
        text = input(PROMPT)
        while (kept := continued(text)) is not None:
            text = kept + input(CONTINUATION)
        self.history.add(text)
        return text


class TerminalReader:
    """prompt_toolkit's line editor; falls back to :class:`PlainReader` for good if it fails."""

    def __init__(self, history: ChatHistory) -> None:
        os.environ.setdefault("PROMPT_TOOLKIT_NO_CPR", "1")  # no menus: no cursor queries
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import History
        from prompt_toolkit.key_binding import KeyBindings

        class _History(History):  # prompt_toolkit's view of ChatHistory
            def load_history_strings(self) -> Iterable[str]:
                return list(reversed(history.entries))  # newest first

            def store_string(self, string: str) -> None:
                history.add(string)

        keys = KeyBindings()

        @keys.add("enter")
        def _enter(event: Any) -> None:
            buffer = event.current_buffer
            kept = continued(buffer.text) if buffer.cursor_position == len(buffer.text) else None
            if kept is None:
                buffer.text = buffer.text.rstrip()  # a paste's last line break: not kept
                buffer.validate_and_handle()
            else:
                buffer.text = kept
                buffer.cursor_position = len(kept)

        @keys.add("escape", "enter")
        def _newline(event: Any) -> None:
            event.current_buffer.insert_text("\n")

        @keys.add("c-c")
        def _interrupt(event: Any) -> None:
            buffer = event.current_buffer
            if buffer.text:
                buffer.reset()  # a Ctrl-C on a line with text clears it
            else:
                event.app.exit(exception=KeyboardInterrupt())

        self._plain = PlainReader(history)
        self._failed = False
        self._session = PromptSession(
            history=_History(),
            key_bindings=keys,
            multiline=True,
            prompt_continuation=lambda width, line, wrap: CONTINUATION.rjust(width),
            enable_open_in_editor=False,
            enable_system_prompt=False,
            enable_suspend=False,
            mouse_support=False,
        )

    def read(self) -> str:
        if self._failed:
            return self._plain.read()
        try:
            return self._session.prompt(PROMPT)
        except (EOFError, KeyboardInterrupt):
            raise
        except Exception as exc:  # a terminal prompt_toolkit cannot drive: plain input from now
            log.debug("line editor failed, using plain input: %r", exc)
            self._failed = True
            return self._plain.read()


def line_reader(history: ChatHistory) -> LineReader:
    """The best reader for this process's stdin and stdout."""
    if sys.stdin.isatty() and sys.stdout.isatty():
        try:
            return TerminalReader(history)
        except Exception as exc:  # not installed, or no usable terminal
            log.debug("no line editor (%r): plain input", exc)
    return PlainReader(history)
