"""granite: a tiny transformers checkpoint converts to a GGUF that llama.cpp runs like transformers."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")
pytest.importorskip("torch")
pytest.importorskip("transformers")

import arch_families as af  # noqa: E402

NAME = "granite"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return af.make_arch_checkpoint(NAME, tmp_path_factory.mktemp(NAME))


@pytest.fixture(scope="module")
def converted(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return af.convert_f32(checkpoint, tmp_path_factory.mktemp(NAME + "-gguf") / "m.gguf")


def test_f32_logits_match_transformers(checkpoint: Path, converted: Path) -> None:
    af.check_logits(NAME, checkpoint, converted)


def test_token_ids_match(checkpoint: Path, converted: Path) -> None:
    af.check_token_ids(checkpoint, converted)


def test_metadata(converted: Path) -> None:
    af.check_metadata(NAME, converted)


def test_refused_multiplier(checkpoint: Path, tmp_path: Path) -> None:
    from test_convert_families import copy_folder

    from packer.convert import convert_checkpoint
    from packer.errors import ConversionError

    folder = copy_folder(checkpoint, tmp_path / "m", residual_multiplier=-1.0)
    with pytest.raises(ConversionError, match="residual_multiplier"):
        convert_checkpoint(folder, tmp_path / "out.gguf")
