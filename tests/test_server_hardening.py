"""The server's transport against hostile clients (issue #14: H2, M1, M2, L4, secrets).

Most tests run a real :class:`PackerHTTPServer` on a stand-in engine (no model): every refusal
here happens before the model is touched, and the stand-in's tokenizer can be held to fill the
waiting lines. The slow test at the end sends the review's own requests to a built model.run.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import Message
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import free_port, serve_model_run

from packer.runtime import transport as server_mod
from packer.runtime.browser_guard import (
    host_refusal,
    listens_on_loopback,
    origin_refusal,
    split_host,
)
from packer.runtime.engine import EngineOptions
from packer.runtime.request_body import (
    MAX_DEPTH,
    content_type_refusal,
    parse_json_object,
    read_body,
)
from packer.runtime.server import HttpOptions, PackerHTTPServer, make_server
from packer.runtime.server_api import ApiError
from packer.runtime.transport import Handler

ROOT = Path(__file__).resolve().parents[1]


# -- a server on a stand-in engine -----------------------------------------------------------


class FakeLlm:
    """Tokenizes bytes as their values; ``hold`` makes every call wait until released."""

    def __init__(self) -> None:
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Semaphore(0)

    def tokenize(self, text: bytes, add_bos: bool = False, special: bool = False) -> list[int]:
        self.entered.release()
        assert self.hold.wait(30)
        return list(text[:16])

    def n_vocab(self) -> int:
        return 256


class FakeEngine:
    def __init__(self, n_parallel: int = 1, max_queue: int = 2) -> None:
        self.name = "fake"
        self.options = EngineOptions(n_parallel=n_parallel, max_queue=max_queue)
        self.llm = FakeLlm()
        self.n_ctx = 512


class FakeEmbedder:
    def __init__(self, llm: FakeLlm) -> None:
        self.llm = llm

    def embed(self, texts: list[str], truncate: bool = False) -> tuple[list[list[float]], int]:
        self.llm.tokenize(b"x")
        return [[1.0, 0.0] for _ in texts], len(texts)


@contextmanager
def serving(
    engine: FakeEngine | None = None, host: str = "127.0.0.1", ollama: bool = False, **http: Any
) -> Iterator[PackerHTTPServer]:
    srv = make_server(engine or FakeEngine(), host, 0, http=HttpOptions(**http), ollama=ollama)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


def port_of(srv: PackerHTTPServer) -> int:
    return int(srv.server_address[1])


def send(
    srv: PackerHTTPServer,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str | None] | None = None,
    timeout: float = 10,
) -> tuple[int, http.client.HTTPMessage, Any]:
    """One request with exactly these headers (Host defaults to 127.0.0.1:port; None omits
    a header); the status, headers and JSON body of the answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port_of(srv), timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        hdrs: dict[str, str | None] = {"Host": f"127.0.0.1:{port_of(srv)}"}
        if body:
            hdrs["Content-Type"] = "application/json"
            hdrs["Content-Length"] = str(len(body))
        hdrs.update(headers or {})
        for k, v in hdrs.items():
            if v is not None:
                conn.putheader(k, v)
        conn.endheaders()
        if body:
            conn.send(body)
        r = conn.getresponse()
        data = r.read()
        return r.status, r.headers, json.loads(data) if data else None
    finally:
        conn.close()


def raw_exchange(srv: PackerHTTPServer, data: bytes, wait: float = 5.0) -> bytes:
    """Send ``data`` as it is, keep the connection open, return what arrives within ``wait``
    (until the server closes, or the first complete answer)."""
    with socket.create_connection(("127.0.0.1", port_of(srv)), timeout=wait) as s:
        s.sendall(data)
        return _read_answer(s, wait)


def _read_answer(s: socket.socket, wait: float) -> bytes:
    got = b""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        got += chunk
        head, sep, body = got.partition(b"\r\n\r\n")
        if sep:
            length = [
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ]
            if length and len(body) >= length[0]:
                break
    return got


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1."), answer[:200]
    return int(answer.split(b" ", 2)[1])


