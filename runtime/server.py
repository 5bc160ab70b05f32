"""``model.run --server``: llama.cpp's and OpenAI's HTTP APIs plus a web chat page, stdlib only.

Endpoints (llama.cpp server / llamafile compatible, see ``/work/shared/anchors.md``):

* ``GET /`` web chat; ``GET /health``; ``GET /props``; ``GET /v1/models``;
* ``POST /completion`` (llama.cpp; LangChain's ``Llamafile``), ``POST /tokenize``,
  ``POST /detokenize``;
* ``POST /v1/chat/completions``, ``POST /v1/completions`` (OpenAI).

Streaming is Server-Sent Events made of ``data: {json}`` lines only. Requests are decoded one at
a time under ``engine.lock`` (:func:`runtime.generate.generate`); parsing and formatting live in
:mod:`runtime.server_api`.
"""

from __future__ import annotations

import dataclasses
import errno
import hmac
import json
import logging
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from runtime import __version__
from runtime import generate as gen
from runtime import server_api as api
from runtime.generate import PromptError, Sampling
from runtime.server_api import ApiError

if TYPE_CHECKING:
    from runtime.engine import Engine

log = logging.getLogger("runtime.server")

MAX_BODY = 64 << 20  # bytes of JSON we accept in one request
CANCEL_POLL_S = 0.2  # how often a generation checks whether its client is still there
DRAIN_TIMEOUT_S = 15.0  # how long serve() waits for in-flight requests on shutdown


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
    ) -> None:
        self.address_family = family
        self.engine = engine
        self.model_name = model_alias or engine.name
        self.api_key = api_key or None
        self.defaults = (
            dataclasses.replace(sampling, stop=list(sampling.stop)) if sampling else Sampling()
        )
        self.gate = _Gate()
        self.started = int(time.time())
        super().__init__(address, Handler)
        host, port = self.server_address[:2]
        self.url = f"http://{_url_host(str(host))}:{port}"

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
    "/health": "health",
    "/v1/health": "health",
    "/v1/models": "models",
    "/models": "models",
    "/props": "props",
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
    "/v1/embeddings": "embedding",
}
_PUBLIC = {"page", "favicon", "health"}  # no API key needed (the page asks for one itself)
_OPENAI = {
    "/v1/completions",
    "/v1/chat/completions",
    "/chat/completions",
    "/v1/models",
    "/v1/embeddings",
}


class ClientGone(Exception):
    pass


