"""``model.run --server``: llama.cpp's and OpenAI's HTTP APIs plus a web chat page, stdlib only.

Endpoints (llama.cpp server / llamafile compatible, see ``/work/shared/anchors.md``):

* ``GET /`` web chat (its data: ``GET /packer/page.json``, ``/packer/license``,
  ``/packer/vendor/...``, see :mod:`packer.runtime.webpage`); ``GET /health``; ``GET /props``; ``GET /v1/models``;
* ``POST /completion`` (llama.cpp; LangChain's ``Llamafile``), ``POST /tokenize``,
  ``POST /detokenize``;
* ``POST /v1/chat/completions``, ``POST /v1/completions`` (OpenAI);
* ``POST /embedding``, ``POST /v1/embeddings``, Ollama's ``/api/embed`` (:mod:`packer.runtime.embed`);
* Ollama's ``/api/generate``, ``/api/chat``, ``/api/tags``... (:mod:`packer.runtime.ollama_api`), also on
  a second listener (``--ollama-port``) that answers ``GET /`` with "Ollama is running".

Streaming is Server-Sent Events made of ``data: {json}`` lines only (Ollama's endpoints: NDJSON,
one object per line). Requests are decoded together by the engine's scheduler
(:mod:`packer.runtime.scheduler`, ``-np`` slots, continuous batching); when every slot is busy and
``--max-queue`` requests wait, more get 503 with ``Retry-After``; embeddings and tokenizing wait
in lines of the same length (:class:`packer.runtime.connections.WorkLimit`). Parsing and
formatting live in :mod:`packer.runtime.server_api`.

What a client cannot do: hold more than ``--max-connections`` connections (503 at once), take
over :data:`HEAD_TIMEOUT_S` to send a request's head or :data:`BODY_TIMEOUT_S` for its body, send
more than ``--max-body-mb`` however the body is framed (:mod:`packer.runtime.request_body`), reach
a loopback-only server through a foreign Host name or call it from a foreign web page
(:mod:`packer.runtime.browser_guard`).
"""

from __future__ import annotations

import dataclasses
import errno
import hmac
import io
import json
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from packer.runtime import __version__
from packer.runtime import browser_guard as guard
from packer.runtime import generate as gen
from packer.runtime import ollama_api as oll
from packer.runtime import server_api as api
from packer.runtime.connections import (
    CONNECTIONS_MARGIN,
    ConnectionLimit,
    DeadlineReader,
    Lingerer,
    WorkLimit,
    client_gone,
)
from packer.runtime.embed import Embedder
from packer.runtime.generate import PromptError, Sampling
from packer.runtime.request_body import content_type_refusal, parse_json_object, read_body
from packer.runtime.scheduler import QueueFull
from packer.runtime.server_api import ApiError
from packer.runtime.server_options import ServerFeatures
from packer.runtime.webpage import VENDOR, PageInfo, license_json, page_json

if TYPE_CHECKING:
    from packer.runtime.engine import Engine

log = logging.getLogger("packer.runtime.server")

DEFAULT_MAX_BODY = 8 << 20  # bytes of JSON we accept in one request (--max-body-mb)
CANCEL_POLL_S = 0.2  # how often a generation checks whether its client is still there
DRAIN_TIMEOUT_S = 15.0  # how long serve() waits for in-flight requests on shutdown
HEAD_TIMEOUT_S = 10.0  # a new connection's request line and headers must arrive within this
KEEPALIVE_S = 30.0  # an open connection's next request (idle time included) must arrive within
BODY_TIMEOUT_S = 60.0  # a request body must arrive within this once its headers are in
STALL_S = 30.0  # no single read may wait longer than this
WRITE_TIMEOUT_S = 120.0  # a client that reads nothing for this long is dropped


@dataclass(frozen=True)
class HttpOptions:
    """Listener settings from the command line.

    ``cors``: origins allowed to call the API from a browser page elsewhere (``*`` = any; empty:
    no CORS headers, so browsers refuse cross-site calls); ``max_body``: request size limit in
    bytes (413 above); ``max_tokens``: most tokens one request may ask for (> 0; also the
    default when a request sets none); ``webui``: serve the chat page at ``/`` (else ``/``
    answers like Ollama); ``ollama_port``: also listen there for the Ollama API;
    ``max_connections``: connections served at once (0: slots + max queue +
    ``CONNECTIONS_MARGIN``); ``allowed_hosts``: Host names a loopback-only server answers
    besides localhost and loopback addresses (``*``: any)."""

    cors: tuple[str, ...] = ()
    max_body: int = DEFAULT_MAX_BODY
    max_tokens: int = -1
    webui: bool = True
    ollama_port: int | None = None
    max_connections: int = 0
    allowed_hosts: tuple[str, ...] = ()
    # the addresses students can type (every LAN address, for a non-loopback --host): printed
    # with a QR code at start and shown with one on the web page (GET /packer/page.json)
    public_urls: tuple[str, ...] = ()
    # what the web page shows about the model (quant, size, licence), from the manifest
    page: PageInfo | None = None


class ServeError(OSError):
    """The server cannot start; ``str()`` is one line for the user (e.g. the port is taken)."""