def body_of(answer: bytes) -> Any:
    return json.loads(answer.partition(b"\r\n\r\n")[2])


# -- H2: chunked bodies ---------------------------------------------------------------------


def test_negative_chunk_size_is_refused_at_once() -> None:
    """The review's request: ``-1`` as the chunk size made the server read to the end of the
    connection (``rfile.read(-1)``), past --max-body-mb. Now a 400 arrives at once, while the
    client still holds the connection open with 200 KB more queued."""
    with serving(max_body=4096) as srv:
        head = (
            b"POST /completion HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        answer = raw_exchange(srv, head + b"-1\r\n" + b'{"prompt": "' + b"a" * 200_000, wait=5)
        assert status_of(answer) == 400, answer[:300]
        assert "chunk size '-1'" in body_of(answer)["error"]["message"]
        assert send(srv, "GET", "/health")[0] == 200


@pytest.mark.parametrize(
    "size", [b"-1", b"0x10", b"+5", b"1_0", b" ", b"12345678901234567", b"g"], ids=repr
)
def test_chunk_size_must_be_plain_hex(size: bytes) -> None:
    rfile = io.BytesIO(size + b"\r\n" + b"x" * 100 + b"\r\n0\r\n\r\n")
    with pytest.raises(ApiError) as e:
        read_body(rfile, _headers(te="chunked"), 4096)
    assert e.value.status == 400 and "chunk size" in e.value.message
    assert rfile.tell() <= len(size) + 2  # nothing of the data was read


def _headers(te: str | None = None, cl: str | list[str] | None = None) -> Message:
    m = Message()
    if te is not None:
        m["Transfer-Encoding"] = te
    for v in [cl] if isinstance(cl, str) else cl or []:
        m["Content-Length"] = v
    return m


def test_chunked_framing_limits() -> None:
    ok = b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT"
    rfile = io.BytesIO(ok)
    assert read_body(rfile, _headers(te="chunked"), 4096) == b"hello world"
    assert rfile.read() == b"NEXT"  # stops exactly at the end of the body

    cases = {
        b"5;" + b"e" * 2000 + b"\r\nhello\r\n0\r\n\r\n": "over 1024 bytes",  # extension abuse
        b"5\r\nhello!!\r\n0\r\n\r\n": "longer than its size",
        b"5\r\nhel": "ended inside a chunk",
        b"5\r\nhello\r\n": "ended before its last chunk",
        b"0\r\n" + b"T: x\r\n" * 40 + b"\r\n": "trailer lines",
        b"800\r\n" + b"x" * 2048 + b"\r\n" + b"800\r\n" + b"x" * 2048 + b"\r\n1\r\nx\r\n": "over",
    }
    for framing, needle in cases.items():
        with pytest.raises(ApiError) as e:
            read_body(io.BytesIO(framing), _headers(te="chunked"), 4096)
        assert needle in e.value.message, (framing[:40], e.value.message)
    with pytest.raises(ApiError) as e:
        read_body(io.BytesIO(b"1001\r\n" + b"x" * 4097), _headers(te="chunked"), 4096)
    assert e.value.status == 413 and "--max-body-mb" in e.value.message
    with pytest.raises(ApiError) as e:
        read_body(io.BytesIO(b"3\r\nabc\r\n0\r\n\r\n"), _headers(te="gzip, chunked"), 4096)
    assert e.value.status == 501


def test_content_length_must_be_a_plain_count() -> None:
    for value in ("+5", "5_0", " -1", "0x5", "1e3", "99999999999999999999"):
        with pytest.raises(ApiError) as e:
            read_body(io.BytesIO(b"hello"), _headers(cl=value), 4096)
        assert e.value.status == 400, value
    with pytest.raises(ApiError) as e:
        read_body(io.BytesIO(b"hello"), _headers(cl=["5", "4"]), 4096)
    assert "conflicting" in e.value.message
    assert read_body(io.BytesIO(b"hello"), _headers(cl=["5", "5"]), 4096) == b"hello"
    with pytest.raises(ApiError) as e:
        read_body(io.BytesIO(b"hel"), _headers(cl="5"), 4096)
    assert e.value.status == 400 and "3 of 5" in e.value.message
    with pytest.raises(ApiError) as e:
        read_body(io.BytesIO(b""), _headers(cl="5000"), 4096)
    assert e.value.status == 413


def test_chunked_body_over_the_limit_is_413_in_each_dialect() -> None:
    chunk = b"x" * 3000
    framing = b"".join(b"%X\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)) + b"0\r\n\r\n"
    with serving(max_body=4096) as srv:
        for path in ("/completion", "/v1/completions", "/api/generate"):
            st, _, body = send(srv, "POST", path, framing, {"Transfer-Encoding": "chunked"})
            assert st == 413, (path, body)
            if path.startswith("/api/"):
                assert "--max-body-mb" in body["error"]
            else:
                assert "--max-body-mb" in body["error"]["message"]


# -- L4: bad JSON bodies --------------------------------------------------------------------

BAD_JSON = {
    "deep nesting": b'{"prompt": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    "nesting over the limit": b'{"a": ' + b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1) + b"}",
    "huge integer": b'{"content": "hi", "n": ' + b"9" * 5000 + b"}",
    "integer over 64 bits": b'{"content": "hi", "n": 18446744073709551616}',
    "infinite float": b'{"content": "hi", "temperature": 1e999}',
    "NaN": b'{"content": "hi", "temperature": NaN}',
    "invalid UTF-8": b'{"content": "\xff\xfe"}',
    "lone surrogate": b'{"content": "\\ud800"}',
    "top-level array": b'[{"content": "hi"}]',
    "top-level string": b'"hi"',
    "truncated": b'{"content": "hi"',
}


@pytest.mark.parametrize("what", list(BAD_JSON))
def test_bad_json_is_400_in_each_dialect(what: str, caplog: pytest.LogCaptureFixture) -> None:
    """RecursionError, int-to-str ValueError, UnicodeEncodeError of a lone surrogate: each was a
    500 with a traceback in the log; now a 400 in the endpoint's own error format."""
    caplog.set_level(logging.DEBUG, logger="packer.runtime")
    raw = BAD_JSON[what]
    engine = FakeEngine()
    with serving(engine) as srv:
        srv.embedder = FakeEmbedder(engine.llm)  # type: ignore[assignment]
        st, _, body = send(srv, "POST", "/tokenize", raw)
        assert st == 400 and isinstance(body["error"]["message"], str), body
        assert body["error"]["type"] == "invalid_request_error"
        st, _, body = send(srv, "POST", "/v1/embeddings", raw)
        assert st == 400 and body["error"]["param"] is None and body["error"]["message"], body
        st, _, body = send(srv, "POST", "/api/embed", raw)
        assert st == 400 and isinstance(body["error"], str), body
        assert send(srv, "GET", "/health")[0] == 200
    assert "Traceback" not in caplog.text and "internal error" not in caplog.text


def test_json_limits_leave_ordinary_bodies_alone() -> None:
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "[{x}]" * 50}]}]}
    assert parse_json_object(json.dumps(body).encode()) == body
    deep: Any = 1
    for _ in range(MAX_DEPTH - 1):
        deep = [deep]
    assert parse_json_object(json.dumps({"a": deep}).encode())["a"] == deep
    pair = parse_json_object(b'{"s": "\\ud83d\\ude00", "seed": 18446744073709551615}')
    assert pair == {"s": "\U0001f600", "seed": 2**64 - 1}


