"""``model.run --server``: llama.cpp's, OpenAI's and Ollama's HTTP APIs plus a web chat page,
stdlib only.

Endpoints (llama.cpp server / llamafile compatible, see ``/work/shared/anchors.md``), listed in
:mod:`packer.runtime.routes`:

* ``GET /`` web chat (its data: ``GET /packer/page.json``, ``/packer/license``,
  ``/packer/vendor/...``, see :mod:`packer.runtime.webpage`); ``GET /health``; ``GET /props``;
  ``GET /slots``; ``GET /v1/models``;
* ``POST /completion`` (llama.cpp; LangChain's ``Llamafile``), ``POST /tokenize``,
  ``POST /detokenize``;
* ``POST /v1/chat/completions``, ``POST /v1/completions`` (OpenAI);
* ``POST /embedding``, ``POST /v1/embeddings``, Ollama's ``/api/embed`` (:mod:`packer.runtime.embed`);
* Ollama's ``/api/generate``, ``/api/chat``, ``/api/tags``..., also on a second listener
  (``--ollama-port``) that answers ``GET /`` with "Ollama is running".

How it is built, layer by layer:

* :mod:`packer.runtime.transport`: HTTP/1.1 (limits, deadlines, auth, CORS, SSE/NDJSON, errors
  in the route's dialect), the only code touching sockets;
* :mod:`packer.runtime.routes`: method + path -> handler, dialect, public or not, listener;
* handlers return values (:mod:`packer.runtime.replies`): one module per dialect
  (:mod:`packer.runtime.dialect_llama`, :mod:`packer.runtime.dialect_openai`,
  :mod:`packer.runtime.dialect_ollama`) translating to and from one generation core
  (:mod:`packer.runtime.gen_core`), and :mod:`packer.runtime.endpoints` for the rest;
* this module: the model's state the handlers share (:class:`PackerHTTPServer`) and the entry
  points :func:`make_server` and :func:`serve`.

Requests are decoded together by the engine's scheduler (:mod:`packer.runtime.scheduler`,
``-np`` slots, continuous batching); when every slot is busy and ``--max-queue`` requests wait,
more get 503 with ``Retry-After``; embeddings and tokenizing wait in lines of the same length
(:class:`packer.runtime.connections.WorkLimit`).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

from packer.runtime import ollama_api as oll
from packer.runtime.connections import CONNECTIONS_MARGIN, WorkLimit
from packer.runtime.embed import Embedder
from packer.runtime.gen_core import Core
from packer.runtime.generate import Sampling
from packer.runtime.metrics import Metrics
from packer.runtime.server_api import ApiError
from packer.runtime.server_options import ServerFeatures
from packer.runtime.transport import HttpOptions, HttpServer

if TYPE_CHECKING:
    from packer.runtime.engine import Engine

__all__ = ["HttpOptions", "PackerHTTPServer", "ServeError", "make_server", "serve"]

log = logging.getLogger("packer.runtime.server")

DRAIN_TIMEOUT_S = 15.0  # how long serve() waits for in-flight requests on shutdown


class ServeError(OSError):
    """The server cannot start; ``str()`` is one line for the user (e.g. the port is taken)."""


class _Gate:
    """Counts requests using the model, so shutdown can wait for them before the engine closes."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self.closing = False

    @contextmanager
    def use(self) -> Iterator[None]:
        with self._cond:
            if self.closing:
                raise ApiError(503, "the server is shutting down", "unavailable_error")
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def close(self, timeout: float) -> bool:
        with self._cond:
            self.closing = True
            return self._cond.wait_for(lambda: self._active == 0, timeout)