class Handler(BaseHTTPRequestHandler):
    server: PackerHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "packer"
    disable_nagle_algorithm = True
    timeout = 600  # seconds a connection may sit idle or stall a write

    # -- plumbing ---------------------------------------------------------------------------
    def version_string(self) -> str:
        return f"packer/{__version__}"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    def _path(self) -> str:
        path = urlsplit(self.path).path
        return path.rstrip("/") or "/"

    def _is_openai(self) -> bool:
        return self._path() in _OPENAI

    def _cors(self) -> None:
        headers = getattr(self, "headers", None)  # absent when the request line was garbage
        origin = headers.get("Origin") if headers is not None else None
        self.send_header("Access-Control-Allow-Origin", origin or "*")
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
        try:
            self._send_json(err.status, err.body(self._is_openai()), headers)
        except OSError:
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's own errors (bad request line, unknown method...) as JSON too."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # a garbled request line: answer in HTTP/1.x anyway
            self.request_version = "HTTP/1.0"
        type_ = "not_supported_error" if code == 501 else "invalid_request_error"
        with suppress(OSError):
            self._send_json(
                code, ApiError(code, message or explain or "bad request", type_).body(False)
            )

    def _read_body(self) -> bytes:
        self._body_read = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length_s = self.headers.get("Content-Length")
        if not length_s:
            return b""
        try:
            length = int(length_s)
        except ValueError:
            self.close_connection = True
            raise ApiError(400, "bad Content-Length header") from None
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            raise ApiError(413, f"request body over {MAX_BODY} bytes", "request_too_large")
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        out = bytearray()
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                raise ApiError(400, "bad chunked request body") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            if len(out) + size > MAX_BODY:
                self.close_connection = True
                raise ApiError(413, f"request body over {MAX_BODY} bytes", "request_too_large")
            out += self.rfile.read(size)
            self.rfile.readline(1024)

    def _json_body(self) -> dict[str, Any]:
        raw = self._read_body()
        try:
            body = json.loads(raw.decode("utf-8")) if raw.strip() else None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return body

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
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

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
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
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
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError) as exc:
            self.close_connection = True
            raise ClientGone from exc

    def _event(self, obj: Any) -> None:
        payload = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
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
        t0 = time.perf_counter()
        status = 200
        try:
            name = routes.get(path)
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
        except ApiError as err:
            status = err.status
            if self.command == "POST" and not self._body_read:
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
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, ClientGone):
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
        page = templates_dir() / "chat.html"
        try:
            body = page.read_bytes()
        except OSError:
            raise ApiError(
                404, "the web chat page is not part of this build", "not_found_error"
            ) from None
        self._send_bytes(200, body, "text/html; charset=utf-8", {"Cache-Control": "no-cache"})

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
                    "is_processing": engine.lock.locked(),
                    "params": api.generation_settings(d),
                    "prompt": "",
                },
                "total_slots": 1,
                "model_alias": self.server.model_name,
                "model_path": str(engine.path),
                "chat_template": engine.llm.metadata.get("tokenizer.chat_template", ""),
                "modalities": {"vision": False, "audio": False},
                "build_info": f"packer-runtime / llama-cpp-python {llama_cpp.__version__}",
            },
        )

    def _h_tokenize(self) -> None:
        body = self._json_body()
        content = body.get("content")
        if not isinstance(content, str):
            raise ApiError(400, "'content' (a string) is required", param="content")
        add_special = api.get_bool(body, "add_special", False)
        parse_special = api.get_bool(body, "parse_special", True)
        with_pieces = api.get_bool(body, "with_pieces", False)
        engine = self.server.engine
        with self.server.gate.use():
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
        with self.server.gate.use():
            ids = gen.check_tokens(self.server.engine, tokens)
            self._send_json(200, {"content": gen.detokenize(self.server.engine, ids)})

    def _h_embedding(self) -> None:
        self._json_body()
        raise ApiError(501, "embeddings are not supported by this server", "not_supported_error")

    # -- generation endpoints ---------------------------------------------------------------
    def _generation(
        self, prompt: list[int], params: Sampling, result: gen.GenResult
    ) -> Iterator[str]:
        gen.check_context(self.server.engine, len(prompt))
        return gen.generate(self.server.engine, prompt, params, result, self._cancel_check())

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
        result = gen.GenResult()
        with srv.gate.use():
            prompt = gen.completion_tokens(srv.engine, req.prompt)
            pieces = self._generation(prompt, req.params, result)
            if not req.stream:
                with _closing(pieces):
                    text = "".join(pieces)
                self._log_result(result)
                self._send_json(
                    200,
                    api.completion_final(
                        result, srv.model_name, req.params, srv.engine.n_ctx, content=text
                    ),
                )
                return

            def events(pieces: Iterator[str]) -> Iterator[Any]:
                for piece in pieces:
                    yield api.completion_chunk(piece)
                self._log_result(result)
                yield api.completion_final(
                    result, srv.model_name, req.params, srv.engine.n_ctx, content=""
                )

            def error_event(err: ApiError) -> Any:
                return {"content": "", "stop": True} | err.body(False)

            self._stream(pieces, events, error_event)

    def _h_oai_completion(self) -> None:
        """OpenAI's /v1/completions."""
        srv = self.server
        req = api.parse_openai_completion(self._json_body(), srv.defaults)
        result = gen.GenResult()
        ids = api.OpenAIIds("cmpl", srv.model_name)
        with srv.gate.use():
            prompt = gen.completion_tokens(srv.engine, req.prompt)
            echo = ""
            if req.echo:
                echo = (
                    req.prompt
                    if isinstance(req.prompt, str)
                    else gen.detokenize(srv.engine, prompt)
                )
            pieces = self._generation(prompt, req.params, result)
            if not req.stream:
                with _closing(pieces):
                    for _ in pieces:
                        pass
                self._log_result(result)
                self._send_json(200, api.text_response(ids, result, echo))
                return

            def events(pieces: Iterator[str]) -> Iterator[Any]:
                if echo:
                    yield api.text_chunk(ids, echo)
                for piece in pieces:
                    yield api.text_chunk(ids, piece)
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
            params = dataclasses.replace(req.params, stop=stop)
            pieces = self._generation(prompt, params, result)
            if not req.stream:
                with _closing(pieces):
                    for _ in pieces:
                        pass
                self._log_result(result)
                self._send_json(200, api.chat_response(ids, result))
                return

            def events(pieces: Iterator[str]) -> Iterator[Any]:
                yield api.chat_chunk(ids, {"role": "assistant", "content": ""})
                for piece in pieces:
                    yield api.chat_chunk(ids, {"content": piece})
                self._log_result(result)
                yield api.chat_chunk(ids, {}, result.finish_reason)
                if req.include_usage:
                    yield api.usage_chunk(ids, "chat.completion.chunk", result)
                yield "[DONE]"

            self._stream(pieces, events, lambda err: err.body(True))


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
) -> PackerHTTPServer:
    """Bind and listen (port 0 = any free port; see ``.url``) without serving yet: run
    ``serve_forever()`` in a thread, stop with ``shutdown()`` then ``server_close()``."""
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
) -> None:
    """Blocking. Serve until KeyboardInterrupt/SIGTERM, then return (the caller closes the
    engine; by then no request is using it). ``sampling``: defaults for fields a request omits."""
    server = make_server(
        engine, host, port, model_alias=model_alias, api_key=api_key, sampling=sampling
    )
    where = server.url + (" (all interfaces)" if host in ("0.0.0.0", "::", "") else "")
    print(
        f"packer: serving {server.model_name} on {where} (web chat at /)",
        file=sys.stderr,
        flush=True,
    )
    if ready is not None:
        ready(server.url)
    restore = _sigterm_raises_interrupt()
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        log.info("interrupted: shutting down")
    finally:
        restore()
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