# -- M1: Host, Origin, Content-Type ---------------------------------------------------------


def test_foreign_host_is_refused_on_loopback() -> None:
    """DNS rebinding: a page at evil.example whose name now points to 127.0.0.1 reads /props."""
    with serving() as srv:
        port = port_of(srv)
        for host in (f"evil.example:{port}", "evil.example", "127.0.0.1.nip.io", "[::2]:1"):
            st, _, body = send(srv, "GET", "/health", headers={"Host": host})
            assert st == 403, host
            assert "--allowed-host" in body["error"]["message"]
            assert body["error"]["type"] == "permission_error"
        st, _, body = send(srv, "GET", "/api/tags", headers={"Host": "evil.example"})
        assert st == 403 and isinstance(body["error"], str)  # Ollama's format
        for host in (
            f"127.0.0.1:{port}",
            f"localhost:{port}",
            "LOCALHOST",
            f"[::1]:{port}",
            "chat.localhost:1",
            "127.1.2.3",
            None,
        ):
            assert send(srv, "GET", "/health", headers={"Host": host})[0] == 200, host
    with serving(allowed_hosts=("llm.example.org",)) as srv:
        assert send(srv, "GET", "/health", headers={"Host": "llm.example.org"})[0] == 200
        assert send(srv, "GET", "/health", headers={"Host": "evil.example"})[0] == 403


