"""Fuzzing a real ``model.run --server`` (issue #14): generated bodies, headers and framings.

Every endpoint of both listeners (the main port and ``--ollama-port``) gets requests built by
hypothesis from the parameters the APIs know (with values of every JSON type, huge and negative
numbers included), broken JSON, and bodies framed by Content-Length, by correct chunked
encoding cut at random places (extensions, trailers) or by broken chunked encoding. Each request
goes on its own connection, as raw bytes. The server must answer every one below 500 (501, "not
implemented", is allowed: an unknown method or transfer coding), in the dialect's error format
when it refuses, and must still be healthy at the end, without a traceback in its log.

Bounded in time (:data:`BUDGET_S`) and deterministic (``derandomize``: the same examples each run).
``--max-tokens 4`` keeps each generation short.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import free_port

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

BUDGET_S = 70.0  # of fuzzing, after the server is up
MAX_EXAMPLES = 2000  # BUDGET_S ends the run first on a slow or busy machine
ANSWER_TIMEOUT_S = 30.0

GET_PATHS = [
    "/",
    "/index.html",
    "/favicon.ico",
    "/health",
    "/v1/health",
    "/v1/models",
    "/models",
    "/props",
    "/slots",
    "/api/tags",
    "/api/version",
    "/api/ps",
]
POST_PATHS = [
    "/completion",
    "/completions",
    "/v1/completions",
    "/v1/chat/completions",
    "/chat/completions",
    "/tokenize",
    "/detokenize",
    "/embedding",
    "/embeddings",
    "/v1/embeddings",
    "/api/generate",
    "/api/chat",
    "/api/show",
    "/api/embed",
    "/api/embeddings",
]
KEYS = [
    "prompt",
    "messages",
    "n_predict",
    "max_tokens",
    "max_completion_tokens",
    "num_predict",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "typical_p",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "mirostat",
    "stop",
    "stream",
    "stream_options",
    "seed",
    "grammar",
    "json_schema",
    "response_format",
    "format",
    "tokens",
    "content",
    "input",
    "model",
    "options",
    "logprobs",
    "top_logprobs",
    "n_probs",
    "system",
    "raw",
    "context",
    "add_special",
    "parse_special",
    "with_pieces",
    "encoding_format",
    "truncate",
    "echo",
    "ignore_eos",
    "cache_prompt",
    "keep_alive",
    "n",
    "suffix",
    "dimensions",
    "role",
    "type",
    "text",
    "include_usage",
]
OPENAI = {"/v1/completions", "/v1/chat/completions", "/chat/completions", "/v1/models"}
OPENAI |= {"/v1/embeddings"}  # the paths answered in OpenAI's error format on either port
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "application/x-ndjson",
    "text/plain",
    "multipart/form-data; boundary=x",
    "application/x-www-form-urlencoded",
    None,
    "",
    "application/json; charset=latin-1",
    "APPLICATION/JSON",
]

header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=0, max_size=24
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.integers(min_value=-3, max_value=40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=24)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "system", "assistant", "tool", "x", ""]),
            "content": st.text(max_size=40) | json_values,
        }
    ),
    max_size=3,
)
objects = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=6) | st.builds(
    lambda base, msgs: {**base, "messages": msgs},
    st.dictionaries(st.sampled_from(KEYS), json_values, max_size=4),
    messages,
)
text = st.text(max_size=40)
# a request each endpoint would take, to which random fields are then added
PLAUSIBLE = {
    "/completion": st.fixed_dictionaries({"prompt": text}),
    "/v1/completions": st.fixed_dictionaries({"prompt": text}),
    "/v1/chat/completions": st.fixed_dictionaries(
        {
            "messages": st.lists(
                st.fixed_dictionaries({"role": st.just("user"), "content": text}),
                min_size=1,
                max_size=2,
            )
        }
    ),
    "/tokenize": st.fixed_dictionaries({"content": text}),
    "/detokenize": st.fixed_dictionaries({"tokens": st.lists(st.integers(-5, 60_000), max_size=8)}),
    "/embedding": st.fixed_dictionaries({"content": text}),
    "/v1/embeddings": st.fixed_dictionaries({"input": text | st.lists(text, max_size=3)}),
    "/api/generate": st.fixed_dictionaries({"prompt": text}),
    "/api/chat": st.fixed_dictionaries(
        {
            "messages": st.lists(
                st.fixed_dictionaries({"role": st.just("user"), "content": text}),
                min_size=1,
                max_size=2,
            )
        }
    ),
    "/api/embed": st.fixed_dictionaries({"input": text | st.lists(text, max_size=3)}),
    "/api/embeddings": st.fixed_dictionaries({"prompt": text}),
    "/api/show": st.fixed_dictionaries({"model": text}),
}
PLAUSIBLE["/completions"] = PLAUSIBLE["/completion"]
PLAUSIBLE["/chat/completions"] = PLAUSIBLE["/v1/chat/completions"]
PLAUSIBLE["/embeddings"] = PLAUSIBLE["/embedding"]


def plausible(path: str) -> st.SearchStrategy[bytes]:
    base = PLAUSIBLE.get(urlsplit(path).path.rstrip("/"), st.just({}))
    extra = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=3)
    return st.builds(lambda b, e: json.dumps({**b, **e}).encode(), base, extra)


bodies = st.one_of(
    objects.map(lambda o: json.dumps(o).encode()),
    st.binary(max_size=80),
    st.integers(1, 3000).map(lambda n: b'{"prompt": ' + b"[" * n + b"]" * n + b"}"),
    st.integers(1, 6000).map(lambda n: b'{"n_predict": ' + b"7" * n + b"}"),
    st.sampled_from([b'{"content": "\\ud800"}', b'{"prompt": "\xff"}', b"[]", b"null", b"{}"]),
)


@st.composite
def chunked(draw: Any, body: bytes) -> tuple[bytes, bool]:
    """``body`` in chunked encoding cut at random places; sometimes broken. Returns the bytes
    and whether they may leave the server waiting for more (then the client stops sending)."""
    out = b""
    rest = body
    while rest:
        n = draw(st.integers(1, max(1, len(rest))))
        size = draw(st.sampled_from(["%x", "%X", "%04x"])) % n
        ext = draw(st.sampled_from(["", ";a=b", ';x="y"', " ;z"]))
        out += f"{size}{ext}\r\n".encode() + rest[:n] + b"\r\n"
        rest = rest[n:]
    out += b"0\r\n" + draw(st.sampled_from([b"", b"X-Trailer: 1\r\n"])) + b"\r\n"
    broken = draw(st.integers(0, 3)) == 0
    if not broken:
        return out, False
    corruption = draw(
        st.sampled_from(
            [
                b"-1\r\n",
                b"0x10\r\n",
                b"+5\r\n",
                b"fffffffffffffffffff\r\n",
                b"5;" + b"e" * 3000 + b"\r\n",
                b"zz\r\n",
                b"\r\n",
                b"5\r\nab",
                b"2\r\nabcdef\r\n0\r\n\r\n",
            ]
        )
    )
    return corruption + out, True


@st.composite
def requests_(draw: Any, port: int) -> tuple[bytes, bool, str]:
    """(raw request, whether the client stops sending after it, the path)."""
    post = draw(st.integers(0, 3)) > 0
    path = draw(st.sampled_from([*(POST_PATHS if post else GET_PATHS), "/nope"]))
    if draw(st.integers(0, 9)) == 0:
        path += draw(st.sampled_from(["/", "?x=1", "//", "/../health"]))
    method = "POST" if post else draw(st.sampled_from(["GET", "HEAD", "OPTIONS", "DELETE", "PUT"]))
    good_host = st.sampled_from([f"127.0.0.1:{port}", f"localhost:{port}", "localhost"])
    odd_host = st.sampled_from(["evil.example", "", None, f"[::1]:{port}"]) | header_text
    host = draw(odd_host if draw(st.integers(0, 9)) == 0 else good_host)
    headers: list[tuple[str, str]] = [("Connection", "close")]
    if host is not None:
        headers.append(("Host", host))
    odd_ctype = st.sampled_from(CONTENT_TYPES) | header_text
    ctype = draw(odd_ctype if draw(st.integers(0, 5)) == 0 else st.just("application/json"))
    if ctype is not None:
        headers.append(("Content-Type", ctype))
    if draw(st.integers(0, 4)) == 0:
        origin = draw(st.sampled_from([f"http://127.0.0.1:{port}", "http://evil.example", "null"]))
        headers.append(("Origin", origin))
    if draw(st.integers(0, 4)) == 0:
        headers.append(("Authorization", "Bearer " + draw(header_text)))
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.text(st.sampled_from("abcXYZ-"), min_size=1, max_size=10))
        headers.append((name, draw(header_text)))
    if post:
        body = draw(bodies if draw(st.integers(0, 2)) == 0 else plausible(path))
    else:
        body = draw(bodies) if draw(st.integers(0, 5)) == 0 else b""
    framing = draw(st.sampled_from(["length"] * 6 + ["chunked"] * 3 + ["short", "long", "none"]))
    stop_sending = False
    if framing == "chunked":
        payload, stop_sending = draw(chunked(body))
        headers.append(("Transfer-Encoding", draw(st.sampled_from(["chunked", "Chunked"]))))
    elif framing == "short":
        payload = body
        headers.append(("Content-Length", str(max(0, len(body) - draw(st.integers(1, 5))))))
    elif framing == "long":
        payload, stop_sending = body, True
        headers.append(("Content-Length", str(len(body) + draw(st.integers(1, 50)))))
    elif framing == "none":
        payload = body
    else:
        payload = body
        headers.append(("Content-Length", str(len(body))))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    return head.encode("latin-1") + b"\r\n" + payload, stop_sending, path


def exchange(port: int, data: bytes, stop_sending: bool) -> bytes:
    """Send ``data`` on a new connection (half-closing it if ``stop_sending``), read to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT_S) as s:
        try:
            s.sendall(data)
            if stop_sending:
                s.shutdown(socket.SHUT_WR)
        except OSError:  # the server answered and closed before taking everything
            pass
        got = b""
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            got += chunk
        return got


