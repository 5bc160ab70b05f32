"""The quantization types packer offers: llama.cpp's own list, with what each costs and keeps.

One table, used by ``--quant`` validation, ``packer quants`` and size estimates.
Bits per weight are llama.cpp's figures for a 7-8B llama; small models come out a little larger
because embeddings and 1-D tensors stay at higher precision.
"""

from __future__ import annotations

from dataclasses import dataclass

from packer.errors import UsageError


@dataclass(frozen=True)
class QuantType:
    name: str
    ftype: int  # llama.cpp's llama_ftype
    bpw: float  # bits per weight
    note: str
    needs_imatrix: bool = False

    @property
    def is_float(self) -> bool:
        return self.name in ("F32", "F16", "BF16")


_TABLE = [
    QuantType("F32", 0, 32.0, "full precision, largest; for reference only"),
    QuantType("F16", 1, 16.0, "half precision, no quality loss worth measuring"),
    QuantType("BF16", 32, 16.0, "bfloat16, as most checkpoints are trained; no loss"),
    QuantType("Q8_0", 7, 8.5, "nearly lossless, twice the size of Q4"),
    QuantType("Q6_K", 18, 6.56, "very close to F16 (+0.02 ppl on Llama-3-8B)"),
    QuantType("Q5_K_M", 17, 5.69, "recommended: very small loss (+0.06 ppl)"),
    QuantType("Q5_K_S", 16, 5.54, "small loss, a bit smaller than Q5_K_M"),
    QuantType("Q5_1", 9, 6.0, "legacy 5-bit; prefer Q5_K_M"),
    QuantType("Q5_0", 8, 5.5, "legacy 5-bit; prefer Q5_K_S"),
    QuantType("Q4_K_M", 15, 4.89, "recommended for small RAM: moderate loss (+0.18 ppl)"),
    QuantType("Q4_K_S", 14, 4.58, "smaller, more loss than Q4_K_M"),
    QuantType("Q4_1", 3, 5.0, "legacy 4-bit; prefer Q4_K_M"),
    QuantType("Q4_0", 2, 4.5, "legacy 4-bit, fastest on some CPUs; prefer Q4_K_S"),
    QuantType("IQ4_NL", 25, 4.5, "4-bit non-linear; best with an importance matrix"),
    QuantType("IQ4_XS", 30, 4.25, "4-bit non-linear, small; best with an importance matrix"),
    QuantType("Q3_K_L", 13, 4.27, "large loss; for very small RAM"),
    QuantType("Q3_K_M", 12, 3.91, "large loss"),
    QuantType("Q3_K_S", 11, 3.5, "very large loss"),
    QuantType("IQ3_M", 27, 3.66, "3-bit; use an importance matrix"),
    QuantType("IQ3_S", 26, 3.44, "3-bit; use an importance matrix"),
    QuantType("IQ3_XS", 22, 3.3, "3-bit; use an importance matrix"),
    QuantType("IQ3_XXS", 23, 3.06, "3-bit; use an importance matrix"),
    QuantType("Q2_K", 10, 3.35, "extreme loss; last resort"),
    QuantType("IQ2_M", 29, 2.7, "2-bit; use an importance matrix"),
    QuantType("TQ2_0", 37, 2.06, "ternary; only for ternary-trained models (BitNet-style)"),
    QuantType("TQ1_0", 36, 1.69, "ternary; only for ternary-trained models (BitNet-style)"),
    QuantType("Q2_K_S", 21, 2.97, "2-bit; needs an importance matrix", needs_imatrix=True),
    QuantType("IQ2_S", 28, 2.5, "2-bit; needs an importance matrix", needs_imatrix=True),
    QuantType("IQ2_XS", 20, 2.31, "2-bit; needs an importance matrix", needs_imatrix=True),
    QuantType("IQ2_XXS", 19, 2.06, "2-bit; needs an importance matrix", needs_imatrix=True),
    QuantType("IQ1_M", 31, 1.75, "1-bit; needs an importance matrix", needs_imatrix=True),
    QuantType("IQ1_S", 24, 1.56, "1-bit; needs an importance matrix", needs_imatrix=True),
]

QUANT_TYPES: dict[str, QuantType] = {q.name: q for q in _TABLE}
DEFAULT_QUANT = "Q5_K_M"


def parse_quant(name: str) -> QuantType:
    """Case-insensitive lookup; an unknown name lists the valid ones."""
    q = QUANT_TYPES.get(name.strip().upper())
    if q is None:
        valid = ", ".join(QUANT_TYPES)
        raise UsageError(f"unknown quantization type {name!r}: choose one of {valid}")
    return q


def ftype_name(ftype: int) -> str | None:
    """The quant name of a GGUF's ``general.file_type`` (None when unknown)."""
    for q in _TABLE:
        if q.ftype == ftype:
            return q.name
    return None
