"""Hugging Face checkpoint -> GGUF conversion.

Public API (used by the CLI)::

    info = inspect_checkpoint(src)                  # cheap: config.json + safetensors headers
    info = convert_checkpoint(src, out, outtype="auto", progress=None)
    SUPPORTED_ARCHITECTURES                         # HF architecture names we convert

Converters live one per module (``llama.py``, ...) and register themselves by HF
architecture name with :func:`packer.convert.base.register`.
"""

from __future__ import annotations

# each module registers its converters (by HF architecture name) on import
from packer.convert import bert as _bert  # noqa: F401
from packer.convert import gemma2 as _gemma2  # noqa: F401
from packer.convert import gemma3 as _gemma3  # noqa: F401
from packer.convert import gemma_embedding as _gemma_embedding  # noqa: F401
from packer.convert import gpt2 as _gpt2  # noqa: F401
from packer.convert import granite as _granite  # noqa: F401
from packer.convert import llama as _llama  # noqa: F401
from packer.convert import mistral as _mistral  # noqa: F401
from packer.convert import nomic_bert as _nomic_bert  # noqa: F401
from packer.convert import olmo2 as _olmo2  # noqa: F401
from packer.convert import phi3 as _phi3  # noqa: F401
from packer.convert import qwen2 as _qwen2  # noqa: F401
from packer.convert import qwen3 as _qwen3  # noqa: F401
from packer.convert import qwen3moe as _qwen3moe  # noqa: F401
from packer.convert import smollm3 as _smollm3  # noqa: F401
from packer.convert import xlm_roberta as _xlm_roberta  # noqa: F401
from packer.convert.api import CheckpointInfo, convert_checkpoint, inspect_checkpoint
from packer.convert.base import OUTTYPES, supported_architectures

SUPPORTED_ARCHITECTURES: tuple[str, ...] = supported_architectures()

__all__ = [
    "OUTTYPES",
    "SUPPORTED_ARCHITECTURES",
    "CheckpointInfo",
    "convert_checkpoint",
    "inspect_checkpoint",
]
