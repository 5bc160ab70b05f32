"""``--imatrix FILE``: both llama.cpp formats read, passed to the quantizer, clear errors."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import test_cli
from conftest import assert_finite_logits

from packer.convert import convert_checkpoint
from packer.errors import QuantizeError, UsageError
from packer.imatrix import ImatrixError, check_model, load
from packer.quantize import quantize
from packer.quants import parse_quant

# the matmul weights llama-imatrix collects statistics for
_WEIGHTS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


@pytest.fixture(scope="module")
def f32_gguf(tiny_llama_bpe: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("imx") / "tiny.f32.gguf"
    convert_checkpoint(tiny_llama_bpe, out, outtype="f32")
    return out


@pytest.fixture(scope="module")
def wide_f32_gguf(tiny_llama_bpe: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 256-wide layer: rows fit the 2-bit blocks, so llama.cpp really needs the imatrix."""
    import json
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("wide")
    folder = root / "wide-llama"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(tiny_llama_bpe / name, folder / name)
    base = json.loads((tiny_llama_bpe / "config.json").read_text())
    config = LlamaConfig(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=base["vocab_size"],
        max_position_embeddings=128,
        tie_word_embeddings=True,
        bos_token_id=base["bos_token_id"],
        eos_token_id=base["eos_token_id"],
    )
    config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(7)
    LlamaForCausalLM(config).save_pretrained(folder)
    out = root / "wide.f32.gguf"
    convert_checkpoint(folder, out, outtype="f32")
    return out


