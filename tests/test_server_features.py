"""What ``--metrics`` and ``--reasoning-format`` change, against the real small model.

SmolLM2 does not think on its own, so a llama.cpp grammar (which ``/v1/chat/completions``
accepts, as llama-server does) makes it write a ``<think>`` section before its answer: the
server must move that section into ``reasoning_content`` unless told ``none``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests
from conftest import smollm_gguf_path
from prometheus_client.parser import text_string_to_metric_families
from serving import serving

from packer.runtime.engine import Engine, EngineOptions
from packer.runtime.server import PackerHTTPServer
from packer.runtime.server_options import ServerFeatures

pytestmark = pytest.mark.slow

THINKING = 'root ::= "<think>" "I add two and two." "</think>" "Four."'
MESSAGES = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    eng = Engine(smollm_gguf_path(), EngineOptions(n_ctx=1024, n_threads=2, n_parallel=2))
    yield eng
    eng.close()


def _serve(engine: Engine, features: ServerFeatures) -> Iterator[PackerHTTPServer]:
    with serving(engine, features=features) as srv:
        yield srv


@pytest.fixture(scope="module")
def plain(engine: Engine) -> Iterator[PackerHTTPServer]:
    yield from _serve(engine, ServerFeatures())


@pytest.fixture(scope="module")
def measured(engine: Engine) -> Iterator[PackerHTTPServer]:
    yield from _serve(engine, ServerFeatures(metrics=True))


@pytest.fixture(scope="module")
def inline(engine: Engine) -> Iterator[PackerHTTPServer]:
    yield from _serve(engine, ServerFeatures(reasoning_format="none"))


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_off_is_llama_servers_501(plain: PackerHTTPServer) -> None:
    r = requests.get(plain.url + "/metrics", timeout=30)
    assert r.status_code == 501
    assert "--metrics" in r.json()["error"]["message"]
    assert r.json()["error"]["type"] == "not_supported_error"


def test_metrics_count_requests_and_tokens(measured: PackerHTTPServer) -> None:
    body = {"prompt": "The capital of France is", "n_predict": 8, "temperature": 0}
    r = requests.post(measured.url + "/completion", json=body, timeout=120)
    assert r.status_code == 200
    predicted = r.json()["tokens_predicted"]
    assert requests.get(measured.url + "/nowhere", timeout=30).status_code == 404

    m = requests.get(measured.url + "/metrics", timeout=30)
    assert m.status_code == 200
    assert m.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = _samples(m.text)
    assert samples[("llamacpp:tokens_predicted_total", ())] >= predicted > 0
    assert samples[("llamacpp:prompt_tokens_total", ())] > 0
    assert samples[("llamacpp:requests_processing", ())] == 0
    assert samples[("llamacpp:requests_deferred", ())] == 0
    assert 0 <= samples[("llamacpp:kv_cache_usage_ratio", ())] <= 1
    done = (("route", "/completion"), ("status", "200"))
    assert samples[("packer_http_requests_total", done)] == 1
    unmatched = (("route", "unmatched"), ("status", "404"))
    assert samples[("packer_http_requests_total", unmatched)] == 1
    # the scrape itself is counted once it is answered
    again = _samples(requests.get(measured.url + "/metrics", timeout=30).text)
    assert again[("packer_http_requests_total", (("route", "/metrics"), ("status", "200")))] >= 1


def _chat(url: str, stream: bool) -> requests.Response:
    body = {"messages": MESSAGES, "grammar": THINKING, "max_tokens": 40, "stream": stream}
    return requests.post(url + "/v1/chat/completions", json=body, timeout=120, stream=stream)


def test_reasoning_goes_to_reasoning_content(plain: PackerHTTPServer) -> None:
    msg = _chat(plain.url, stream=False).json()["choices"][0]["message"]
    assert msg["reasoning_content"] == "I add two and two."
    assert msg["content"] == "Four."


def test_reasoning_streams_apart(plain: PackerHTTPServer) -> None:
    r = _chat(plain.url, stream=True)
    reasoning, content = [], []
    for line in r.iter_lines():
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            for choice in json.loads(line[6:])["choices"]:
                reasoning.append(choice["delta"].get("reasoning_content") or "")
                content.append(choice["delta"].get("content") or "")
    assert "".join(reasoning) == "I add two and two."
    assert "".join(content) == "Four."


def test_reasoning_format_none_keeps_it_inline(inline: PackerHTTPServer) -> None:
    msg = _chat(inline.url, stream=False).json()["choices"][0]["message"]
    assert msg["content"] == "<think>I add two and two.</think>Four."
    assert not msg.get("reasoning_content")