def test_host_rules() -> None:
    assert listens_on_loopback("127.0.0.1") and listens_on_loopback("::1")
    assert listens_on_loopback("127.0.0.2") and listens_on_loopback("::ffff:127.0.0.1")
    assert not listens_on_loopback("0.0.0.0") and not listens_on_loopback("::")
    assert not listens_on_loopback("192.168.1.5")
    assert split_host("[::1]:8080") == ("::1", 8080)
    assert split_host("Example.COM.") == ("example.com", None)
    assert split_host("::1") is None and split_host("a:b") is None and split_host("[::1") is None
    assert host_refusal("x.example", ("*",)) is None
    assert host_refusal("x.example:99", ("X.Example",)) is None
    assert host_refusal("localhost.evil.example", ()) is not None


def test_cross_site_origin_is_refused() -> None:
    tokenize = json.dumps({"content": "hi"}).encode()
    with serving() as srv:
        own = f"http://127.0.0.1:{port_of(srv)}"
        for origin in ("http://evil.example", "null", f"http://127.0.0.1:{port_of(srv) + 1}"):
            st, headers, body = send(srv, "POST", "/tokenize", tokenize, {"Origin": origin})
            assert st == 403 and "--cors" in body["error"]["message"], origin
            assert "Access-Control-Allow-Origin" not in headers
            st, _, _ = send(srv, "OPTIONS", "/tokenize", headers={"Origin": origin})
            assert st == 403
        st, _, body = send(srv, "POST", "/tokenize", tokenize, {"Origin": own})  # the chat page
        assert st == 200 and body == {"tokens": list(b"hi")}
        assert send(srv, "POST", "/tokenize", tokenize)[0] == 200  # curl, SDKs: no Origin
    with serving(cors=("http://app.example",)) as srv:
        st, headers, _ = send(srv, "POST", "/tokenize", tokenize, {"Origin": "http://app.example"})
        assert st == 200 and headers["Access-Control-Allow-Origin"] == "http://app.example"
        assert send(srv, "POST", "/tokenize", tokenize, {"Origin": "http://b.example"})[0] == 403
    with serving(cors=("*",)) as srv:
        assert send(srv, "POST", "/tokenize", tokenize, {"Origin": "null"})[0] == 200


def test_origin_rules() -> None:
    assert origin_refusal(None, "evil.example", ()) is None
    assert origin_refusal("http://localhost:8080", "localhost:8080", ()) is None
    assert origin_refusal("http://[::1]:8080", "[::1]:8080", ()) is None
    assert origin_refusal("https://llm.example.org", "llm.example.org", ()) is None  # TLS proxy
    assert origin_refusal("http://localhost:3000", "localhost:8080", ()) is not None
    assert origin_refusal("http://localhost:3000", "localhost", ()) is not None
    assert origin_refusal("chrome-extension://abc", "localhost:8080", ()) is not None
    assert origin_refusal("http://a:b:c", "localhost:8080", ()) is not None