def templates_dir() -> Path:
    if getattr(sys, "frozen", False):
        return Path(sys._MEIPASS) / "templates"  # type: ignore[attr-defined]
    return Path(__file__).resolve().parents[1] / "templates"


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


class PackerHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64
    allow_reuse_address = (
        sys.platform != "win32"
    )  # on Windows it would let two servers share a port

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
    ) -> None:
        if api_key is not None and not api_key.strip():
            raise ValueError("an empty API key would let anyone in: pass None for no key")
        self.address_family = family
        self.http = http or HttpOptions()
        self.ollama = ollama  # the --ollama-port listener: Ollama's API (and OpenAI's /v1) only
        self.embedder = Embedder(engine)
        self.engine = engine
        self.model_name = model_alias or engine.name
        self.api_key = api_key
        slots = max(1, engine.options.n_parallel)
        queue = max(0, engine.options.max_queue)
        self.connections = ConnectionLimit(
            self.http.max_connections or slots + queue + CONNECTIONS_MARGIN
        )
        self.lingerer = Lingerer()
        self.embed_line = WorkLimit(1, queue)  # one embeddings context
        self.token_line = WorkLimit(slots, queue)  # tokenize/detokenize
        self.defaults = (
            dataclasses.replace(sampling, stop=list(sampling.stop)) if sampling else Sampling()
        )
        self.gate = _Gate()
        self.started = int(time.time())
        self._card: oll.ModelCard | None = None
        super().__init__(address, Handler)
        host, port = self.server_address[:2]
        self.url = f"http://{_url_host(str(host))}:{port}"
        self.loopback_only = guard.listens_on_loopback(str(host))

    def process_request(self, request: Any, client_address: Any) -> None:
        """One thread per connection, up to ``--max-connections``; one more is answered 503."""
        if not self.connections.try_acquire():
            who = client_address[0] if isinstance(client_address, tuple) else client_address
            self.connections.warn_full(str(who))
            self.lingerer.refuse(request, self._busy_response())
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.connections.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()

    def _busy_response(self) -> bytes:
        err = ApiError(
            503,
            f"the server has {self.connections.limit} connections open (--max-connections): "
            "retry in a moment",
            "unavailable_error",
        )
        body = json.dumps(err.ollama_body() if self.ollama else err.body(False)).encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\n"
            f"Server: packer/{__version__}\r\n"
            "Content-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Retry-After: 1\r\n"
            "Connection: close\r\n\r\n"
        )
        return head.encode() + body

    def handle_error(self, request: Any, client_address: Any) -> None:
        """socketserver's default prints a traceback block on stderr for any exception that
        escapes a request. A client that goes away mid-request (reset, broken pipe, timeout)
        is ordinary for a server: logged at debug level only. Anything else is one error line,
        with the traceback under --verbose."""
        exc = sys.exc_info()[1]
        who = client_address[0] if isinstance(client_address, tuple) else client_address
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.debug("client %s went away: %s", who, exc)
            return
        log.error(
            "error while serving %s: %s: %s",
            who,
            type(exc).__name__,
            exc,
            exc_info=log.isEnabledFor(logging.DEBUG),
        )

    def share_with(self, other: PackerHTTPServer) -> None:
        """Make this listener use ``other``'s model state (shutdown gate, embeddings context)
        and limits (connections, waiting lines)."""
        self.gate = other.gate
        self.embedder = other.embedder
        self.connections = other.connections
        self.lingerer = other.lingerer
        self.embed_line = other.embed_line
        self.token_line = other.token_line

    def card(self) -> oll.ModelCard:
        """The model as Ollama's listings describe it."""
        if self._card is None:
            import ctypes

            import llama_cpp

            llm = self.engine.llm
            meta = dict(llm.metadata)
            buf = ctypes.create_string_buffer(256)
            llama_cpp.llama_model_desc(llm._model.model, buf, len(buf))
            desc = buf.value.decode("utf-8", "replace").split()
            self._card = oll.ModelCard(
                name=self.model_name,
                path=self.engine.path,
                family=meta.get("general.architecture", "unknown"),
                parameter_size=oll.parameter_size(int(llm._model.n_params())),
                quantization_level=desc[-1] if desc else "unknown",
                context_length=int(llm._model.n_ctx_train()),
                metadata=meta,
                chat_template=meta.get("tokenizer.chat_template", ""),
                n_ctx=self.engine.n_ctx,
            )
        return self._card

    def drain(self, timeout: float = DRAIN_TIMEOUT_S) -> bool:
        """Refuse new model work, stop running generations at their next token, and wait for
        them; True when none is left (then the engine may be closed)."""
        return self.gate.close(timeout)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


# -- routing --------------------------------------------------------------------------------

