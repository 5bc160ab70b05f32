"""llama.cpp's server dialect: ``POST /completion`` and ``POST /embedding``, translated.

Requests are parsed by :mod:`packer.runtime.server_api` (shared with the OpenAI dialect) into a
:class:`packer.runtime.gen_core.GenRequest`; the answer is llama.cpp's: streamed events
``{"content", "stop": false, ...}`` then a last one with ``stop: true``, the counters,
``generation_settings`` and ``timings``; ``completion_probabilities`` when ``n_probs`` is set.
Errors are ``{"error": {"code", "message", "type"}}``
(``tools/server/README.md`` of llama.cpp).
"""

from __future__ import annotations

import math
from typing import Any

from packer.runtime import server_api as api
from packer.runtime.gen_core import Delta, Generation, GenRequest, respond
from packer.runtime.generate import GenResult, Sampling, TokenProb
from packer.runtime.replies import App, Call, Json, Reply
from packer.runtime.server_api import ApiError


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
        "repeat_last_n": s.repeat_last_n,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        "mirostat": s.mirostat,
        "mirostat_tau": s.mirostat_tau,
        "mirostat_eta": s.mirostat_eta,
        "ignore_eos": s.ignore_eos,
        "stop": list(s.stop),
        "max_tokens": s.max_tokens,
        "n_probs": s.n_probs,
        "grammar": s.grammar or "",
        "samplers": list(s.samplers),
        "logit_bias": [[t, b if b != -math.inf else False] for t, b in s.logit_bias],
    }


def _utf8(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def llama_probs(probs: list[TokenProb]) -> list[dict[str, Any]]:
    """llama.cpp's ``completion_probabilities``."""
    return [
        {
            "id": p.token,
            "token": p.text,
            "bytes": _utf8(p.text),
            "logprob": p.logprob,
            "top_logprobs": [
                {"id": i, "token": t, "bytes": _utf8(t), "logprob": lp} for i, t, lp in p.top
            ],
        }
        for p in probs
    ]


def completion_chunk(piece: str, probs: list[TokenProb] | None = None) -> dict[str, Any]:
    """One streamed ``/completion`` event."""
    out: dict[str, Any] = {"content": piece, "tokens": [], "stop": False, "id_slot": 0}
    if probs is not None:
        out["completion_probabilities"] = llama_probs(probs)
    return out


def completion_final(
    r: GenResult,
    model: str,
    params: Sampling,
    n_ctx: int,
    *,
    content: str,
    probs: list[TokenProb] | None = None,
) -> dict[str, Any]:
    """The non-streamed ``/completion`` answer, or (``content=""``) the last streamed event."""
    settings = generation_settings(params) | {"n_ctx": n_ctx, "model": model}
    extra = {} if probs is None else {"completion_probabilities": llama_probs(probs)}
    return extra | {
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


class CompletionRender:
    """``/completion``'s events and answer."""

    ndjson = False

    def __init__(self, model: str, n_ctx: int) -> None:
        self.model = model
        self.n_ctx = n_ctx

    def _probs(self, g: Generation, d: Delta) -> list[TokenProb] | None:
        return d.probs if g.params.n_probs > 0 else None

    def opening(self, g: Generation) -> list[Any]:
        return []

    def delta(self, g: Generation, d: Delta) -> Any:
        return completion_chunk(d.content, self._probs(g, d))

    def closing(self, g: Generation) -> list[Any]:
        return [completion_final(g.result, self.model, g.params, self.n_ctx, content="")]

    def whole(self, g: Generation, d: Delta) -> Any:
        return completion_final(
            g.result, self.model, g.params, self.n_ctx, content=d.content, probs=self._probs(g, d)
        )

    def error(self, err: ApiError) -> Any:
        return {"content": "", "stop": True} | err.body(False)


def completion(app: App, call: Call) -> Reply:
    """``POST /completion`` (also ``/completions``): LangChain's ``Llamafile`` uses it."""
    req = api.parse_completion(call.body, app.defaults)
    g = app.core.start(
        GenRequest(
            sampling=req.params,
            prompt=req.prompt,
            stream=req.stream,
            logprobs=req.params.n_probs > 0,
            top_logprobs=req.params.n_probs,
            max_tokens_field="n_predict",
        ),
        call.cancelled,
    )
    return respond(g, CompletionRender(app.model_name, app.core.engine.n_ctx))


def embedding(app: App, call: Call) -> Reply:
    """``POST /embedding``: ``content`` a string -> ``{"embedding": [...]}`` (what llamafile and
    LangChain's ``LlamafileEmbeddings`` read); a list -> one ``{"index", "embedding"}`` each."""
    key = "content" if "content" in call.body else "input"
    texts, single = api.embedding_inputs(call.body, key)
    vectors, _ = app.embed(texts)
    if single:
        return Json({"embedding": vectors[0]})
    return Json([{"index": i, "embedding": v} for i, v in enumerate(vectors)])