def test_post_bodies_must_be_json() -> None:
    """A web page may POST text/plain (or a form) anywhere without asking first."""
    body = json.dumps({"content": "hi"}).encode()
    with serving() as srv:
        refused = (
            {"Content-Type": "text/plain;charset=UTF-8"},
            {"Content-Type": "multipart/form-data; boundary=x"},
            {"Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Site": "cross-site"},
            {"Content-Type": None, "Sec-Fetch-Mode": "no-cors"},
        )
        for headers in refused:
            st, _, answer = send(srv, "POST", "/tokenize", body, dict(headers))
            assert st == 415 and "application/json" in answer["error"]["message"], headers
        st, _, answer = send(srv, "POST", "/api/embed", body, {"Content-Type": "text/plain"})
        assert st == 415 and isinstance(answer["error"], str)
        accepted = (
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/x-ndjson",
            "application/vnd.api+json",
            None,  # scripts (requests.post(data=...))
            "application/x-www-form-urlencoded",  # curl -d, as in Ollama's documentation
        )
        for ctype in accepted:
            st, _, answer = send(srv, "POST", "/tokenize", body, {"Content-Type": ctype})
            assert st == 200, (ctype, answer)


def test_content_type_rules() -> None:
    def refused(**headers: str) -> bool:
        m = Message()
        for k, v in headers.items():
            m[k.replace("_", "-")] = v
        return content_type_refusal(m) is not None

    assert not refused(Content_Type="application/json", Origin="http://x")
    assert refused(Content_Type="text/plain")
    assert refused(Content_Type="application/x-www-form-urlencoded", Origin="http://x")
    assert not refused(Content_Type="application/x-www-form-urlencoded")
    assert refused(Origin="http://x")
    assert refused(Content_Type="text/json")


# -- M2: connections, slow clients, waiting lines -------------------------------------------


