"""HTTP/1.1 for the server: the only code that touches the socket.

:class:`HttpServer` accepts connections (at most ``--max-connections``; one more is answered 503
at once) and runs a :class:`Handler` per connection, which

* reads each request's head within :data:`HEAD_TIMEOUT_S` (:data:`KEEPALIVE_S` for the next one
  on a kept-alive connection) and its body within :data:`BODY_TIMEOUT_S` and ``--max-body-mb``
  however it is framed (:mod:`packer.runtime.request_body`);
* refuses a foreign Host name on a loopback-only server and calls from foreign web pages
  (:mod:`packer.runtime.browser_guard`), checks the API key, answers CORS preflights;
* finds the route (:mod:`packer.runtime.routes`), calls its handler with a
  :class:`packer.runtime.replies.Call` and writes what it returns: a JSON value, bytes, or a
  stream of events as Server-Sent Events (``data: {json}`` lines) or NDJSON (Ollama);
* renders every error in the route's dialect (llama.cpp, OpenAI or Ollama), the stdlib's own
  (garbled request line, unknown method) included, and notices a client that went away
  (:func:`packer.runtime.connections.client_gone`) so its generation stops.
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from packer.runtime import __version__, routes
from packer.runtime import browser_guard as guard
from packer.runtime import server_api as api
from packer.runtime.connections import ConnectionLimit, DeadlineReader, Lingerer, client_gone
from packer.runtime.generate import PromptError
from packer.runtime.metrics import Metrics
from packer.runtime.replies import Call, Events, Json, Raw, Reply
from packer.runtime.request_body import content_type_refusal, parse_json_object, read_body
from packer.runtime.scheduler import QueueFull
from packer.runtime.server_api import ApiError
from packer.runtime.webpage import PageInfo

log = logging.getLogger("packer.runtime.server")

DEFAULT_MAX_BODY = 8 << 20  # bytes of JSON we accept in one request (--max-body-mb)
CANCEL_POLL_S = 0.2  # how often a generation checks whether its client is still there
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


class ClientGone(Exception):
    pass


class Busy(ApiError):
    """Every slot busy and the wait queue full: 503 with a Retry-After header."""

    def __init__(self, exc: QueueFull) -> None:
        super().__init__(503, exc.message, "unavailable_error")
        self.retry_after = exc.retry_after


def as_api_error(exc: ApiError | PromptError | QueueFull) -> ApiError:
    """An exception of the model's work as the error a client gets."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, PromptError):  # e.g. too long, or a grammar that allows no next token
        return api.prompt_error(exc)
    if isinstance(exc, QueueFull):
        return Busy(exc)
    raise TypeError(f"not an error of the model's work: {exc!r}")


def error_body(err: ApiError, dialect: routes.Dialect) -> dict[str, Any]:
    if dialect == "ollama":
        return err.ollama_body()
    return err.body(dialect == "openai")


