"""A reasoning model's thinking, split from its answer while the answer streams.

Reasoning models write their thinking first, between markers their chat template knows:

- ``<think>…</think>``: DeepSeek-R1 and its distillations, Qwen3, QwQ, SmolLM3, and the default
  for any template (llama-server looks for it in every answer too);
- ``[THINK]…[/THINK]``: Magistral;
- ``<|START_THINKING|>…<|END_THINKING|>``: Command R7B, whose answer then sits between
  ``<|START_RESPONSE|>`` and ``<|END_RESPONSE|>``;
- ``<seed:think>…</seed:think>``: Seed-OSS;
- gpt-oss's harmony messages: ``<|channel|>analysis<|message|>…<|end|>`` is thinking, then
  ``<|start|>assistant<|channel|>final<|message|>…`` is the answer.

:func:`markers_for` picks the family from the chat template's text. Some templates already open
the thinking section at the end of the generation prompt (Qwen3 and DeepSeek-R1 end it with
``<think>\\n``): the generated text then starts inside it and only the closing marker appears;
:func:`opens_reasoning` tells that from the end of the prompt. Only an opening marker at the very
start of the answer counts (after whitespace): a model that writes about ``<think>`` later in
its answer is shown as it wrote it. A marker may be split across pieces: text that may be the
start of one is held back until the next piece decides. A section never closed is all thinking.

:class:`TagSplitter` and :class:`HarmonySplitter` follow the text piece by piece and yield
``("think", text)`` and ``("answer", text)`` parts, the thinking as the model wrote it (the
terminal chat shows it so, :mod:`packer.runtime.think`). :class:`ReasoningSplitter` is what the
server uses: one per generation, ``feed`` gives ``(reasoning, content)`` safe to send now, with
the whitespace around the thinking trimmed and the whitespace between it and the answer dropped,
as llama-server's ``--reasoning-format deepseek`` does.

Markers that are special (control) tokens in the model's vocabulary (``[THINK]``, the Command
R7B and gpt-oss markers) only reach the splitter when the generated tokens are rendered with
their special text; :attr:`Markers.preserved` lists them (llama-server's "preserved tokens").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

THINK: Literal["think"] = "think"
ANSWER: Literal["answer"] = "answer"
Kind = Literal["think", "answer"]
Part = tuple[Kind, str]


@dataclass(frozen=True)
class Markers:
    """One family's reasoning markers. ``answer_open``/``answer_close``: markers around the
    answer that are not part of it (Command R7B's response markers): ``answer_open`` is dropped
    at the start of the answer, ``answer_close`` ends it (whatever follows is dropped)."""

    name: str
    open: str
    close: str
    answer_open: str = ""
    answer_close: str = ""
    # the markers that must be rendered as text when they are special tokens
    preserved: tuple[str, ...] = ()


THINK_TAGS = Markers("think", "<think>", "</think>", preserved=("<think>", "</think>"))
MAGISTRAL = Markers("magistral", "[THINK]", "[/THINK]", preserved=("[THINK]", "[/THINK]"))
COMMAND_R7B = Markers(
    "command-r7b",
    "<|START_THINKING|>",
    "<|END_THINKING|>",
    answer_open="<|START_RESPONSE|>",
    answer_close="<|END_RESPONSE|>",
    preserved=(
        "<|START_THINKING|>",
        "<|END_THINKING|>",
        "<|START_RESPONSE|>",
        "<|END_RESPONSE|>",
        "<|START_ACTION|>",
        "<|END_ACTION|>",
    ),
)
SEED_OSS = Markers(
    "seed-oss", "<seed:think>", "</seed:think>", preserved=("<seed:think>", "</seed:think>")
)
HARMONY = Markers(
    "gpt-oss",
    "<|channel|>analysis<|message|>",
    "<|end|>",
    preserved=("<|start|>", "<|channel|>", "<|constrain|>", "<|message|>", "<|end|>"),
)

# what in a chat template's text names its family, checked in this order; <think> otherwise
_FAMILIES: tuple[tuple[str, Markers], ...] = (
    ("<|channel|>", HARMONY),
    (COMMAND_R7B.open, COMMAND_R7B),
    (MAGISTRAL.open, MAGISTRAL),
    (SEED_OSS.open, SEED_OSS),
)


def markers_for(template: str) -> Markers:
    """The reasoning markers of a chat template (its Jinja text); ``<think>`` when it names
    none of the other families, like llama-server, which looks for ``<think>`` in any answer."""
    for needle, markers in _FAMILIES:
        if needle in template:
            return markers
    return THINK_TAGS


def opens_reasoning(prompt_tail: str, markers: Markers = THINK_TAGS) -> bool:
    """Whether a generation prompt (its end is enough) leaves a thinking section open."""
    start = prompt_tail.rfind(markers.open)
    return start >= 0 and prompt_tail.rfind(markers.close) < start


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that is the start of ``tag`` (to hold back)."""
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


def _may_become(text: str, tag: str) -> bool:
    """``text`` is a proper start of ``tag``: the next piece decides."""
    return len(text) < len(tag) and tag.startswith(text)


class TagSplitter:
    """Splits streamed text into ``("think", text)`` and ``("answer", text)`` parts for a
    family whose thinking sits between two markers.

    ``starts_inside``: the prompt already opened the section (:func:`opens_reasoning`). The
    whitespace before a leading opening marker and between the closing marker and the answer is
    dropped; another section may follow the first (only whitespace between them).
    """

    def __init__(self, markers: Markers = THINK_TAGS, starts_inside: bool = False) -> None:
        self.markers = markers
        self._state: Literal["start", "think", "after", "answer_open", "answer", "done"] = (
            "think" if starts_inside else "start"
        )
        self._held = ""  # text not decided yet (a possible partial marker, leading whitespace)
        self.thought = starts_inside  # any thinking seen (even an empty section)

    def feed(self, piece: str) -> list[Part]:
        m = self.markers
        out: list[Part] = []
        text = self._held + piece
        self._held = ""
        while text:
            state = self._state
            if state == "answer":
                if not m.answer_close:
                    out.append((ANSWER, text))
                    break
                end = text.find(m.answer_close)
                if end >= 0:
                    if end:
                        out.append((ANSWER, text[:end]))
                    self._state = "done"
                    break
                keep = _partial_suffix(text, m.answer_close)
                if len(text) > keep:
                    out.append((ANSWER, text[: len(text) - keep]))
                self._held = text[len(text) - keep :]
                break
            if state == "done":
                break
            if state == "start":
                stripped = text.lstrip()
                if not stripped or _may_become(stripped, m.open):
                    self._held = text  # only whitespace or the start of the marker so far
                    break
                if stripped.startswith(m.open):
                    self._state = "think"
                    self.thought = True
                    text = stripped[len(m.open) :]
                    continue
                self._state = "answer_open"
                continue
            if state == "think":
                end = text.find(m.close)
                if end >= 0:
                    if end:
                        out.append((THINK, text[:end]))
                    self._state = "after"
                    text = text[end + len(m.close) :]
                    continue
                keep = _partial_suffix(text, m.close)
                if len(text) > keep:
                    out.append((THINK, text[: len(text) - keep]))
                self._held = text[len(text) - keep :]
                break
            if state == "after":  # drop the whitespace between the thinking and the answer
                text = text.lstrip()
                if not text:
                    break
                if _may_become(text, m.open):
                    self._held = text
                    break
                if text.startswith(m.open):  # another section
                    self._state = "think"
                    text = text[len(m.open) :]
                    continue
                self._state = "answer_open"
                continue
            # "answer_open": the family's marker before the answer, if any, is dropped
            if m.answer_open:
                stripped = text.lstrip()
                if not stripped or _may_become(stripped, m.answer_open):
                    self._held = text
                    break
                if stripped.startswith(m.answer_open):
                    text = stripped[len(m.answer_open) :]
            self._state = "answer"
        return out

    def flush(self) -> list[Part]:
        """What was held back, at the end of the stream."""
        held, self._held = self._held, ""
        if not held:
            return []
        if self._state == "think":
            return [(THINK, held)]  # never closed: it was all thinking
        if self._state == "start" and not held.strip():
            return []  # whitespace only
        return [(ANSWER, held)]  # what looked like the start of a marker was text after all


# gpt-oss's harmony format
_START, _CHANNEL, _MESSAGE = "<|start|>", "<|channel|>", "<|message|>"
_HEADS = (_START, _CHANNEL)  # how a message begins
_ENDS = ("<|end|>", "<|return|>", "<|call|>")
_MAX_HEADER = 256  # a header longer than this without <|message|> is not one
_CHANNEL_NAME = re.compile(r"\s*([A-Za-z_]+)")


class HarmonySplitter:
    """Splits gpt-oss's harmony messages: the ``analysis`` channel is thinking, ``final`` and
    plain ``commentary`` (a preamble) are answer. A message addressed to a tool (``to=…``) or on
    an unknown channel is passed on whole, markers included, as answer text, for the tool-call
    parser to read. An answer that does not start like a harmony message is all answer."""

    def __init__(self, starts_inside: bool = False) -> None:
        self._state: Literal["start", "header", "body", "between", "answer"] = (
            "body" if starts_inside else "start"
        )
        self._kind: Kind = THINK
        self._raw = False  # the message is passed on whole (markers included)
        self._held = ""
        self.thought = starts_inside

    def feed(self, piece: str) -> list[Part]:
        out: list[Part] = []
        text = self._held + piece
        self._held = ""
        while text:
            state = self._state
            if state == "answer":
                out.append((ANSWER, text))
                break
            if state in ("start", "between"):
                stripped = text.lstrip()
                if not stripped:
                    if state == "start":
                        self._held = text
                    break
                if any(stripped.startswith(m) or _may_become(stripped, m) for m in _HEADS):
                    self._state = "header"
                    text = stripped
                    continue
                self._state = "answer"  # not (or no longer) harmony: the rest is answer
                if state == "between":
                    text = stripped
                continue
            if state == "header":
                at = text.find(_MESSAGE)
                if at < 0:
                    if len(text) > _MAX_HEADER or not any(
                        text.startswith(m) or _may_become(text, m) for m in _HEADS
                    ):
                        self._state = "answer"
                        continue
                    self._held = text
                    break
                header, text = text[:at], text[at + len(_MESSAGE) :]
                self._open_message(header, out)
                continue
            # "body"
            ends = [(i, end) for end in _ENDS if (i := text.find(end)) >= 0]
            if ends:
                at, end = min(ends)
                body = text[:at] + (end if self._raw else "")
                if body:
                    out.append((self._kind, body))
                self._state = "between"
                text = text[at + len(end) :]
                continue
            keep = max(_partial_suffix(text, end) for end in _ENDS)
            if len(text) > keep:
                out.append((self._kind, text[: len(text) - keep]))
            self._held = text[len(text) - keep :]
            break
        return out

    def _open_message(self, header: str, out: list[Part]) -> None:
        channel_at = header.find(_CHANNEL)
        name = None
        if channel_at >= 0:
            match = _CHANNEL_NAME.match(header, channel_at + len(_CHANNEL))
            name = match.group(1) if match else None
        to_tool = "to=" in header
        self._state = "body"
        self._raw = False
        if name == "analysis" and not to_tool:
            self._kind = THINK
            self.thought = True
        elif name in ("final", "commentary") and not to_tool:
            self._kind = ANSWER
        else:
            self._kind = ANSWER
            self._raw = True
            out.append((ANSWER, header + _MESSAGE))

    def flush(self) -> list[Part]:
        held, self._held = self._held, ""
        if not held or (self._state in ("start", "between") and not held.strip()):
            return []
        if self._state == "body":
            return [(self._kind, held)]
        return [(ANSWER, held)]


class ReasoningSplitter:
    """One generation's answer split into reasoning and content as it streams.

    ``template``: the chat template's text (chooses the markers, :func:`markers_for`);
    ``prompt_tail``: the end of the rendered prompt, special tokens as text (a few dozen
    characters are enough; tells whether the template opened the thinking section). The
    reasoning comes without the whitespace around it; the content as the model wrote it, less
    the whitespace between the thinking and it.
    """

    def __init__(self, template: str, prompt_tail: str) -> None:
        self.markers = markers_for(template)
        inside = opens_reasoning(prompt_tail, self.markers)
        self._core: TagSplitter | HarmonySplitter = (
            HarmonySplitter(inside)
            if self.markers is HARMONY
            else TagSplitter(self.markers, inside)
        )
        self._in_reasoning = False  # some reasoning text sent in the current section
        self._trailing = ""  # the reasoning's whitespace so far, sent only if more follows

    @property
    def thought(self) -> bool:
        """Whether the model thought (even an empty section)."""
        return self._core.thought

    def feed(self, text: str) -> tuple[str, str]:
        """``(reasoning, content)`` of ``text`` that is safe to send now."""
        return self._join(self._core.feed(text))

    def finish(self) -> tuple[str, str]:
        """What was held back, at the end of the generation."""
        out = self._join(self._core.flush())
        self._trailing = ""
        return out

    def _join(self, parts: list[Part]) -> tuple[str, str]:
        reasoning: list[str] = []
        content: list[str] = []
        for kind, text in parts:
            if kind == ANSWER:
                content.append(text)
                self._in_reasoning = False  # the thinking ended: its trailing whitespace goes
                self._trailing = ""
                continue
            if not self._in_reasoning:
                text = text.lstrip()
                if not text:
                    continue
                self._in_reasoning = True
            body = text.rstrip()
            if body:
                reasoning.append(self._trailing + body)
                self._trailing = text[len(body) :]
            else:
                self._trailing += text
        return "".join(reasoning), "".join(content)
