"""olmo2: a tiny transformers checkpoint converts to a GGUF that llama.cpp runs like transformers."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")
pytest.importorskip("torch")
pytest.importorskip("transformers")

import arch_families as af  # noqa: E402

NAME = "olmo2"


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


def test_missing_post_norm_is_one_line(checkpoint: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file
    from test_convert_families import copy_folder

    from packer.convert import convert_checkpoint
    from packer.errors import ConversionError

    folder = copy_folder(checkpoint, tmp_path / "m")
    weights = load_file(folder / "model.safetensors")
    del weights["model.layers.1.post_feedforward_layernorm.weight"]
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConversionError, match="post_feedforward_layernorm"):
        convert_checkpoint(folder, tmp_path / "out.gguf")