_GET = {
    "/": "page",
    "/index.html": "page",
    "/favicon.ico": "favicon",
    "/packer/page.json": "page_json",
    "/packer/license": "license",
    **dict.fromkeys(VENDOR, "vendor"),
    "/health": "health",
    "/v1/health": "health",
    "/v1/models": "models",
    "/models": "models",
    "/props": "props",
    "/slots": "slots",
    "/api/tags": "ollama_tags",
    "/api/version": "ollama_version",
    "/api/ps": "ollama_ps",
}
_POST = {
    "/completion": "completion",
    "/completions": "completion",
    "/v1/completions": "oai_completion",
    "/v1/chat/completions": "chat",
    "/chat/completions": "chat",
    "/tokenize": "tokenize",
    "/detokenize": "detokenize",
    "/embedding": "embedding",
    "/embeddings": "embedding",
    "/v1/embeddings": "oai_embedding",
    "/api/generate": "ollama_generate",
    "/api/chat": "ollama_chat",
    "/api/show": "ollama_show",
    "/api/embed": "ollama_embed",
    "/api/embeddings": "ollama_embeddings",
}
# no API key needed (the page asks for one itself; what it loads holds nothing secret)
_PUBLIC = {"page", "favicon", "health", "page_json", "license", "vendor"}
# what the --ollama-port listener answers: Ollama's API, and OpenAI's /v1 as Ollama does
_ON_OLLAMA_PORT = {
    "page",
    "favicon",
    "models",
    "oai_completion",
    "chat",
    "oai_embedding",
    *(n for n in (*_GET.values(), *_POST.values()) if n.startswith("ollama_")),
}
_OPENAI = {
    "/v1/completions",
    "/v1/chat/completions",
    "/chat/completions",
    "/v1/models",
    "/v1/embeddings",
}


class ClientGone(Exception):
    pass


class Busy(ApiError):
    """Every slot busy and the wait queue full: 503 with a Retry-After header."""

    def __init__(self, exc: QueueFull) -> None:
        super().__init__(503, exc.message, "unavailable_error")
        self.retry_after = exc.retry_after