def test_connections_are_bounded_and_one_more_gets_503() -> None:
    with serving(max_connections=2) as srv:
        held = [socket.create_connection(("127.0.0.1", port_of(srv)), timeout=5) for _ in range(2)]
        try:
            time.sleep(0.2)
            t0 = time.monotonic()
            answer = raw_exchange(srv, b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert status_of(answer) == 503 and time.monotonic() - t0 < 2
            assert b"Retry-After: 1" in answer
            assert "--max-connections" in body_of(answer)["error"]["message"]
            import requests

            r = requests.get(srv.url + "/health", timeout=5)  # a real client reads it too
            assert r.status_code == 503 and r.json()["error"]["type"] == "unavailable_error"
        finally:
            for s in held:
                s.close()
        deadline = time.monotonic() + 5
        while srv.connections.open and time.monotonic() < deadline:
            time.sleep(0.05)
        assert send(srv, "GET", "/health")[0] == 200


def test_default_connection_limit_follows_slots_and_queue() -> None:
    with serving(FakeEngine(n_parallel=4, max_queue=10)) as srv:
        assert srv.connections.limit == 4 + 10 + 64


def test_slow_headers_are_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slowloris: one header line every 0.3 s kept a thread for up to 600 s per line."""
    monkeypatch.setattr(server_mod, "HEAD_TIMEOUT_S", 1.0, raising=False)
    with serving() as srv, socket.create_connection(("127.0.0.1", port_of(srv))) as s:
        s.sendall(b"GET /health HTTP/1.1\r\n")
        t0 = time.monotonic()
        closed = False
        while time.monotonic() - t0 < 5:
            try:
                s.sendall(b"X-Slow: 1\r\n")
                s.settimeout(0.3)
                if s.recv(1024) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
        assert closed and time.monotonic() - t0 < 3
        assert send(srv, "GET", "/health")[0] == 200


def test_idle_keep_alive_and_slow_bodies_are_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_mod, "KEEPALIVE_S", 1.0, raising=False)
    monkeypatch.setattr(server_mod, "BODY_TIMEOUT_S", 1.0, raising=False)
    with serving() as srv:
        with socket.create_connection(("127.0.0.1", port_of(srv)), timeout=5) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert status_of(_read_answer(s, 2)) == 200
            t0 = time.monotonic()
            assert s.recv(10) == b""  # closed after 1 s of keep-alive idle
            assert time.monotonic() - t0 < 3
        head = (
            b"POST /tokenize HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        answer = raw_exchange(srv, head, wait=4)
        assert status_of(answer) == 408 and body_of(answer)["error"]["code"] == 408


def test_client_gone_check_works_above_fd_1024() -> None:
    """select() raises ValueError for descriptors >= 1024, which read as "client gone" and
    silently cut generations short on a busy server."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 1200")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    a, b = socket.socketpair()
    high = socket.socket(fileno=os.dup2(a.fileno(), 1100))
    a.close()
    try:
        handler = SimpleNamespace(connection=high)
        assert Handler._client_gone(handler) is False  # type: ignore[arg-type]
        b.sendall(b"GET /next HTTP/1.1\r\n")  # a pipelined request: still there
        assert Handler._client_gone(handler) is False  # type: ignore[arg-type]
        assert high.recv(100) == b"GET /next HTTP/1.1\r\n"  # nothing was consumed... until now
        b.close()
        assert Handler._client_gone(handler) is True  # type: ignore[arg-type]
    finally:
        high.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize(
    "path,body",
    [
        ("/tokenize", {"content": "hi"}),
        ("/detokenize", {"tokens": []}),
        ("/embedding", {"content": "hi"}),
        ("/v1/embeddings", {"input": "hi"}),
        ("/api/embed", {"input": "hi"}),
    ],
)
def test_model_work_waits_in_a_bounded_line(path: str, body: dict[str, Any]) -> None:
    """Embeddings and tokenizing bypassed --max-queue: every request waited, without bound."""
    engine = FakeEngine(n_parallel=1, max_queue=2)
    engine.llm.hold.clear()
    raw = json.dumps(body).encode()
    with serving(engine) as srv:
        srv.embedder = FakeEmbedder(engine.llm)  # type: ignore[assignment]
        if path == "/detokenize":  # detokenize never tokenizes: hold it in the check instead
            engine.llm.n_vocab = lambda: (engine.llm.tokenize(b""), 256)[1]  # type: ignore[method-assign]
        results: list[int] = []
        threads = [
            threading.Thread(
                target=lambda: results.append(send(srv, "POST", path, raw, timeout=30)[0])
            )
            for _ in range(3)  # one running, two waiting
        ]
        for t in threads:
            t.start()
        assert engine.llm.entered.acquire(timeout=5)  # the first one runs
        line = srv.token_line if "tokenize" in path else srv.embed_line
        deadline = time.monotonic() + 10
        while line._queued < 2:  # the other two wait
            assert time.monotonic() < deadline, "the requests did not queue"
            time.sleep(0.02)
        st, headers, answer = send(srv, "POST", path, raw)
        assert st == 503 and int(headers["Retry-After"]) >= 1, answer
        engine.llm.hold.set()
        for t in threads:
            t.join(10)
        assert results == [200, 200, 200]


# -- secrets --------------------------------------------------------------------------------


