"""The embedding models of ``packer models`` (bge-m3, multilingual-e5-small): listed with size
and licence, and downloaded from the (fake) hub with the sentence-transformers pooling files the
converter reads."""

from __future__ import annotations

from pathlib import Path

import pytest
from embedders import make_xlm_roberta
from test_hub import hub  # noqa: F401  (the fake-hub fixture)

from packer.convert import SUPPORTED_ARCHITECTURES, convert_checkpoint
from packer.hub import aliases
from packer.source import resolve

pytest.importorskip("transformers")

EMBEDDING_ALIASES = {"bge-m3": "XLMRobertaModel", "multilingual-e5-small": "BertModel"}


def test_embedding_aliases_listed() -> None:
    table = aliases()
    for name, architecture in EMBEDDING_ALIASES.items():
        alias = table[name]
        assert alias.architecture == architecture and architecture in SUPPORTED_ARCHITECTURES
        assert alias.params_b > 0 and "embeddings" in alias.note and "licence" in alias.note
        assert "Spanish" in alias.note


def test_alias_downloads_the_pooling_config(hub, tmp_path: Path) -> None:  # noqa: F811
    folder = make_xlm_roberta(tmp_path / "bge", "cls", True)
    files = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    files["README.md"] = b"# tiny bge\n"
    files["colbert_linear.pt"] = b"pickle, never downloaded"
    hub.add_repo("BAAI/bge-m3", files)
    src = resolve("bge-m3")
    assert (src.path / "modules.json").is_file() and (src.path / "1_Pooling/config.json").is_file()
    out = tmp_path / "bge.gguf"
    convert_checkpoint(src.path, out)
    import gguf

    reader = gguf.GGUFReader(out)
    assert reader.get_field("bert.pooling_type").contents() == int(gguf.PoolingType.CLS)
