"""Mistral (``MistralForCausalLM``): Mistral 7B v0.1-v0.3, ... -> GGUF ``llama``.

llama.cpp runs Mistral as its ``llama`` architecture (same tensors and rope layout). The
one difference, a sliding attention window (v0.1: 4096), is not implemented by llama.cpp's
``llama`` graph: it attends to the whole context, which matches transformers as long as a
sequence is not longer than the window. We warn when the window is shorter than the
context.
"""

from __future__ import annotations

import logging

from packer.convert.base import register
from packer.convert.llama import LlamaConverter

logger = logging.getLogger(__name__)


@register
class MistralConverter(LlamaConverter):
    hf_architectures = ("MistralForCausalLM",)
    family = "Mistral"

    def read_family_hparams(self) -> None:
        if self.sliding_window is not None and self.sliding_window < self.n_ctx:
            logger.warning(
                "Mistral sliding_window %d is shorter than the context (%d): llama.cpp "
                "attends to the full context, so outputs differ past %d tokens",
                self.sliding_window,
                self.n_ctx,
                self.sliding_window,
            )
