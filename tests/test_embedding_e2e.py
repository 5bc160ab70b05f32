"""End to end: a model.run built from a tiny random BERT embedding checkpoint, run as a user
would (``env -i``, another folder): ``--embed`` prints the vector, ``--server`` serves the
four embeddings endpoints (and LangChain's OpenAIEmbeddings / OllamaEmbeddings, as in the
README's RAG recipe), generation is refused with a 400.

Slow: builds a model.run (the runtime stub is cached after the first build).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from embedders import reference_embeddings
from test_e2e import run_clean

pytestmark = pytest.mark.slow

DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "We packed the model into a single executable file that runs offline.",
    "¿Qué es la cuantización? Es reducir la precisión de los pesos del modelo.",
    "Mañana vamos a la montaña con mi compañero; la canción está en español.",
]
QUERY = "¿Qué es la cuantización del modelo?"
MIN_COSINE = 0.995  # Q8_0 weights against transformers' F32
RANK_TOL = 0.002  # a cosine of the model.run's vectors against the reference's (Q8_0 weights)


# bert_run (the tiny BERT and its Q8_0 model.run) and bert_served are in conftest.py


def cosine(a: list[float], b: list[float]) -> float:
    x, y = np.array(a), np.array(b)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def test_embed_flag(bert_run: tuple[Path, Path], tmp_path: Path) -> None:
    folder, exe = bert_run
    done = run_clean(exe, "--embed", DOCS[2], "-t", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    vec = json.loads(done.stdout)
    assert abs(np.linalg.norm(vec) - 1) < 1e-4
    assert cosine(vec, reference_embeddings(folder, [DOCS[2]])[0]) >= MIN_COSINE
    said = run_clean(exe, "-p", "hola", cwd=tmp_path, env={"LANG": "es_ES.UTF-8"})
    assert said.returncode != 0 and "genera embeddings" in said.stderr.splitlines()[-1]


def _post(url: str, body: dict) -> tuple[int, dict]:  # type: ignore[type-arg]
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_server_endpoints(bert_run: tuple[Path, Path], bert_served: str) -> None:
    ref = reference_embeddings(bert_run[0], DOCS[:2])
    status, r = _post(bert_served + "/v1/embeddings", {"input": DOCS[:2], "model": "any"})
    assert status == 200
    for item, expected in zip(r["data"], ref, strict=True):
        assert cosine(item["embedding"], expected) >= MIN_COSINE
    status, r = _post(bert_served + "/embedding", {"content": DOCS[0]})
    assert status == 200 and cosine(r["embedding"], ref[0]) >= MIN_COSINE
    status, r = _post(bert_served + "/api/embed", {"model": "any", "input": DOCS[1]})
    assert status == 200 and cosine(r["embeddings"][0], ref[1]) >= MIN_COSINE
    status, r = _post(bert_served + "/api/embeddings", {"model": "any", "prompt": DOCS[1]})
    assert status == 200 and cosine(r["embedding"], ref[1]) >= MIN_COSINE
    status, r = _post(
        bert_served + "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}
    )
    assert status == 400 and "makes embeddings" in r["error"]["message"]
    status, r = _post(bert_served + "/api/generate", {"model": "any", "prompt": "hi"})
    assert status == 400 and "makes embeddings" in r["error"]


def test_langchain_retrieval(bert_run: tuple[Path, Path], bert_served: str) -> None:
    """The README's RAG recipe, embedding side: LangChain's vector store over the embedding
    model.run ranks the documents by the model.run's own vectors, and that is the reference
    vectors' order (random weights: the order is the reference's, not a meaningful one).

    The tiny BERT's WordPiece vocabulary is trained anew each session and comes out differently,
    so two documents' reference cosines can lie closer than Q8_0's error (up to 0.0004 measured):
    such a pair may come in either order, every other pair must not."""
    from langchain_core.vectorstores import InMemoryVectorStore
    from langchain_ollama import OllamaEmbeddings
    from langchain_openai import OpenAIEmbeddings

    ref = [np.array(v) for v in reference_embeddings(bert_run[0], [QUERY, *DOCS])]
    ref_cos = {doc: cosine(ref[0], v) for doc, v in zip(DOCS, ref[1:], strict=True)}
    status, r = _post(bert_served + "/v1/embeddings", {"input": [QUERY, *DOCS], "model": "any"})
    assert status == 200
    own = [item["embedding"] for item in r["data"]]
    own_cos = {doc: cosine(own[0], v) for doc, v in zip(DOCS, own[1:], strict=True)}
    for doc in DOCS:
        assert abs(own_cos[doc] - ref_cos[doc]) <= RANK_TOL, (doc, own_cos, ref_cos)
    expected = sorted(DOCS, key=lambda doc: -own_cos[doc])
    for better, worse in zip(expected, expected[1:], strict=False):
        assert ref_cos[better] >= ref_cos[worse] - 2 * RANK_TOL, (better, worse, ref_cos)
    for embeddings in (
        OpenAIEmbeddings(
            base_url=bert_served + "/v1",
            api_key="none",  # type: ignore[arg-type]
            model="tiny-bert",
            check_embedding_ctx_length=False,  # send text, not tiktoken ids
        ),
        OllamaEmbeddings(base_url=bert_served, model="tiny-bert"),
    ):
        store = InMemoryVectorStore.from_texts(DOCS, embeddings)
        found = [d.page_content for d in store.similarity_search(QUERY, k=len(DOCS))]
        assert found == expected, type(embeddings).__name__