def test_empty_api_key_is_a_usage_error() -> None:
    from packer.runtime.cli import UsageError, parse

    for key in ("", "  ", " k"):
        with pytest.raises(UsageError, match="--api-key"):
            parse(["--api-key", key], [])
        with pytest.raises(UsageError):
            parse([], ["--api-key", key])  # baked in
    assert parse(["--api-key", "k"], []).api_key == "k"
    with pytest.raises(ValueError):
        make_server(FakeEngine(), "127.0.0.1", 0, api_key="")  # type: ignore[arg-type]
    proc = subprocess.run(
        [sys.executable, "-m", "packer.runtime", "--server", "--api-key", ""],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "--api-key is empty" in proc.stderr, proc.stderr


def test_baked_key_is_never_shown(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from packer.runtime import main
    from packer.runtime.cli import parse

    baked = ["--temp", "0", "--api-key", "s3cret-1", "--api-key=s3cret-2"]
    with pytest.raises(SystemExit):
        parse(["--help"], baked)
    out = capsys.readouterr().out
    assert "s3cret" not in out and "--api-key REDACTED --api-key=REDACTED" in out

    manifest = SimpleNamespace(args=tuple(baked), to_dict=lambda: {"name": "m", "args": baked})
    monkeypatch.setattr(main, "_find_bundle", lambda argv: SimpleNamespace(manifest=manifest))
    monkeypatch.setattr(main, "_backend_info", lambda args: {})
    monkeypatch.setattr(main, "_setup_logging", lambda verbose: None)  # keep pytest's handlers
    assert main.run(["--info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["args"] == ["--temp", "0", "--api-key", "REDACTED", "--api-key=REDACTED"]


# -- the review's requests against a built model.run ----------------------------------------


@pytest.mark.slow
def test_model_run_refuses_the_review_requests(demo_run: Path, tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        ["env", "-i", str(demo_run), "--server", "--port", str(port), "-t", "2"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        import requests

        deadline = time.time() + 240
        while True:
            try:
                if requests.get(url + "/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None and time.time() < deadline, "the server did not start"
            time.sleep(0.5)
        srv = SimpleNamespace(server_address=("127.0.0.1", port))
        head = (
            b"POST /completion HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        answer = raw_exchange(srv, head + b"-1\r\n" + b"a" * 100_000)  # type: ignore[arg-type]
        assert status_of(answer) == 400
        r = requests.get(url + "/props", headers={"Host": f"evil.example:{port}"}, timeout=10)
        assert r.status_code == 403
        r = requests.post(
            url + "/completion",
            data=b'{"prompt": "hi", "n_predict": 2}',
            headers={"Content-Type": "text/plain"},
            timeout=10,
        )
        assert r.status_code == 415
        deep = b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        r = requests.post(url + "/completion", data=deep, timeout=10)
        assert r.status_code == 400
        r = requests.get(url + "/health", timeout=10)
        assert r.status_code == 200 and r.json() == {"status": "ok"}
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert "Traceback" not in err and "internal error" not in err, err


@pytest.mark.slow
def test_client_text_cannot_write_to_the_server_terminal(demo_run: Path, tmp_path: Path) -> None:
    """A path, a Content-Type and a grammar with escape sequences (clear the screen, retitle
    the window, write the clipboard) and a forged log line: each is refused as usual, and the
    server's stderr, the terminal of whoever runs it, gets them escaped, never raw."""
    import requests

    evil = "\x1b[2J\x1b]0;TITLE\x07\x1b]52;c;ZWNobyBoaQ==\x07\r\x9b31mforged: line\u202e"
    log = tmp_path / "server.log"
    with serve_model_run(demo_run, tmp_path, "-v", stderr_to=log) as url:
        port = int(url.rsplit(":", 1)[1])
        srv = SimpleNamespace(server_address=("127.0.0.1", port))
        path = b"/x" + evil.replace(" ", "_").replace("\r", "").encode("utf-8")  # one word
        answer = raw_exchange(srv, b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # type: ignore[arg-type]
        assert status_of(answer) == 404
        body = b'{"prompt": "hi", "n_predict": 2}'
        answer = raw_exchange(
            srv,  # type: ignore[arg-type]
            b"POST /completion HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: a\x1b[2Jb\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
        )
        assert status_of(answer) == 415
        for grammar in (f"root ::= {evil}", f'root ::= "a" {evil}', f"{evil} ::= [a]"):
            r = requests.post(
                url + "/completion",
                json={"prompt": "hi", "n_predict": 2, "grammar": grammar},
                timeout=30,
            )
            assert r.status_code == 400, r.text
            message = r.json()["error"]["message"]
            assert message.startswith("invalid grammar (") and message.isprintable(), message
        r = requests.post(
            url + "/v1/chat/completions",
            json={"model": evil, "messages": [{"role": "user", "content": evil}], "max_tokens": 2},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert requests.get(url + "/health", timeout=10).status_code == 200
    text = log.read_text(encoding="utf-8", errors="replace")
    assert "-> 404" in text and "-> 415" in text and "invalid grammar (" in text, text[-3000:]
    assert "\\x1b[2J" in text  # what the client sent is still there to read, escaped
    raw = [
        c for c in text if c not in "\n\t" and (c < " " or "\x7f" <= c <= "\x9f" or c == "\u202e")
    ]
    assert not raw, (raw[:10], text[-3000:])
