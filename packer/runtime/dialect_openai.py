"""OpenAI's dialect: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``,
``/v1/embeddings``, translated.

Requests are parsed by :mod:`packer.runtime.server_api` into a
:class:`packer.runtime.gen_core.GenRequest`; answers are OpenAI's objects
(``chat.completion``, ``chat.completion.chunk`` Server-Sent Events ending in ``[DONE]``,
``text_completion``), with llama-server's extras (``timings``, and a reasoning model's
``<think>`` section as ``reasoning_content``, as its ``--reasoning-format deepseek`` does).
Tool calls (``tools``, ``tool_choice``) come back as ``message.tool_calls`` (content null when
there is no text, as OpenAI does) or, streamed, as one ``delta.tool_calls`` entry per complete
call (``index``, ``id``, ``type``, ``function`` with its whole ``arguments``), finish reason
``tool_calls``. Errors are ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import base64
import struct
import time
import uuid
from typing import Any

from packer.runtime import server_api as api
from packer.runtime.gen_core import Delta, Generation, GenRequest, respond
from packer.runtime.generate import GenResult, TokenProb
from packer.runtime.replies import App, Call, Json, Reply
from packer.runtime.server_api import ApiError, bad_value
from packer.runtime.tool_calls import openai_tool_call, parse_openai_tools


def _utf8(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def chat_logprobs(probs: list[TokenProb], n_top: int) -> dict[str, Any]:
    """OpenAI chat's ``choices[].logprobs``."""
    return {
        "content": [
            {
                "token": p.text,
                "logprob": p.logprob,
                "bytes": _utf8(p.text),
                "top_logprobs": [
                    {"token": t, "logprob": lp, "bytes": _utf8(t)} for _, t, lp in p.top[:n_top]
                ],
            }
            for p in probs
        ],
        "refusal": None,
    }


def text_logprobs(probs: list[TokenProb], n_top: int, offset: int) -> dict[str, Any]:
    """OpenAI legacy completions' ``choices[].logprobs``; ``offset``: characters before these
    tokens' text in the answer."""
    offsets = []
    for p in probs:
        offsets.append(offset)
        offset += len(p.text)
    return {
        "tokens": [p.text for p in probs],
        "token_logprobs": [p.logprob for p in probs],
        "top_logprobs": [{t: lp for _, t, lp in p.top[:n_top]} for p in probs],
        "text_offset": offsets,
    }


def usage(r: GenResult) -> dict[str, int]:
    return {
        "prompt_tokens": r.n_prompt,
        "completion_tokens": r.n_predicted,
        "total_tokens": r.n_prompt + r.n_predicted,
    }


class OpenAIIds:
    """``id``/``created``/``model`` shared by all chunks of one response."""

    def __init__(self, prefix: str, model: str) -> None:
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}


def chat_message(d: Delta) -> dict[str, Any]:
    """The assistant's message of a whole answer; the reasoning as llama-server's
    ``--reasoning-format deepseek`` gives it; calls with content null when there is no text."""
    content = d.content if d.content or not d.tool_calls else None
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if d.reasoning:
        message["reasoning_content"] = d.reasoning
    if d.tool_calls:
        message["tool_calls"] = [openai_tool_call(c) for c in d.tool_calls]
    return message


def chat_delta(d: Delta, first_call: int = 0) -> dict[str, Any]:
    """A streamed chunk's ``delta``; ``first_call``: the index of its first tool call in the
    answer."""
    out: dict[str, Any] = {}
    if d.reasoning:
        out["reasoning_content"] = d.reasoning
    if d.content or not (d.reasoning or d.tool_calls):
        out["content"] = d.content
    if d.tool_calls:
        out["tool_calls"] = [
            openai_tool_call(c, first_call + k) for k, c in enumerate(d.tool_calls)
        ]
    return out


def chat_response(
    ids: OpenAIIds,
    r: GenResult,
    d: Delta,
    logprobs: dict[str, Any] | None = None,
    finish_reason: str | None = None,
) -> dict[str, Any]:
    """``finish_reason``: the generation's (``tool_calls`` when it made calls), else the
    result's."""
    return ids.head("chat.completion") | {
        "choices": [
            {
                "index": 0,
                "message": chat_message(d),
                "logprobs": logprobs,
                "finish_reason": finish_reason or r.finish_reason,
            }
        ],
        "usage": usage(r),
        "system_fingerprint": None,
        "timings": r.timings(),
    }


def chat_chunk(
    ids: OpenAIIds,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
    return ids.head("chat.completion.chunk") | {
        "choices": [choice],
        "system_fingerprint": None,
    }


def usage_chunk(ids: OpenAIIds, obj: str, r: GenResult) -> dict[str, Any]:
    """The extra last chunk of ``stream_options: {"include_usage": true}``."""
    return ids.head(obj) | {"choices": [], "usage": usage(r), "timings": r.timings()}


def text_response(
    ids: OpenAIIds, r: GenResult, text: str, logprobs: dict[str, Any] | None = None
) -> dict[str, Any]:
    return ids.head("text_completion") | {
        "choices": [
            {
                "text": text,
                "index": 0,
                "logprobs": logprobs,
                "finish_reason": r.finish_reason,
            }
        ],
        "usage": usage(r),
        "system_fingerprint": None,
        "timings": r.timings(),
    }


def text_chunk(
    ids: OpenAIIds,
    text: str,
    finish_reason: str | None = None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    choice = {"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish_reason}
    return ids.head("text_completion") | {
        "choices": [choice],
        "system_fingerprint": None,
    }


def models_list(model: str, created: int, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"id": model, "object": "model", "created": created, "owned_by": "packer", "meta": meta}
        ],
    }


def encoding_format(body: dict[str, Any]) -> str:
    """OpenAI's ``encoding_format``: "float" (a list) or "base64" (little-endian float32 bytes;
    the ``openai`` package asks for it by default and decodes it itself)."""
    fmt = body.get("encoding_format")
    if fmt is None:
        return "float"
    if fmt not in ("float", "base64"):
        raise bad_value("encoding_format", "'float' or 'base64'", fmt)
    return str(fmt)


def _encode(vec: list[float], fmt: str) -> list[float] | str:
    if fmt == "float":
        return vec
    return base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode("ascii")


def openai_embeddings(
    model: str, vectors: list[list[float]], n_tokens: int, fmt: str = "float"
) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _encode(v, fmt)}
            for i, v in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
    }


