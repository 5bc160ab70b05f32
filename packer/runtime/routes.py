"""The route table: which handler answers which method and path, in which dialect, whether it
needs the API key, and on which listener (the main port, ``--ollama-port``, or both).

:mod:`packer.runtime.transport` looks requests up here; a path served with another method is a
405, an unknown one a 404, both in the dialect the path belongs to (:func:`dialect_of`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from packer.runtime import dialect_llama as llama
from packer.runtime import dialect_ollama as ollama
from packer.runtime import dialect_openai as openai
from packer.runtime import endpoints as ep
from packer.runtime.replies import Call, Reply
from packer.runtime.webpage import VENDOR

Dialect = Literal["llama", "openai", "ollama"]
Handler = Callable[[Any, Call], Reply]  # (the server, the request) -> a reply


@dataclass(frozen=True)
class Route:
    method: str  # GET (HEAD too) or POST
    path: str
    handler: Handler
    dialect: Dialect = "llama"  # the format of its errors
    public: bool = False  # answered without the API key
    main: bool = True  # served on the main port
    ollama: bool = False  # served on the --ollama-port listener
    generates: bool = False  # generates text: refused by an embedding model (EMBEDDING_ONLY)


def _r(method: str, paths: tuple[str, ...], handler: Handler, **kw: Any) -> list[Route]:
    return [Route(method, p, handler, **kw) for p in paths]


OLLAMA: dict[str, Any] = {"dialect": "ollama", "ollama": True}
OPENAI: dict[str, Any] = {"dialect": "openai", "ollama": True}  # Ollama serves /v1 too
GEN: dict[str, Any] = {"generates": True}

EMBEDDING_ONLY = (
    "this model makes embeddings, not text: use POST /v1/embeddings, /embedding, /api/embed "
    "or /api/embeddings"
)

ROUTES: tuple[Route, ...] = (
    # the web chat: no API key needed (the page asks for one itself; nothing here is secret)
    *_r("GET", ("/", "/index.html"), ep.page, public=True, ollama=True),
    *_r("GET", ("/favicon.ico",), ep.favicon, public=True, ollama=True),
    *_r("GET", ("/packer/page.json",), ep.page_data, public=True),
    *_r("GET", ("/packer/license",), ep.license_, public=True),
    *_r("GET", tuple(VENDOR), ep.vendor, public=True),
    # llama.cpp's server
    *_r("GET", ("/health", "/v1/health"), ep.health, public=True),
    *_r("GET", ("/props",), ep.props),
    *_r("GET", ("/slots",), ep.slots),
    *_r("POST", ("/completion", "/completions"), llama.completion, **GEN),
    *_r("POST", ("/tokenize",), ep.tokenize),
    *_r("POST", ("/detokenize",), ep.detokenize),
    *_r("POST", ("/embedding", "/embeddings"), llama.embedding),
    # OpenAI's
    *_r("GET", ("/v1/models",), openai.models, **OPENAI),
    *_r("GET", ("/models",), openai.models, ollama=True),
    *_r("POST", ("/v1/completions",), openai.completion, **OPENAI, **GEN),
    *_r("POST", ("/v1/chat/completions", "/chat/completions"), openai.chat, **OPENAI, **GEN),
    *_r("POST", ("/v1/embeddings",), openai.embeddings, **OPENAI),
    # Ollama's
    *_r("POST", ("/api/generate",), ollama.generate, **OLLAMA, **GEN),
    *_r("POST", ("/api/chat",), ollama.chat, **OLLAMA, **GEN),
    *_r("POST", ("/api/embed",), ollama.embed, **OLLAMA),
    *_r("POST", ("/api/embeddings",), ollama.embeddings, **OLLAMA),
    *_r("POST", ("/api/show",), ep.ollama_show, **OLLAMA),
    *_r("GET", ("/api/tags",), ep.ollama_tags, **OLLAMA),
    *_r("GET", ("/api/version",), ep.ollama_version, **OLLAMA),
    *_r("GET", ("/api/ps",), ep.ollama_ps, **OLLAMA),
    # Prometheus text, like llama-server's; a 501 unless the server was started with --metrics
    *_r("GET", ("/metrics",), ep.metrics),
)

_BY_KEY = {(r.method, r.path): r for r in ROUTES}


def find(method: str, path: str, ollama_listener: bool) -> Route | None:
    """The route of ``method`` (HEAD: GET's) and ``path`` on this listener, or None."""
    route = _BY_KEY.get(("GET" if method == "HEAD" else method, path))
    if route is None or not (route.ollama if ollama_listener else route.main):
        return None
    return route


def other_method(method: str, path: str, ollama_listener: bool) -> Route | None:
    """A route of ``path`` on this listener with a method other than ``method``."""
    asked = "GET" if method == "HEAD" else method
    for m in ("GET", "POST"):
        if m != asked and (route := find(m, path, ollama_listener)) is not None:
            return route
    return None


def dialect_of(raw_path: str | None, ollama_listener: bool) -> Dialect:
    """The dialect of errors for a request's path as sent (None: the request line was
    unreadable): OpenAI's routes speak OpenAI's anywhere; ``/api/...`` and everything else on
    the Ollama listener speak Ollama's; the rest llama.cpp's."""
    if raw_path is not None:
        path = raw_path.rstrip("/") or "/"
        if any(
            (route := find(m, path, ollama_listener)) is not None and route.dialect == "openai"
            for m in ("GET", "POST")
        ):
            return "openai"
        if raw_path.startswith("/api/"):
            return "ollama"
    return "ollama" if ollama_listener else "llama"
