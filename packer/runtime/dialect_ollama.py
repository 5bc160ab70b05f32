"""Ollama's dialect: ``/api/generate``, ``/api/chat``, ``/api/embed``, ``/api/embeddings``,
translated (requests parsed by :mod:`packer.runtime.ollama_api`).

Streaming is NDJSON, one object per line: ``{"model", "created_at", "response"|"message",
"done": false}``, the last one ``done: true`` with ``done_reason`` and the counters and
durations in nanoseconds. A reasoning model's ``<think>`` section goes to ``thinking`` (the
chat message's, or ``/api/generate``'s own field) unless the request says ``think: false``.
``/api/chat``'s ``tools``: complete calls come in ``message.tool_calls`` (``{"function":
{"name", "arguments": {...}}}``), streamed in the chunk where each call completes;
``done_reason`` stays ``stop``, as Ollama's.
Errors are ``{"error": "message"}``.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from packer.runtime import ollama_api as oll
from packer.runtime.gen_core import Delta, Generation, GenRequest, respond
from packer.runtime.generate import GenResult, TokenProb
from packer.runtime.replies import App, Call, Json, Reply
from packer.runtime.server_api import ApiError
from packer.runtime.tool_calls import ollama_tool_call


def now() -> str:
    """Ollama's ``created_at``: RFC 3339 in UTC."""
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def done_reason(r: GenResult) -> str:
    return "length" if r.stop_type == "limit" else "stop"


def durations(r: GenResult, t_start_ns: int, t_end_ns: int) -> dict[str, int]:
    """The counters and durations (nanoseconds) of a finished generation."""
    return {
        "total_duration": max(t_end_ns - t_start_ns, 0),
        "load_duration": 0,  # the model was loaded when the server started
        "prompt_eval_count": r.n_prompt,
        "prompt_eval_duration": int(r.t_prompt_ms * 1e6),
        "eval_count": r.n_predicted,
        "eval_duration": int(r.t_predicted_ms * 1e6),
    }


