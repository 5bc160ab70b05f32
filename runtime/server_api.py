"""The HTTP server's wire formats: request parsing/validation and response shapes.

Two dialects, both checked against their public references:

* llama.cpp's server (``tools/server/README.md``): ``/completion``, ``/tokenize``, ``/props``...,
  errors as ``{"error": {"code": 400, "message", "type"}}``;
* OpenAI's API: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``, errors as
  ``{"error": {"message", "type", "param", "code"}}``.

Nothing here touches the model; see :mod:`runtime.generate` for that.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime.generate import GenResult, PromptError, Sampling


class ApiError(Exception):
    """A request the server refuses; rendered in the dialect of the endpoint it came to."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        *,
        code: str | None = None,
        param: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.extra = extra or {}

    def body(self, openai: bool) -> dict[str, Any]:
        if openai:
            err: dict[str, Any] = {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        else:
            err = {"code": self.status, "message": self.message, "type": self.type}
        err.update(self.extra)
        return {"error": err}


# -- sampling settings ----------------------------------------------------------------------


def generation_settings(s: Sampling) -> dict[str, Any]:
    """Sampling settings as llama.cpp's ``generation_settings`` / ``/props`` show them."""
    return {
        "n_predict": s.max_tokens,
        "seed": s.seed,
        "temperature": s.temperature,
        "top_k": s.top_k,
        "top_p": s.top_p,
        "min_p": s.min_p,
        "typical_p": s.typical_p,
        "repeat_penalty": s.repeat_penalty,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        "mirostat": s.mirostat,
        "mirostat_tau": s.mirostat_tau,
        "mirostat_eta": s.mirostat_eta,
        "ignore_eos": s.ignore_eos,
        "stop": list(s.stop),
        "max_tokens": s.max_tokens,
    }


def prompt_error(exc: PromptError) -> ApiError:
    """A prompt the model cannot take, as a 400 (llama.cpp's ``exceed_context_size_error`` when
    it is too long for the context)."""
    if exc.n_ctx is None:
        return ApiError(400, exc.message)
    return ApiError(
        400,
        exc.message,
        "exceed_context_size_error",
        code="context_length_exceeded",
        extra={"n_prompt_tokens": exc.n_prompt, "n_ctx": exc.n_ctx},
    )


# -- typed field access ---------------------------------------------------------------------


def _bad(key: str, what: str, value: Any) -> ApiError:
    return ApiError(400, f"'{key}' must be {what}, got {value!r}"[:300], param=key)


def get_number(body: dict[str, Any], key: str, default: float) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _bad(key, "a number", v)
    return float(v)


INT32 = (-(2**31), 2**31 - 1)


def get_int(
    body: dict[str, Any], key: str, default: int, bounds: tuple[int, int] | None = INT32
) -> int:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(key, "an integer", v)
    if bounds is not None and not bounds[0] <= v <= bounds[1]:
        raise _bad(key, f"an integer from {bounds[0]} to {bounds[1]}", v)
    return v


def get_bool(body: dict[str, Any], key: str, default: bool) -> bool:
    v = body.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise _bad(key, "true or false", v)
    return v


def get_stop(body: dict[str, Any], default: list[str]) -> list[str]:
    v = body.get("stop")
    if v is None:
        return list(default)
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise _bad("stop", "a string or a list of strings", v)
    return [s for s in v if s]


def _refuse_unsupported(body: dict[str, Any]) -> None:
    """Constraints the client relies on but this server does not apply: say so, don't ignore."""
    if body.get("grammar"):
        raise ApiError(400, "'grammar' is not supported by this server", param="grammar")
    if body.get("json_schema"):
        raise ApiError(400, "'json_schema' is not supported by this server", param="json_schema")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type", "text") == "text"):
        raise ApiError(
            400,
            "'response_format' other than text is not supported by this server",
            param="response_format",
        )
    if body.get("tools") or body.get("functions"):
        raise ApiError(400, "tool/function calling is not supported by this server", param="tools")
    n = get_int(body, "n", 1)
    if n != 1:
        raise ApiError(400, "only 'n': 1 is supported", param="n")


def _seed(seed: int) -> int:
    """llama.cpp seeds are 32-bit and 0xFFFFFFFF means random; OpenAI's may be any integer."""
    return -1 if seed < 0 else seed % 0xFFFFFFFF


def _sampling(body: dict[str, Any], defaults: Sampling, max_tokens: int) -> Sampling:
    """The sampling fields both dialects share (llama.cpp also takes its own in /v1 requests)."""
    temperature = get_number(body, "temperature", defaults.temperature)
    top_p = get_number(body, "top_p", defaults.top_p)
    if not 0.0 <= top_p <= 1.0:
        raise _bad("top_p", "between 0 and 1", top_p)
    mirostat = get_int(body, "mirostat", defaults.mirostat)
    if mirostat not in (0, 1, 2):
        raise _bad("mirostat", "0, 1 or 2", mirostat)
    return replace(
        defaults,
        max_tokens=max_tokens,
        temperature=max(temperature, 0.0),
        top_k=get_int(body, "top_k", defaults.top_k),
        top_p=top_p,
        min_p=get_number(body, "min_p", defaults.min_p),
        typical_p=get_number(body, "typical_p", defaults.typical_p),
        repeat_penalty=get_number(body, "repeat_penalty", defaults.repeat_penalty),
        presence_penalty=get_number(body, "presence_penalty", defaults.presence_penalty),
        frequency_penalty=get_number(body, "frequency_penalty", defaults.frequency_penalty),
        mirostat=mirostat,
        mirostat_tau=get_number(body, "mirostat_tau", defaults.mirostat_tau),
        mirostat_eta=get_number(body, "mirostat_eta", defaults.mirostat_eta),
        seed=_seed(get_int(body, "seed", defaults.seed, bounds=None)),
        ignore_eos=get_bool(body, "ignore_eos", defaults.ignore_eos),
        stop=get_stop(body, defaults.stop),
    )


# -- requests -------------------------------------------------------------------------------


@dataclass
class CompletionRequest:
    prompt: str | list[int | str]
    params: Sampling
    stream: bool = False
    include_usage: bool = False
    echo: bool = False


@dataclass
class ChatRequest:
    messages: list[dict[str, Any]]
    params: Sampling
    stream: bool = False
    include_usage: bool = False


def _prompt(body: dict[str, Any], key: str = "prompt") -> str | list[int | str]:
    if key not in body or body[key] is None:
        raise ApiError(400, f"'{key}' is required", param=key)
    p = body[key]
    if isinstance(p, str):
        return p
    if isinstance(p, list) and all(
        isinstance(x, (int, str)) and not isinstance(x, bool) for x in p
    ):
        if len(p) == 1 and isinstance(p[0], str):
            return p[0]
        if p and all(isinstance(x, str) for x in p):
            raise ApiError(400, "only one prompt per request is supported", param=key)
        return list(p)
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], list):
        return _prompt({key: p[0]}, key)  # OpenAI's [[ids]]
    raise _bad(key, "a string or a list of token ids", p)


