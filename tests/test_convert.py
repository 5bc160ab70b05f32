"""HF -> GGUF conversion: logits, tokenization and metadata checked against llama.cpp."""

from __future__ import annotations

import itertools
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from packer.convert import (  # noqa: E402
    SUPPORTED_ARCHITECTURES,
    CheckpointInfo,
    convert_checkpoint,
    inspect_checkpoint,
)

VARIANTS = ["tiny_llama_bpe", "tiny_llama_spm", "tiny_llama_bpe_sharded", "tiny_llama_spm_bf16"]
LOGITS_TOLERANCE = 1e-3
GGML_TYPE_F32 = 0

MIXED_TEXTS = [
    "Hello world! How are you?",
    "¿Qué es la cuantización? Año, niño, acción.",
    "def main():\n\tif x:\n\t\treturn 1\n    else:\n        return  2\n",
    "Emoji: 🍕🎉 👍🏽 ❤️ 🚀",
    "Numbers 12345 3.14 0.001 and 1,000,000",
    "   three leading spaces",
    " x",
    "CJK: 日本語のテキスト 中文文本 한국어",
    "  multiple   spaces\n\n\nand trailing  ",
    "Mixed: The niño wrote `print(3.14)` 😀 at 12:30 — 東京!",
]

PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "¿Qué es la cuantización? 12345 3.14 🍕",
    "def main():\n\tprint('hola')\n",
]


# ---- helpers ---------------------------------------------------------------------------


def hf_token_ids(folder: Path, text: str, add_bos: bool) -> list[int]:
    """Token ids from the checkpoint's own tokenizer (tokenizers or sentencepiece)."""
    if (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(text).ids
        return list(ids)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    ids = list(sp.encode(text))
    return [sp.bos_id(), *ids] if add_bos else ids


def load_llama(path: Path, **kwargs: object) -> llama_cpp.Llama:
    return llama_cpp.Llama(model_path=str(path), verbose=False, **kwargs)


def llama_logits(path: Path, prompts: list[list[int]]) -> list[np.ndarray]:
    llm = load_llama(
        path,
        n_ctx=128,
        n_batch=128,
        logits_all=True,
        type_k=GGML_TYPE_F32,  # keep the KV cache in F32 so only the weights are compared
        type_v=GGML_TYPE_F32,
        flash_attn=False,
    )
    out = []
    for ids in prompts:
        llm.reset()
        llm.eval(ids)
        out.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
    llm.close()
    return out


def hf_logits(folder: Path, prompts: list[list[int]]) -> list[np.ndarray]:
    model = transformers.LlamaForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        return [model(torch.tensor([ids])).logits[0].float().numpy() for ids in prompts]


def kv(reader: gguf.GGUFReader, key: str) -> object:
    field = reader.fields.get(key)
    assert field is not None, f"GGUF has no {key}"
    return field.contents()


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """(variant, outtype) -> converted GGUF path, converted once per session."""
    root = tmp_path_factory.mktemp("gguf")
    cache: dict[tuple[str, str], Path] = {}

    def get(variant: str, outtype: str = "f32") -> Path:
        if (variant, outtype) not in cache:
            src = request.getfixturevalue(variant)
            out = root / f"{variant}-{outtype}.gguf"
            convert_checkpoint(src, out, outtype=outtype)
            cache[(variant, outtype)] = out
        return cache[(variant, outtype)]

    return get


# ---- logits ----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_f32_logits_match_transformers(
    variant: str, converted: Callable[..., Path], request: pytest.FixtureRequest
) -> None:
    folder: Path = request.getfixturevalue(variant)
    add_bos = (folder / "tokenizer.model").is_file()
    prompts = [hf_token_ids(folder, p, add_bos) for p in PROMPTS]
    expected = hf_logits(folder, prompts)
    got = llama_logits(converted(variant, "f32"), prompts)
    for ids, exp, act in zip(prompts, expected, got, strict=True):
        assert act.shape == exp.shape == (len(ids), exp.shape[1])
        diff = float(np.abs(exp - act).max())
        print(f"{variant}: {len(ids)} tokens, max |logits diff| = {diff:.2e}")
        assert diff < LOGITS_TOLERANCE, f"{variant}: max logits diff {diff}"


