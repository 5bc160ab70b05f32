"""How many layers of a GGUF model fit on a GPU: ``-ngl auto``.

llama-cpp-python 0.3.36 does not expose llama.cpp's own parameter fitting, so this estimates
from the GGUF itself: the byte size of every ``blk.N.*`` tensor (from the tensor data offsets),
the output head, and the KV cache each offloaded layer holds (f16 K and V for ``n_ctx`` tokens).
llama.cpp offloads the *last* ``n`` layers, and the output head only when ``n > n_layer``.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from packer.runtime.i18n import _

__all__ = ["ModelLayout", "auto_gpu_layers", "read_layout", "RESERVE_BYTES"]

# Kept free on the device: llama.cpp's compute buffers (grow with the batch, 512 tokens here)
# and the driver's own allocations. Logits for one batch are added per model (n_vocab * 512 * 4).
RESERVE_BYTES = 512 * 2**20
BATCH = 512
KV_BYTES = 2  # f16 K and V cache entries (llama.cpp's default cache type)

_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9
_BLOCK = re.compile(r"blk\.(\d+)\.")


@dataclass(frozen=True)
class ModelLayout:
    """What a model needs in memory, per part."""

    layer_bytes: tuple[int, ...]  # weights of blk.0, blk.1, ...
    output_bytes: int  # the output head (token_embd when the embeddings are tied) + its norm
    kv_bytes_per_token: int  # K+V of one token in one layer
    n_vocab: int
    n_ctx_train: int

    @property
    def n_layer(self) -> int:
        return len(self.layer_bytes)


def auto_gpu_layers(layout: ModelLayout, free_bytes: int, n_ctx: int) -> int:
    """Layers to offload to a device with ``free_bytes`` free: ``n_layer + 1`` means all of them
    and the output head; 0 means nothing fits."""
    n_ctx = n_ctx or layout.n_ctx_train
    budget = free_bytes - RESERVE_BYTES - layout.n_vocab * BATCH * 4
    kv_layer = layout.kv_bytes_per_token * n_ctx
    fitted = 0
    for size in reversed(layout.layer_bytes):  # llama.cpp offloads the last layers first
        if budget < size + kv_layer:
            return fitted
        budget -= size + kv_layer
        fitted += 1
    return fitted + 1 if budget >= layout.output_bytes else fitted


def read_layout(path: str | Path) -> ModelLayout:
    """Read the layer sizes and attention shape from a GGUF file's header (no tensor data)."""
    with open(path, "rb") as f:
        magic, version = struct.unpack("<4sI", f.read(8))
        if magic != b"GGUF" or version < 2:
            raise ValueError(_("{path} is not a GGUF v2+ file").format(path=path))
        n_tensors, n_kv = struct.unpack("<QQ", f.read(16))
        meta: dict[str, object] = {}
        for _i in range(n_kv):
            key = _string(f)
            (kind,) = struct.unpack("<I", f.read(4))
            meta[key] = _value(f, kind)
        tensors: list[tuple[str, int]] = []  # (name, offset)
        for _i in range(n_tensors):
            name = _string(f)
            (n_dims,) = struct.unpack("<I", f.read(4))
            f.seek(8 * n_dims + 4, 1)  # dims, type
            (offset,) = struct.unpack("<Q", f.read(8))
            tensors.append((name, offset))
        align = int(meta.get("general.alignment", 32))  # type: ignore[call-overload]
        data_start = -(-f.tell() // align) * align
        data_size = Path(path).stat().st_size - data_start

    sizes = _tensor_sizes(tensors, data_size)
    arch = str(meta.get("general.architecture", ""))
    n_layer = int(meta.get(f"{arch}.block_count", 0))  # type: ignore[call-overload]
    layers = [0] * n_layer
    output = 0
    for name, size in sizes.items():
        m = _BLOCK.match(name)
        if m and int(m.group(1)) < n_layer:
            layers[int(m.group(1))] += size
        elif name.startswith("output"):
            output += size
    if "output.weight" not in sizes:  # tied embeddings: the token embeddings are the head
        output += sizes.get("token_embd.weight", 0)

    n_embd = int(meta.get(f"{arch}.embedding_length", 0))  # type: ignore[call-overload]
    n_head = _maximum(meta.get(f"{arch}.attention.head_count", 1))
    n_head_kv = _maximum(meta.get(f"{arch}.attention.head_count_kv", n_head))
    k_len = int(meta.get(f"{arch}.attention.key_length", n_embd // max(n_head, 1)))  # type: ignore[call-overload]
    v_len = int(meta.get(f"{arch}.attention.value_length", k_len))  # type: ignore[call-overload]
    tokens = meta.get("tokenizer.ggml.tokens")
    return ModelLayout(
        layer_bytes=tuple(layers),
        output_bytes=output,
        kv_bytes_per_token=n_head_kv * (k_len + v_len) * KV_BYTES,
        n_vocab=tokens if isinstance(tokens, int) else 0,
        n_ctx_train=int(meta.get(f"{arch}.context_length", 4096)),  # type: ignore[call-overload]
    )


def _tensor_sizes(tensors: list[tuple[str, int]], data_size: int) -> dict[str, int]:
    """Each tensor's bytes, from the distance to the next tensor's data (padding included)."""
    ordered = sorted(tensors, key=lambda t: t[1])
    ends = [off for _, off in ordered[1:]] + [data_size]
    return {name: end - off for (name, off), end in zip(ordered, ends, strict=True)}


def _maximum(value: object) -> int:
    """Per-layer arrays (some models vary head counts by layer) count at their largest."""
    if isinstance(value, list):
        return max((int(v) for v in value), default=0)
    return int(value)  # type: ignore[call-overload]


def _string(f: BinaryIO) -> str:
    (n,) = struct.unpack("<Q", f.read(8))
    return f.read(n).decode("utf-8", "replace")


def _value(f: BinaryIO, kind: int) -> object:
    """A metadata value; arrays of strings are skipped and stand for their length."""
    if kind in _SCALARS:
        fmt = "<" + _SCALARS[kind]
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
    if kind == _STRING:
        return _string(f)
    if kind == _ARRAY:
        item, count = struct.unpack("<IQ", f.read(12))
        if item in _SCALARS:
            fmt = "<" + _SCALARS[item] * count
            return list(struct.unpack(fmt, f.read(struct.calcsize(fmt))))
        if item == _STRING:
            for _i in range(count):
                (n,) = struct.unpack("<Q", f.read(8))
                f.seek(n, 1)
            return count
        return [_value(f, item) for _i in range(count)]
    raise ValueError(_("unknown GGUF metadata type {kind}").format(kind=kind))