def _vectors(model: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Random positive importances, ne[0] per weight tensor, as llama-imatrix would give."""
    import gguf

    rng = np.random.default_rng(seed)
    out = {}
    for t in gguf.GGUFReader(model).tensors:
        if any(f".{w}." in t.name for w in _WEIGHTS):
            out[t.name] = rng.uniform(0.1, 2.0, int(t.shape[0])).astype(np.float32)
    return out


def write_gguf_imatrix(path: Path, vectors: dict[str, np.ndarray], count: int = 40) -> Path:
    """Current llama.cpp format: <name>.in_sum2 (sums) and <name>.counts, F32, + metadata."""
    import gguf

    w = gguf.GGUFWriter(path, arch="llama")
    w.add_string("general.type", "imatrix")
    w.add_array("imatrix.datasets", ["calibration.txt"])
    w.add_uint32("imatrix.chunk_count", 2)
    w.add_uint32("imatrix.chunk_size", 20)
    for name, vec in sorted(vectors.items()):
        w.add_tensor(f"{name}.in_sum2", (vec * count).reshape(1, -1).astype(np.float32))
        w.add_tensor(f"{name}.counts", np.full((1, 1), count, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_dat_imatrix(path: Path, vectors: dict[str, np.ndarray], ncall: int = 3) -> Path:
    """Legacy format: values stored as mean * ncall, then chunk count and dataset name."""
    parts = [struct.pack("<i", len(vectors))]
    for name, vec in sorted(vectors.items()):
        raw = name.encode()
        parts += [struct.pack("<i", len(raw)), raw, struct.pack("<ii", ncall, vec.size)]
        parts.append((vec * ncall).astype("<f4").tobytes())
    ds = b"calibration.txt"
    parts += [struct.pack("<ii", ncall, len(ds)), ds]
    path.write_bytes(b"".join(parts))
    return path


@pytest.fixture(params=["gguf", "dat"])
def imatrix_file(request: pytest.FixtureRequest, f32_gguf: Path, tmp_path: Path) -> Path:
    vectors = _vectors(f32_gguf)
    folder = tmp_path / "imx"
    folder.mkdir()
    if request.param == "gguf":
        return write_gguf_imatrix(folder / "imatrix.gguf", vectors)
    return write_dat_imatrix(folder / "imatrix.dat", vectors)


@pytest.mark.parametrize("fmt", ["gguf", "dat"])
def test_both_formats_read_back_the_same_means(f32_gguf: Path, tmp_path: Path, fmt: str) -> None:
    vectors = _vectors(f32_gguf)
    if fmt == "gguf":
        f = write_gguf_imatrix(tmp_path / "m.gguf", vectors)
    else:
        f = write_dat_imatrix(tmp_path / "m.dat", vectors)
    got = load(f)
    assert set(got) == set(vectors)
    for name, vec in vectors.items():
        assert got[name].dtype == np.float32
        np.testing.assert_allclose(got[name], vec, rtol=1e-5)
    assert check_model(got, f32_gguf, f.name) == len(vectors)


def test_zero_counts_mean_ones(tmp_path: Path) -> None:
    import gguf

    w = gguf.GGUFWriter(tmp_path / "z.gguf", arch="llama")
    w.add_string("general.type", "imatrix")
    sums = np.arange(8, dtype=np.float32).reshape(2, 4)  # 2 experts x ne[0]=4
    w.add_tensor("blk.0.ffn_down_exps.weight.in_sum2", sums)
    w.add_tensor("blk.0.ffn_down_exps.weight.counts", np.array([[2.0], [0.0]], np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    got = load(tmp_path / "z.gguf")["blk.0.ffn_down_exps.weight"]
    np.testing.assert_allclose(got, [0, 0.5, 1, 1.5, 1, 1, 1, 1])


@pytest.mark.parametrize("name", ["IQ2_XS", "Q2_K_S"])
def test_imatrix_types_quantize_and_load(
    f32_gguf: Path, imatrix_file: Path, tmp_path: Path, name: str
) -> None:
    import gguf

    q = parse_quant(name)
    out_dir = tmp_path / "out"
    out = quantize(f32_gguf, out_dir / f"tiny.{name}.gguf", q, threads=2, imatrix=imatrix_file)
    assert sorted(p.name for p in out_dir.iterdir()) == [out.name], "temp files left"
    reader = gguf.GGUFReader(out)
    assert int(reader.fields["general.file_type"].contents()) == q.ftype
    assert reader.fields["quantize.imatrix.file"].contents() == imatrix_file.name
    assert int(reader.fields["quantize.imatrix.entries_count"].contents()) == len(
        _vectors(f32_gguf)
    )
    assert_finite_logits(out)


def test_llama_cpp_gets_every_entry(
    f32_gguf: Path, imatrix_file: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    quantize(
        f32_gguf, tmp_path / "v.gguf", parse_quant("IQ2_XS"), imatrix=imatrix_file, verbose=True
    )
    n = len(_vectors(f32_gguf))
    assert f"have importance matrix data with {n} entries" in capfd.readouterr().err


@pytest.mark.parametrize("fmt", ["gguf", "dat"])
def test_wide_model_gets_real_2bit_tensors(wide_f32_gguf: Path, tmp_path: Path, fmt: str) -> None:
    import gguf

    vectors = _vectors(wide_f32_gguf, seed=3)
    writer = write_gguf_imatrix if fmt == "gguf" else write_dat_imatrix
    imx = writer(tmp_path / f"imatrix.{fmt}", vectors)
    out = quantize(wide_f32_gguf, tmp_path / "w.gguf", parse_quant("IQ2_XS"), imatrix=imx)
    types = {t.tensor_type.name for t in gguf.GGUFReader(out).tensors}
    assert "IQ2_XS" in types, types
    assert_finite_logits(out)


def test_imatrix_missing_a_needed_tensor(wide_f32_gguf: Path, tmp_path: Path) -> None:
    vectors = _vectors(wide_f32_gguf)
    del vectors["blk.0.ffn_up.weight"]
    imx = write_gguf_imatrix(tmp_path / "partial.gguf", vectors)
    out_dir = tmp_path / "out"
    with pytest.raises(QuantizeError, match="blk.0.ffn_up.weight") as err:  # llama.cpp says it
        quantize(wide_f32_gguf, out_dir / "w.gguf", parse_quant("IQ2_XS"), imatrix=imx)
    assert "\n" not in str(err.value)
    assert list(out_dir.iterdir()) == []


def test_imatrix_accepted_for_any_type(f32_gguf: Path, imatrix_file: Path, tmp_path: Path) -> None:
    out = quantize(f32_gguf, tmp_path / "t.gguf", parse_quant("IQ4_NL"), imatrix=imatrix_file)
    assert out.exists()


@pytest.mark.parametrize("name", ["IQ2_XS", "IQ1_S", "Q2_K_S"])
def test_refused_without_imatrix(f32_gguf: Path, tmp_path: Path, name: str) -> None:
    with pytest.raises(UsageError, match="needs an importance matrix") as err:
        quantize(f32_gguf, tmp_path / "x.gguf", parse_quant(name))
    assert "--imatrix FILE" in str(err.value) and "llama-imatrix" in str(err.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "content",
    [b"", b"\x07\x00\x00\x00garbage", b"GGUF\x03\x00\x00\x00" + b"\xff" * 40],
    ids=["empty", "garbage", "bad-gguf"],
)
def test_corrupt_imatrix_is_one_clear_line(f32_gguf: Path, tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.imatrix"
    bad.write_bytes(content)
    out_dir = tmp_path / "out"
    with pytest.raises(ImatrixError, match="bad.imatrix") as err:
        quantize(f32_gguf, out_dir / "x.gguf", parse_quant("IQ2_XS"), imatrix=bad)
    assert "\n" not in str(err.value)
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_truncated_dat(f32_gguf: Path, tmp_path: Path) -> None:
    f = write_dat_imatrix(tmp_path / "t.dat", _vectors(f32_gguf))
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(ImatrixError, match="not a valid importance matrix"):
        load(f)


def test_missing_imatrix(f32_gguf: Path, tmp_path: Path) -> None:
    with pytest.raises(ImatrixError, match="not found.*llama-imatrix"):
        quantize(f32_gguf, tmp_path / "x.gguf", parse_quant("IQ2_XS"), imatrix=tmp_path / "no")
    assert list(tmp_path.iterdir()) == []


def test_model_gguf_is_not_an_imatrix(f32_gguf: Path, tmp_path: Path) -> None:
    with pytest.raises(ImatrixError, match="without importance matrix tensors|not an importance"):
        quantize(f32_gguf, tmp_path / "x.gguf", parse_quant("IQ2_XS"), imatrix=f32_gguf)
    assert list(tmp_path.iterdir()) == []


def test_imatrix_of_another_model(f32_gguf: Path, tmp_path: Path) -> None:
    other = {f"blk.{i}.attn_q.weight": np.ones(4096, np.float32) for i in range(30, 32)}
    f = write_gguf_imatrix(tmp_path / "other.gguf", other)
    out_dir = tmp_path / "out"
    with pytest.raises(ImatrixError, match="made for another model: none of"):
        quantize(f32_gguf, out_dir / "x.gguf", parse_quant("IQ2_XS"), imatrix=f)
    # same names, other widths (e.g. a larger model of the same family)
    wide = {k: np.ones(v.size * 2, np.float32) for k, v in _vectors(f32_gguf).items()}
    g = write_dat_imatrix(tmp_path / "wide.dat", wide)
    with pytest.raises(ImatrixError, match=r"made for another model: \d+ values for blk\.0\."):
        quantize(f32_gguf, out_dir / "x.gguf", parse_quant("IQ2_XS"), imatrix=g)
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


# --- the CLI: packer build SOURCE --quant IQ2_XS --imatrix FILE ---------------------------------

listing, run_cli = test_cli.listing, test_cli.run_cli


@pytest.mark.usefixtures("fake_stub")
def test_cli_build_with_imatrix(tiny_llama_bpe: Path, f32_gguf: Path, tmp_path: Path) -> None:
    from packer.runtime.payload import read_bundle

    imx = write_gguf_imatrix(tmp_path.parent / f"{tmp_path.name}-imatrix.gguf", _vectors(f32_gguf))
    code, out, err = run_cli(
        "build", str(tiny_llama_bpe), "--quant", "iq2_xs", "--imatrix", str(imx), cwd=tmp_path
    )
    assert code == 0, err
    produced = Path(out.strip())
    assert listing(tmp_path) == [produced.name] and produced.name.endswith(".IQ2_XS.run")
    b = read_bundle(produced)
    assert b.manifest.quant == "IQ2_XS"
    assert b.manifest.imatrix == imx.name


@pytest.mark.usefixtures("fake_stub")
def test_cli_gguf_source_with_imatrix(f32_gguf: Path, tmp_path: Path) -> None:
    from packer.runtime.payload import read_bundle

    imx = write_dat_imatrix(tmp_path.parent / f"{tmp_path.name}-imatrix.dat", _vectors(f32_gguf))
    code, out, err = run_cli(
        "build", str(f32_gguf), "-Q", "Q2_K_S", "--imatrix", str(imx), "-o", "m.run", cwd=tmp_path
    )
    assert code == 0, err
    assert listing(tmp_path) == ["m.run"]
    assert read_bundle(tmp_path / "m.run").manifest.imatrix == imx.name


def test_cli_refuses_without_imatrix(tiny_llama_bpe: Path, tmp_path: Path) -> None:
    code, _, err = run_cli("build", str(tiny_llama_bpe), "--quant", "IQ2_XS", cwd=tmp_path)
    assert code == 2
    assert "IQ2_XS needs an importance matrix" in err and "--imatrix FILE" in err
    assert "llama-imatrix" in err and err.count("\n") == 1, err
    assert listing(tmp_path) == []


def test_cli_missing_imatrix_fails_before_work(tiny_llama_bpe: Path, tmp_path: Path) -> None:
    code, _, err = run_cli(
        "build", str(tiny_llama_bpe), "-Q", "IQ2_XS", "--imatrix", "nope.dat", cwd=tmp_path
    )
    assert code == 2 and "importance matrix" in err and "not found" in err
    assert err.count("\n") == 1, err
    assert listing(tmp_path) == []


def test_cli_wrong_model_imatrix_on_gguf_source(f32_gguf: Path, tmp_path: Path) -> None:
    other = {f"blk.{i}.ffn_up.weight": np.ones(2048, np.float32) for i in range(2)}
    imx = write_gguf_imatrix(tmp_path.parent / f"{tmp_path.name}-other.gguf", other)
    code, _, err = run_cli(
        "build", str(f32_gguf), "-Q", "IQ2_XS", "--imatrix", str(imx), cwd=tmp_path
    )
    assert code == 2 and "made for another model" in err and err.count("\n") == 1, err
    assert listing(tmp_path) == []


def test_cli_imatrix_needs_a_quant_type(f32_gguf: Path, tmp_path: Path) -> None:
    imx = write_dat_imatrix(tmp_path.parent / f"{tmp_path.name}-i.dat", _vectors(f32_gguf))
    code, _, err = run_cli("build", str(f32_gguf), "--imatrix", str(imx), cwd=tmp_path)
    assert code == 2 and "--imatrix only applies when quantizing" in err
    assert listing(tmp_path) == []
