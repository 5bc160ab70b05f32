"""Broken inputs and outputs: the right PackerError, a useful one-line message, and no
output or temp file left behind."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from packer.convert import convert_checkpoint, inspect_checkpoint
from packer.errors import (
    ConversionError,
    OutputError,
    PackerError,
    SourceError,
    UnsupportedModelError,
)

CopyFn = Callable[[Path], Path]


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def expect_failure(
    src: Path, out_dir: Path, error: type[PackerError], *needles: str
) -> PackerError:
    """convert_checkpoint must raise ``error`` mentioning every needle; out_dir stays empty."""
    with pytest.raises(error) as info:
        convert_checkpoint(src, out_dir / "model.gguf")
    message = str(info.value)
    print(f"{error.__name__}: {message}")
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    assert list(out_dir.iterdir()) == [], "conversion left files behind"
    return info.value


# ---- safetensors helpers (tests only; safetensors is a test dependency) -------------------


def load_tensors(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def save_tensors(folder: Path, tensors: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def edit_config(folder: Path, **changes: object) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


# ---- source problems -------------------------------------------------------------------


def test_missing_folder(tmp_path: Path, out_dir: Path) -> None:
    expect_failure(tmp_path / "no-such-model", out_dir, SourceError, "no-such-model")
    with pytest.raises(SourceError):
        inspect_checkpoint(tmp_path / "no-such-model")


def test_folder_without_config(tiny_llama_bpe: Path, copy_checkpoint: CopyFn, out_dir) -> None:
    folder = copy_checkpoint(tiny_llama_bpe)
    (folder / "config.json").unlink()
    expect_failure(folder, out_dir, SourceError, "config.json")


def test_unparseable_config(tiny_llama_bpe: Path, copy_checkpoint: CopyFn, out_dir) -> None:
    folder = copy_checkpoint(tiny_llama_bpe)
    (folder / "config.json").write_text("{not json")
    expect_failure(folder, out_dir, SourceError, "config.json")


def test_unsupported_architecture(tiny_llama_bpe: Path, copy_checkpoint: CopyFn, out_dir) -> None:
    folder = copy_checkpoint(tiny_llama_bpe)
    edit_config(folder, architectures=["MambaForCausalLM"])
    expect_failure(folder, out_dir, UnsupportedModelError, "MambaForCausalLM", "LlamaForCausalLM")
    with pytest.raises(UnsupportedModelError):
        inspect_checkpoint(folder)


def test_missing_config_field(tiny_llama_bpe: Path, copy_checkpoint: CopyFn, out_dir) -> None:
    folder = copy_checkpoint(tiny_llama_bpe)
    config = json.loads((folder / "config.json").read_text())
    del config["num_hidden_layers"]
    (folder / "config.json").write_text(json.dumps(config))
    expect_failure(folder, out_dir, ConversionError, "num_hidden_layers")


def test_unsupported_rope_type(tiny_llama_bpe: Path, copy_checkpoint: CopyFn, out_dir) -> None:
    folder = copy_checkpoint(tiny_llama_bpe)
    edit_config(folder, rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0})
    expect_failure(folder, out_dir, UnsupportedModelError, "longrope")


# ---- corrupt or inconsistent weights -----------------------------------------------------


def test_corrupt_safetensors_header(tiny_llama_bpe: Path, copy_checkpoint: CopyFn, out_dir) -> None:
    folder = copy_checkpoint(tiny_llama_bpe)
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:16] = b"#garbage"  # header length intact, JSON broken
    path.write_bytes(bytes(data))
    expect_failure(
        folder, out_dir, ConversionError, "corrupt safetensors header", "model.safetensors"
    )
    with pytest.raises(ConversionError):
        inspect_checkpoint(folder)


def test_absurd_header_length(tiny_llama_bpe: Path, copy_checkpoint: CopyFn, out_dir) -> None:
    folder = copy_checkpoint(tiny_llama_bpe)
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[0:8] = (2**40).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    expect_failure(folder, out_dir, ConversionError, "header length")


def test_truncated_safetensors(tiny_llama_bpe: Path, copy_checkpoint: CopyFn, out_dir) -> None:
    folder = copy_checkpoint(tiny_llama_bpe)
    path = folder / "model.safetensors"
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8 : 8 + header_len])
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    by_offset = sorted(entries, key=lambda k: entries[k]["data_offsets"][0])
    # cut the file in the middle of the third-to-last tensor: three tensors are affected
    begin, end = entries[by_offset[-3]]["data_offsets"]
    with open(path, "r+b") as f:
        f.truncate(8 + header_len + (begin + end) // 2)
    err = expect_failure(folder, out_dir, ConversionError, "truncated", by_offset[-3], "2 more")
    with pytest.raises(ConversionError, match="truncated"):
        inspect_checkpoint(folder)
    assert "model.safetensors" in str(err)


def test_missing_tensor(tiny_llama_bpe: Path, copy_checkpoint: CopyFn, out_dir) -> None:
    folder = copy_checkpoint(tiny_llama_bpe)
    tensors = load_tensors(folder)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_tensors(folder, tensors)
    expect_failure(
        folder, out_dir, ConversionError, "missing tensor", "model.layers.1.mlp.up_proj.weight"
    )


def test_missing_lm_head_when_untied(
    tiny_llama_spm: Path, copy_checkpoint: CopyFn, out_dir
) -> None:
    folder = copy_checkpoint(tiny_llama_spm)
    tensors = load_tensors(folder)
    del tensors["lm_head.weight"]
    save_tensors(folder, tensors)
    expect_failure(folder, out_dir, ConversionError, "lm_head.weight")


def test_extra_unexpected_tensor(tiny_llama_bpe: Path, copy_checkpoint: CopyFn, out_dir) -> None:
    folder = copy_checkpoint(tiny_llama_bpe)
    tensors = load_tensors(folder)
    tensors["model.layers.0.self_attn.q_norm.weight"] = np.ones(16, dtype=np.float32)
    save_tensors(folder, tensors)
    expect_failure(
        folder,
        out_dir,
        ConversionError,
        "unexpected tensor",
        "model.layers.0.self_attn.q_norm.weight",
    )


def test_ignored_buffers_are_fine(tiny_llama_bpe: Path, copy_checkpoint: CopyFn, out_dir) -> None:
    """Old checkpoints carry rotary_emb.inv_freq buffers; they are skipped, not errors."""
    folder = copy_checkpoint(tiny_llama_bpe)
    tensors = load_tensors(folder)
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(8, dtype=np.float32)
    save_tensors(folder, tensors)
    convert_checkpoint(folder, out_dir / "model.gguf")
    assert [p.name for p in out_dir.iterdir()] == ["model.gguf"]


def test_wrong_shape(tiny_llama_bpe: Path, copy_checkpoint: CopyFn, out_dir) -> None:
    folder = copy_checkpoint(tiny_llama_bpe)
    tensors = load_tensors(folder)
    tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((64, 64), dtype=np.float32)
    save_tensors(folder, tensors)
    expect_failure(
        folder,
        out_dir,
        ConversionError,
        "model.layers.0.self_attn.k_proj.weight",
        "[64, 64]",
        "[32, 64]",
    )


def test_unreadable_dtype(tiny_llama_bpe: Path, copy_checkpoint: CopyFn, out_dir) -> None:
    folder = copy_checkpoint(tiny_llama_bpe)
    tensors = load_tensors(folder)
    name = "model.layers.1.self_attn.v_proj.weight"
    tensors[name] = np.zeros(tensors[name].shape, dtype=np.int8)
    save_tensors(folder, tensors)
    expect_failure(folder, out_dir, ConversionError, name, "I8")


def test_unknown_dtype_string(tiny_llama_bpe: Path, copy_checkpoint: CopyFn, out_dir) -> None:
    folder = copy_checkpoint(tiny_llama_bpe)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    header = data[8 : 8 + header_len].decode()
    assert header.count('"dtype":"F32"') > 1
    header = header.replace('"dtype":"F32"', '"dtype":"X32"', 1)  # same length
    path.write_bytes(data[:8] + header.encode() + data[8 + header_len :])
    expect_failure(folder, out_dir, ConversionError, "X32")


def test_missing_shard(tiny_llama_bpe_sharded: Path, copy_checkpoint: CopyFn, out_dir) -> None:
    folder = copy_checkpoint(tiny_llama_bpe_sharded)
    shard = sorted(folder.glob("model-*.safetensors"))[1]
    shard.unlink()
    expect_failure(folder, out_dir, ConversionError, shard.name)


def test_no_weights(tiny_llama_bpe: Path, copy_checkpoint: CopyFn, out_dir) -> None:
    folder = copy_checkpoint(tiny_llama_bpe)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    expect_failure(folder, out_dir, UnsupportedModelError, "safetensors")


# ---- tokenizer problems ------------------------------------------------------------------


def test_no_tokenizer(tiny_llama_spm: Path, copy_checkpoint: CopyFn, out_dir) -> None:
    folder = copy_checkpoint(tiny_llama_spm)
    (folder / "tokenizer.model").unlink()
    expect_failure(folder, out_dir, SourceError, "tokenizer")


def test_unknown_pre_tokenizer(tiny_llama_bpe: Path, copy_checkpoint: CopyFn, out_dir) -> None:
    folder = copy_checkpoint(tiny_llama_bpe)
    path = folder / "tokenizer.json"
    tokenizer = json.loads(path.read_text())
    tokenizer["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {
                "type": "Split",
                "pattern": {"Regex": r"\p{L}+|\d{1,2}"},
                "behavior": "Isolated",
                "invert": False,
            },
            {
                "type": "ByteLevel",
                "add_prefix_space": False,
                "trim_offsets": True,
                "use_regex": False,
            },
        ],
    }
    path.write_text(json.dumps(tokenizer))
    expect_failure(folder, out_dir, UnsupportedModelError, "pre-tokenizer", r"\d{1,2}")
    with pytest.raises(UnsupportedModelError):
        inspect_checkpoint(folder)


def test_tokenizer_larger_than_model(
    tiny_llama_bpe: Path, copy_checkpoint: CopyFn, out_dir
) -> None:
    folder = copy_checkpoint(tiny_llama_bpe)
    tensors = load_tensors(folder)
    tensors["model.embed_tokens.weight"] = tensors["model.embed_tokens.weight"][:500]
    save_tensors(folder, tensors)
    edit_config(folder, vocab_size=500)
    expect_failure(folder, out_dir, ConversionError, "vocab_size", "602")


def test_corrupt_sentencepiece_model(
    tiny_llama_spm: Path, copy_checkpoint: CopyFn, out_dir
) -> None:
    folder = copy_checkpoint(tiny_llama_spm)
    (folder / "tokenizer.model").write_bytes(b"\x00garbage" * 10)
    expect_failure(folder, out_dir, ConversionError, "tokenizer.model")


# ---- output problems ---------------------------------------------------------------------


def test_output_folder_missing(tiny_llama_bpe: Path, tmp_path: Path) -> None:
    out = tmp_path / "nope" / "model.gguf"
    with pytest.raises(OutputError, match="nope"):
        convert_checkpoint(tiny_llama_bpe, out)
    assert not (tmp_path / "nope").exists()


def test_output_is_a_folder(tiny_llama_bpe: Path, out_dir: Path) -> None:
    (out_dir / "model.gguf").mkdir()
    with pytest.raises(OutputError, match="model.gguf"):
        convert_checkpoint(tiny_llama_bpe, out_dir / "model.gguf")
    assert [p.name for p in out_dir.iterdir()] == ["model.gguf"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_unwritable_output_folder(tiny_llama_bpe: Path, out_dir: Path) -> None:
    out_dir.chmod(0o555)
    try:
        err = expect_failure(tiny_llama_bpe, out_dir, OutputError, str(out_dir))
        assert "ermission" in str(err)
    finally:
        out_dir.chmod(0o755)


def test_unwritable_output_simulated(
    tiny_llama_bpe: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same as above but also when running as root: creating the temp file is refused."""
    import packer.runtime.atomic_write as atomic_write

    def refuse(path: object, *args: object, **kwargs: object) -> int:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(atomic_write.os, "open", refuse)
    err = expect_failure(tiny_llama_bpe, out_dir, OutputError, str(out_dir), "Permission denied")
    assert isinstance(err.__cause__, PermissionError)


