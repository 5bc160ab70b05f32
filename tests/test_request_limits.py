"""Limits on what one request may ask the sampler to follow (#14 H3, M3).

A 60-byte JSON schema (``maxLength`` 100000) or a grammar nested 60,000 deep overflowed the stack
of llama.cpp's recursive GBNF parser and killed the server; a grammar that allows no token at
some point made llama.cpp abort the process; 100,000 stop strings cost 0.1 s per token in the
decode thread. Each is now a 400 in the dialect's format. Most tests here are plain unit tests
of the request parsers (no model, no socket); one runs a real server in a child process (an abort
there must not take pytest down) and one (slow) a real model.run.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import child_server as serve_in_child
from conftest import free_port

from packer.runtime import grammar_limits as limits
from packer.runtime import ollama_api as oll
from packer.runtime import server_api as api
from packer.runtime.generate import Sampling

ROOT = Path(__file__).resolve().parents[1]
D = Sampling()
# the two requests of the issue: each crashed the server with a segmentation fault
SCHEMA_BODY = b'{"prompt":"hi","n_predict":2,"json_schema":{"type":"string","maxLength":100000}}'
DEEP_GRAMMAR = "root ::= " + "(" * 60_000 + '"a"' + ")" * 60_000
# a grammar no token can follow: llama.cpp accepted a refused token and aborted (SIGABRT)
DEAD_GRAMMAR = 'root ::= "\\x00"'
MSGS = [{"role": "user", "content": "hi"}]

Parse = Callable[[dict[str, Any], Sampling], Any]


def _refused(parse: Parse, body: dict[str, Any]) -> api.ApiError:
    with pytest.raises(api.ApiError) as exc:
        parse(body, D)
    assert exc.value.status == 400
    return exc.value


# every way a JSON schema reaches the converter: (parser, body with the schema, param named)
SCHEMA_ROUTES: list[tuple[str, Parse, Callable[[Any], dict[str, Any]], str]] = [
    (
        "llama json_schema",
        api.parse_completion,
        lambda s: {"prompt": "hi", "json_schema": s},
        "json_schema",
    ),
    (
        "openai chat response_format",
        api.parse_chat,
        lambda s: {
            "messages": MSGS,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": s}},
        },
        "response_format",
    ),
    (
        "openai completions response_format",
        api.parse_openai_completion,
        lambda s: {"prompt": "hi", "response_format": {"type": "json_object", "schema": s}},
        "response_format",
    ),
    (
        "ollama generate format",
        oll.parse_generate,
        lambda s: {"prompt": "hi", "format": s},
        "format",
    ),
    ("ollama chat format", oll.parse_chat, lambda s: {"messages": MSGS, "format": s}, "format"),
]
ROUTE_IDS = [r[0] for r in SCHEMA_ROUTES]


# -- H3: JSON schemas ---------------------------------------------------------------------------


def test_the_60_byte_schema_is_a_400() -> None:
    err = _refused(api.parse_completion, json.loads(SCHEMA_BODY))
    assert err.param == "json_schema"
    assert err.message == (
        "'json_schema': 'maxLength' is 100000, over this server's limit of 1000: "
        "ask for less, or drop it and check the length of the answer yourself"
    )
    assert err.body(False)["error"]["code"] == 400


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "maxLength": 100_000},
        {"type": "string", "minLength": 10**9},  # the converter would build 5 GB of text
        {"type": "array", "items": {"type": "integer"}, "minItems": 1001},
        {"type": "array", "items": {"type": "integer"}, "maxItems": 5000},
        {"type": "string", "pattern": "^a{1000000}$"},
        {"type": "string", "pattern": "^[a-z]{2,5000}$"},
        {"type": "string", "pattern": "^(ab){1001,}$"},
    ],
    ids=[
        "maxLength",
        "minLength",
        "minItems",
        "maxItems",
        "pattern-m",
        "pattern-m-n",
        "pattern-m-",
    ],
)
@pytest.mark.parametrize(("name", "parse", "wrap", "param"), SCHEMA_ROUTES, ids=ROUTE_IDS)
def test_repetition_bounds_are_capped_in_every_dialect(
    schema: dict[str, Any],
    name: str,
    parse: Parse,
    wrap: Callable[[Any], dict[str, Any]],
    param: str,
) -> None:
    t0 = time.perf_counter()
    err = _refused(parse, wrap(schema))
    assert time.perf_counter() - t0 < 1.0  # refused before anything is built
    assert err.param == param
    assert err.message.startswith(f"'{param}': ")
    assert f"over this server's limit of {limits.SCHEMA_MAX_REPEAT}" in err.message
    if name.startswith("ollama"):
        assert err.ollama_body() == {"error": err.message}


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"enum": list(range(501))}, "'enum' has 501 entries"),
        ({"anyOf": [{"type": "integer"}] * 501}, "'anyOf' has 501 entries"),
        (
            {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(501)}},
            "an object has 501 properties",
        ),
        ({"type": "string", "description": "x" * 70_000}, "the JSON schema is 70"),
        ({"type": "string", "maxLength": -1}, "'maxLength' must be a whole number from 0"),
        ({"type": "string", "maxLength": True}, "'maxLength' must be a whole number from 0"),
        ({"type": "string", "maxLength": 1e9}, "'maxLength' must be a whole number from 0"),
    ],
    ids=["enum", "anyOf", "properties", "bytes", "negative", "bool", "float"],
)
def test_schema_size_limits(schema: dict[str, Any], words: str) -> None:
    err = _refused(api.parse_completion, {"prompt": "hi", "json_schema": schema})
    assert words in err.message and err.param == "json_schema"


def test_schema_depth_limit() -> None:
    deep: dict[str, Any] = {"type": "integer"}
    for _ in range(limits.SCHEMA_MAX_DEPTH):
        deep = {"type": "array", "items": deep}
    err = _refused(api.parse_completion, {"prompt": "hi", "json_schema": deep})
    assert (
        err.message
        == "'json_schema': the JSON schema is nested more than 64 levels deep: flatten it"
    )


def test_property_names_are_not_keywords() -> None:
    # properties named like keywords are schemas, checked as such; data (enum/const) is not
    ok = {
        "type": "object",
        "properties": {"maxLength": {"type": "string"}, "enum": {"type": "integer"}},
        "required": ["maxLength"],
    }
    assert api.parse_completion({"prompt": "hi", "json_schema": ok}, D).params.grammar
    data = {"enum": [{"maxLength": 10**6}, "x"]}
    assert api.parse_completion({"prompt": "hi", "json_schema": data}, D).params.grammar
    hidden = {"type": "object", "properties": {"const": {"type": "string", "minLength": 10**9}}}
    err = _refused(api.parse_completion, {"prompt": "hi", "json_schema": hidden})
    assert "'minLength' is 1000000000" in err.message


def test_the_converters_grammar_is_measured_too() -> None:
    # each bound within the schema limits, but together they make 160 KB of GBNF
    props = {f"p{i}": {"type": "string", "maxLength": 1000} for i in range(20)}
    schema = {"type": "object", "properties": props}
    assert len(json.dumps(schema)) < limits.SCHEMA_MAX_BYTES
    err = _refused(api.parse_completion, {"prompt": "hi", "json_schema": schema})
    assert err.message.startswith("'json_schema': the grammar is ")
    assert f"bytes, over this server's limit of {limits.GBNF_MAX_BYTES}" in err.message


def test_real_schemas_pass() -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 1000},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 1000},
            "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{1,1000}$"},
            "kind": {"enum": [f"k{i}" for i in range(500)]},
            **{f"field{i}": {"type": ["integer", "null"]} for i in range(40)},
        },
        "required": ["name", "tags"],
    }
    for name, parse, wrap, _ in SCHEMA_ROUTES:
        grammar = parse(wrap(schema), D).params.grammar
        assert grammar and "root ::=" in grammar, name
    chat = api.parse_chat({"messages": MSGS, "response_format": {"type": "json_object"}}, D)
    assert chat.params.grammar


# -- H3: GBNF grammars --------------------------------------------------------------------------


def test_the_60000_deep_grammar_is_a_400() -> None:
    err = _refused(api.parse_completion, {"prompt": "hi", "grammar": DEEP_GRAMMAR})
    assert err.param == "grammar"
    assert err.message == (
        "'grammar': the grammar nests parentheses 60000 deep, over this server's limit of 1024: "
        "move inner groups into rules of their own"
    )
    # llama.cpp's fields work on /v1 too
    err = _refused(api.parse_chat, {"messages": MSGS, "grammar": DEEP_GRAMMAR})
    assert err.param == "grammar"


def test_grammar_limits() -> None:
    def nested(n: int) -> str:
        return "root ::= " + "(" * n + '"a"' + ")" * n

    assert api.parse_completion({"prompt": "x", "grammar": nested(1024)}, D).params.grammar
    assert (
        "nests parentheses 1025 deep"
        in _refused(api.parse_completion, {"prompt": "x", "grammar": nested(1025)}).message
    )
    rules = "root ::= r0\n" + "".join(f'r{i} ::= "a"\n' for i in range(4096))
    assert (
        "has 4097 rules, over this server's limit of 4096"
        in _refused(api.parse_completion, {"prompt": "x", "grammar": rules}).message
    )
    big = 'root ::= "' + "a" * limits.GBNF_MAX_BYTES + '"'
    assert (
        f"over this server's limit of {limits.GBNF_MAX_BYTES}"
        in _refused(api.parse_completion, {"prompt": "x", "grammar": big}).message
    )


def test_gbnf_shape_skips_literals_classes_and_comments() -> None:
    assert limits.gbnf_shape('root ::= ("a" (b))\nb ::= [()] "x"') == (2, 2)
    text = 'root ::= "((((\\"((((" [(((\\]((] # (((( ::= ((\n  ("a")'
    assert limits.gbnf_shape(text) == (1, 1)
    assert limits.gbnf_shape('root ::= "::=" x\nx ::= "a"') == (0, 2)
    many = 'root ::= "' + "(" * 5000 + '"'
    assert api.parse_completion({"prompt": "x", "grammar": many}, D).params.grammar == many


JSON_GBNF = r"""
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::= "{" ws ( string ":" ws value ("," ws string ":" ws value)* )? "}" ws
array  ::= "[" ws ( value ("," ws value)* )? "]" ws
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) )* "\"" ws
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws
ws ::= | " " | "\n" [ \t]{0,20}
"""


def test_real_grammars_pass() -> None:
    body = {"prompt": "x", "grammar": JSON_GBNF}
    assert api.parse_completion(body, D).params.grammar == JSON_GBNF


# -- M3: stop strings ---------------------------------------------------------------------------

STOP_ROUTES: list[tuple[str, Parse, Callable[[Any], dict[str, Any]]]] = [
    ("llama", api.parse_completion, lambda s: {"prompt": "hi", "stop": s}),
    ("openai chat", api.parse_chat, lambda s: {"messages": MSGS, "stop": s}),
    ("openai completions", api.parse_openai_completion, lambda s: {"prompt": "hi", "stop": s}),
    ("ollama generate", oll.parse_generate, lambda s: {"prompt": "hi", "options": {"stop": s}}),
    ("ollama chat", oll.parse_chat, lambda s: {"messages": MSGS, "options": {"stop": s}}),
]


@pytest.mark.parametrize(("name", "parse", "wrap"), STOP_ROUTES, ids=[r[0] for r in STOP_ROUTES])
def test_stop_strings_are_capped_in_every_dialect(
    name: str, parse: Parse, wrap: Callable[[Any], dict[str, Any]]
) -> None:
    most = [f"{i:03d}" + "x" * (limits.STOP_MAX_CHARS - 3) for i in range(limits.STOP_MAX_COUNT)]
    assert parse(wrap(most), D).params.stop == most
    assert parse(wrap("y" * limits.STOP_MAX_CHARS), D).params.stop == ["y" * 256]

    err = _refused(parse, wrap(["x"] * 100_000))
    assert err.param == "stop"
    assert err.message == "'stop': 100000 stop strings, over this server's limit of 16: send fewer"
    err = _refused(parse, wrap([*most[:3], "z" * 257]))
    assert err.message == (
        "'stop': a stop string of 257 characters, over this server's limit of 256: "
        "send a shorter one"
    )
    assert _refused(parse, wrap("z" * 257)).param == "stop"  # a single string, OpenAI's form


# -- a grammar that allows no token: llama.cpp aborted the process ---------------------------------


@pytest.fixture(scope="module")
def child_server() -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A real server (the small model) in a child process: an abort kills it, not pytest."""
    with serve_in_child(n_ctx=512) as server:
        yield server


