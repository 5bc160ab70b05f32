"""smollm3: a tiny transformers checkpoint converts to a GGUF that llama.cpp runs like transformers."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")
pytest.importorskip("torch")
pytest.importorskip("transformers")

import arch_families as af  # noqa: E402

NAME = "smollm3"


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


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"no_rope_layers": [1, 0, 1, 1]}, "every 4th layer"),
        ({"no_rope_layers": [1, 1]}, "must list 4"),
        ({"no_rope_layers": None, "no_rope_layer_interval": 2}, "every 4th layer"),
        ({"use_sliding_window": True, "sliding_window": 8}, "sliding"),
    ],
)
def test_refused_configs(
    changes: dict[str, object], needle: str, checkpoint: Path, tmp_path: Path
) -> None:
    from test_convert_families import copy_folder

    from packer.convert import convert_checkpoint
    from packer.errors import ConversionError, UnsupportedModelError

    folder = copy_folder(checkpoint, tmp_path / "m", **changes)
    with pytest.raises((ConversionError, UnsupportedModelError), match=needle):
        convert_checkpoint(folder, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()
