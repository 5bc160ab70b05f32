"""The web page of an embedding model: no chat box (chatting would get a 400) but a line saying
the file makes embeddings and a curl line for /v1/embeddings, in English and Spanish.

Same real server and scripted model as test_webpage_features.py (whose fixtures are reused),
the model marked as an embedding one; the browser tests skip without Debian's chromium.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator

import pytest
import test_webpage_features as wf
from chromium import Browser
from test_webpage_features import MODEL, PAGE, ScriptedEngine, fresh, get, serving

# test_webpage_features' fixtures: the scripted chat model (patched in), the browser, its profile
engine, browser, tmp = wf.engine, wf.browser, wf.tmp


@pytest.fixture(scope="module")
def embed_url() -> Iterator[str]:
    """The server of an embedding model.run (``engine.embedding`` set, as Engine does)."""
    eng = ScriptedEngine()
    eng.embedding = object()  # type: ignore[attr-defined]
    with serving(eng, page=PAGE) as srv:
        yield srv.url


def test_page_json_says_embedding(embed_url: str) -> None:
    body = get(embed_url, "/packer/page.json", **{"Accept-Language": "es-ES,es"}).json()
    assert body["embedding"] is True and body["model"] == MODEL
    es = body["messages"]
    assert es["This file makes embeddings, not chat"].startswith("Este archivo genera embeddings")
    assert "curl" not in es  # the command line is the same in every language
    assert 'id="embed-info"' in get(embed_url, "/").text


def test_chat_model_page_json_is_not_embedding(engine: ScriptedEngine) -> None:
    with serving(engine) as srv:
        assert get(srv.url, "/packer/page.json").json()["embedding"] is False


@pytest.mark.parametrize(
    ("accept", "heading", "hello"),
    [
        ("en-US,en", "This file makes embeddings, not chat", "Hello, world"),
        ("es-ES,es;q=0.9", "Este archivo genera embeddings (vectores), no chatea", "Hola, mundo"),
    ],
)
def test_page_shows_how_to_call_embeddings(
    browser: Browser, embed_url: str, accept: str, heading: str, hello: str
) -> None:
    b = fresh(browser, embed_url, accept=accept)
    for hidden in ("form", "log", "settings", "clear", "toggle"):
        assert b.js(f"document.getElementById('{hidden}').hidden"), hidden
    assert not b.js("document.getElementById('embed-info').hidden")
    assert b.js("document.querySelector('#embed-info h2').textContent") == heading
    curl = shlex.split(b.js("document.getElementById('embed-curl').textContent"))
    assert curl[:2] == ["curl", embed_url + "/v1/embeddings"]
    assert curl[-2:] == ["-d", f'{{"model":"{MODEL}","input":"{hello}"}}']
    clients = b.js("document.getElementById('embed-clients').textContent")
    assert f"{embed_url}/v1" in clients and "OpenAIEmbeddings" in clients
    if accept.startswith("es"):  # nothing left in English
        left = b.js(
            "[...document.querySelectorAll('#embed-info [data-i18n]')]"
            ".filter(el => el.textContent === el.dataset.i18n).length"
        )
        assert left == 0