class HttpServer(ThreadingHTTPServer):
    """A listener: connection limits, error logging, the API key and which routes it serves
    (``ollama``: the ``--ollama-port`` listener). The handlers get this object as their first
    argument (:class:`packer.runtime.server.PackerHTTPServer` adds the model to it)."""

    daemon_threads = True
    request_queue_size = 64
    # on Windows it would let two servers share a port
    allow_reuse_address = sys.platform != "win32"
    # an embedding model's listener: the routes that generate text answer 400 (routes.Route)
    embedding_only = False

    def __init__(
        self,
        address: tuple[str, int],
        *,
        family: Any,
        api_key: str | None,
        http: HttpOptions,
        max_connections: int,
        ollama: bool = False,
    ) -> None:
        if api_key is not None and not api_key.strip():
            raise ValueError("an empty API key would let anyone in: pass None for no key")
        self.address_family = family
        self.http = http
        self.ollama = ollama
        self.api_key = api_key
        self.metrics: Metrics | None = None  # --metrics: requests are counted here
        self.connections = ConnectionLimit(max_connections)
        self.lingerer = Lingerer()
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
        body = json.dumps(error_body(err, "ollama" if self.ollama else "llama")).encode()
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


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class Handler(BaseHTTPRequestHandler):
    server: HttpServer
    protocol_version = "HTTP/1.1"
    server_version = "packer"
    disable_nagle_algorithm = True
    timeout = WRITE_TIMEOUT_S  # the socket's timeout while writing; reads: DeadlineReader
    _pending: tuple[str, float] | None = None  # the request's route for /metrics, not counted yet

    # -- framing and deadlines --------------------------------------------------------------
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

    def _dialect(self) -> routes.Dialect:
        raw = None if self.path is None else urlsplit(self.path).path
        return routes.dialect_of(raw, self.server.ollama)

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

    # -- who may call -----------------------------------------------------------------------
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
            now = time.monotonic()
            if now - last[0] < CANCEL_POLL_S:
                return False
            last[0] = now
            return self._client_gone()

        return cancelled

    # -- writing ----------------------------------------------------------------------------
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
        self._count(status)
        if self.command != "HEAD":
            self.wfile.write(body)

    def _count(self, status: int) -> None:
        """Count the request being answered for /metrics, once: a whole reply just before its
        body goes out (a client holding its answer finds it counted in its next /metrics), a
        stream or a request that failed on the way when :meth:`_dispatch` ends."""
        pending, self._pending = self._pending, None
        metrics = self.server.metrics
        if pending is not None and metrics is not None:
            route, t0 = pending
            metrics.request(route, status, time.perf_counter() - t0)

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        self._send_bytes(status, body, "application/json; charset=utf-8", headers)

    def _send_api_error(self, err: ApiError) -> None:
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        if isinstance(err, Busy):
            headers = {"Retry-After": str(err.retry_after)}
        try:
            self._send_json(err.status, error_body(err, self._dialect()), headers)
        except OSError:
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's own errors (bad request line, unknown method...) as JSON too."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # a garbled request line: answer in HTTP/1.x anyway
            self.request_version = "HTTP/1.0"
        type_ = "not_supported_error" if code == 501 else "invalid_request_error"
        err = ApiError(code, message or explain or "bad request", type_)
        with suppress(OSError):
            self._send_json(code, error_body(err, self._dialect()))

    def _send_reply(self, reply: Reply) -> None:
        if isinstance(reply, Json):
            self._send_json(reply.status, reply.value, reply.headers)
        elif isinstance(reply, Raw):
            self._send_bytes(reply.status, reply.body, reply.content_type, reply.headers)
        else:
            self._stream(reply)

    def _start_stream(self, ndjson: bool) -> None:
        self._chunked = self.request_version != "HTTP/1.0"
        self.send_response(200)
        kind = "application/x-ndjson" if ndjson else "text/event-stream; charset=utf-8"
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

    def _event(self, obj: Any, ndjson: bool) -> None:
        payload = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
        if ndjson:  # Ollama: one JSON object per line
            self._write(f"{payload}\n".encode())
            return
        self._write(f"data: {payload}\n\n".encode())

    def _stream(self, reply: Events) -> None:
        """Send the events (the handler already waited for the first piece of the answer, so
        errors until then were plain JSON errors); after the headers, an error event in the
        route's dialect ends the stream."""
        try:
            self._start_stream(reply.ndjson)
            try:
                for ev in reply.events:
                    self._event(ev, reply.ndjson)
            except ClientGone:
                log.info("%s %s: client went away, generation stopped", self.command, self._path())
                return
            except Exception as exc:
                if isinstance(exc, (ApiError, PromptError)):
                    err = as_api_error(exc)
                else:
                    log.exception("generation failed")
                    err = ApiError(500, f"generation failed: {exc}", "server_error")
                self.close_connection = True
                try:
                    self._event(reply.error_event(err), reply.ndjson)
                except ClientGone:
                    return
            self._write(b"")
        finally:
            close = getattr(reply.events, "close", None)
            if close is not None:
                close()
            reply.close()

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
        self._dispatch()

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    def _route(self, path: str) -> routes.Route:
        """The route of this request, once it may call it (403, 404, 405, 401 otherwise)."""
        refusal = self._browser_refusal()
        if refusal is not None:
            raise ApiError(403, refusal, "permission_error")
        listener = self.server.ollama
        route = routes.find(self.command, path, listener)
        if route is None:
            if routes.other_method(self.command, path, listener) is not None:
                raise ApiError(
                    405, f"{self.command} is not allowed on {path}", "method_not_allowed"
                )
            raise ApiError(404, f"no such endpoint: {self.command} {path}", "not_found_error")
        if not route.public and not self._authorized():
            self.close_connection = True  # the body is left unread
            raise ApiError(
                401, "invalid or missing API key", "authentication_error", code="invalid_api_key"
            )
        if route.generates and self.server.embedding_only:
            raise ApiError(400, routes.EMBEDDING_ONLY, "invalid_request_error")
        return route

    def _dispatch(self) -> None:
        path = self._path()
        self._body_read = False
        if self.command != "POST" and self._announces_body():
            self.close_connection = True  # a body nobody reads: the connection cannot go on
        t0 = time.perf_counter()
        status = 200
        self._pending = ("unmatched", t0)  # the route pattern /metrics counts it under
        try:
            route = self._route(path)
            self._pending = (route.path, t0)
            call = Call(
                method=self.command,
                path=path,
                body=self._json_body() if self.command == "POST" else {},
                query=parse_qs(urlsplit(self.path).query),
                headers=self.headers,
                cancelled=self._cancel_check(),
            )
            try:
                reply = route.handler(self.server, call)
            except (PromptError, QueueFull) as exc:
                raise as_api_error(exc) from None
            self._send_reply(reply)
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
            status = 499  # counted as nginx does: the client closed the request
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
        finally:
            self._count(status)
