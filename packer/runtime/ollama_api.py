"""Ollama's HTTP API: request parsing and the model card (``ollama/ollama`` ``docs/api.md``).

Served on the main port under ``/api/...`` and, with ``--ollama-port``, on a second listener
(Ollama's own port is 11434) so clients made for Ollama work with only the address changed:
the ``ollama`` Python package, LangChain's ``Ollama``/``ChatOllama``/``OllamaEmbeddings``.

* ``POST /api/generate``, ``POST /api/chat``: NDJSON streaming unless ``"stream": false``;
  each line ``{"model", "created_at", "response"|"message", "done": false}``, the last one
  ``done: true`` with ``done_reason`` and the counters and durations (nanoseconds);
* ``POST /api/embed`` (unit vectors), ``POST /api/embeddings`` (the older single-prompt form);
* ``GET /api/tags``, ``POST /api/show``, ``GET /api/ps``, ``GET /api/version``;
* errors: ``{"error": "message"}``.

Any model name is accepted: one server holds one model, and clients send the name they were
configured with (LangChain's default is "llama2"). Nothing here touches the model; the answers'
shapes and the handlers are :mod:`packer.runtime.dialect_ollama`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packer.runtime.server_api import (
    ApiError,
    bad_value,
    get_bool,
    get_int,
    json_object_grammar,
    sampling_fields,
    schema_grammar,
    tool_fields,
)
from packer.runtime.tool_calls import Tool, parse_ollama_tools

if TYPE_CHECKING:
    from packer.runtime.generate import Sampling

# the Ollama release whose API this follows (clients compare it against their minimum)
OLLAMA_VERSION = "0.12.0"

_ROLES = {"system", "user", "assistant", "tool"}


@dataclass
class GenerateRequest:
    model: str
    prompt: str
    system: str | None
    raw: bool
    context: list[int]
    params: Sampling
    stream: bool = True
    logprobs: bool = False
    n_top: int = 0
    reasoning: str | None = None  # from ``think``: deepseek | none | the server's


@dataclass
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    params: Sampling
    stream: bool = True
    logprobs: bool = False
    n_top: int = 0
    reasoning: str | None = None  # from ``think``: deepseek | none | the server's
    tools: list[Tool] = field(default_factory=list)


@dataclass
class EmbedRequest:
    model: str
    inputs: list[str]
    truncate: bool = True
    single: bool = False  # /api/embeddings: one prompt, one "embedding"
    extra: dict[str, Any] = field(default_factory=dict)


# -- requests -------------------------------------------------------------------------------


def _model(body: dict[str, Any]) -> str:
    name = body.get("model", body.get("name"))
    if name is None or name == "":
        return ""
    if not isinstance(name, str):
        raise bad_value("model", "a model name (a string)", name)
    return name


def _str(body: dict[str, Any], key: str) -> str | None:
    v = body.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise bad_value(key, "a string", v)
    return v


def _refuse_images(images: Any, where: str) -> None:
    if images is None or images == []:
        return
    if not isinstance(images, list):
        raise bad_value(where, "a list of images", images)
    raise ApiError(400, f"{where}: this model takes text only, images are not supported")


def format_grammar(fmt: Any) -> str | None:
    """Ollama's ``format``: "" / null (free text), "json" (any JSON object) or a JSON schema."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return json_object_grammar()
    if isinstance(fmt, dict):
        return schema_grammar(fmt, "format")
    raise bad_value("format", '"json" or a JSON schema object', fmt)


def options(body: dict[str, Any], defaults: Sampling) -> Sampling:
    """``options`` as sampling settings. ``num_ctx``, ``num_thread``, ``num_gpu`` and the other
    load-time options are ignored: the model is already loaded with the server's settings."""
    opts = body.get("options")
    if opts is None:
        opts = {}
    if not isinstance(opts, dict):
        raise bad_value("options", "an object", opts)
    num_predict = get_int(opts, "num_predict", defaults.max_tokens)
    if num_predict < -2:
        raise bad_value("num_predict", "-1 (no limit) or a number of tokens", num_predict)
    params = sampling_fields(opts, defaults, max(num_predict, -1))
    return replace(params, grammar=format_grammar(body.get("format")))


