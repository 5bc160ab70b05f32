"""How many tokens of context a model gets when ``-c/--ctx-size`` is not given (or is 0).

llama-server's default: the model's own training context. A model trained on 131072 tokens
would then ask for a KV cache larger than many machines' memory (16 GiB for an 8B Llama 3.1),
so here the trained context is capped by what fits: the KV cache's bytes per token are computed
from the GGUF's metadata (layers, KV heads, key and value head sizes, f16 cache entries), and
the cache may take half of the memory left once the model itself is in memory (MemAvailable,
or the cgroup's limit when lower). The start-up line says which it was:
``ctx 8192 (trained)`` or ``ctx 16384 (memory cap; trained 131072)``.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from packer.runtime.i18n import _

__all__ = ["ContextSize", "available_memory", "choose_context", "for_gguf", "kv_bytes_per_token"]

KV_SHARE = 0.5  # of the memory left after the model: the rest stays for compute buffers and others
MIN_AUTO = 4096  # the cap never goes below this (or the trained context, when smaller)
ROUND = 1024  # a capped context is a multiple of this


@dataclass(frozen=True)
class ContextSize:
    n_ctx: int
    n_ctx_train: int
    source: str  # "flag" (-c N) | "trained" | "memory" (capped by memory)

    def describe(self) -> str:
        """For the start-up line: ``8192 (trained)``, ``16384 (memory cap; trained 131072)``."""
        if self.source == "trained":
            return _("{n} (trained)").format(n=self.n_ctx)
        if self.source == "memory":
            return _("{n} (memory cap; trained {trained})").format(
                n=self.n_ctx, trained=self.n_ctx_train
            )
        return str(self.n_ctx)


def kv_bytes_per_token(n_layer: int, kv_bytes_per_layer_token: int) -> int:
    """K and V of one token over all layers."""
    return max(1, n_layer * kv_bytes_per_layer_token)


def choose_context(
    requested: int,
    n_ctx_train: int,
    kv_per_token: int,
    model_bytes: int,
    available: int | None,
) -> ContextSize:
    """``requested`` when > 0; else the trained context, capped so that its KV cache
    (``kv_per_token`` bytes a token) takes at most :data:`KV_SHARE` of ``available`` memory
    minus ``model_bytes``; ``available`` None (unknown): the trained context."""
    if requested > 0:
        return ContextSize(requested, n_ctx_train, "flag")
    trained = n_ctx_train if n_ctx_train > 0 else MIN_AUTO
    if available is None:
        return ContextSize(trained, n_ctx_train, "trained")
    budget = max(0, available - model_bytes) * KV_SHARE
    fits = int(budget // max(1, kv_per_token))
    if fits >= trained:
        return ContextSize(trained, n_ctx_train, "trained")
    capped = max(min(MIN_AUTO, trained), fits // ROUND * ROUND)
    return ContextSize(capped, n_ctx_train, "memory")


def available_memory() -> int | None:
    """Bytes this process may still use: /proc/meminfo's MemAvailable, lowered to what the
    cgroup (v2) still allows; None where neither is known."""
    out: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                out = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    cgroup = Path("/sys/fs/cgroup")
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            left = int(limit) - int((cgroup / "memory.current").read_text().strip())
            out = left if out is None else min(out, left)
    except (OSError, ValueError):
        pass
    return out


def for_gguf(path: str | os.PathLike[str], requested: int) -> ContextSize | None:
    """:func:`choose_context` for a GGUF file, from its header; None when the header cannot
    be read (the caller then takes the trained context llama.cpp reports)."""
    if requested > 0:
        return ContextSize(requested, 0, "flag")
    from packer.runtime.gpu_layers import read_layout

    try:
        layout = read_layout(path)
        size = Path(path).stat().st_size
    except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error):
        return None
    return choose_context(
        requested,
        layout.n_ctx_train,
        kv_bytes_per_token(layout.n_layer, layout.kv_bytes_per_token),
        size,
        available_memory(),
    )