def test_bf16_gguf_runs_close_to_transformers(
    tiny_llama_spm_bf16: Path, converted: Callable[..., Path]
) -> None:
    """outtype auto keeps BF16; llama.cpp computes in reduced precision, so a loose bound."""
    prompts = [hf_token_ids(tiny_llama_spm_bf16, p, True) for p in PROMPTS[:1]]
    expected = hf_logits(tiny_llama_spm_bf16, prompts)
    got = llama_logits(converted("tiny_llama_spm_bf16", "auto"), prompts)
    diff = float(np.abs(expected[0] - got[0]).max())
    print(f"bf16 gguf: max |logits diff| = {diff:.2e}")
    assert diff < 0.25


# ---- tokenization ----------------------------------------------------------------------


@pytest.mark.parametrize("text", MIXED_TEXTS)
def test_bpe_token_ids_match(text: str, tiny_llama_bpe: Path, converted) -> None:
    llm = load_llama(converted("tiny_llama_bpe"), vocab_only=True)
    expected = hf_token_ids(tiny_llama_bpe, text, add_bos=False)
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == expected
    # add_bos_token is false for this tokenizer: asking llama.cpp to add specials adds none
    assert llm.tokenize(text.encode(), add_bos=True, special=False) == expected


@pytest.mark.parametrize("text", MIXED_TEXTS)
def test_spm_token_ids_match(text: str, tiny_llama_spm: Path, converted) -> None:
    llm = load_llama(converted("tiny_llama_spm"), vocab_only=True)
    expected = hf_token_ids(tiny_llama_spm, text, add_bos=True)
    assert llm.tokenize(text.encode(), add_bos=True, special=False) == expected
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == expected[1:]


def test_bpe_special_and_user_tokens(tiny_llama_bpe: Path, converted) -> None:
    llm = load_llama(converted("tiny_llama_bpe"), vocab_only=True)
    chat = "<|im_start|>user\nHola, ¿qué tal? 3.14<|im_end|>\n<|im_start|>assistant\n<think>"
    expected = hf_token_ids(tiny_llama_bpe, chat, add_bos=False)
    assert llm.tokenize(chat.encode(), add_bos=False, special=True) == expected
    ids = llm.tokenize(b"<|im_start|><think>", add_bos=False, special=True)
    assert len(ids) == 2
    # control tokens are not parsed from plain text; user-defined ones always are
    plain = llm.tokenize(b"<|im_start|><think>", add_bos=False, special=False)
    assert plain[-1] == ids[1] and len(plain) > 2


@pytest.mark.parametrize("style", ["gpt2", "llama3", "qwen2"])
def test_bpe_pre_tokenizer_styles(
    style: str, tiny_llama_bpe: Path, copy_checkpoint: Callable[[Path], Path], tmp_path: Path
) -> None:
    """Other byte-level pre-tokenizers: detected from tokenizer.json, ids match llama.cpp."""
    from checkpoints import BPE_STYLES, train_bpe_tokenizer

    folder = copy_checkpoint(tiny_llama_bpe)
    assert train_bpe_tokenizer(folder, vocab_size=560, style=style) <= 602
    out = tmp_path / "model.gguf"
    convert_checkpoint(folder, out)
    assert kv(gguf.GGUFReader(out), "tokenizer.ggml.pre") == BPE_STYLES[style]
    llm = load_llama(out, vocab_only=True)
    for text in MIXED_TEXTS:
        expected = hf_token_ids(folder, text, add_bos=False)
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == expected, text


def test_detokenize_roundtrip(tiny_llama_bpe: Path, tiny_llama_spm: Path, converted) -> None:
    text = "¿Qué es la cuantización? Año 12345 🍕\n\tdef f(): pass"
    for variant in ("tiny_llama_bpe", "tiny_llama_spm"):
        llm = load_llama(converted(variant), vocab_only=True)
        ids = llm.tokenize(text.encode(), add_bos=False, special=False)
        assert llm.detokenize(ids).decode().strip() == text.strip()


# ---- metadata --------------------------------------------------------------------------