class PackerHTTPServer(HttpServer):
    """A listener with the model: what the handlers share (engine, generation core, embeddings
    context, the lines model work waits in, the shutdown gate)."""

    def __init__(
        self,
        address: tuple[str, int],
        engine: Engine,
        *,
        family: socket.AddressFamily,
        model_alias: str | None,
        api_key: str | None,
        sampling: Sampling | None,
        http: HttpOptions | None = None,
        ollama: bool = False,
        features: ServerFeatures | None = None,
    ) -> None:
        http = http or HttpOptions()
        self.embedder = Embedder(engine)
        self.engine = engine
        self.embedding_only = getattr(engine, "embedding", None) is not None
        self.model_name = model_alias or engine.name
        self.features = features or ServerFeatures()
        slots = max(1, engine.options.n_parallel)
        queue = max(0, engine.options.max_queue)
        self.embed_line = WorkLimit(1, queue)  # one embeddings context
        self.token_line = WorkLimit(slots, queue)  # tokenize/detokenize
        self.defaults = (
            dataclasses.replace(sampling, stop=list(sampling.stop)) if sampling else Sampling()
        )
        self.gate = _Gate()
        self.core = self._make_core(http)
        self.started = int(time.time())
        self._card: oll.ModelCard | None = None
        super().__init__(
            address,
            family=family,
            api_key=api_key,
            http=http,
            max_connections=http.max_connections or slots + queue + CONNECTIONS_MARGIN,
            ollama=ollama,
        )
        self.metrics = Metrics() if self.features.metrics else None
        self.core.metrics = self.metrics

    def _make_core(self, http: HttpOptions) -> Core:
        gate = self.gate
        return Core(
            self.engine,
            gate.use,
            lambda: gate.closing,
            max_tokens=http.max_tokens,
            features=self.features,
        )

    def share_with(self, other: PackerHTTPServer) -> None:
        """Make this listener use ``other``'s model state (shutdown gate, generation core,
        embeddings context) and limits (connections, waiting lines)."""
        self.gate = other.gate
        self.core = other.core
        self.metrics = other.metrics
        self.embedder = other.embedder
        self.connections = other.connections
        self.lingerer = other.lingerer
        self.embed_line = other.embed_line
        self.token_line = other.token_line

    # -- what the handlers ask of the server (see packer.runtime.replies.App) ----------------
    def embed(self, texts: list[str], truncate: bool = False) -> tuple[list[list[float]], int]:
        with self.gate.use(), self.embed_line.use():
            return self.embedder.embed(texts, truncate=truncate)

    def model_info(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"n_ctx": self.engine.n_ctx}
        with self.gate.use(), suppress(Exception):  # stand-in engines have no model facts
            meta.update(self.engine.model_facts())
        return meta

    def card(self) -> oll.ModelCard:
        """The model as Ollama's listings describe it."""
        if self._card is None:
            engine = self.engine
            meta = engine.metadata
            facts = engine.model_facts()
            desc = engine.description().split()
            self._card = oll.ModelCard(
                name=self.model_name,
                path=engine.path,
                family=meta.get("general.architecture", "unknown"),
                parameter_size=oll.parameter_size(facts.get("n_params", 0)),
                quantization_level=desc[-1] if desc else "unknown",
                context_length=facts.get("n_ctx_train", 0),
                metadata=meta,
                chat_template=engine.chat_template,
                n_ctx=engine.n_ctx,
                embedding_only=self.embedding_only,
            )
        return self._card

    def drain(self, timeout: float = DRAIN_TIMEOUT_S) -> bool:
        """Refuse new model work, stop running generations at their next token, and wait for
        them; True when none is left (then the engine may be closed)."""
        return self.gate.close(timeout)


# -- entry points ---------------------------------------------------------------------------


