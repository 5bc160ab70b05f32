"""Non-Llama families: each converted checkpoint checked against transformers and llama.cpp.

For every family in tests/families.py: F32 GGUF logits equal transformers' (eager, float32)
at every position of several prompts, llama.cpp tokenizes a mixed corpus exactly like the
checkpoint's tokenizer, and the family's GGUF metadata reads back.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from families import FAMILIES, make_family_checkpoints  # noqa: E402
from test_convert import (  # noqa: E402
    GGML_TYPE_F32,
    LOGITS_TOLERANCE,
    MIXED_TEXTS,
    PROMPTS,
    hf_token_ids,
    kv,
    llama_logits,
    load_llama,
)

from packer.convert import (  # noqa: E402
    SUPPORTED_ARCHITECTURES,
    convert_checkpoint,
    inspect_checkpoint,
)
from packer.errors import ConversionError, UnsupportedModelError  # noqa: E402

NAMES = list(FAMILIES)
GELU_TOLERANCE = 1.5e-2
GGML_GELU_TOLERANCE = 5e-3

# Longer than the tiny sliding windows of the fixtures, so windowed layers really slide.
LONG_PROMPT = (
    "Quantization makes large language models small enough to run on a laptop. "
    "El niño comió una manzana en el año 2023. 日本語のテキストです。"
)


@pytest.fixture(scope="session")
def family_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_family_checkpoints(tmp_path_factory.mktemp("families"))


@pytest.fixture(scope="session")
def family_gguf(
    family_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    root = tmp_path_factory.mktemp("families-gguf")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            out = root / f"{name}.gguf"
            convert_checkpoint(family_checkpoints[name], out, outtype="f32")
            cache[name] = out
        return cache[name]

    return get


class GgmlGelu(torch.nn.Module):
    """GELU (tanh form) the way ggml's CPU backend computes it: the input rounded to F16,
    looked up in a table of F16 results, and exact (0 or x) beyond |x| >= 10."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.half().float()
        table = torch.nn.functional.gelu(h, approximate="tanh").half().float()
        return torch.where(x <= -10.0, torch.zeros_like(x), torch.where(x >= 10.0, x, table))


def use_ggml_gelu(model: torch.nn.Module) -> int:
    """Swap every tanh-GELU activation of ``model`` for :class:`GgmlGelu`; returns how many."""
    from transformers.activations import GELUTanh, NewGELUActivation, PytorchGELUTanh

    swapped = 0
    for module in list(model.modules()):
        for attr in ("act_fn", "act"):
            if isinstance(
                getattr(module, attr, None), (GELUTanh, NewGELUActivation, PytorchGELUTanh)
            ):
                setattr(module, attr, GgmlGelu())
                swapped += 1
    return swapped


def hf_logits(folder: Path, prompts: list[list[int]], ggml_gelu: bool = False) -> list[np.ndarray]:
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    if ggml_gelu:
        assert use_ggml_gelu(model) > 0
    with torch.no_grad():
        return [model(torch.tensor([ids])).logits[0].float().numpy() for ids in prompts]


def add_bos(folder: Path) -> bool:
    return (folder / "tokenizer.model").is_file()


def test_registered() -> None:
    for family in FAMILIES.values():
        assert family.architecture in SUPPORTED_ARCHITECTURES


@pytest.mark.parametrize("name", NAMES)
def test_f32_logits_match_transformers(
    name: str, family_checkpoints: dict[str, Path], family_gguf: Callable[[str], Path]
) -> None:
    folder = family_checkpoints[name]
    prompts = [hf_token_ids(folder, p, add_bos(folder)) for p in [*PROMPTS, LONG_PROMPT]]
    got = llama_logits(family_gguf(name), prompts)
    gelu = FAMILIES[name].gelu
    # ggml's CPU GELU goes through an F16 table (input rounded to F16: ~1e-3 relative error
    # per activation), so GELU families get a wider bound against stock transformers
    # (measured up to ~8e-3 on these random weights) and a tighter one against
    # transformers using the same F16-table GELU. That one is not exact either: an input
    # within float noise of an F16 rounding boundary can land in the neighbouring table
    # entry; positions before such a flip match to ~1e-5, later ones that attend to it
    # drift (measured up to ~3e-3).
    checks = [(False, GELU_TOLERANCE if gelu else LOGITS_TOLERANCE)]
    if gelu:
        checks.append((True, GGML_GELU_TOLERANCE))
    for ggml_gelu, tolerance in checks:
        expected = hf_logits(folder, prompts, ggml_gelu=ggml_gelu)
        for ids, exp, act in zip(prompts, expected, got, strict=True):
            assert act.shape == exp.shape == (len(ids), exp.shape[1])
            diff = float(np.abs(exp - act).max())
            label = f"{name}{' (ggml gelu)' if ggml_gelu else ''}"
            print(f"{label}: {len(ids)} tokens, max |logits diff| = {diff:.2e}")
            assert diff < tolerance, f"{label}: max logits diff {diff}"