def _alive(proc: subprocess.Popen[str], url: str) -> None:
    assert proc.poll() is None, f"the server died (exit {proc.returncode})"
    assert requests.get(url + "/health", timeout=30).json() == {"status": "ok"}


def test_a_grammar_with_no_next_token_is_a_400(
    child_server: tuple[subprocess.Popen[str], str],
) -> None:
    proc, url = child_server
    # dead from the first token: a plain 400, in each dialect
    r = requests.post(
        url + "/completion", json={"prompt": "hi", "grammar": DEAD_GRAMMAR}, timeout=60
    )
    assert r.status_code == 400, r.text
    assert "the grammar allows no token at this point" in r.json()["error"]["message"]
    _alive(proc, url)
    schema = {"type": "string", "pattern": "^\\x00$"}  # the converter keeps the \x00
    r = requests.post(
        url + "/api/generate", json={"prompt": "hi", "format": schema, "stream": False}, timeout=60
    )
    assert r.status_code == 400 and "allows no token" in r.json()["error"], r.text
    _alive(proc, url)
    # dead after some text, streamed: the stream ends with a 400 error event
    body = {"prompt": "hi", "grammar": 'root ::= "ab" [^\\x01-\\U0010FFFF]', "stream": True}
    r = requests.post(url + "/completion", json=body, timeout=60)
    assert r.status_code == 200
    events = [json.loads(x[6:]) for x in r.text.split("\n\n") if x.startswith("data: ")]
    assert "".join(e.get("content", "") for e in events) == "ab"
    assert events[-1]["error"]["code"] == 400, events[-1]
    _alive(proc, url)
    # and the slot is fine for the next one
    r = requests.post(
        url + "/completion",
        json={"prompt": "hi", "grammar": 'root ::= "yes" | "no"', "temperature": 0},
        timeout=60,
    )
    assert r.status_code == 200 and r.json()["content"] in ("yes", "no"), r.text