def parse_completion(body: dict[str, Any], defaults: Sampling) -> CompletionRequest:
    """llama.cpp's ``POST /completion``. Unknown fields (LangChain's ``n_keep``, ``tfs_z``,
    ``penalize_nl``, ``repeat_last_n``, ``cache_prompt``...) are accepted and ignored."""
    _refuse_unsupported(body)
    n_predict = get_int(body, "n_predict", get_int(body, "max_tokens", defaults.max_tokens))
    return CompletionRequest(
        prompt=_prompt(body),
        params=_sampling(body, defaults, max(n_predict, -1)),
        stream=get_bool(body, "stream", False),
    )


def _max_tokens_openai(body: dict[str, Any], defaults: Sampling) -> int:
    mt = get_int(body, "max_completion_tokens", get_int(body, "max_tokens", defaults.max_tokens))
    if mt == 0:
        raise ApiError(400, "'max_tokens' must be at least 1", param="max_tokens")
    return max(mt, -1)  # a negative value (some clients send -1): no limit


def _stream_options(body: dict[str, Any]) -> bool:
    opts = body.get("stream_options")
    if opts is None:
        return False
    if not isinstance(opts, dict):
        raise _bad("stream_options", "an object", opts)
    return get_bool(opts, "include_usage", False)


def parse_openai_completion(body: dict[str, Any], defaults: Sampling) -> CompletionRequest:
    """OpenAI's ``POST /v1/completions`` (legacy completions)."""
    _refuse_unsupported(body)
    return CompletionRequest(
        prompt=_prompt(body),
        params=_sampling(body, defaults, _max_tokens_openai(body, defaults)),
        stream=get_bool(body, "stream", False),
        include_usage=_stream_options(body),
        echo=get_bool(body, "echo", False),
    )


