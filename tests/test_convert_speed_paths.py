"""The converter's fast paths give the same bytes as the plain ones.

Conversion writes the GGUF header itself (``packer.convert.gguf_file``) and copies tensors
that need no change straight from the safetensors file. The reference here is the plain
path: gguf's own ``GGUFWriter`` writing every tensor through numpy (``PlannedTensor.load``).
Both must give byte-identical files, for every kind of tensor rewrite (Q/K permutes,
Gemma's norm + 1, GPT-2's transposes) and every output type.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from families import make_family_checkpoints  # noqa: E402

from packer.convert import api, convert_checkpoint  # noqa: E402
from packer.convert.base import ModelConverter, converter_for  # noqa: E402
from packer.convert.gguf_file import DataWriter, pack_value  # noqa: E402
from packer.convert.vocab import clear_json_cache, read_json  # noqa: E402
from packer.errors import ConversionError  # noqa: E402

T = gguf.GGUFValueType


def reference_gguf(src: Path, out: Path, outtype: str) -> None:
    """The plain path: GGUFWriter writes header and every tensor through numpy."""
    converter, info = api._open(src)
    vocab = converter.load_vocab()
    planned = converter.plan(outtype)
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[converter.gguf_arch])
    converter.add_metadata(writer, info.model_name, planned, vocab)
    for t in planned:
        writer.add_tensor_info(
            t.name,
            t.shape,
            api.numpy_dtype(t.qtype),
            t.nbytes,
            raw_dtype=t.qtype if t.qtype == gguf.GGMLQuantizationType.BF16 else None,
        )
    writer.write_header_to_file(out)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in planned:
        writer.write_tensor_data(t.load())
    writer.close()


@pytest.fixture(scope="module")
def families(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_family_checkpoints(
        tmp_path_factory.mktemp("speed-families"), names=["gemma2", "gpt2", "qwen2"]
    )


@pytest.fixture(scope="module")
def tiny_llama_f16(tiny_llama_bpe: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_llama_bpe with its 2-D weights stored as F16 (1-D ones stay F32)."""
    from safetensors.numpy import load_file, save_file

    folder = tmp_path_factory.mktemp("f16") / "tiny-llama-f16"
    shutil.copytree(tiny_llama_bpe, folder)
    tensors = load_file(str(folder / "model.safetensors"))
    tensors = {n: t.astype(np.float16) if t.ndim == 2 else t for n, t in tensors.items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def check_same(src: Path, tmp_path: Path, outtype: str) -> int:
    """Convert both ways; returns how many tensors the fast path copied as they are."""
    fast, slow = tmp_path / f"fast-{outtype}.gguf", tmp_path / f"slow-{outtype}.gguf"
    convert_checkpoint(src, fast, outtype=outtype)
    reference_gguf(src, slow, outtype)
    assert fast.read_bytes() == slow.read_bytes()
    converter, _ = api._open(src)
    return sum(t.source is not None for t in converter.plan(outtype))


@pytest.mark.parametrize("outtype", ["auto", "f32", "f16", "bf16"])
def test_llama_bf16_same_bytes(tiny_llama_spm_bf16: Path, tmp_path: Path, outtype: str) -> None:
    copied = check_same(tiny_llama_spm_bf16, tmp_path, outtype)
    # BF16 weights are copied as they are only when the output keeps BF16
    assert (copied > 0) == (outtype in ("auto", "bf16"))


@pytest.mark.parametrize("outtype", ["auto", "f16"])
def test_llama_f16_same_bytes(tiny_llama_f16: Path, tmp_path: Path, outtype: str) -> None:
    assert check_same(tiny_llama_f16, tmp_path, outtype) > 0


def test_llama_sharded_same_bytes(tiny_llama_bpe_sharded: Path, tmp_path: Path) -> None:
    # F32, shards, untied lm_head, a generated rope_freqs tensor, padded vocab
    assert check_same(tiny_llama_bpe_sharded, tmp_path, "auto") > 0


@pytest.mark.parametrize("name", ["gemma2", "gpt2", "qwen2"])
def test_families_same_bytes(families: dict[str, Path], tmp_path: Path, name: str) -> None:
    assert check_same(families[name], tmp_path, "auto") > 0
    check_same(families[name], tmp_path, "f16")


@pytest.mark.parametrize("fixture", ["tiny_llama_bpe", "tiny_llama_spm", "gemma2", "gpt2", "qwen2"])
def test_keeps_data_agrees_with_transform(
    fixture: str, families: dict[str, Path], request: pytest.FixtureRequest
) -> None:
    """A tensor the converter says it keeps really comes out of transform() unchanged;
    the others really change (so nothing is copied that should have been rewritten)."""
    src = families[fixture] if fixture in families else request.getfixturevalue(fixture)
    converter, _ = api._open(src)
    kept = changed = 0
    for info in converter.weight_tensors():
        data = converter.checkpoint.read(info.name)
        out, dtype = converter.transform(info.name, data, info.dtype)
        same = dtype == info.dtype and out.shape == data.shape and np.array_equal(out, data)
        assert converter.keeps_data(info.name) == same, info.name
        kept += same
        changed += not same
    assert kept > 0
    assert changed > 0 or fixture == "qwen2"


def test_overriding_transform_alone_disables_copies(tiny_llama_bpe: Path) -> None:
    """A converter that rewrites tensors but does not say which is never copied as is."""

    class Rewriting(converter_for("LlamaForCausalLM")):  # type: ignore[misc, valid-type]
        def transform(self, hf_name: str, data: np.ndarray, dtype: str) -> tuple:
            return data, dtype

    converter = Rewriting(tiny_llama_bpe, read_json(tiny_llama_bpe / "config.json"))
    assert all(t.source is None for t in converter.plan("auto"))
    assert ModelConverter.keeps_data(converter, "model.norm.weight") is False


@pytest.mark.parametrize(
    ("value", "vtype", "sub_type"),
    [
        (7, T.UINT32, None),
        (-3, T.INT32, None),
        (1.5, T.FLOAT32, None),
        (2.25, T.FLOAT64, None),
        (True, T.BOOL, None),
        (2**40, T.UINT64, None),
        ("héllo ✓", T.STRING, None),
        (["a", "Ġb", "", "日本", "\x00"], T.ARRAY, None),
        ([b"raw", bytearray(b"\xff")], T.ARRAY, None),
        ([1, 2, -3], T.ARRAY, None),
        ([1, 2, 3], T.ARRAY, T.UINT8),
        ([0.5, -1000.0, 3.0], T.ARRAY, None),
        ([True, False], T.ARRAY, None),
        ([gguf.TokenType.NORMAL, 3, gguf.TokenType.CONTROL], T.ARRAY, None),
        ([[1, 2], [3]], T.ARRAY, None),
        (b"\x01\x02", T.ARRAY, None),
    ],
)
def test_pack_value_matches_gguf(value: object, vtype: object, sub_type: object) -> None:
    writer = gguf.GGUFWriter(path=None, arch="llama")
    expected = writer._pack_val(value, vtype, add_vtype=False, sub_type=sub_type)
    assert pack_value(value, vtype, sub_type) == expected


@pytest.mark.parametrize("value", [[], ["a", 1], [1, 2.0]])
def test_pack_value_refuses_bad_arrays(value: list[object]) -> None:
    with pytest.raises(ValueError):
        pack_value(value, T.ARRAY)


def write_copy(tmp_path: Path, src: Path, offset: int, nbytes: int, copy_range: bool) -> bytes:
    out = tmp_path / "out.bin"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        writer = DataWriter(fd, 32)
        writer.copy_range = copy_range
        writer.write_padded(b"head")
        writer.copy_file(src, offset, nbytes, "t")
    finally:
        os.close(fd)
    return out.read_bytes()


@pytest.mark.parametrize("copy_range", [True, False])
def test_copy_file_both_ways(tmp_path: Path, copy_range: bool) -> None:
    src = tmp_path / "src.bin"
    payload = np.random.default_rng(0).integers(0, 256, 100_003, dtype=np.uint8).tobytes()
    src.write_bytes(payload)
    got = write_copy(tmp_path, src, 17, 50_001, copy_range)
    head = b"head" + bytes(28)
    assert got == head + payload[17 : 17 + 50_001] + bytes(-50_001 % 32)


@pytest.mark.parametrize("copy_range", [True, False])
def test_copy_file_truncated_source(tmp_path: Path, copy_range: bool) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(100))
    with pytest.raises(ConversionError, match="truncated"):
        write_copy(tmp_path, src, 50, 100, copy_range)