@pytest.mark.parametrize("name", NAMES)
def test_token_ids_match(
    name: str, family_checkpoints: dict[str, Path], family_gguf: Callable[[str], Path]
) -> None:
    folder = family_checkpoints[name]
    bos = add_bos(folder)
    llm = load_llama(family_gguf(name), vocab_only=True)
    for text in MIXED_TEXTS:
        expected = hf_token_ids(folder, text, add_bos=bos)
        assert llm.tokenize(text.encode(), add_bos=bos, special=False) == expected, text
    llm.close()


@pytest.mark.parametrize("name", NAMES)
def test_metadata(
    name: str, family_checkpoints: dict[str, Path], family_gguf: Callable[[str], Path]
) -> None:
    family = FAMILIES[name]
    cfg = family.config
    reader = gguf.GGUFReader(family_gguf(name))
    arch = family.gguf_arch
    assert kv(reader, "general.architecture") == arch
    heads = cfg.get("num_attention_heads", cfg.get("n_head"))
    assert kv(reader, f"{arch}.attention.head_count") == heads
    kv_heads = cfg.get("num_key_value_heads", heads)
    assert kv(reader, f"{arch}.attention.head_count_kv") == kv_heads
    ctx = cfg.get("max_position_embeddings", cfg.get("n_positions"))
    assert kv(reader, f"{arch}.context_length") == ctx
    assert kv(reader, f"{arch}.block_count") == cfg.get("num_hidden_layers", cfg.get("n_layer"))
    for key, value in family.gguf_keys.items():
        got = kv(reader, f"{arch}.{key}")
        if isinstance(value, float):
            assert got == pytest.approx(value), key
        else:
            assert got == value, key
    tensors = {t.name for t in reader.tensors}
    tied = cfg.get("tie_word_embeddings", False)
    assert ("output.weight" in tensors) != tied


def test_phi3_longrope_long_context(
    family_checkpoints: dict[str, Path], family_gguf: Callable[[str], Path]
) -> None:
    """Past the original context (256) both sides switch to the long factors: transformers
    for a longer sequence, llama.cpp for a larger context (n_ctx 512)."""
    folder = family_checkpoints["phi3_longrope"]
    ids = hf_token_ids(folder, " ".join([LONG_PROMPT] * 6), add_bos=True)[:300]
    assert len(ids) == 300
    expected = hf_logits(folder, [ids])[0]
    llm = load_llama(
        family_gguf("phi3_longrope"),
        n_ctx=512,
        n_batch=512,
        logits_all=True,
        type_k=GGML_TYPE_F32,
        type_v=GGML_TYPE_F32,
        flash_attn=False,
    )
    llm.eval(ids)
    got = np.array(llm.scores[: len(ids)], dtype=np.float32)
    llm.close()
    diff = float(np.abs(expected - got).max())
    print(f"phi3_longrope (long factors): {len(ids)} tokens, max |logits diff| = {diff:.2e}")
    assert diff < LOGITS_TOLERANCE


# ---- variants and refusals -------------------------------------------------------------


def copy_folder(src: Path, dst: Path, **config_changes: object) -> Path:
    shutil.copytree(src, dst)
    path = dst / "config.json"
    config = json.loads(path.read_text())
    for key, value in config_changes.items():
        if value is DELETE:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))
    return dst


DELETE = object()


def test_inspect_families(family_checkpoints: dict[str, Path]) -> None:
    for name, folder in family_checkpoints.items():
        info = inspect_checkpoint(folder)
        assert info.architecture == FAMILIES[name].architecture
        assert info.n_params > 0