# -- renders ----------------------------------------------------------------------------------


class ChatRender:
    """``/v1/chat/completions``: a role chunk, content/reasoning chunks, a finish chunk, the
    usage chunk when asked, ``[DONE]``."""

    ndjson = False

    def __init__(self, ids: OpenAIIds, req: api.ChatRequest) -> None:
        self.ids = ids
        self.req = req
        self.n_calls = 0  # tool calls streamed so far: the next one's index

    def _logprobs(self, d: Delta) -> dict[str, Any] | None:
        return chat_logprobs(d.probs, self.req.n_top) if self.req.logprobs else None

    def opening(self, g: Generation) -> list[Any]:
        return [chat_chunk(self.ids, {"role": "assistant", "content": ""})]

    def delta(self, g: Generation, d: Delta) -> Any:
        delta = chat_delta(d, self.n_calls)
        self.n_calls += len(d.tool_calls)
        return chat_chunk(self.ids, delta, None, self._logprobs(d))

    def closing(self, g: Generation) -> list[Any]:
        out = [chat_chunk(self.ids, {}, g.finish_reason)]
        if self.req.include_usage:
            out.append(usage_chunk(self.ids, "chat.completion.chunk", g.result))
        return [*out, "[DONE]"]

    def whole(self, g: Generation, d: Delta) -> Any:
        return chat_response(self.ids, g.result, d, self._logprobs(d), g.finish_reason)

    def error(self, err: ApiError) -> Any:
        return err.body(True)


class TextRender:
    """``/v1/completions``: the echoed prompt first (``echo``), then the text."""

    ndjson = False

    def __init__(self, ids: OpenAIIds, req: api.CompletionRequest, echo: str) -> None:
        self.ids = ids
        self.req = req
        self.echo = echo
        self.offset = len(echo)  # characters of the answer so far, for text_offset

    def _logprobs(self, probs: list[TokenProb]) -> dict[str, Any] | None:
        if not self.req.logprobs:
            return None
        return text_logprobs(probs, self.req.n_top, self.offset)

    def opening(self, g: Generation) -> list[Any]:
        return [text_chunk(self.ids, self.echo)] if self.echo else []

    def delta(self, g: Generation, d: Delta) -> Any:
        lp = self._logprobs(d.probs)
        self.offset += len(d.content)
        return text_chunk(self.ids, d.content, None, lp)

    def closing(self, g: Generation) -> list[Any]:
        out = [text_chunk(self.ids, "", g.finish_reason)]
        if self.req.include_usage:
            out.append(usage_chunk(self.ids, "text_completion", g.result))
        return [*out, "[DONE]"]

    def whole(self, g: Generation, d: Delta) -> Any:
        return text_response(self.ids, g.result, self.echo + d.content, self._logprobs(d.probs))

    def error(self, err: ApiError) -> Any:
        return err.body(True)


# -- handlers ---------------------------------------------------------------------------------


def chat(app: App, call: Call) -> Reply:
    """``POST /v1/chat/completions``."""
    req = api.parse_chat(call.body, app.defaults)
    tools, choice = parse_openai_tools(call.body.get("tools"), call.body.get("tool_choice"))
    g = app.core.start(
        GenRequest(
            sampling=req.params,
            messages=req.messages,
            stream=req.stream,
            logprobs=req.logprobs,
            top_logprobs=req.n_top,
            reasoning=req.reasoning,
            tools=tools,
            tool_choice=choice,
        ),
        call.cancelled,
    )
    return respond(g, ChatRender(OpenAIIds("chatcmpl", app.model_name), req))


def completion(app: App, call: Call) -> Reply:
    """``POST /v1/completions`` (legacy completions)."""
    req = api.parse_openai_completion(call.body, app.defaults)
    g = app.core.start(
        GenRequest(
            sampling=req.params,
            prompt=req.prompt,
            stream=req.stream,
            logprobs=req.logprobs,
            top_logprobs=req.n_top,
        ),
        call.cancelled,
    )
    try:
        echo = g.prompt_text() if req.echo else ""
    except BaseException:
        g.close()
        raise
    return respond(g, TextRender(OpenAIIds("cmpl", app.model_name), req, echo))


def models(app: App, call: Call) -> Reply:
    """``GET /v1/models``: the one model this server holds."""
    return Json(models_list(app.model_name, app.started, app.model_info()))


def embeddings(app: App, call: Call) -> Reply:
    """``POST /v1/embeddings``."""
    texts, _ = api.embedding_inputs(call.body, "input")
    fmt = encoding_format(call.body)
    vectors, n_tokens = app.embed(texts)
    return Json(openai_embeddings(app.model_name, vectors, n_tokens, fmt))
