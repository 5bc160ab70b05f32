"""Qwen3 MoE (``Qwen3MoeForCausalLM``: Qwen3-30B-A3B, ...) -> GGUF ``qwen3moe``.

Qwen3's attention (NEOX rope, per-head Q/K norms) with a sparse MLP in every layer: a
router (``mlp.gate``, one row per expert) and ``num_experts`` small gated MLPs stored one
tensor per expert and projection (``mlp.experts.{e}.gate_proj.weight``, ...). GGUF wants
each projection of a layer as one stacked tensor (experts first), so those are merged here,
one stacked tensor at a time: peak memory is about one stacked tensor, never all experts.
llama.cpp always renormalizes the chosen experts' weights (``norm_topk_prob``).
"""

from __future__ import annotations

from collections.abc import Callable

import gguf
import numpy as np

from packer.convert.base import PlannedTensor, TensorSpec, encode, numpy_dtype, register
from packer.convert.qwen3 import Qwen3Converter
from packer.errors import UnsupportedModelError

# HF projection name -> GGUF stacked tensor kind
_EXPERT_TENSORS = {
    "gate_proj": gguf.MODEL_TENSOR.FFN_GATE_EXP,
    "up_proj": gguf.MODEL_TENSOR.FFN_UP_EXP,
    "down_proj": gguf.MODEL_TENSOR.FFN_DOWN_EXP,
}


@register
class Qwen3MoeConverter(Qwen3Converter):
    hf_architectures = ("Qwen3MoeForCausalLM",)
    gguf_arch = gguf.MODEL_ARCH.QWEN3MOE
    family = "Qwen3 MoE"

    def read_family_hparams(self) -> None:
        super().read_family_hparams()
        # transformers >= 5 saves num_local_experts; released configs say num_experts
        legacy = "num_experts" not in self.config and "num_local_experts" in self.config
        key = "num_local_experts" if legacy else "num_experts"
        self.n_expert = self.cfg_int(key)
        self.n_expert_used = self.cfg_int("num_experts_per_tok")
        self.n_ff_exp = self.cfg_int("moe_intermediate_size")
        if self.n_expert_used > self.n_expert:
            raise UnsupportedModelError(
                f"config.json num_experts_per_tok {self.n_expert_used} exceeds the "
                f"{self.n_expert} experts; fix config.json"
            )
        if not self.cfg_bool("norm_topk_prob", True):
            raise UnsupportedModelError(
                "config.json norm_topk_prob false is not supported: llama.cpp's qwen3moe "
                "always renormalizes the chosen experts' weights"
            )
        if self.config.get("mlp_only_layers") or self.cfg_int("decoder_sparse_step", 1) != 1:
            raise UnsupportedModelError(
                "Qwen3 MoE with dense layers (mlp_only_layers / decoder_sparse_step) is not "
                "supported by llama.cpp's qwen3moe"
            )

    def expert_name(self, layer: int, expert: int, proj: str) -> str:
        return f"model.layers.{layer}.mlp.experts.{expert}.{proj}.weight"

    def expert_shape(self, proj: str) -> tuple[int, int]:
        d, ff = self.n_embd, self.n_ff_exp
        return (d, ff) if proj == "down_proj" else (ff, d)

    def layer_shapes(self) -> dict[str, tuple[int, ...]]:
        layer = {k: v for k, v in super().layer_shapes().items() if not k.startswith("mlp.")}
        return layer | {"mlp.gate.weight": (self.n_expert, self.n_embd)}

    def tensor_specs(self) -> dict[str, TensorSpec]:
        specs = super().tensor_specs()
        for i in range(self.n_layer):
            for proj in _EXPERT_TENSORS:
                shape = self.expert_shape(proj)
                for e in range(self.n_expert):
                    # written merged by plan(), not one by one
                    specs[self.expert_name(i, e, proj)] = TensorSpec(shape, skip=True)
        return specs

    @property
    def n_params(self) -> int:
        experts = 3 * self.n_layer * self.n_expert * self.n_embd * self.n_ff_exp
        return super().n_params + experts

    def plan(self, outtype: str) -> list[PlannedTensor]:
        planned = super().plan(outtype)
        for i in range(self.n_layer):
            for proj, kind in _EXPERT_TENSORS.items():
                names = [self.expert_name(i, e, proj) for e in range(self.n_expert)]
                shape = (self.n_expert, *self.expert_shape(proj))
                gguf_name = gguf.TENSOR_NAMES[kind].format(bid=i) + ".weight"
                src_dtype = self.checkpoint.tensors[names[0]].dtype
                qtype = self.output_type(gguf_name, shape, src_dtype, outtype)
                planned.append(
                    PlannedTensor(
                        gguf_name, shape, qtype, self._stacked_loader(names, shape, qtype)
                    )
                )
        return planned

    def _stacked_loader(
        self, names: list[str], shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType
    ) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            # one expert in memory at a time besides the stacked result
            out = np.empty(shape, dtype=numpy_dtype(qtype))
            for e, name in enumerate(names):
                info = self.checkpoint.tensors[name]
                out[e] = encode(self.checkpoint.read(name), info.dtype, qtype, name)
            return out

        return load

    def add_family_hparams(self, writer: gguf.GGUFWriter) -> None:
        super().add_family_hparams(writer)
        writer.add_expert_count(self.n_expert)
        writer.add_expert_used_count(self.n_expert_used)
        writer.add_expert_feed_forward_length(self.n_ff_exp)
