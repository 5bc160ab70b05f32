"""A GGUF of an embedding model (a tiny random BERT, tests/embedders.py) run by the runtime:
the engine knows it, the server's four embeddings endpoints pool and normalise as the model
says (equal to transformers' reference), the generation endpoints answer 400 in their
dialect, and ``--embed`` / ``-p`` behave on the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

pytest.importorskip("llama_cpp")
pytest.importorskip("transformers")

from embedders import make_bert, reference_embeddings  # noqa: E402
from serving import serving

from packer.convert import convert_checkpoint  # noqa: E402
from packer.runtime.embed import POOLING_CLS, POOLING_MEAN, embedding_model  # noqa: E402
from packer.runtime.engine import Engine, EngineOptions  # noqa: E402
from packer.runtime.routes import EMBEDDING_ONLY  # noqa: E402
from packer.runtime.server import PackerHTTPServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["The quick brown fox jumps over the lazy dog.", "¿Qué es la cuantización?"]
MIN_COSINE = 0.999


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint folder, its F32 GGUF): mean pooling, normalised."""
    root = tmp_path_factory.mktemp("bert-run")
    folder = make_bert(root / "bert", "mean", True)
    out = root / "bert.gguf"
    convert_checkpoint(folder, out, outtype="f32")
    return folder, out


@pytest.fixture(scope="module")
def engine(bert: tuple[Path, Path]) -> Iterator[Engine]:
    eng = Engine(bert[1], EngineOptions(n_threads=2))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def server(engine: Engine) -> Iterator[PackerHTTPServer]:
    with serving(engine, model_alias="bert-test") as srv:
        yield srv


@pytest.fixture(scope="module")
def reference(bert: tuple[Path, Path]) -> list[np.ndarray]:
    return [np.array(v) for v in reference_embeddings(bert[0], TEXTS)]


def close_to(got: list[float], expected: np.ndarray) -> None:
    v = np.array(got)
    assert v.shape == expected.shape
    assert abs(np.linalg.norm(v) - 1) < 1e-4  # the model's card normalises
    assert float(v @ expected / np.linalg.norm(expected)) >= MIN_COSINE


def test_metadata_says_embedding_model() -> None:
    assert embedding_model({"general.architecture": "llama"}) is None
    meta = {"general.architecture": "bert", "bert.pooling_type": "2"}
    assert embedding_model(meta) == embedding_model({**meta, "packer.embeddings.normalize": "true"})
    got = embedding_model({**meta, "packer.embeddings.normalize": "false"})
    assert got is not None and got.pooling == POOLING_CLS and not got.normalize
    assert embedding_model({"general.architecture": "bert", "bert.pooling_type": "0"}) is None


def test_engine_knows(engine: Engine) -> None:
    assert engine.embedding is not None
    assert engine.embedding.pooling == POOLING_MEAN and engine.embedding.normalize


def test_endpoints_match_reference(server: PackerHTTPServer, reference: list[np.ndarray]) -> None:
    url = server.url
    r = requests.post(f"{url}/v1/embeddings", json={"input": TEXTS, "model": "x"}, timeout=60)
    assert r.status_code == 200, r.text
    for item, exp in zip(r.json()["data"], reference, strict=True):
        close_to(item["embedding"], exp)
    r = requests.post(f"{url}/embedding", json={"content": TEXTS[0]}, timeout=60)
    assert r.status_code == 200, r.text
    close_to(r.json()["embedding"], reference[0])
    r = requests.post(f"{url}/api/embed", json={"input": TEXTS, "model": "x"}, timeout=60)
    assert r.status_code == 200, r.text
    for vec, exp in zip(r.json()["embeddings"], reference, strict=True):
        close_to(vec, exp)
    r = requests.post(f"{url}/api/embeddings", json={"prompt": TEXTS[1], "model": "x"}, timeout=60)
    assert r.status_code == 200, r.text
    close_to(r.json()["embedding"], reference[1])


@pytest.mark.parametrize(
    ("path", "body", "dialect"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, "openai"),
        ("/v1/completions", {"prompt": "hi"}, "openai"),
        ("/completion", {"prompt": "hi"}, "llama"),
        ("/api/generate", {"model": "x", "prompt": "hi"}, "ollama"),
        ("/api/chat", {"model": "x", "messages": [{"role": "user", "content": "hi"}]}, "ollama"),
    ],
)
def test_generation_refused(server: PackerHTTPServer, path: str, body: dict, dialect: str) -> None:
    r = requests.post(server.url + path, json=body, timeout=30)
    assert r.status_code == 400, r.text
    data = r.json()
    if dialect == "ollama":
        assert data["error"] == EMBEDDING_ONLY
    else:
        assert data["error"]["message"] == EMBEDDING_ONLY
        assert data["error"]["type"] == "invalid_request_error"
    assert requests.get(server.url + "/health", timeout=10).status_code == 200


def _run(gguf: Path, *args: str, lang: str = "C.UTF-8") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LANG": lang}
    return subprocess.run(
        [sys.executable, "-m", "packer.runtime", "-m", str(gguf), "-t", "1", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def test_cli_embed_prints_json(bert: tuple[Path, Path], reference: list[np.ndarray]) -> None:
    done = _run(bert[1], "--embed", TEXTS[1])
    assert done.returncode == 0, done.stderr
    close_to(json.loads(done.stdout), reference[1])


@pytest.mark.parametrize(
    ("lang", "words"), [("C.UTF-8", "makes embeddings"), ("es_ES.UTF-8", "genera embeddings")]
)
def test_cli_prompt_says_embeddings(bert: tuple[Path, Path], lang: str, words: str) -> None:
    done = _run(bert[1], "-p", "hello", lang=lang)
    assert done.returncode != 0 and done.stdout == ""
    last = done.stderr.strip().splitlines()[-1]
    assert words in last and "--embed" in last, done.stderr


def test_ollama_show_says_embedding_only(server: PackerHTTPServer) -> None:
    r = requests.post(server.url + "/api/show", json={"model": "bert-test"}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["capabilities"] == ["embedding"]