# -- the issue's requests against a real model.run ------------------------------------------------


@pytest.mark.slow
def test_model_run_survives_the_crashing_requests(demo_run: Path, tmp_path: Path) -> None:
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
        deadline = time.time() + 240
        while True:
            try:
                if requests.get(url + "/health", timeout=5).json() == {"status": "ok"}:
                    break
            except (requests.ConnectionError, ValueError):
                pass
            assert proc.poll() is None, proc.communicate()[1]
            assert time.time() < deadline, "server did not come up"
            time.sleep(0.5)
        headers = {"Content-Type": "application/json"}
        r = requests.post(url + "/completion", data=SCHEMA_BODY, headers=headers, timeout=60)
        assert r.status_code == 400 and "'maxLength' is 100000" in r.json()["error"]["message"]
        _alive(proc, url)
        r = requests.post(
            url + "/completion", json={"prompt": "hi", "grammar": DEEP_GRAMMAR}, timeout=60
        )
        assert r.status_code == 400 and "60000 deep" in r.json()["error"]["message"]
        _alive(proc, url)
        r = requests.post(
            url + "/completion", json={"prompt": "hi", "grammar": DEAD_GRAMMAR}, timeout=60
        )
        assert r.status_code == 400 and "allows no token" in r.json()["error"]["message"]
        _alive(proc, url)
        schema = {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
        }
        r = requests.post(
            url + "/completion",
            json={
                "prompt": "The capital of Japan as JSON:",
                "n_predict": 48,
                "temperature": 0,
                "json_schema": schema,
            },
            timeout=120,
        )
        assert r.status_code == 200, r.text
        assert isinstance(json.loads(r.json()["content"])["city"], str)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            err = proc.communicate(timeout=30)[1]
        except subprocess.TimeoutExpired:
            proc.kill()
            err = proc.communicate()[1]
    assert proc.returncode == 0, err[-3000:]