def test_gemma3_legacy_rope_keys(
    family_checkpoints: dict[str, Path], family_gguf: Callable[[str], Path], tmp_path: Path
) -> None:
    """transformers < 5 configs: rope_theta + rope_local_base_freq instead of nested rope
    parameters, sliding_window_pattern instead of layer_types."""
    folder = copy_folder(
        family_checkpoints["gemma3"],
        tmp_path / "gemma3-legacy",
        rope_parameters=DELETE,
        layer_types=DELETE,
        sliding_window_pattern=3,
        rope_theta=1000000.0,
        rope_local_base_freq=10000.0,
        rope_scaling=None,
    )
    out = tmp_path / "legacy.gguf"
    convert_checkpoint(folder, out, outtype="f32")
    legacy, current = gguf.GGUFReader(out), gguf.GGUFReader(family_gguf("gemma3"))
    for key in ("rope.freq_base", "rope.freq_base_swa", "attention.sliding_window_pattern"):
        assert kv(legacy, f"gemma3.{key}") == kv(current, f"gemma3.{key}"), key
    # without a pattern, Gemma 3's default (5 local layers, then 1 global) applies
    folder = copy_folder(folder, tmp_path / "gemma3-default", sliding_window_pattern=DELETE)
    convert_checkpoint(folder, out, outtype="f32")
    pattern = kv(gguf.GGUFReader(out), "gemma3.attention.sliding_window_pattern")
    assert pattern == [True, True, True]


def test_gpt2_without_transformer_prefix(
    family_checkpoints: dict[str, Path], family_gguf: Callable[[str], Path], tmp_path: Path
) -> None:
    """The original OpenAI upload names tensors 'h.0...' and keeps attn.bias mask buffers."""
    from safetensors.numpy import load_file, save_file

    folder = copy_folder(family_checkpoints["gpt2"], tmp_path / "gpt2-old")
    weights = load_file(folder / "model.safetensors")
    renamed = {k.removeprefix("transformer."): v for k, v in weights.items()}
    renamed["h.0.attn.bias"] = np.tril(np.ones((1, 1, 8, 8), dtype=np.float32))
    save_file(renamed, folder / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "old.gguf"
    convert_checkpoint(folder, out, outtype="f32")
    old, new = gguf.GGUFReader(out), gguf.GGUFReader(family_gguf("gpt2"))
    new_tensors = {t.name: t for t in new.tensors}
    assert sorted(new_tensors) == sorted(t.name for t in old.tensors)
    for tensor in old.tensors:
        np.testing.assert_array_equal(tensor.data, new_tensors[tensor.name].data)


@pytest.mark.parametrize(
    ("name", "changes", "error", "needle"),
    [
        ("gemma2", {"final_logit_softcapping": None}, UnsupportedModelError, "softcapping"),
        ("gemma2", {"query_pre_attn_scalar": 7}, UnsupportedModelError, "query_pre_attn"),
        ("gemma2", {"tie_word_embeddings": False}, UnsupportedModelError, "untied"),
        ("gemma3", {"attn_logit_softcapping": 50.0}, UnsupportedModelError, "softcapping"),
        ("gemma3", {"layer_types": ["full_attention"]}, ConversionError, "layer_types"),
        ("gpt2", {"activation_function": "relu"}, UnsupportedModelError, "relu"),
        (
            "qwen2",
            {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1},
            UnsupportedModelError,
            "sliding",
        ),
        ("phi3", {"rope_parameters": {"rope_type": "longrope"}}, ConversionError, "long_factor"),
        ("phi3", {"rope_parameters": {"rope_type": "su"}}, UnsupportedModelError, "'su'"),
        ("qwen3", {"hidden_act": "gelu"}, UnsupportedModelError, "gelu"),
    ],
)
def test_refused_configs(
    name: str,
    changes: dict[str, object],
    error: type[Exception],
    needle: str,
    family_checkpoints: dict[str, Path],
    tmp_path: Path,
) -> None:
    folder = copy_folder(family_checkpoints[name], tmp_path / name, **changes)
    with pytest.raises(error, match=needle):
        convert_checkpoint(folder, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_mistral_sliding_window_warns(
    family_checkpoints: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = copy_folder(family_checkpoints["mistral"], tmp_path / "m", sliding_window=128)
    with caplog.at_level("WARNING"):
        convert_checkpoint(folder, tmp_path / "out.gguf")
    assert "sliding_window 128" in caplog.text