def check_answer(answer: bytes, stop_sending: bool, path: str, ollama_port: bool) -> int:
    """The answer's status (0: none), after checking it."""
    if not answer:
        # a client that stopped sending may be taken for gone (a generation is then dropped)
        assert stop_sending, f"no answer to a request for {path}"
        return 0
    line, _, rest = answer.partition(b"\r\n")
    assert line.startswith(b"HTTP/1."), line[:100]
    status = int(line.split()[1])
    assert status < 500 or status == 501, answer[:600]
    head, _, body = rest.partition(b"\r\n\r\n")
    if status >= 400 and body:
        err = json.loads(body)["error"]
        bare = urlsplit(path).path
        ollama = bare.startswith("/api/") or (ollama_port and bare.rstrip("/") not in OPENAI)
        assert isinstance(err, str) == ollama, answer[:600]
        assert err, answer[:600]
    return status


def fuzz(port: int, ollama_port: int, budget_s: float) -> Counter[int]:
    """Run the examples against a server; how many answers of each status (0: none) came."""
    t_end = time.monotonic() + budget_s
    statuses: Counter[int] = Counter()

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
        phases=[Phase.generate],  # no shrinking: it could run past the budget (then all pass)
    )
    @given(st.data())
    def one(data: Any) -> None:
        on_ollama = data.draw(st.integers(0, 3)) == 0
        p = ollama_port if on_ollama else port
        raw, stop_sending, path = data.draw(requests_(p))
        if time.monotonic() > t_end:  # drawn all the same: hypothesis wants the same draws
            return
        answer = exchange(p, raw, stop_sending)
        statuses[check_answer(answer, stop_sending, path, on_ollama)] += 1

    one()
    return statuses


