"""Every quantization type packer offers goes through llama.cpp's quantizer and loads back."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import assert_finite_logits

from packer.convert import convert_checkpoint
from packer.errors import QuantizeError, UsageError
from packer.quantize import quantize
from packer.quants import QUANT_TYPES, parse_quant


@pytest.fixture(scope="module")
def f32_gguf(tiny_llama_bpe: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("q") / "tiny.f32.gguf"
    convert_checkpoint(tiny_llama_bpe, out, outtype="f32")
    return out


def test_quant_names_are_case_insensitive() -> None:
    assert parse_quant("q5_k_m").name == "Q5_K_M"
    assert parse_quant(" Q8_0 ").name == "Q8_0"
    with pytest.raises(UsageError, match="choose one of"):
        parse_quant("Q5_K_X")


@pytest.mark.parametrize(
    "name", [q.name for q in QUANT_TYPES.values() if not q.needs_imatrix and not q.is_float]
)
def test_every_type_quantizes_and_loads(f32_gguf: Path, tmp_path: Path, name: str) -> None:
    import gguf

    q = parse_quant(name)
    out = quantize(f32_gguf, tmp_path / f"tiny.{name}.gguf", q, threads=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name], "temp files left"
    reader = gguf.GGUFReader(out)
    assert int(reader.fields["general.file_type"].contents()) == q.ftype
    assert_finite_logits(out)


@pytest.mark.parametrize("name", [q.name for q in QUANT_TYPES.values() if q.needs_imatrix])
def test_imatrix_types_refused_with_reason(f32_gguf: Path, tmp_path: Path, name: str) -> None:
    with pytest.raises(UsageError, match="importance matrix"):
        quantize(f32_gguf, tmp_path / "x.gguf", parse_quant(name))
    assert list(tmp_path.iterdir()) == []


def test_llama_cpp_failure_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(QuantizeError, match="could not quantize bad.gguf to Q8_0") as err:
        quantize(bad, tmp_path / "out.gguf", parse_quant("Q8_0"))
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf"]