def test_copy_falls_back_when_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system without copy_file_range (EXDEV, ENOSYS, ...) gets plain reads."""

    def refuse(*args: object) -> int:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 10)
    got = write_copy(tmp_path, src, 3, 1000, True)
    assert got[32 : 32 + 1000] == (bytes(range(256)) * 10)[3:1003]


def test_copy_disk_full_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "copy_file_range", full, raising=False)
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(1000))
    with pytest.raises(OSError, match="No space"):
        write_copy(tmp_path, src, 0, 1000, True)


def test_merges_with_spaces_match_gguf(tiny_llama_bpe: Path, tmp_path: Path) -> None:
    """The fast merges conversion agrees with gguf's SpecialVocab, spaces included."""
    folder = tmp_path / "spaced"
    shutil.copytree(tiny_llama_bpe, folder)
    path = folder / "tokenizer.json"
    tokenizer = json.loads(path.read_text(encoding="utf-8"))
    merges = tokenizer["model"]["merges"]
    pairs = [m.split(" ") if isinstance(m, str) else m for m in merges]
    pairs[0] = ["a b", "c"]  # the list form allows spaces inside a part
    tokenizer["model"]["merges"] = pairs
    path.write_text(json.dumps(tokenizer), encoding="utf-8")
    clear_json_cache()
    vocab = api._open(folder)[0].load_vocab()
    expected = gguf.SpecialVocab(folder, load_merges=True).merges
    assert vocab.special.merges == expected
    assert expected[0] == "a\u0120b c"


