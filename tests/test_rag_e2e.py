"""The RAG recipe of the README and the classroom guides, end to end: their Python block runs
against two real model.run servers, the demo chat model (SmolLM2, ``demo_run``) and the tiny
BERT embedding model (``bert_served``), with only the ports and a short, greedy answer changed.

The retrieved note is the one the reference vectors (transformers + the model's pooling) rank
first (random weights: the reference's order, not a meaningful one); the chat answer is not
empty.

The run is slow: it builds and serves both model.runs.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import serve_model_run
from embedders import reference_embeddings

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "en" / "classroom-guide.md", ROOT / "docs" / "es" / "guia-aula.md"]  # fmt: skip
CHAT_URL, EMBED_URL = "http://127.0.0.1:8080", "http://127.0.0.1:8081"
CHAT_MODEL = 'model="qwen")'


def rag_block(doc: Path) -> str:
    """The document's Python block that builds the vector store (there is one)."""
    blocks = [b for b in re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)
              if "InMemoryVectorStore" in b]  # fmt: skip
    assert len(blocks) == 1, doc
    return blocks[0]


def test_docs_blocks_are_the_same_code() -> None:
    """The three copies differ only in comments and the prompt's words."""

    def code(block: str) -> list[str]:
        lines = [ln.split("  #")[0].rstrip() for ln in block.splitlines()]
        return [ln for ln in lines if ln and not ln.lstrip().startswith(("#", "print("))]

    readme = code(rag_block(DOCS[0]))
    for doc in DOCS[1:]:
        assert code(rag_block(doc)) == readme, doc


@pytest.mark.slow
def test_rag_recipe_runs(
    demo_run: Path, bert_run: tuple[Path, Path], bert_served: str, tmp_path: Path
) -> None:
    with serve_model_run(demo_run, tmp_path) as chat:
        for doc in DOCS:
            block = rag_block(doc)
            for old in (CHAT_URL, EMBED_URL, CHAT_MODEL):
                assert old in block, (doc, old)
            block = block.replace(CHAT_URL, chat).replace(EMBED_URL, bert_served)
            block = block.replace(CHAT_MODEL, 'model="qwen", max_tokens=24, temperature=0)')
            scope: dict[str, object] = {}
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(block, str(doc), "exec"), scope)  # noqa: S102

            notes, question, found = scope["notes"], scope["question"], scope["found"]
            assert isinstance(notes, list) and len(notes) >= 3 and isinstance(question, str)
            query, *passages = reference_embeddings(bert_run[0], ["query: " + question, *notes])
            best = notes[int(np.argmax([np.dot(query, p) for p in passages]))]
            assert [d.page_content for d in found] == [best], doc  # type: ignore[attr-defined]
            assert out.getvalue().strip(), f"{doc.name}: empty answer"