def test_metadata_bpe(tiny_llama_bpe: Path, converted) -> None:
    reader = gguf.GGUFReader(converted("tiny_llama_bpe"))
    config = json.loads((tiny_llama_bpe / "config.json").read_text())
    tok_config = json.loads((tiny_llama_bpe / "tokenizer_config.json").read_text())
    assert kv(reader, "general.architecture") == "llama"
    assert kv(reader, "general.name") == tiny_llama_bpe.name
    assert kv(reader, "general.file_type") == gguf.LlamaFileType.ALL_F32
    assert kv(reader, "llama.block_count") == config["num_hidden_layers"] == 2
    assert kv(reader, "llama.embedding_length") == config["hidden_size"]
    assert kv(reader, "llama.feed_forward_length") == config["intermediate_size"]
    assert kv(reader, "llama.attention.head_count") == config["num_attention_heads"] == 4
    assert kv(reader, "llama.attention.head_count_kv") == config["num_key_value_heads"] == 2
    assert kv(reader, "llama.context_length") == config["max_position_embeddings"]
    assert kv(reader, "llama.rope.dimension_count") == 16
    assert kv(reader, "llama.rope.freq_base") == pytest.approx(100000.0)
    assert kv(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert kv(reader, "tokenizer.ggml.model") == "gpt2"
    assert kv(reader, "tokenizer.ggml.pre") == "smollm"
    assert kv(reader, "tokenizer.chat_template") == tok_config["chat_template"]
    assert kv(reader, "tokenizer.ggml.bos_token_id") == 1  # <|im_start|>
    assert kv(reader, "tokenizer.ggml.eos_token_id") == 2  # <|im_end|>
    assert kv(reader, "tokenizer.ggml.unknown_token_id") == 0
    assert kv(reader, "tokenizer.ggml.padding_token_id") == 2
    assert kv(reader, "tokenizer.ggml.add_bos_token") is False
    assert kv(reader, "tokenizer.ggml.add_eos_token") is False
    tokens = kv(reader, "tokenizer.ggml.tokens")
    types = kv(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == config["vocab_size"]
    assert types[tokens.index("<|im_end|>")] == gguf.TokenType.CONTROL
    assert types[tokens.index("<think>")] == gguf.TokenType.USER_DEFINED
    assert len(kv(reader, "tokenizer.ggml.merges")) > 100
    names = {t.name for t in reader.tensors}
    assert "output.weight" not in names  # tied embeddings: llama.cpp reuses token_embd
    assert "blk.1.attn_q.weight" in names and "output_norm.weight" in names


def test_metadata_spm(tiny_llama_spm: Path, converted) -> None:
    reader = gguf.GGUFReader(converted("tiny_llama_spm"))
    tok_config = json.loads((tiny_llama_spm / "tokenizer_config.json").read_text())
    assert kv(reader, "tokenizer.ggml.model") == "llama"
    assert "tokenizer.ggml.pre" not in reader.fields
    assert kv(reader, "tokenizer.ggml.bos_token_id") == 1
    assert kv(reader, "tokenizer.ggml.eos_token_id") == 2
    assert kv(reader, "tokenizer.ggml.unknown_token_id") == 0
    assert kv(reader, "tokenizer.ggml.add_bos_token") is True
    assert kv(reader, "tokenizer.ggml.add_eos_token") is False
    assert kv(reader, "tokenizer.ggml.add_space_prefix") is True
    assert kv(reader, "tokenizer.chat_template") == tok_config["chat_template"]
    assert kv(reader, "llama.rope.freq_base") == pytest.approx(10000.0)
    tokens = kv(reader, "tokenizer.ggml.tokens")
    types = kv(reader, "tokenizer.ggml.token_type")
    scores = kv(reader, "tokenizer.ggml.scores")
    assert len(tokens) == len(types) == len(scores) == 700
    assert tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert types[0] == gguf.TokenType.UNKNOWN and types[1] == gguf.TokenType.CONTROL
    assert types.count(gguf.TokenType.BYTE) == 256
    assert "output.weight" in {t.name for t in reader.tensors}  # untied


def test_metadata_llama3_rope_and_padding(tiny_llama_bpe_sharded: Path, converted) -> None:
    reader = gguf.GGUFReader(converted("tiny_llama_bpe_sharded"))
    tensors = {t.name: t for t in reader.tensors}
    freqs = tensors["rope_freqs.weight"]
    assert freqs.tensor_type == gguf.GGMLQuantizationType.F32
    assert float(freqs.data[0]) == pytest.approx(1.0)  # highest frequency untouched
    assert float(freqs.data[-1]) == pytest.approx(8.0)  # lowest frequency scaled by factor
    tokens = kv(reader, "tokenizer.ggml.tokens")
    types = kv(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == 640  # config vocab_size, past the tokenizer's 602 tokens
    assert tokens[-1] == "[PAD639]" and types[-1] == gguf.TokenType.UNUSED
    assert kv(reader, "tokenizer.ggml.pre") == "smollm"


def test_metadata_linear_rope(converted) -> None:
    reader = gguf.GGUFReader(converted("tiny_llama_spm_bf16", "f32"))
    assert kv(reader, "llama.rope.scaling.type") == "linear"
    assert kv(reader, "llama.rope.scaling.factor") == pytest.approx(2.0)


# ---- output types ----------------------------------------------------------------------


def _types(path: Path) -> dict[str, gguf.GGMLQuantizationType]:
    return {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}


@pytest.mark.parametrize(
    ("variant", "outtype", "expected", "file_type"),
    [
        ("tiny_llama_spm_bf16", "auto", "BF16", gguf.LlamaFileType.MOSTLY_BF16),
        ("tiny_llama_bpe", "auto", "F32", gguf.LlamaFileType.ALL_F32),
        ("tiny_llama_bpe", "f16", "F16", gguf.LlamaFileType.MOSTLY_F16),
        ("tiny_llama_bpe", "bf16", "BF16", gguf.LlamaFileType.MOSTLY_BF16),
        ("tiny_llama_spm_bf16", "f16", "F16", gguf.LlamaFileType.MOSTLY_F16),
    ],
)
def test_outtype(variant: str, outtype: str, expected: str, file_type: int, converted) -> None:
    path = converted(variant, outtype)
    for name, qtype in _types(path).items():
        is_vector = name.endswith("norm.weight") or name.startswith("rope_freqs")
        want = "F32" if is_vector else expected
        assert qtype == gguf.GGMLQuantizationType[want], name
    assert kv(gguf.GGUFReader(path), "general.file_type") == file_type


def test_auto_bf16_is_bit_exact(tiny_llama_spm_bf16: Path, converted) -> None:
    """BF16 -> BF16 copies the bits; checked against the raw safetensors data."""
    from safetensors.torch import load_file

    raw = load_file(str(tiny_llama_spm_bf16 / "model.safetensors"))
    reader = gguf.GGUFReader(converted("tiny_llama_spm_bf16", "auto"))
    tensors = {t.name: t for t in reader.tensors}
    for hf_name, gguf_name in [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.layers.1.mlp.down_proj.weight", "blk.1.ffn_down.weight"),
    ]:
        assert raw[hf_name].dtype == torch.bfloat16
        want = raw[hf_name].view(torch.int16).numpy().view(np.uint16).reshape(-1)
        got = np.asarray(tensors[gguf_name].data).view(np.uint16).reshape(-1)
        np.testing.assert_array_equal(got, want)


# ---- API -------------------------------------------------------------------------------


def test_supported_architectures() -> None:
    assert "LlamaForCausalLM" in SUPPORTED_ARCHITECTURES


def test_inspect_checkpoint(tiny_llama_bpe: Path, tiny_llama_spm_bf16: Path) -> None:
    info = inspect_checkpoint(tiny_llama_bpe)
    assert isinstance(info, CheckpointInfo)
    assert info.path == tiny_llama_bpe
    assert info.architecture == "LlamaForCausalLM"
    assert info.model_name == tiny_llama_bpe.name
    assert info.dtype == "F32"
    assert info.context_length == 256
    assert info.has_chat_template is True
    model = transformers.LlamaForCausalLM.from_pretrained(tiny_llama_bpe)
    assert info.n_params == sum(p.numel() for p in model.parameters())
    assert inspect_checkpoint(tiny_llama_spm_bf16).dtype == "BF16"


def test_sharded_inspect(tiny_llama_bpe_sharded: Path) -> None:
    assert len(list(tiny_llama_bpe_sharded.glob("model-*.safetensors"))) > 1
    info = inspect_checkpoint(tiny_llama_bpe_sharded)
    assert info.n_params > 0 and info.dtype == "F32"


def test_chat_template_jinja_file(tiny_llama_spm: Path, copy_checkpoint, tmp_path: Path) -> None:
    folder = copy_checkpoint(tiny_llama_spm)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    template = config.pop("chat_template") + "{# from the jinja file #}"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").write_text(template)
    assert inspect_checkpoint(folder).has_chat_template
    out = tmp_path / "out" / "m.gguf"
    out.parent.mkdir()
    convert_checkpoint(folder, out, outtype="f16")
    assert kv(gguf.GGUFReader(out), "tokenizer.chat_template") == template


def test_progress_and_clean_output(tiny_llama_bpe_sharded: Path, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    out = tmp_path / "model.gguf"
    info = convert_checkpoint(
        tiny_llama_bpe_sharded, out, outtype="f16", progress=lambda d, t: calls.append((d, t))
    )
    assert info.architecture == "LlamaForCausalLM"
    assert calls[0][0] == 0 and calls[-1][0] == calls[-1][1] > 0
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(calls))
    assert len({t for _, t in calls}) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]
    mode = stat.S_IMODE(out.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # an ordinary file, not a 0600 temp file


def test_overwrites_existing_output(tiny_llama_spm: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.gguf"
    out.write_bytes(b"old")
    convert_checkpoint(tiny_llama_spm, out)
    assert out.read_bytes()[:4] == b"GGUF"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]


def test_streaming_peak_memory(tiny_llama_spm: Path, tmp_path: Path) -> None:
    """Peak Python/numpy memory while converting is about one tensor, not the model."""
    import shutil
    import tracemalloc

    from safetensors.numpy import save_file

    folder = tmp_path / "wide"
    folder.mkdir()
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(tiny_llama_spm / name, folder / name)
    d, ff, layers, vocab, heads = 256, 1024, 6, 700, 8
    config = json.loads((tiny_llama_spm / "config.json").read_text())
    config.update(
        hidden_size=d,
        intermediate_size=ff,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads // 2,
        head_dim=d // heads,
    )
    (folder / "config.json").write_text(json.dumps(config))
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (vocab, d),
        "lm_head.weight": (vocab, d),
        "model.norm.weight": (d,),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (d, d),
            p + "self_attn.k_proj.weight": (d // 2, d),
            p + "self_attn.v_proj.weight": (d // 2, d),
            p + "self_attn.o_proj.weight": (d, d),
            p + "mlp.gate_proj.weight": (ff, d),
            p + "mlp.up_proj.weight": (ff, d),
            p + "mlp.down_proj.weight": (d, ff),
        }
    rng = np.random.default_rng(0)
    tensors = {k: rng.standard_normal(s, dtype=np.float32) for k, s in shapes.items()}
    total = sum(t.nbytes for t in tensors.values())
    largest = max(t.nbytes for t in tensors.values())
    save_file(tensors, str(folder / "model.safetensors"))
    del tensors

    tracemalloc.start()
    try:
        convert_checkpoint(folder, tmp_path / "wide.gguf", outtype="f16")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(
        f"model {total / 1e6:.1f} MB, largest tensor {largest / 1e6:.1f} MB, peak {peak / 1e6:.1f} MB"
    )
    assert peak < 4 * largest + 2_000_000
    assert peak < total / 4


def test_bf16_rounding_matches_torch() -> None:
    from packer.convert.checkpoint import bf16_to_float32, float32_to_bf16

    rng = np.random.default_rng(0)
    values = np.concatenate(
        [
            rng.standard_normal(10_000).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 10_000),
            np.array([0.0, -0.0, np.inf, -np.inf, 1.0 + 2.0**-8, 3.4e38], dtype=np.float32),
        ]
    ).astype(np.float32)
    want = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(float32_to_bf16(values), want)
    np.testing.assert_array_equal(
        bf16_to_float32(want), torch.from_numpy(values).to(torch.bfloat16).float().numpy()
    )
    assert np.isnan(bf16_to_float32(float32_to_bf16(np.array([np.nan], np.float32))))[0]


@pytest.mark.parametrize(
    ("pre_tokenizer", "normalizer", "expected"),
    [
        ({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True}, None, "gpt-2"),
        (
            {
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Digits", "individual_digits": True},
                    {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
                ],
            },
            None,
            "smollm",
        ),
        ({"type": "ByteLevel", "add_prefix_space": True, "use_regex": True}, None, None),
        ({"type": "Whitespace"}, None, None),
        ({"type": "ByteLevel", "add_prefix_space": False}, {"type": "Lowercase"}, None),
    ],
)
def test_pre_tokenizer_table(
    pre_tokenizer: dict, normalizer: dict | None, expected: str | None
) -> None:
    from packer.convert.pretokenizer import detect_pre_tokenizer
    from packer.errors import UnsupportedModelError

    tokenizer_json = {
        "model": {"type": "BPE"},
        "pre_tokenizer": pre_tokenizer,
        "normalizer": normalizer,
    }
    if expected is None:
        with pytest.raises(UnsupportedModelError, match="tokenizer.json"):
            detect_pre_tokenizer(tokenizer_json, "tokenizer.json")
    else:
        assert detect_pre_tokenizer(tokenizer_json, "tokenizer.json") == expected
