"""Gemma 3 4B+ (``Gemma3ForConditionalGeneration``): its language model converts, the
vision tower is skipped and the conversion says so in one line."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")
pytest.importorskip("torch")
pytest.importorskip("transformers")

import arch_families as af  # noqa: E402
from test_convert_families import copy_folder  # noqa: E402

from packer.convert import convert_checkpoint, inspect_checkpoint  # noqa: E402

NAME = "gemma3mm"


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
    names = [t.name for t in gguf.GGUFReader(converted).tensors]
    assert all(n.startswith(("token_embd.", "output_norm.", "blk.")) for n in names)


def test_vision_tower_skipped_in_one_line(
    checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        convert_checkpoint(checkpoint, tmp_path / "out.gguf", outtype="f32")
    lines = [r.getMessage() for r in caplog.records if "vision" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    # inspecting (as `packer build` does first) stays quiet
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        info = inspect_checkpoint(checkpoint)
    assert info.architecture == "Gemma3ForConditionalGeneration"
    assert not caplog.records


def test_newer_layout_same_gguf(checkpoint: Path, converted: Path, tmp_path: Path) -> None:
    """transformers >= 4.52 saves ``model.language_model.*`` / ``model.vision_tower.*``."""
    from safetensors.numpy import load_file, save_file

    folder = copy_folder(checkpoint, tmp_path / "newer")
    weights = load_file(folder / "model.safetensors")
    renamed = {}
    for name, value in weights.items():
        if name.startswith("language_model.model."):
            name = "model.language_model." + name.removeprefix("language_model.model.")
        else:
            name = "model." + name
        renamed[name] = value
    save_file(renamed, str(folder / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "newer.gguf"
    convert_checkpoint(folder, out, outtype="f32")
    old = {t.name: t for t in gguf.GGUFReader(converted).tensors}
    new = {t.name: t for t in gguf.GGUFReader(out).tensors}
    assert sorted(old) == sorted(new)
    for name, tensor in new.items():
        np.testing.assert_array_equal(tensor.data, old[name].data)


def test_sparse_text_config(checkpoint: Path, tmp_path: Path) -> None:
    """Released configs list only what differs from Gemma3TextConfig's defaults."""
    import json

    folder = copy_folder(checkpoint, tmp_path / "sparse")
    config = json.loads((folder / "config.json").read_text())
    text = config["text_config"]
    for key in ("rms_norm_eps", "hidden_activation", "rope_parameters", "layer_types"):
        text.pop(key, None)
    text["sliding_window_pattern"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    out = tmp_path / "sparse.gguf"
    convert_checkpoint(folder, out, outtype="f32")
    reader = gguf.GGUFReader(out)
    assert af.kv(reader, "gemma3.rope.freq_base") == pytest.approx(1000000.0)
    assert af.kv(reader, "gemma3.rope.freq_base_swa") == pytest.approx(10000.0)
    assert af.kv(reader, "gemma3.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    pattern = af.kv(reader, "gemma3.attention.sliding_window_pattern")
    assert pattern == [True, True, False]


@pytest.mark.slow
def test_build_says_vision_is_skipped(checkpoint: Path, tmp_path: Path) -> None:
    """`packer build` of a multimodal Gemma 3 prints the one line and the file answers."""
    from test_e2e import packer, run_clean

    out = tmp_path / "gemma3mm.run"
    proc = packer("build", str(checkpoint), "--quant", "Q8_0", "-o", str(out))
    assert len([ln for ln in proc.stderr.splitlines() if "vision tower" in ln]) == 1
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    p = run_clean(out, "-p", "hola", "--raw", "-n", "8", "--temp", "0", cwd=elsewhere)
    assert p.returncode == 0, p.stderr