def test_disk_full_leaves_nothing(
    tiny_llama_bpe: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import packer.convert.api as api

    real_write = api.write_tensor
    calls = {"n": 0}

    def write_then_fail(*a: object, **k: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(api, "write_tensor", write_then_fail)
    expect_failure(tiny_llama_bpe, out_dir, OutputError, "disk full", "model.gguf")


def test_failure_keeps_previous_output(
    tiny_llama_bpe: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import packer.convert.api as api

    previous = out_dir / "model.gguf"
    previous.write_bytes(b"previous model")

    def fail(*a: object, **k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(api, "write_tensor", fail)
    with pytest.raises(OutputError):
        convert_checkpoint(tiny_llama_bpe, previous)
    assert [p.name for p in out_dir.iterdir()] == ["model.gguf"]
    assert previous.read_bytes() == b"previous model"


def test_keyboard_interrupt_leaves_nothing(tiny_llama_bpe: Path, out_dir: Path) -> None:
    def interrupt(done: int, total: int) -> None:
        if done > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(tiny_llama_bpe, out_dir / "model.gguf", progress=interrupt)
    assert list(out_dir.iterdir()) == []


def test_unknown_outtype(tiny_llama_bpe: Path, out_dir: Path) -> None:
    with pytest.raises(PackerError, match="q4"):
        convert_checkpoint(tiny_llama_bpe, out_dir / "model.gguf", outtype="q4")
    assert list(out_dir.iterdir()) == []
