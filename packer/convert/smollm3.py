"""SmolLM3 (``SmolLM3ForCausalLM``) -> GGUF ``smollm3``.

A Llama (permuted Q/K rows) in which some layers skip rope ("NoPE" layers). config.json
lists them in ``no_rope_layers`` (1: the layer uses rope, 0: it does not), built from
``no_rope_layer_interval`` (every 4th layer is NoPE in released SmolLM3). llama.cpp's
smollm3 has the interval fixed at 4 and no GGUF key for it, so any other layout is refused.
"""

from __future__ import annotations

import gguf

from packer.convert.base import register
from packer.convert.decoder import DecoderConverter
from packer.errors import ConversionError, UnsupportedModelError

LLAMA_CPP_NO_ROPE_INTERVAL = 4  # llama.cpp: layer il has no rope when (il + 1) % 4 == 0


@register
class SmolLM3Converter(DecoderConverter):
    hf_architectures = ("SmolLM3ForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.SMOLLM3
    family = "SmolLM3"
    rope_types = ("default", "linear", "yarn", "dynamic")
    permute_rotary = True

    def read_sliding_window(self) -> int | None:
        if super().read_sliding_window() is not None:
            raise UnsupportedModelError(
                "config.json enables SmolLM3 sliding-window attention, which llama.cpp's "
                "smollm3 does not implement"
            )
        return None

    def read_family_hparams(self) -> None:
        interval = self.cfg_int("no_rope_layer_interval", default=LLAMA_CPP_NO_ROPE_INTERVAL)
        expected = [int((i + 1) % LLAMA_CPP_NO_ROPE_INTERVAL != 0) for i in range(self.n_layer)]
        layers = self.config.get("no_rope_layers")
        if layers is None:
            layers = [int((i + 1) % interval != 0) for i in range(self.n_layer)]
        if not isinstance(layers, list) or len(layers) != self.n_layer:
            raise ConversionError(
                f"config.json no_rope_layers must list {self.n_layer} entries (1: rope, "
                f"0: no rope), got {layers!r}; fix config.json"
            )
        if [int(bool(x)) for x in layers] != expected:
            raise UnsupportedModelError(
                f"config.json no_rope_layers {layers} is not supported: llama.cpp's smollm3 "
                f"skips rope on every {LLAMA_CPP_NO_ROPE_INTERVAL}th layer only"
            )