class Handler(BaseHTTPRequestHandler):
    server: PackerHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "packer"
    disable_nagle_algorithm = True
    timeout = WRITE_TIMEOUT_S  # the socket's timeout while writing; reads: DeadlineReader

    # -- plumbing ---------------------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the stdlib's reader: replaced by one that enforces deadlines
        self._reader = DeadlineReader(
            self.connection, stall_s=STALL_S, write_timeout=WRITE_TIMEOUT_S
        )
        self.rfile = io.BufferedReader(self._reader)
        self._reader.expect_within(HEAD_TIMEOUT_S)
        self._requests = 0

    def handle_one_request(self) -> None:
        if self._requests:  # the next request on a kept-alive connection
            self._reader.expect_within(KEEPALIVE_S)
        self._requests += 1
        self.path = None  # type: ignore[assignment]  # set again once a request line parses
        super().handle_one_request()

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self._reader.expect_within(None)  # the head is in; a body gets its own deadline
        return ok

    def version_string(self) -> str:
        return f"packer/{__version__}"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    def _path(self) -> str:
        path = urlsplit(self.path).path
        return path.rstrip("/") or "/"

    def _is_openai(self) -> bool:
        return self._path() in _OPENAI

    def _is_ollama(self) -> bool:
        if self.path is None:
            return self.server.ollama
        path = urlsplit(self.path).path
        return path.startswith("/api/") or (self.server.ollama and not self._is_openai())

    def _cors(self) -> None:
        """CORS headers only for the origins given with --cors (none by default)."""
        allowed = self.server.http.cors
        if not allowed:
            return
        headers = getattr(self, "headers", None)  # absent when the request line was garbage
        origin = headers.get("Origin") if headers is not None else None
        if "*" in allowed:
            self.send_header("Access-Control-Allow-Origin", "*")
        elif origin and origin in allowed:
            self.send_header("Access-Control-Allow-Origin", origin)
            self.send_header("Vary", "Origin")

    def _send_bytes(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self._cors()
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        self._send_bytes(status, body, "application/json; charset=utf-8", headers)

    def _send_api_error(self, err: ApiError) -> None:
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        if isinstance(err, Busy):
            headers = {"Retry-After": str(err.retry_after)}
        body = err.ollama_body() if self._is_ollama() else err.body(self._is_openai())
        try:
            self._send_json(err.status, body, headers)
        except OSError:
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's own errors (bad request line, unknown method...) as JSON too."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # a garbled request line: answer in HTTP/1.x anyway
            self.request_version = "HTTP/1.0"
        type_ = "not_supported_error" if code == 501 else "invalid_request_error"
        err = ApiError(code, message or explain or "bad request", type_)
        if self.path is None:  # the request line was unreadable: the listener's dialect
            body = err.ollama_body() if self.server.ollama else err.body(False)
        else:
            body = err.ollama_body() if self._is_ollama() else err.body(self._is_openai())
        with suppress(OSError):
            self._send_json(code, body)

    def _announces_body(self) -> bool:
        h = self.headers
        return h.get("Transfer-Encoding") is not None or h.get("Content-Length", "0").strip() != "0"

    def _read_body(self) -> bytes:
        """The request's body, within --max-body-mb and BODY_TIMEOUT_S; a framing error closes
        the connection (where the next request would start is unknown)."""
        self._body_read = True
        if self.headers.get("Transfer-Encoding") and self.headers.get("Content-Length"):
            self.close_connection = True  # both: a request smuggling attempt or a broken proxy
        self._reader.expect_within(BODY_TIMEOUT_S)
        try:
            return read_body(self.rfile, self.headers, self.server.http.max_body)
        except ApiError:
            self.close_connection = True
            raise
        finally:
            self._reader.expect_within(None)

    def _json_body(self) -> dict[str, Any]:
        """The request's body as a JSON object (400 otherwise), sent as JSON (else 415)."""
        refusal = content_type_refusal(self.headers)
        if refusal is not None:
            raise ApiError(415, refusal, "invalid_request_error")
        return parse_json_object(self._read_body())

    def _browser_refusal(self) -> str | None:
        """Why this request is refused as DNS rebinding or a foreign web page (see
        :mod:`packer.runtime.browser_guard`), or None."""
        srv = self.server
        host = self.headers.get("Host")
        if srv.loopback_only:
            refusal = guard.host_refusal(host, srv.http.allowed_hosts)
            if refusal is not None:
                return refusal
        return guard.origin_refusal(self.headers.get("Origin"), host, srv.http.cors)

    def _authorized(self) -> bool:
        key = self.server.api_key
        if key is None:
            return True
        auth = self.headers.get("Authorization", "")
        given = (
            auth[7:].strip() if auth[:7].lower() == "bearer " else self.headers.get("X-Api-Key", "")
        )
        return hmac.compare_digest(given.encode(), key.encode())

    def _client_gone(self) -> bool:
        """True once the client has closed its end (checked without consuming anything)."""
        return client_gone(self.connection)

    def _cancel_check(self) -> Callable[[], bool]:
        last = [0.0]

        def cancelled() -> bool:
            if self.server.gate.closing:
                return True
            now = time.monotonic()
            if now - last[0] < CANCEL_POLL_S:
                return False
            last[0] = now
            return self._client_gone()

        return cancelled

    # -- SSE --------------------------------------------------------------------------------
    def _start_stream(self) -> None:
        self._chunked = self.request_version != "HTTP/1.0"
        self.send_response(200)
        kind = "application/x-ndjson" if self._ndjson else "text/event-stream; charset=utf-8"
        self.send_header("Content-Type", kind)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Accel-Buffering", "no")
        self._cors()
        if self._chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()

    def _write(self, data: bytes) -> None:
        try:
            if self._chunked:
                self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data) if data else b"0\r\n\r\n")
            elif data:
                self.wfile.write(data)
        except (ConnectionError, TimeoutError) as exc:
            self.close_connection = True
            raise ClientGone from exc

    def _event(self, obj: Any) -> None:
        payload = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
        if self._ndjson:  # Ollama: one JSON object per line
            self._write(f"{payload}\n".encode())
            return
        self._write(f"data: {payload}\n\n".encode())

    def _stream(
        self,
        pieces: Iterator[str],
        events: Callable[[Iterator[str]], Iterator[Any]],
        error_event: Callable[[ApiError], Any],
    ) -> None:
        """Send ``events(pieces)`` as SSE. The first piece is awaited before the headers, so
        errors until then (prompt evaluation) are plain JSON errors; after that, an error event
        ends the stream."""
        pieces_it = _Primed(pieces)
        try:
            pieces_it.prime()
            self._start_stream()
            try:
                for ev in events(pieces_it):
                    self._event(ev)
            except ClientGone:
                log.info("%s %s: client went away, generation stopped", self.command, self._path())
                return
            except Exception as exc:
                if isinstance(exc, PromptError):  # e.g. a grammar that allows no next token
                    exc = api.prompt_error(exc)
                err = (
                    exc
                    if isinstance(exc, ApiError)
                    else ApiError(500, f"generation failed: {exc}", "server_error")
                )
                if not isinstance(exc, ApiError):
                    log.exception("generation failed")
                self.close_connection = True
                try:
                    self._event(error_event(err))
                except ClientGone:
                    return
            self._write(b"")
        finally:
            pieces_it.close()

    # -- dispatch ---------------------------------------------------------------------------
    def do_OPTIONS(self) -> None:  # noqa: N802 - stdlib naming
        self._body_read = False
        refusal = self._browser_refusal()
        if refusal is not None:
            self.close_connection = True
            log.info("OPTIONS %s -> 403: %s", self._path(), refusal)
            self._send_api_error(ApiError(403, refusal, "permission_error"))
            return
        if self._announces_body():
            self.close_connection = True  # a preflight has no body; this one is left unread
        self.send_response(204)
        self._cors()
        self.send_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
        self.send_header(
            "Access-Control-Allow-Headers",
            self.headers.get("Access-Control-Request-Headers") or "Authorization, Content-Type",
        )
        self.send_header("Access-Control-Max-Age", "86400")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch(_GET, _POST)

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch(_GET, _POST)

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch(_POST, _GET)

    def _dispatch(self, routes: dict[str, str], other: dict[str, str]) -> None:
        path = self._path()
        self._body_read = False
        self._ndjson = False  # set by the Ollama handlers before streaming
        if self.command != "POST" and self._announces_body():
            self.close_connection = True  # a body nobody reads: the connection cannot go on
        t0 = time.perf_counter()
        status = 200
        try:
            refusal = self._browser_refusal()
            if refusal is not None:
                raise ApiError(403, refusal, "permission_error")
            name = routes.get(path)
            if self.server.ollama and name not in _ON_OLLAMA_PORT:
                name = None
            if name is None:
                if path in other:
                    raise ApiError(
                        405, f"{self.command} is not allowed on {path}", "method_not_allowed"
                    )
                raise ApiError(404, f"no such endpoint: {self.command} {path}", "not_found_error")
            if name not in _PUBLIC and not self._authorized():
                self.close_connection = True  # the body is left unread
                raise ApiError(
                    401,
                    "invalid or missing API key",
                    "authentication_error",
                    code="invalid_api_key",
                )
            try:
                getattr(self, f"_h_{name}")()
            except PromptError as exc:
                raise api.prompt_error(exc) from None
            except QueueFull as exc:
                raise Busy(exc) from None
        except ApiError as err:
            status = err.status
            if not self._body_read and self._announces_body():
                self.close_connection = True  # its body is still in the socket
            log.log(
                logging.WARNING if err.status >= 500 else logging.INFO,
                "%s %s -> %d: %s",
                self.command,
                path,
                err.status,
                err.message,
            )
            self._send_api_error(err)
        except (ConnectionError, TimeoutError, ClientGone):
            self.close_connection = True
            log.info("%s %s: client went away", self.command, path)
        except Exception as exc:  # a bug: answer 500 and keep serving
            status = 500
            log.exception("%s %s failed", self.command, path)
            self.close_connection = True
            self._send_api_error(
                ApiError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")
            )
        else:
            log.debug(
                "%s %s -> %d in %.0f ms",
                self.command,
                path,
                status,
                (time.perf_counter() - t0) * 1e3,
            )

    # -- simple endpoints -------------------------------------------------------------------
    def _h_page(self) -> None:
        if self.server.ollama or not self.server.http.webui:
            self._send_bytes(200, b"Ollama is running", "text/plain; charset=utf-8")
            return
        page = templates_dir() / "chat.html"
        try:
            body = page.read_bytes()
        except OSError:
            raise ApiError(
                404, "the web chat page is not part of this build", "not_found_error"
            ) from None
        self._send_bytes(200, body, "text/html; charset=utf-8", {"Cache-Control": "no-cache"})

    def _h_vendor(self) -> None:
        """The page's vendored scripts (templates/vendor/), part of the web chat."""
        if not self.server.http.webui:
            raise ApiError(
                404, f"no such endpoint: {self.command} {self._path()}", "not_found_error"
            )
        name, kind = VENDOR[self._path()]
        try:
            body = (templates_dir() / name).read_bytes()
        except OSError:
            raise ApiError(404, f"{name} is not part of this build", "not_found_error") from None
        self._send_bytes(200, body, kind, {"Cache-Control": "max-age=86400"})

    def _h_page_json(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        srv = self.server
        body = page_json(
            srv.model_name,
            srv.http.page,
            srv.http.public_urls,
            (query.get("lang") or [None])[0],
            self.headers.get("Accept-Language", ""),
        )
        self._send_json(200, body, {"Cache-Control": "no-cache", "Vary": "Accept-Language"})

    def _h_license(self) -> None:
        self._send_json(200, license_json(self.server.http.page))

    def _h_favicon(self) -> None:
        self._send_bytes(204, b"", "image/x-icon")

    def _h_health(self) -> None:
        if self.server.gate.closing:
            raise ApiError(503, "the server is shutting down", "unavailable_error")
        self._send_json(200, {"status": "ok"})

    def _h_models(self) -> None:
        engine = self.server.engine
        meta: dict[str, Any] = {"n_ctx": engine.n_ctx}
        with self.server.gate.use():
            model = engine.llm._model
            for key in ("n_vocab", "n_ctx_train", "n_embd", "n_params", "size"):
                with suppress(Exception):  # older llama-cpp-python lacks some
                    meta[key] = int(getattr(model, key)())
        self._send_json(200, api.models_list(self.server.model_name, self.server.started, meta))

    def _h_props(self) -> None:
        engine = self.server.engine
        d = self.server.defaults
        import llama_cpp

        self._send_json(
            200,
            {
                "default_generation_settings": {
                    "id": 0,
                    "id_task": -1,
                    "n_ctx": engine.n_ctx,
                    "speculative": False,
                    "is_processing": engine.scheduler.busy(),
                    "params": api.generation_settings(d),
                    "prompt": "",
                },
                "total_slots": engine.scheduler.n_parallel,
                "model_alias": self.server.model_name,
                "model_path": str(engine.path),
                "chat_template": engine.llm.metadata.get("tokenizer.chat_template", ""),
                "modalities": {"vision": False, "audio": False},
                "build_info": f"packer-runtime / llama-cpp-python {llama_cpp.__version__}",
            },
        )

    def _h_slots(self) -> None:
        """llama-server's GET /slots: one object per slot."""
        defaults = self.server.defaults
        out = []
        for s in self.server.engine.scheduler.slots():
            out.append(
                {
                    "id": s["id"],
                    "id_task": -1,
                    "n_ctx": s["n_ctx"],
                    "speculative": False,
                    "is_processing": s["is_processing"],
                    "params": api.generation_settings(s["params"] or defaults),
                    "prompt": "",
                    "n_prompt_tokens": s["n_prompt_tokens"],
                    "n_prompt_tokens_processed": s["n_prompt_tokens_processed"],
                    "n_cached_tokens": s["n_cached"],
                    "next_token": {
                        "has_next_token": s["has_next_token"],
                        "has_new_line": False,
                        "n_remain": s["n_remain"],
                        "n_decoded": s["n_decoded"],
                        "stopping_word": "",
                    },
                }
            )
        self._send_json(200, out)

    def _h_tokenize(self) -> None:
        body = self._json_body()
        content = body.get("content")
        if not isinstance(content, str):
            raise ApiError(400, "'content' (a string) is required", param="content")
        add_special = api.get_bool(body, "add_special", False)
        parse_special = api.get_bool(body, "parse_special", True)
        with_pieces = api.get_bool(body, "with_pieces", False)
        engine = self.server.engine
        with self.server.gate.use(), self.server.token_line.use():
            tokens = gen.tokenize(
                engine, content, add_special=add_special, parse_special=parse_special
            )
            if with_pieces:
                out: list[Any] = []
                for t in tokens:
                    raw = gen.token_piece(engine, t, special=True)
                    try:
                        piece: Any = raw.decode("utf-8")
                    except UnicodeDecodeError:
                        piece = list(raw)
                    out.append({"id": t, "piece": piece})
                self._send_json(200, {"tokens": out})
                return
        self._send_json(200, {"tokens": tokens})

    def _h_detokenize(self) -> None:
        body = self._json_body()
        tokens = body.get("tokens", [])
        if not isinstance(tokens, list):
            raise ApiError(400, "'tokens' must be a list of token ids", param="tokens")
        with self.server.gate.use(), self.server.token_line.use():
            ids = gen.check_tokens(self.server.engine, tokens)
            self._send_json(200, {"content": gen.detokenize(self.server.engine, ids)})

    # -- embeddings -------------------------------------------------------------------------
    def _embed(self, texts: list[str], truncate: bool = False) -> tuple[list[list[float]], int]:
        with self.server.gate.use(), self.server.embed_line.use():
            return self.server.embedder.embed(texts, truncate=truncate)

    def _h_embedding(self) -> None:
        """llama.cpp's /embedding: ``content`` a string -> ``{"embedding": [...]}`` (what
        llamafile and LangChain's ``LlamafileEmbeddings`` read); a list -> one
        ``{"index", "embedding"}`` per string."""
        body = self._json_body()
        key = "content" if "content" in body else "input"
        texts, single = api.embedding_inputs(body, key)
        vectors, _ = self._embed(texts)
        if single:
            self._send_json(200, {"embedding": vectors[0]})
        else:
            self._send_json(200, [{"index": i, "embedding": v} for i, v in enumerate(vectors)])

    def _h_oai_embedding(self) -> None:
        """OpenAI's /v1/embeddings."""
        body = self._json_body()
        texts, _ = api.embedding_inputs(body, "input")
        fmt = api.encoding_format(body)
        vectors, n_tokens = self._embed(texts)
        out = api.openai_embeddings(self.server.model_name, vectors, n_tokens, fmt)
        self._send_json(200, out)

    def _h_ollama_embed(self) -> None:
        t0 = time.perf_counter_ns()
        req = oll.parse_embed(self._json_body())
        vectors, n_tokens = (
            self._embed(req.inputs, truncate=req.truncate) if req.inputs else ([], 0)
        )
        out = oll.embed_response(
            req.model or self.server.model_name, vectors, n_tokens, t0, time.perf_counter_ns()
        )
        self._send_json(200, out)

    def _h_ollama_embeddings(self) -> None:
        req = oll.parse_embeddings(self._json_body())
        if not req.inputs[0]:
            self._send_json(200, {"embedding": []})  # as Ollama answers an empty prompt
            return
        vectors, _ = self._embed(req.inputs, truncate=True)
        self._send_json(200, {"embedding": vectors[0]})

    # -- Ollama: the model -------------------------------------------------------------------
    def _h_ollama_version(self) -> None:
        self._send_json(200, {"version": oll.OLLAMA_VERSION})

    def _h_ollama_tags(self) -> None:
        self._send_json(200, self.server.card().tags())

    def _h_ollama_ps(self) -> None:
        self._send_json(200, self.server.card().ps())

    def _h_ollama_show(self) -> None:
        self._json_body()  # any model name: this server holds one model
        self._send_json(200, self.server.card().show())

    # -- generation endpoints ---------------------------------------------------------------
    def _generation(
        self, prompt: list[int], params: Sampling, result: gen.GenResult
    ) -> Iterator[str]:
        gen.check_context(self.server.engine, len(prompt))
        return gen.generate(self.server.engine, prompt, params, result, self._cancel_check())

    def _capped(self, params: Sampling, field: str = "max_tokens") -> Sampling:
        """Apply the server's --max-tokens limit: more is refused, none asked means the limit."""
        cap = self.server.http.max_tokens
        if cap <= 0:
            return params
        if params.max_tokens > cap:
            raise ApiError(
                400,
                f"'{field}' is {params.max_tokens} but this server allows at most {cap} tokens "
                "per request: ask for fewer",
                param=field,
            )
        return params if params.max_tokens >= 0 else dataclasses.replace(params, max_tokens=cap)

    def _log_result(self, r: gen.GenResult) -> None:
        tps = r.n_predicted * 1e3 / r.t_predicted_ms if r.t_predicted_ms > 0 else 0.0
        log.info(
            "%s %s: %d prompt tokens (%d cached), %d generated (%.1f t/s), stop: %s",
            self.command,
            self._path(),
            r.n_prompt,
            r.n_cached,
            r.n_predicted,
            tps,
            r.stop_type,
        )

    def _h_completion(self) -> None:
        """llama.cpp's /completion."""
        srv = self.server
        req = api.parse_completion(self._json_body(), srv.defaults)
        params = self._capped(req.params, "n_predict")
        result = gen.GenResult()
        probs = api.ProbsCursor(result)
        want_probs = params.n_probs > 0
        with srv.gate.use():
            prompt = gen.completion_tokens(srv.engine, req.prompt)
            pieces = self._generation(prompt, params, result)
            if not req.stream:
                with _closing(pieces):
                    text = "".join(pieces)
                self._log_result(result)
                final = api.completion_final(
                    result,
                    srv.model_name,
                    params,
                    srv.engine.n_ctx,
                    content=text,
                    probs=probs.take() if want_probs else None,
                )
                self._send_json(200, final)
                return

            def events(pieces: Iterator[str]) -> Iterator[Any]:
                for piece in pieces:
                    yield api.completion_chunk(piece, probs.take() if want_probs else None)
                self._log_result(result)
                yield api.completion_final(
                    result, srv.model_name, params, srv.engine.n_ctx, content=""
                )

            def error_event(err: ApiError) -> Any:
                return {"content": "", "stop": True} | err.body(False)

            self._stream(pieces, events, error_event)

    def _h_oai_completion(self) -> None:
        """OpenAI's /v1/completions."""
        srv = self.server
        req = api.parse_openai_completion(self._json_body(), srv.defaults)
        params = self._capped(req.params)
        result = gen.GenResult()
        ids = api.OpenAIIds("cmpl", srv.model_name)
        probs = api.ProbsCursor(result)
        with srv.gate.use():
            prompt = gen.completion_tokens(srv.engine, req.prompt)
            echo = ""
            if req.echo:
                echo = (
                    req.prompt
                    if isinstance(req.prompt, str)
                    else gen.detokenize(srv.engine, prompt)
                )
            pieces = self._generation(prompt, params, result)
            if not req.stream:
                with _closing(pieces):
                    for _ in pieces:
                        pass
                self._log_result(result)
                lp = api.text_logprobs(probs.take(), req.n_top, len(echo)) if req.logprobs else None
                self._send_json(200, api.text_response(ids, result, echo, lp))
                return

            def events(pieces: Iterator[str]) -> Iterator[Any]:
                offset = len(echo)
                if echo:
                    yield api.text_chunk(ids, echo)
                for piece in pieces:
                    lp = (
                        api.text_logprobs(probs.take(), req.n_top, offset) if req.logprobs else None
                    )
                    offset += len(piece)
                    yield api.text_chunk(ids, piece, None, lp)
                self._log_result(result)
                yield api.text_chunk(ids, "", result.finish_reason)
                if req.include_usage:
                    yield api.usage_chunk(ids, "text_completion", result)
                yield "[DONE]"

            self._stream(pieces, events, lambda err: err.body(True))

    def _h_chat(self) -> None:
        """OpenAI's /v1/chat/completions."""
        srv = self.server
        req = api.parse_chat(self._json_body(), srv.defaults)
        result = gen.GenResult()
        ids = api.OpenAIIds("chatcmpl", srv.model_name)
        with srv.gate.use():
            prompt, stop = gen.chat_tokens(srv.engine, req.messages, req.params.stop)
            params = dataclasses.replace(self._capped(req.params), stop=stop)
            pieces = self._generation(prompt, params, result)
            probs = api.ProbsCursor(result)
            if not req.stream:
                with _closing(pieces):
                    for _ in pieces:
                        pass
                self._log_result(result)
                lp = api.chat_logprobs(probs.take(), req.n_top) if req.logprobs else None
                self._send_json(200, api.chat_response(ids, result, lp))
                return

            def events(pieces: Iterator[str]) -> Iterator[Any]:
                yield api.chat_chunk(ids, {"role": "assistant", "content": ""})
                for piece in pieces:
                    lp = api.chat_logprobs(probs.take(), req.n_top) if req.logprobs else None
                    yield api.chat_chunk(ids, {"content": piece}, None, lp)
                self._log_result(result)
                yield api.chat_chunk(ids, {}, result.finish_reason)
                if req.include_usage:
                    yield api.usage_chunk(ids, "chat.completion.chunk", result)
                yield "[DONE]"

            self._stream(pieces, events, lambda err: err.body(True))

    # -- Ollama: generation ------------------------------------------------------------------
    def _ollama_answer(
        self,
        prompt: list[int],
        params: Sampling,
        stream: bool,
        want_logprobs: bool,
        n_top: int,
        chunk: Callable[[str, list[dict[str, Any]] | None], dict[str, Any]],
        final: Callable[[gen.GenResult, str, list[dict[str, Any]] | None, int], dict[str, Any]],
    ) -> None:
        """Generate and answer as Ollama does: NDJSON lines, or one object (``stream: false``)."""
        result = gen.GenResult()
        cursor = api.ProbsCursor(result)

        def logprobs() -> list[dict[str, Any]] | None:
            return oll.logprobs(cursor.take(), n_top) if want_logprobs else None

        pieces = self._generation(prompt, params, result)
        if not stream:
            with _closing(pieces):
                text = "".join(pieces)
            self._log_result(result)
            self._send_json(200, final(result, text, logprobs(), time.perf_counter_ns()))
            return

        def events(pieces: Iterator[str]) -> Iterator[Any]:
            for piece in pieces:
                yield chunk(piece, logprobs())
            self._log_result(result)
            yield final(result, "", logprobs(), time.perf_counter_ns())

        self._ndjson = True
        self._stream(pieces, events, lambda err: err.ollama_body())

    def _h_ollama_generate(self) -> None:
        """Ollama's /api/generate: the prompt through the chat template (``system`` too), or
        as it is with ``raw``; ``context`` (token ids from an earlier answer) goes first."""
        t0 = time.perf_counter_ns()
        srv = self.server
        req = oll.parse_generate(self._json_body(), srv.defaults)
        model = req.model or srv.model_name
        if not req.prompt and not req.context:
            self._send_json(200, oll.loaded(model, chat=False))
            return
        engine = srv.engine
        with srv.gate.use():
            context = gen.check_tokens(engine, req.context, "context")
            stop = req.params.stop
            if req.raw:
                prompt = (
                    context + gen.tokenize(engine, req.prompt, add_special=False)
                    if context
                    else gen.completion_tokens(engine, req.prompt)
                )
            else:
                system = [{"role": "system", "content": req.system}] if req.system else []
                messages = [*system, {"role": "user", "content": req.prompt}]
                tokens, stop = gen.chat_tokens(engine, messages, stop)
                prompt = context + tokens
            params = dataclasses.replace(self._capped(req.params, "num_predict"), stop=stop)

            def final(
                r: gen.GenResult, text: str, lp: list[dict[str, Any]] | None, t1: int
            ) -> dict[str, Any]:
                answer = gen.tokenize(engine, r.text, add_special=False, parse_special=False)
                return oll.generate_final(
                    model, r, t0, t1, response=text, context=prompt + answer, probs=lp
                )

            self._ollama_answer(
                prompt,
                params,
                req.stream,
                req.logprobs,
                req.n_top,
                lambda piece, lp: oll.generate_chunk(model, piece, lp),
                final,
            )

    def _h_ollama_chat(self) -> None:
        """Ollama's /api/chat."""
        t0 = time.perf_counter_ns()
        srv = self.server
        req = oll.parse_chat(self._json_body(), srv.defaults)
        model = req.model or srv.model_name
        if not req.messages:
            self._send_json(200, oll.loaded(model, chat=True))
            return
        with srv.gate.use():
            prompt, stop = gen.chat_tokens(srv.engine, req.messages, req.params.stop)
            params = dataclasses.replace(self._capped(req.params, "num_predict"), stop=stop)
            self._ollama_answer(
                prompt,
                params,
                req.stream,
                req.logprobs,
                req.n_top,
                lambda piece, lp: oll.chat_chunk(model, piece, lp),
                lambda r, text, lp, t1: oll.chat_final(model, r, t0, t1, content=text, probs=lp),
            )


class _Primed(Iterator[str]):
    """An iterator whose first item can be fetched ahead (to fail before any header is sent)."""

    def __init__(self, it: Iterator[str]) -> None:
        self._it = it
        self._head: list[str] = []
        self._primed = False

    def prime(self) -> None:
        if not self._primed:
            self._primed = True
            with suppress(StopIteration):
                self._head.append(next(self._it))

    def __next__(self) -> str:
        if self._head:
            return self._head.pop()
        return next(self._it)

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


@contextmanager
def _closing(it: Iterator[str]) -> Iterator[None]:
    try:
        yield
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


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
) -> PackerHTTPServer:
    """Bind and listen (port 0 = any free port; see ``.url``) without serving yet: run
    ``serve_forever()`` in a thread, stop with ``shutdown()`` then ``server_close()``.
    ``ollama``: a listener for Ollama's API only (see :meth:`PackerHTTPServer.share_with`)."""
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
    features: ServerFeatures | None = None,  # flags' placeholder: split's server uses it
) -> None:
    """Blocking. Serve until KeyboardInterrupt/SIGTERM, then return (the caller closes the
    engine; by then no request is using it). ``sampling``: defaults for fields a request omits;
    ``http.ollama_port``: also serve Ollama's API there, on the same host and model."""
    http = http or HttpOptions()
    server = make_server(
        engine, host, port, model_alias=model_alias, api_key=api_key, sampling=sampling, http=http
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