def logprobs(probs: list[TokenProb], n_top: int) -> list[dict[str, Any]]:
    return [
        {
            "token": p.text,
            "logprob": p.logprob,
            "bytes": list(p.text.encode("utf-8")),
            "top_logprobs": [
                {"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))}
                for _, t, lp in p.top[:n_top]
            ],
        }
        for p in probs
    ]


def generate_chunk(model: str, d: Delta, probs: list[dict[str, Any]] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "created_at": now(), "response": d.content}
    if d.reasoning:
        out["thinking"] = d.reasoning
    out["done"] = False
    if probs is not None:
        out["logprobs"] = probs
    return out


def chat_chunk(model: str, d: Delta, probs: list[dict[str, Any]] | None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": d.content}
    if d.reasoning:
        message["thinking"] = d.reasoning
    if d.tool_calls:
        message["tool_calls"] = [ollama_tool_call(c) for c in d.tool_calls]
    out: dict[str, Any] = {"model": model, "created_at": now(), "message": message, "done": False}
    if probs is not None:
        out["logprobs"] = probs
    return out


def loaded(model: str, chat: bool) -> dict[str, Any]:
    """The answer to an empty prompt / empty conversation: Ollama just "loads" the model."""
    out: dict[str, Any] = {"model": model, "created_at": now(), "done": True, "done_reason": "load"}
    if chat:
        out["message"] = {"role": "assistant", "content": ""}
    else:
        out["response"] = ""
    return out


def embed_response(
    model: str, vectors: list[list[float]], n_tokens: int, t_start_ns: int, t_end_ns: int
) -> dict[str, Any]:
    return {
        "model": model,
        "embeddings": vectors,
        "total_duration": max(t_end_ns - t_start_ns, 0),
        "load_duration": 0,
        "prompt_eval_count": n_tokens,
    }


class OllamaRender:
    """``/api/chat`` (``chat``) or ``/api/generate``: NDJSON lines, or one object."""

    ndjson = True

    def __init__(
        self, model: str, chat: bool, t_start_ns: int, want_logprobs: bool, n_top: int
    ) -> None:
        self.model = model
        self.chat = chat
        self.t0 = t_start_ns
        self.want_logprobs = want_logprobs
        self.n_top = n_top

    def _chunk(self, d: Delta) -> dict[str, Any]:
        probs = logprobs(d.probs, self.n_top) if self.want_logprobs else None
        return (chat_chunk if self.chat else generate_chunk)(self.model, d, probs)

    def _final(self, g: Generation, d: Delta) -> dict[str, Any]:
        out = self._chunk(d) | {"done": True, "done_reason": done_reason(g.result)}
        if not self.chat:
            out["context"] = g.tokens_after()
        return out | durations(g.result, self.t0, time.perf_counter_ns())

    def opening(self, g: Generation) -> list[Any]:
        return []

    def delta(self, g: Generation, d: Delta) -> Any:
        return self._chunk(d)

    def closing(self, g: Generation) -> list[Any]:
        return [self._final(g, Delta())]

    def whole(self, g: Generation, d: Delta) -> Any:
        return self._final(g, d)

    def error(self, err: ApiError) -> Any:
        return err.ollama_body()


def generate(app: App, call: Call) -> Reply:
    """``POST /api/generate``: the prompt through the chat template (``system`` too), or as it
    is with ``raw``; ``context`` (token ids from an earlier answer) goes first."""
    t0 = time.perf_counter_ns()
    req = oll.parse_generate(call.body, app.defaults)
    model = req.model or app.model_name
    if not req.prompt and not req.context:
        return Json(loaded(model, chat=False))
    system = [{"role": "system", "content": req.system}] if req.system else []
    g = app.core.start(
        GenRequest(
            sampling=req.params,
            messages=None if req.raw else [*system, {"role": "user", "content": req.prompt}],
            prompt=req.prompt if req.raw else None,
            context=req.context,
            stream=req.stream,
            logprobs=req.logprobs,
            top_logprobs=req.n_top,
            reasoning=req.reasoning,
            max_tokens_field="num_predict",
        ),
        call.cancelled,
    )
    return respond(g, OllamaRender(model, False, t0, req.logprobs, req.n_top))


def chat(app: App, call: Call) -> Reply:
    """``POST /api/chat``. An empty ``messages`` list only "loads" the model, as in Ollama."""
    t0 = time.perf_counter_ns()
    req = oll.parse_chat(call.body, app.defaults)
    model = req.model or app.model_name
    if not req.messages:
        return Json(loaded(model, chat=True))
    g = app.core.start(
        GenRequest(
            sampling=req.params,
            messages=req.messages,
            stream=req.stream,
            logprobs=req.logprobs,
            top_logprobs=req.n_top,
            reasoning=req.reasoning,
            tools=req.tools,
            max_tokens_field="num_predict",
        ),
        call.cancelled,
    )
    return respond(g, OllamaRender(model, True, t0, req.logprobs, req.n_top))


def embed(app: App, call: Call) -> Reply:
    """``POST /api/embed``."""
    t0 = time.perf_counter_ns()
    req = oll.parse_embed(call.body)
    vectors, n_tokens = app.embed(req.inputs, truncate=req.truncate) if req.inputs else ([], 0)
    model = req.model or app.model_name
    return Json(embed_response(model, vectors, n_tokens, t0, time.perf_counter_ns()))


def embeddings(app: App, call: Call) -> Reply:
    """``POST /api/embeddings`` (the older form): one ``prompt`` -> one ``embedding``."""
    req = oll.parse_embeddings(call.body)
    if not req.inputs[0]:
        return Json({"embedding": []})  # as Ollama answers an empty prompt
    vectors, _ = app.embed(req.inputs, truncate=True)
    return Json({"embedding": vectors[0]})
