"""End to end: a model.run built from a tiny random BERT embedding checkpoint, run as a user
would (``env -i``, another folder): ``--embed`` prints the vector, ``--server`` serves the
four embeddings endpoints (and LangChain's OpenAIEmbeddings / OllamaEmbeddings, as in the
README's RAG recipe), generation is refused with a 400.

Slow: builds a model.run (the runtime stub is cached after the first build).
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port
from embedders import make_bert, reference_embeddings
from test_e2e import packer, run_clean

pytestmark = pytest.mark.slow

DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "We packed the model into a single executable file that runs offline.",
    "¿Qué es la cuantización? Es reducir la precisión de los pesos del modelo.",
    "Mañana vamos a la montaña con mi compañero; la canción está en español.",
]
QUERY = "¿Qué es la cuantización del modelo?"
MIN_COSINE = 0.995  # Q8_0 weights against transformers' F32


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint folder, its Q8_0 model.run)."""
    root = tmp_path_factory.mktemp("bert-e2e")
    folder = make_bert(root / "tiny-bert", "mean", True)
    out = root / "tiny-bert.run"
    built = packer("build", str(folder), "--quant", "Q8_0", "-o", str(out))
    assert '--embed "Hello"' in built.stderr
    return folder, out


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


@pytest.fixture(scope="module")
def served(bert_run: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        ["env", "-i", str(bert_run[1]), "--server", "--port", str(port), "-t", "2"],
        cwd=tmp_path_factory.mktemp("elsewhere"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    if json.loads(r.read()).get("status") == "ok":
                        break
            except OSError:
                pass
            assert proc.poll() is None, proc.communicate()[1]
            assert time.time() < deadline, "server did not come up"
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert "Traceback" not in err, err


def _post(url: str, body: dict) -> tuple[int, dict]:  # type: ignore[type-arg]
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_server_endpoints(bert_run: tuple[Path, Path], served: str) -> None:
    ref = reference_embeddings(bert_run[0], DOCS[:2])
    status, r = _post(served + "/v1/embeddings", {"input": DOCS[:2], "model": "any"})
    assert status == 200
    for item, expected in zip(r["data"], ref, strict=True):
        assert cosine(item["embedding"], expected) >= MIN_COSINE
    status, r = _post(served + "/embedding", {"content": DOCS[0]})
    assert status == 200 and cosine(r["embedding"], ref[0]) >= MIN_COSINE
    status, r = _post(served + "/api/embed", {"model": "any", "input": DOCS[1]})
    assert status == 200 and cosine(r["embeddings"][0], ref[1]) >= MIN_COSINE
    status, r = _post(served + "/api/embeddings", {"model": "any", "prompt": DOCS[1]})
    assert status == 200 and cosine(r["embedding"], ref[1]) >= MIN_COSINE
    status, r = _post(
        served + "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}
    )
    assert status == 400 and "makes embeddings" in r["error"]["message"]
    status, r = _post(served + "/api/generate", {"model": "any", "prompt": "hi"})
    assert status == 400 and "makes embeddings" in r["error"]


def test_langchain_retrieval(bert_run: tuple[Path, Path], served: str) -> None:
    """The README's RAG recipe, embedding side: LangChain's vector store over the embedding
    model.run ranks the documents as the reference vectors do (random weights: the order is
    the reference's, not a meaningful one)."""
    from langchain_core.vectorstores import InMemoryVectorStore
    from langchain_ollama import OllamaEmbeddings
    from langchain_openai import OpenAIEmbeddings

    ref = [np.array(v) for v in reference_embeddings(bert_run[0], [QUERY, *DOCS])]
    expected = [DOCS[i] for i in np.argsort([-cosine(ref[0], d) for d in ref[1:]])]
    for embeddings in (
        OpenAIEmbeddings(
            base_url=served + "/v1",
            api_key="none",  # type: ignore[arg-type]
            model="tiny-bert",
            check_embedding_ctx_length=False,  # send text, not tiktoken ids
        ),
        OllamaEmbeddings(base_url=served, model="tiny-bert"),
    ):
        store = InMemoryVectorStore.from_texts(DOCS, embeddings)
        found = [d.page_content for d in store.similarity_search(QUERY, k=len(DOCS))]
        assert found == expected, type(embeddings).__name__