_ROLES = {"system", "developer", "user", "assistant", "tool"}


def _message_text(content: Any, i: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif (
                isinstance(part, dict)
                and part.get("type") == "text"
                and isinstance(part.get("text"), str)
            ):
                texts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ApiError(
                    400,
                    f"messages[{i}]: content of type {kind!r} is not supported (text only)",
                    param="messages",
                )
        return "\n".join(texts)
    raise _bad(f"messages[{i}].content", "a string or a list of text parts", content)


def parse_chat(body: dict[str, Any], defaults: Sampling) -> ChatRequest:
    """OpenAI's ``POST /v1/chat/completions``."""
    _refuse_unsupported(body)
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _bad("messages", "a non-empty list of {role, content} objects", msgs)
    messages: list[dict[str, Any]] = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise _bad(f"messages[{i}]", "an object with 'role' and 'content'", m)
        role = m.get("role")
        if role not in _ROLES:
            raise _bad(f"messages[{i}].role", f"one of {sorted(_ROLES)}", role)
        messages.append(
            {
                "role": "system" if role == "developer" else role,
                "content": _message_text(m.get("content"), i),
            }
        )
    return ChatRequest(
        messages=messages,
        params=_sampling(body, defaults, _max_tokens_openai(body, defaults)),
        stream=get_bool(body, "stream", False),
        include_usage=_stream_options(body),
    )


# -- responses: llama.cpp -------------------------------------------------------------------


def completion_chunk(piece: str) -> dict[str, Any]:
    """One streamed ``/completion`` event."""
    return {"content": piece, "tokens": [], "stop": False, "id_slot": 0}


def completion_final(
    r: GenResult, model: str, params: Sampling, n_ctx: int, *, content: str
) -> dict[str, Any]:
    """The non-streamed ``/completion`` answer, or (``content=""``) the last streamed event."""
    settings = generation_settings(params) | {"n_ctx": n_ctx, "model": model}
    return {
        "content": content,
        "tokens": [],
        "id_slot": 0,
        "stop": True,
        "model": model,
        "tokens_predicted": r.n_predicted,
        "tokens_evaluated": r.n_prompt,
        "tokens_cached": r.n_cached,
        "generation_settings": settings,
        "has_new_line": "\n" in r.text,
        "truncated": r.truncated,
        "stop_type": r.stop_type if r.stop_type != "abort" else "limit",
        "stopping_word": r.stopping_word,
        "stopped_eos": r.stop_type == "eos",
        "stopped_word": r.stop_type == "word",
        "stopped_limit": r.stop_type in ("limit", "abort"),
        "timings": r.timings(),
    }


# -- responses: OpenAI ----------------------------------------------------------------------


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


def chat_response(ids: OpenAIIds, r: GenResult) -> dict[str, Any]:
    return ids.head("chat.completion") | {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": r.text},
                "logprobs": None,
                "finish_reason": r.finish_reason,
            }
        ],
        "usage": usage(r),
        "system_fingerprint": None,
        "timings": r.timings(),
    }


def chat_chunk(
    ids: OpenAIIds, delta: dict[str, Any], finish_reason: str | None = None
) -> dict[str, Any]:
    return ids.head("chat.completion.chunk") | {
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        "system_fingerprint": None,
    }


def usage_chunk(ids: OpenAIIds, obj: str, r: GenResult) -> dict[str, Any]:
    """The extra last chunk of ``stream_options: {"include_usage": true}``."""
    return ids.head(obj) | {"choices": [], "usage": usage(r), "timings": r.timings()}


def text_response(ids: OpenAIIds, r: GenResult, prefix: str = "") -> dict[str, Any]:
    return ids.head("text_completion") | {
        "choices": [
            {
                "text": prefix + r.text,
                "index": 0,
                "logprobs": None,
                "finish_reason": r.finish_reason,
            }
        ],
        "usage": usage(r),
        "system_fingerprint": None,
        "timings": r.timings(),
    }


def text_chunk(ids: OpenAIIds, text: str, finish_reason: str | None = None) -> dict[str, Any]:
    return ids.head("text_completion") | {
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}],
        "system_fingerprint": None,
    }


def models_list(model: str, created: int, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"id": model, "object": "model", "created": created, "owned_by": "packer", "meta": meta}
        ],
    }