def _logprobs(body: dict[str, Any]) -> tuple[bool, int]:
    want = get_bool(body, "logprobs", False)
    n_top = get_int(body, "top_logprobs", 0, bounds=(0, 20))
    return want, n_top if want else 0


THINK_LEVELS = ("low", "medium", "high")


def think(body: dict[str, Any]) -> str | None:
    """Ollama's ``think``: true (or a level) returns the reasoning apart, as ``thinking``;
    false leaves the model's answer as it is, any ``<think>`` section inline; absent: as the
    server's --reasoning-format says."""
    v = body.get("think")
    if v is None:
        return None
    if v is False:
        return "none"
    if v is True or v in THINK_LEVELS:
        return "deepseek"
    raise bad_value("think", f"true, false or one of {list(THINK_LEVELS)}", v)


def parse_generate(body: dict[str, Any], defaults: Sampling) -> GenerateRequest:
    """``POST /api/generate``. ``template`` and ``suffix`` (fill-in-the-middle) are refused;
    ``keep_alive`` is ignored (the model stays loaded while the server runs)."""
    if body.get("tools"):
        raise ApiError(400, "'tools' are taken by /api/chat, not /api/generate", param="tools")
    _refuse_images(body.get("images"), "images")
    if _str(body, "template"):
        raise ApiError(400, "'template' is not supported: the model's own chat template is used")
    if _str(body, "suffix"):
        raise ApiError(400, "'suffix' (fill-in-the-middle) is not supported by this model")
    context = body.get("context") or []
    if not isinstance(context, list):
        raise bad_value("context", "a list of token ids", context)
    want, n_top = _logprobs(body)
    params = options(body, defaults)
    return GenerateRequest(
        model=_model(body),
        prompt=_str(body, "prompt") or "",
        system=_str(body, "system"),
        raw=get_bool(body, "raw", False),
        context=context,
        params=replace(params, n_probs=max(n_top, 1) if want else 0),
        stream=get_bool(body, "stream", True),
        logprobs=want,
        n_top=n_top,
        reasoning=think(body),
    )


def _content(m: dict[str, Any], i: int) -> str:
    content = m.get("content")
    if content is None:
        return ""
    if not isinstance(content, str):
        raise bad_value(f"messages[{i}].content", "a string", content)
    return content


def parse_chat(body: dict[str, Any], defaults: Sampling) -> ChatRequest:
    """``POST /api/chat``. An empty ``messages`` list only "loads" the model, as in Ollama.
    ``tools`` in OpenAI's shape; messages keep their calls (``tool_calls``) and results
    (``role: "tool"``, ``tool_name``)."""
    tools = parse_ollama_tools(body.get("tools"))
    msgs = body.get("messages")
    if msgs is None:
        msgs = []
    if not isinstance(msgs, list):
        raise bad_value("messages", "a list of {role, content} objects", msgs)
    messages = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise bad_value(f"messages[{i}]", "an object with 'role' and 'content'", m)
        role = m.get("role")
        if role not in _ROLES:
            raise bad_value(f"messages[{i}].role", f"one of {sorted(_ROLES)}", role)
        _refuse_images(m.get("images"), f"messages[{i}].images")
        messages.append({"role": role, "content": _content(m, i), **tool_fields(m, i)})
    want, n_top = _logprobs(body)
    params = options(body, defaults)
    return ChatRequest(
        model=_model(body),
        messages=messages,
        params=replace(params, n_probs=max(n_top, 1) if want else 0),
        stream=get_bool(body, "stream", True),
        logprobs=want,
        n_top=n_top,
        reasoning=think(body),
        tools=tools,
    )


