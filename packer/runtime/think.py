"""A reasoning model's ``<think>…</think>`` section, split from its answer while it streams.

Reasoning models (DeepSeek-R1 and its distillations, Qwen3, QwQ, ...) begin their answer with
a thinking section between ``<think>`` and ``</think>``. Some chat templates already open it at
the end of the generation prompt, so the generated text starts inside it and only ``</think>``
appears. The splitting itself is :mod:`packer.runtime.reasoning`'s (one implementation for the
terminal chat and the server): :class:`ThinkFilter` is its :class:`TagSplitter` for ``<think>``,
and :class:`ThinkView` shows the parts: thinking hidden (with a short "thinking…" indicator on
a terminal) or, with ``--show-thinking``, dimmed on a terminal and between its tags elsewhere.
Only a ``<think>`` at the very start of the answer counts: a model that writes about the tag in
its answer is shown as it wrote it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, TextIO

from packer.runtime.i18n import _
from packer.runtime.reasoning import (
    ANSWER,
    THINK,
    THINK_TAGS,
    Kind,
    Markers,
    TagSplitter,
    opens_reasoning,
)

if TYPE_CHECKING:
    from packer.runtime.engine import Engine

__all__ = [
    "ANSWER",
    "THINK",
    "Kind",
    "ThinkFilter",
    "ThinkView",
    "opens_thinking",
    "prompt_opens_thinking",
    "write_answer",
]

OPEN, CLOSE = THINK_TAGS.open, THINK_TAGS.close

DIM, RESET, ERASE_LINE = "\x1b[2m", "\x1b[0m", "\r\x1b[K"


class ThinkFilter(TagSplitter):
    """Splits streamed text into ``("think", text)`` and ``("answer", text)`` parts.

    ``starts_inside``: the prompt already opened ``<think>`` (see :func:`opens_thinking`).
    The whitespace between ``</think>`` and the answer is dropped, as is the whitespace before a
    leading ``<think>``. A section that is never closed is all thinking. ``markers``: another
    family's (:func:`packer.runtime.reasoning.markers_for`).
    """

    def __init__(self, starts_inside: bool = False, markers: Markers = THINK_TAGS) -> None:
        super().__init__(markers, starts_inside)


def opens_thinking(prompt_tail: str) -> bool:
    """Whether a generation prompt ends inside an opened ``<think>`` section."""
    return opens_reasoning(prompt_tail, THINK_TAGS)


def prompt_opens_thinking(engine: Engine) -> bool:
    """Whether the model's chat template opens ``<think>`` in its generation prompt."""
    if not engine.has_chat_template:
        return False
    from packer.runtime.generate import PromptError, chat_tokens, detokenize

    try:
        tokens, _stop = chat_tokens(engine, [{"role": "user", "content": "Hi"}], [])
    except PromptError:
        return False
    return opens_thinking(detokenize(engine, tokens[-16:]))


class ThinkView:
    """Writes one answer's parts: the answer to ``out``; the thinking dimmed (terminal) or
    between its tags (``show``), else hidden behind a transient indicator on ``err`` (only when
    ``err`` is a terminal)."""

    def __init__(self, out: TextIO, err: TextIO, show: bool) -> None:
        self.out, self.err, self.show = out, err, show
        self._out_tty = _isatty(out)
        self._err_tty = _isatty(err)
        self._in_think = False
        self._indicator = False
        self._shown = False  # some thinking text written (show)
        self.answer: list[str] = []
        self.thinking: list[str] = []

    def write(self, kind: Kind, text: str) -> None:
        if kind == THINK:
            self.thinking.append(text)
            if self.show:
                if not self._in_think:
                    self.out.write(DIM if self._out_tty else OPEN)
                if self._out_tty and not self._shown:
                    text = text.lstrip("\n")  # on a terminal: no blank line above the thought
                self._shown = self._shown or bool(text)
                self.out.write(text)
                self.out.flush()
            elif not self._indicator and self._err_tty:
                self.err.write(DIM + _("thinking…") + RESET)
                self.err.flush()
                self._indicator = True
            self._in_think = True
            return
        self._leave_think(answer_follows=True)
        self.answer.append(text)
        self.out.write(text)
        self.out.flush()

    def _leave_think(self, answer_follows: bool) -> None:
        if self._indicator:
            self.err.write(ERASE_LINE)
            self.err.flush()
            self._indicator = False
        if self._in_think and self.show:
            if self._out_tty:  # one blank line between the thought and the answer
                ends_line = "".join(self.thinking[-1:]).endswith("\n")
                gap = "\n" if ends_line else "\n\n"
                self.out.write(RESET + (gap if answer_follows else ""))
            else:
                self.out.write(CLOSE + ("\n\n" if answer_follows else ""))
            self.out.flush()
        self._in_think = False

    def close(self) -> None:
        """The stream ended (or was stopped): no indicator left, colours reset."""
        self._leave_think(answer_follows=False)

    def only_thought(self) -> bool:
        """The model thought, hidden, and gave no answer (e.g. -n ended its thinking)."""
        return bool(self.thinking) and not self.answer and not self.show

    @staticmethod
    def only_thought_hint() -> str:
        return _("(the model only thought: --show-thinking shows it)")


def write_answer(
    pieces: Iterable[str], view: ThinkView, starts_inside: bool, markers: Markers = THINK_TAGS
) -> None:
    """Stream ``pieces`` through a :class:`ThinkFilter` into ``view`` (the caller closes the
    view, also when a Ctrl-C stops the stream)."""
    think = ThinkFilter(starts_inside, markers)
    for piece in pieces:
        for kind, text in think.feed(piece):
            view.write(kind, text)
    for kind, text in think.flush():
        view.write(kind, text)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