def test_read_json_sees_changes(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"a": 1}')
    assert read_json(path) == {"a": 1}
    path.write_text('{"a": 22}')
    assert read_json(path) == {"a": 22}
    path.write_text("{broken")
    with pytest.raises(ConversionError, match="not valid JSON"):
        read_json(path)


@pytest.mark.parametrize("fixture", ["tiny_llama_bpe", "tiny_llama_spm_bf16", "gemma2", "gpt2"])
def test_special_vocab_from_slim_tokenizer_json(
    fixture: str, families: dict[str, Path], request: pytest.FixtureRequest
) -> None:
    """SpecialVocab reads the same special tokens from the slimmed tokenizer.json."""
    from packer.convert.vocab import _special_vocab

    src = families[fixture] if fixture in families else request.getfixturevalue(fixture)
    fast = _special_vocab(src, load_merges=False, n_vocab=100_000)
    plain = gguf.SpecialVocab(src, load_merges=False, n_vocab=100_000)
    assert fast.special_token_ids == plain.special_token_ids
    assert fast.special_token_ids
    assert fast.add_special_token == plain.add_special_token
    assert fast.chat_template == plain.chat_template
    assert fast.merges == plain.merges == []


def test_special_vocab_without_symlinks(
    tiny_llama_bpe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from packer.convert import vocab

    def refuse(*args: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(vocab.os, "symlink", refuse)
    fast = vocab._special_vocab(tiny_llama_bpe, load_merges=False, n_vocab=100_000)
    plain = gguf.SpecialVocab(tiny_llama_bpe, load_merges=False, n_vocab=100_000)
    assert fast.special_token_ids == plain.special_token_ids