def parse_embed(body: dict[str, Any]) -> EmbedRequest:
    """``POST /api/embed``: ``input`` a string or a list of strings; ``truncate`` (default true)
    cuts inputs longer than the context instead of refusing them."""
    v = body.get("input")
    if isinstance(v, str):
        inputs = [v]
    elif isinstance(v, list) and all(isinstance(x, str) for x in v):
        inputs = list(v)
    else:
        raise bad_value("input", "a string or a list of strings", v)
    if body.get("dimensions") is not None:
        raise ApiError(400, "'dimensions' is not supported: vectors keep the model's size")
    return EmbedRequest(
        model=_model(body), inputs=inputs, truncate=get_bool(body, "truncate", True)
    )


def parse_embeddings(body: dict[str, Any]) -> EmbedRequest:
    """``POST /api/embeddings`` (older): one ``prompt`` -> one ``embedding``."""
    prompt = body.get("prompt")
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise bad_value("prompt", "a string", prompt)
    return EmbedRequest(model=_model(body), inputs=[prompt], truncate=True, single=True)


# -- the model, as /api/tags, /api/show and /api/ps describe it --------------------------------


@dataclass
class ModelCard:
    """What Ollama's model listings say about the one model this server holds."""

    name: str
    path: Path
    family: str
    parameter_size: str
    quantization_level: str
    context_length: int
    metadata: dict[str, str]
    chat_template: str
    n_ctx: int
    embedding_only: bool = False  # an embedding model: it embeds, it does not generate

    @property
    def tag(self) -> str:
        """Ollama names look like ``name:tag``; ``latest`` when the name has none."""
        return self.name if ":" in self.name else f"{self.name}:latest"

    def _stat(self) -> tuple[int, str, str]:
        try:
            st = os.stat(self.path)
            size, mtime = st.st_size, st.st_mtime
        except OSError:
            size, mtime = 0, 0.0
        # a stand-in digest from the file's identity: hashing a multi-GB file per request is slow
        key = f"{self.path}\0{size}\0{mtime}".encode()
        modified = datetime.fromtimestamp(mtime, timezone.utc).isoformat().replace("+00:00", "Z")
        return size, hashlib.sha256(key).hexdigest(), modified

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }

    def tags(self) -> dict[str, Any]:
        size, digest, modified = self._stat()
        entry = {
            "name": self.tag,
            "model": self.tag,
            "modified_at": modified,
            "size": size,
            "digest": digest,
            "details": self.details(),
        }
        return {"models": [entry]}

    def ps(self) -> dict[str, Any]:
        size, digest, _ = self._stat()
        entry = {
            "name": self.tag,
            "model": self.tag,
            "size": size,
            "digest": digest,
            "details": self.details(),
            "expires_at": "9999-12-31T23:59:59Z",  # loaded until the server stops
            "size_vram": 0,
            "context_length": self.n_ctx,
        }
        return {"models": [entry]}

    def show(self) -> dict[str, Any]:
        _, _, modified = self._stat()
        info: dict[str, Any] = {}
        for k, v in self.metadata.items():
            if k.startswith("tokenizer.ggml.") and k not in (
                "tokenizer.ggml.model",
                "tokenizer.ggml.pre",
            ):
                continue
            info[k] = _number(v)
        template = self.chat_template
        parameters = f"num_ctx {self.n_ctx}"
        return {
            "modelfile": f"# packer model.run\nFROM {self.path.name}\nPARAMETER {parameters}\n",
            "parameters": parameters,
            "template": template,
            "details": self.details(),
            "model_info": info,
            "capabilities": ["embedding"]
            if self.embedding_only
            else ["completion", "embedding", "tools"]
            + (["thinking"] if "<think>" in template else []),
            "modified_at": modified,
        }


def _number(v: str) -> Any:
    """GGUF metadata comes back from llama.cpp as strings; numbers as numbers, like Ollama."""
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


def parameter_size(n_params: int) -> str:
    """``134515008`` -> ``"134.52M"`` (Ollama's style)."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n_params >= scale:
            return f"{n_params / scale:.2f}{unit}"
    return str(n_params)