def _health(port: int) -> int:
    import requests

    return requests.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code


@pytest.mark.slow
def test_fuzz_model_run_server(demo_run: Path, tmp_path: Path) -> None:
    import requests

    port, oport = free_port(), free_port()
    log = (tmp_path / "server.log").open("w+")
    proc = subprocess.Popen(
        ["env", "-i", str(demo_run), "--server", "--port", str(port), "-t", "2"]
        + ["--ollama-port", str(oport), "--max-tokens", "4", "-c", "2048"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        deadline = time.time() + 240
        while True:
            try:
                if _health(port) == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.5)
        statuses = fuzz(port, oport, BUDGET_S)
        sent = sum(statuses.values())
        assert sent >= 200, f"only {sent} requests in {BUDGET_S} s: {statuses}"
        assert statuses[200] >= 20, statuses  # the generated requests reach the model too
        assert proc.poll() is None, "the server died"
        assert _health(port) == 200
        assert requests.get(f"http://127.0.0.1:{oport}/api/version", timeout=10).ok
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    err = (tmp_path / "server.log").read_text()
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback (most recent call last)" not in err, err[-3000:]
    assert "internal error" not in err and "-> 5" not in err, err[-3000:]
    print(f"fuzz: {sent} requests, statuses {sorted(statuses.items())}")
