"""The generation core: one dialect-neutral request, one generation, its deltas or whole answer.

Every generating endpoint (llama.cpp's ``/completion``, OpenAI's ``/v1/completions`` and
``/v1/chat/completions``, Ollama's ``/api/generate`` and ``/api/chat``) works the same way:

1. its dialect module translates the request body into a :class:`GenRequest`;
2. :meth:`Core.start` builds the prompt tokens (chat template or plain prompt), checks them
   against the context once, applies the server's ``--max-tokens`` cap once and queues the
   generation on the engine's scheduler: a :class:`Generation`;
3. :func:`respond` either drains it into one :class:`Delta` (the whole answer) or streams its
   deltas; a :class:`Render` of the dialect turns those into the dialect's JSON. This is the
   only place where "answer at once or stream" is decided.

A :class:`Delta` carries answer text, reasoning text (a reasoning model's ``<think>`` section,
split off by :func:`reasoning_splitter` unless the reasoning format is "none"), complete tool
calls (the answer's content, after the reasoning split, goes through one
:class:`packer.runtime.tool_calls.ToolCallParser` per generation) and the log-probabilities of
the tokens it holds. A request with tools has its messages and the template's ``tools`` made
by :func:`packer.runtime.tool_calls.messages_for_template`; a required or named call adds the
grammar of :func:`packer.runtime.tool_calls.tool_grammar`. Nothing here knows HTTP or a
dialect's field names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, suppress
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from packer.runtime import generate as gen
from packer.runtime import tool_calls as tc
from packer.runtime import tool_formats as tf
from packer.runtime.generate import GenResult, Sampling, TokenProb
from packer.runtime.metrics import Metrics
from packer.runtime.reasoning import ReasoningSplitter, markers_for
from packer.runtime.replies import Events, Json, Reply
from packer.runtime.server_api import ApiError
from packer.runtime.server_options import ServerFeatures

if TYPE_CHECKING:
    from packer.runtime.engine import Engine

# the server's request log: one logger for the transport and the core (``-v`` shows it)
log = logging.getLogger("packer.runtime.server")


@dataclass
class GenRequest:
    """One generation, whatever dialect asked for it.

    Exactly one of ``messages`` (a chat, rendered with the model's chat template) or
    ``prompt`` (text, token ids, or both, as llama.cpp's ``/completion`` takes it) is set.
    ``context``: token ids that go before the prompt (Ollama's ``context``). ``sampling``
    holds the stop strings, grammar and ``n_probs`` too. ``reasoning``: "deepseek" (split
    ``<think>`` text into :attr:`Delta.reasoning`), "none" (leave it in the answer) or None
    (the server's ``--reasoning-format``). ``max_tokens_field``: the request field the token
    cap is named after in errors."""

    sampling: Sampling
    messages: list[dict[str, Any]] | None = None
    prompt: str | list[int | str] | None = None
    context: list[int] = field(default_factory=list)
    stream: bool = False
    logprobs: bool = False  # report per-token log-probabilities
    top_logprobs: int = 0  # alternatives per token to report
    reasoning: str | None = None
    # tool calling (parsed by the dialects); no choice: "auto" with tools, else "none"
    tools: list[tc.Tool] = field(default_factory=list)
    tool_choice: tc.ToolChoice | None = None
    max_tokens_field: str = "max_tokens"


@dataclass
class Delta:
    """A part of the answer: text safe to show now, reasoning text, complete tool calls and the
    log-probabilities of the tokens these came from."""

    content: str = ""
    reasoning: str = ""  # text inside <think>…</think>
    tool_calls: list[tc.ToolCall] = field(default_factory=list)  # complete calls
    probs: list[TokenProb] = field(default_factory=list)


# -- reasoning -------------------------------------------------------------------------------


class Splitter(Protocol):
    """Splits streamed answer text into (reasoning, content), as ``reasoning.ReasoningSplitter``."""

    def feed(self, text: str) -> tuple[str, str]: ...

    def finish(self) -> tuple[str, str]: ...


def reasoning_splitter(template: str, prompt_tail: str) -> Splitter:
    """The splitter for one generation; ``prompt_tail``: the end of the prompt text (a template
    may open ``<think>`` itself)."""
    return ReasoningSplitter(template, prompt_tail)


# -- the generation ----------------------------------------------------------------------------


class Generation:
    """One running generation. Iterate it for :class:`Delta` objects, or call :meth:`whole`;
    :attr:`result` (usage, timings, why it stopped) is complete after either. Always
    :meth:`close` it (frees the slot and the shutdown gate)."""

    def __init__(
        self,
        core: Core,
        request: GenRequest,
        prompt: list[int],
        params: Sampling,
        result: GenResult,
        pieces: Iterator[str],
        splitter: Splitter | None,
        cleanup: ExitStack,
        tools: tc.ToolCallParser | None = None,
    ) -> None:
        self.core = core
        self.request = request
        self.prompt = prompt
        self.params = params
        self.result = result
        self._pieces = pieces
        self._head: list[str] = []
        self._splitter = splitter
        self._tools = tools
        self._cleanup = cleanup
        self.n_calls = 0  # tool calls made so far
        self._seen_probs = 0
        self._done = False

    @property
    def finish_reason(self) -> str:
        """OpenAI's vocabulary: stop | length | tool_calls (the answer made calls)."""
        return "tool_calls" if self.n_calls else self.result.finish_reason

    def prime(self) -> None:
        """Wait for the first piece, so errors of prompt evaluation come before any output."""
        if not self._head and not self._done:
            try:
                self._head.append(next(self._pieces))
            except StopIteration:
                self._done = True

    def _next_piece(self) -> str | None:
        if self._head:
            return self._head.pop()
        if self._done:
            return None
        try:
            return next(self._pieces)
        except StopIteration:
            self._done = True
            return None

    def _probs(self) -> list[TokenProb]:
        out = self.result.probs[self._seen_probs :]
        self._seen_probs += len(out)
        return out

    def _part(self, piece: str, final: bool) -> Delta:
        """What ``piece`` (or, ``final``, the end of the generation) lets through: reasoning
        first, then its content split into text and complete tool calls."""
        if self._splitter is None:
            reasoning, content = "", piece
        else:
            reasoning, content = self._splitter.finish() if final else self._splitter.feed(piece)
        calls: list[tc.ToolCall] = []
        if self._tools is not None:
            content, calls = self._tools.feed(content) if content else ("", [])
            if final:
                rest, more = self._tools.finish()
                content, calls = content + rest, calls + more
        self.n_calls += len(calls)
        return Delta(content=content, reasoning=reasoning, tool_calls=calls)

    def __iter__(self) -> Iterator[Delta]:
        held: list[TokenProb] = []  # probs of text the splitter or the tool parser holds back
        plain = self._splitter is None and self._tools is None
        while (piece := self._next_piece()) is not None:
            if plain:
                yield Delta(content=piece, probs=self._probs())
                continue
            held += self._probs()
            d = self._part(piece, final=False)
            if d.reasoning or d.content or d.tool_calls:
                d.probs, held = held, []
                yield d
        d = self._part("", final=True) if not plain else Delta()
        d.probs = held + self._probs()
        if d.reasoning or d.content or d.tool_calls or d.probs:
            yield d
        self.core.log_result(self.result)

    def whole(self) -> Delta:
        """Drain the generation: the whole answer as one delta."""
        content: list[str] = []
        reasoning: list[str] = []
        out = Delta()
        for d in self:
            content.append(d.content)
            reasoning.append(d.reasoning)
            out.tool_calls += d.tool_calls
            out.probs += d.probs
        out.content, out.reasoning = "".join(content), "".join(reasoning)
        return out

    def prompt_text(self) -> str:
        """The prompt as text (OpenAI's ``echo``)."""
        p = self.request.prompt
        return p if isinstance(p, str) else self.core.text_of(self.prompt)

    def tokens_after(self) -> list[int]:
        """The prompt and the answer as token ids (Ollama's ``context``)."""
        return self.prompt + self.core.tokens_of(self.result.text)

    def close(self) -> None:
        self._cleanup.close()  # stops the generation, then leaves the shutdown gate


class Core:
    """What every generating endpoint shares: the engine, the shutdown gate, the server's token
    cap and features."""

    def __init__(
        self,
        engine: Engine,
        gate: Callable[[], AbstractContextManager[Any]],
        closing: Callable[[], bool],
        *,
        max_tokens: int = -1,
        features: ServerFeatures | None = None,
    ) -> None:
        self.engine = engine
        self._gate = gate
        self._closing = closing
        self.max_tokens = max_tokens
        self.features = features or ServerFeatures()
        self.metrics: Metrics | None = None  # --metrics: each finished generation is counted

    def capped(self, params: Sampling, name: str) -> Sampling:
        """The server's --max-tokens: more is refused, none asked means the cap."""
        cap = self.max_tokens
        if cap <= 0:
            return params
        if params.max_tokens > cap:
            raise ApiError(
                400,
                f"'{name}' is {params.max_tokens} but this server allows at most {cap} tokens "
                "per request: ask for fewer",
                param=name,
            )
        return params if params.max_tokens >= 0 else replace(params, max_tokens=cap)

    def with_system_prompt(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``-sys``: the system message of a chat that has none."""
        system = self.features.system_prompt
        if not system or any(m.get("role") == "system" for m in messages):
            return messages
        return [{"role": "system", "content": system}, *messages]

    @property
    def template(self) -> str:
        """The model's chat template ("" for none)."""
        return str(getattr(self.engine, "chat_template", "") or "")  # stand-ins may have none

    def _chat(self, req: GenRequest) -> tuple[GenRequest, dict[str, Any], tc.ToolCallParser | None]:
        """A chat request as the template gets it: ``-sys``'s system message, the tools (its
        keyword arguments, or described in the messages), earlier calls and tool results in
        the shape it renders; a required call's grammar; the parser of the answer's calls."""
        if req.messages is None:
            return req, {}, None
        messages = self.with_system_prompt(req.messages)
        choice = req.tool_choice or tc.ToolChoice("auto" if req.tools else "none")
        history = any(m.get("role") == "tool" or m.get("tool_calls") for m in messages)
        if not req.tools and not history:
            return replace(req, messages=messages), {}, None
        template = self.template
        messages, kwargs = tc.messages_for_template(messages, req.tools, choice, template)
        sampling = req.sampling
        grammar = tc.tool_grammar(req.tools, choice, template)
        if grammar is not None:
            if sampling.grammar is not None:
                raise ApiError(
                    400,
                    "a required tool call ('tool_choice' 'required' or a named function) "
                    "cannot be combined with 'response_format', 'json_schema' or 'grammar': "
                    "the call has a grammar of its own",
                    param="tool_choice",
                )
            sampling = replace(sampling, grammar=grammar)
        parser = None
        if req.tools and choice.mode != "none":
            parser = tc.ToolCallParser(req.tools, choice, template)
        return replace(req, messages=messages, sampling=sampling), kwargs, parser

    def _prompt(
        self, req: GenRequest, template_kwargs: dict[str, Any]
    ) -> tuple[list[int], list[str]]:
        """The prompt tokens and stop strings; ``template_kwargs``: what :meth:`_chat` gives
        the chat template besides the messages (``tools``)."""
        engine = self.engine
        stop = req.sampling.stop
        context = gen.check_tokens(engine, req.context, "context") if req.context else []
        if req.messages is not None:
            tokens, stop = gen.chat_tokens(engine, req.messages, stop, **template_kwargs)
            return context + tokens, stop
        prompt = req.prompt if req.prompt is not None else ""
        if context and isinstance(prompt, str):
            return context + gen.tokenize(engine, prompt, add_special=False), stop
        return context + gen.completion_tokens(engine, prompt), stop

    def _generate(
        self,
        prompt: list[int],
        params: Sampling,
        result: GenResult,
        stop: Callable[[], bool],
        stream: bool,
    ) -> Iterator[str]:
        """A stream gets one piece per token, as llama-server sends them; a whole answer is read
        at its end, so its text comes joined at most 20 times a second. Either way, while the
        request runs alone, the scheduler decodes it in C (:mod:`packer.runtime.decode_loop`)
        for up to :data:`~packer.runtime.generate.TERMINAL_EVERY_S` at a time: a model faster
        than 20 tokens a second streams its tokens in bursts that far apart."""
        every = 0.0 if stream else gen.TERMINAL_EVERY_S
        return gen.generate(
            self.engine, prompt, params, result, stop, every, burst=gen.TERMINAL_EVERY_S
        )

    def text_of(self, tokens: list[int]) -> str:
        return gen.detokenize(self.engine, tokens)

    def tokens_of(self, text: str) -> list[int]:
        """``text`` as the model's tokens, special-token text taken literally."""
        return gen.tokenize(self.engine, text, add_special=False, parse_special=False)

    def _splitter(self, req: GenRequest, prompt: list[int]) -> Splitter | None:
        fmt = req.reasoning or self.features.reasoning_format
        if fmt == "none" or req.messages is None:
            return None
        template = self.template
        tail = ""
        if markers_for(template).open in template:  # the template may open it in the prompt
            tail = self.text_of(prompt[-16:])
        return reasoning_splitter(template, tail)

    def _markers(self, req: GenRequest, tools: tc.ToolCallParser | None) -> tuple[str, ...]:
        """The markers a chat answer is split by (reasoning, tool calls): the decode loop shows
        them even where they are special tokens (Mistral's ``[TOOL_CALLS]``, ``[THINK]``), and
        so does ``--reasoning-format none``, which keeps the thinking inline."""
        texts: list[str] = []
        if req.messages is not None:
            texts += markers_for(self.template).preserved
        if tools is not None:
            texts += tf.detect(self.template).markers
        return tuple(dict.fromkeys(texts))

    def start(self, req: GenRequest, cancelled: Callable[[], bool] | None = None) -> Generation:
        """Build the prompt, check it, queue the generation. Raises ApiError (cap),
        :class:`packer.runtime.generate.PromptError` or ``QueueFull`` before anything is
        generated."""
        cleanup = ExitStack()
        cleanup.enter_context(self._gate())
        try:
            req, template_kwargs, tools = self._chat(req)
            params = self.capped(req.sampling, req.max_tokens_field)
            prompt, stop = self._prompt(req, template_kwargs)
            gen.check_context(self.engine, len(prompt))
            splitter = self._splitter(req, prompt)
            params = replace(params, stop=stop, preserved_tokens=self._markers(req, tools))
            result = GenResult()
            closing = self._closing

            def stop_now() -> bool:
                return closing() or (cancelled is not None and cancelled())

            pieces = self._generate(prompt, params, result, stop_now, req.stream)
            cleanup.callback(_close, pieces)
        except BaseException:
            cleanup.close()
            raise
        return Generation(self, req, prompt, params, result, pieces, splitter, cleanup, tools)

    def log_result(self, r: GenResult) -> None:
        if self.metrics is not None:
            self.metrics.generation(
                r.n_prompt - r.n_cached, r.n_predicted, r.t_prompt_ms, r.t_predicted_ms
            )
        log.info(
            "generation: %d prompt tokens (%d cached), %d generated (%.1f t/s), stop: %s",
            r.n_prompt,
            r.n_cached,
            r.n_predicted,
            r.gen_per_second,
            r.stop_type,
        )


def _close(it: Any) -> None:
    close = getattr(it, "close", None)
    if close is not None:
        with suppress(Exception):
            close()


# -- answering: the one fork between "whole answer" and "stream" --------------------------------


class Render(Protocol):
    """How a dialect shows one generation."""

    ndjson: bool  # stream as NDJSON lines (Ollama), else Server-Sent Events

    def opening(self, g: Generation) -> list[Any]:
        """Events before the first delta."""
        ...

    def delta(self, g: Generation, d: Delta) -> Any | None:
        """The event of one delta (None: nothing to send)."""
        ...

    def closing(self, g: Generation) -> list[Any]:
        """Events after the last delta (the result is complete)."""
        ...

    def whole(self, g: Generation, d: Delta) -> Any:
        """The answer at once."""
        ...

    def error(self, err: ApiError) -> Any:
        """The event that ends a stream cut short by an error."""
        ...


def respond(g: Generation, render: Render) -> Reply:
    """The reply to a generation: its whole answer as one JSON value, or (``stream``) the events
    of its deltas. Takes ownership of ``g`` (closed when done)."""
    if not g.request.stream:
        try:
            return Json(render.whole(g, g.whole()))
        finally:
            g.close()
    try:
        g.prime()  # prompt errors before the headers: a plain error answer
    except BaseException:
        g.close()
        raise

    def events() -> Iterator[Any]:
        yield from render.opening(g)
        for d in g:
            ev = render.delta(g, d)
            if ev is not None:
                yield ev
        yield from render.closing(g)

    return Events(events(), ndjson=render.ndjson, error_event=render.error, close=g.close)