def make_server(
    engine: Engine,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    model_alias: str | None = None,
    api_key: str | None = None,
    ready: Callable[[str], None] | None = None,
    sampling: Sampling | None = None,
    http: HttpOptions | None = None,
    ollama: bool = False,
    features: ServerFeatures | None = None,
) -> PackerHTTPServer:
    """Bind and listen (port 0 = any free port; see ``.url``) without serving yet: run
    ``serve_forever()`` in a thread, stop with ``shutdown()`` then ``server_close()``.
    ``ollama``: a listener for Ollama's API only (see :meth:`PackerHTTPServer.share_with`);
    ``features``: what the command line turned on (reasoning format, system prompt...)."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family = infos[0][0]
        server = PackerHTTPServer(
            (host, port),
            engine,
            family=family,
            model_alias=model_alias,
            api_key=api_key,
            sampling=sampling,
            http=http,
            ollama=ollama,
            features=features,
        )
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE or getattr(exc, "winerror", None) == 10048:
            raise ServeError(f"port {port} is in use: pass --port N") from None
        if exc.errno == errno.EACCES:
            raise ServeError(
                f"no permission to listen on {host}:{port}: pass --port N (1024 or above)"
            ) from None
        reason = exc.strerror or str(exc)
        raise ServeError(f"cannot listen on {host}:{port}: {reason}") from None
    if ready is not None:
        ready(server.url)
    return server


def serve(
    engine: Engine,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    model_alias: str | None = None,
    api_key: str | None = None,
    ready: Callable[[str], None] | None = None,
    sampling: Sampling | None = None,
    http: HttpOptions | None = None,
    features: ServerFeatures | None = None,
) -> None:
    """Blocking. Serve until KeyboardInterrupt/SIGTERM, then return (the caller closes the
    engine; by then no request is using it). ``sampling``: defaults for fields a request omits;
    ``http.ollama_port``: also serve Ollama's API there, on the same host and model."""
    http = http or HttpOptions()
    server = make_server(
        engine,
        host,
        port,
        model_alias=model_alias,
        api_key=api_key,
        sampling=sampling,
        http=http,
        features=features,
    )
    ollama_server: PackerHTTPServer | None = None
    if http.ollama_port is not None:
        try:
            ollama_server = make_server(
                engine,
                host,
                http.ollama_port,
                model_alias=model_alias,
                api_key=api_key,
                sampling=sampling,
                http=http,
                ollama=True,
                features=features,
            )
        except ServeError as exc:
            server.server_close()
            raise ServeError(str(exc).replace("--port", "--ollama-port")) from None
        ollama_server.share_with(server)
        threading.Thread(
            target=ollama_server.serve_forever,
            kwargs={"poll_interval": 0.5},
            name="ollama-listener",
            daemon=True,
        ).start()
        print(f"packer: Ollama API on {ollama_server.url}", file=sys.stderr, flush=True)
    if not server.loopback_only and not http.public_urls:  # a class: the addresses to type
        from packer.runtime import lan

        urls = tuple(lan.public_urls(host, server.server_address[1]))
        http = server.http = dataclasses.replace(http, public_urls=urls)
    where = server.url + (" (all interfaces)" if host in ("0.0.0.0", "::", "") else "")
    print(
        f"packer: serving {server.model_name} on {where}"
        + (" (web chat at /)" if http.webui else ""),
        file=sys.stderr,
        flush=True,
    )
    if not server.loopback_only:
        from packer.runtime.lan import startup_lines

        lines = startup_lines(list(http.public_urls), has_key=api_key is not None)
        print("\n".join(lines), file=sys.stderr, flush=True)
    if ready is not None:
        ready(server.url)
    restore = _sigterm_raises_interrupt()
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        log.info("interrupted: shutting down")
    finally:
        restore()
        if ollama_server is not None:
            ollama_server.shutdown()
            ollama_server.server_close()
        server.server_close()
        if not server.drain():
            log.warning("requests still running after %.0f s; closing anyway", DRAIN_TIMEOUT_S)


def _sigterm_raises_interrupt() -> Callable[[], None]:
    """SIGTERM -> KeyboardInterrupt in the main thread (so serve() returns); a no-op elsewhere."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        return lambda: None

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    return lambda: signal.signal(signal.SIGTERM, previous)
