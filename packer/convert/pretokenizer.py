"""Which llama.cpp pre-tokenizer (``tokenizer.ggml.pre``) a byte-level BPE tokenizer needs.

llama.cpp does not read the Hugging Face pre-tokenizer; it has a fixed set of named
pre-tokenizers (regex splits, see llama.cpp's ``src/llama-vocab.cpp``). We pick the name by
looking at what the tokenizer itself does (its ``pre_tokenizer`` section in tokenizer.json),
never at the model's name. A configuration we do not recognise is refused: a wrong guess
would silently change how text is split into tokens.

Detection table (tokenizer.json ``pre_tokenizer`` -> llama.cpp name):

===================================================================  =============
HF pre_tokenizer (flattened Sequence)                                llama.cpp pre
===================================================================  =============
ByteLevel(add_prefix_space=False, use_regex=True)                    ``gpt-2``
Digits(individual_digits=True), ByteLevel(use_regex=True)            ``smollm``
Split(<Llama-3 regex, \\p{N}{1,3}>, Isolated), ByteLevel(no regex)   ``llama-bpe``
Split(<Qwen2 regex, single \\p{N}>, Isolated), ByteLevel(no regex)   ``qwen2``
===================================================================  =============
"""

from __future__ import annotations

import json
import logging
from typing import Any

from packer.errors import UnsupportedModelError

logger = logging.getLogger(__name__)

# The split regexes as they appear in the tokenizer.json files of these model families.
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

Step = tuple[Any, ...]

_BYTELEVEL_REGEX: Step = ("ByteLevel", False, True)
_BYTELEVEL_PLAIN: Step = ("ByteLevel", False, False)

# (llama.cpp pre name, the flattened pre-tokenizer steps it implements)
KNOWN_PRE_TOKENIZERS: tuple[tuple[str, tuple[Step, ...]], ...] = (
    ("gpt-2", (_BYTELEVEL_REGEX,)),
    ("smollm", (("Digits", True), _BYTELEVEL_REGEX)),
    ("llama-bpe", (("Split", LLAMA3_REGEX, "Isolated", False), _BYTELEVEL_PLAIN)),
    ("qwen2", (("Split", QWEN2_REGEX, "Isolated", False), _BYTELEVEL_PLAIN)),
)

# What llama.cpp does with merges for each name (it forces ignore_merges for llama-bpe).
_IGNORE_MERGES = {"llama-bpe": True}


def _steps(pre: Any) -> list[Step]:
    """Flatten a tokenizer.json pre_tokenizer into comparable step tuples."""
    if pre is None:
        return []
    if not isinstance(pre, dict):
        return [("?", repr(pre))]
    kind = pre.get("type")
    if kind == "Sequence":
        return [s for p in pre.get("pretokenizers") or [] for s in _steps(p)]
    if kind == "ByteLevel":
        return [
            ("ByteLevel", bool(pre.get("add_prefix_space", True)), bool(pre.get("use_regex", True)))
        ]
    if kind == "Digits":
        return [("Digits", bool(pre.get("individual_digits", False)))]
    if kind == "Split":
        pattern = pre.get("pattern") or {}
        regex = pattern.get("Regex", pattern.get("String")) if isinstance(pattern, dict) else None
        return [("Split", regex, pre.get("behavior"), bool(pre.get("invert", False)))]
    return [(str(kind), json.dumps(pre, sort_keys=True))]


def describe(pre: Any) -> str:
    """A short human-readable form of a pre_tokenizer for error messages."""
    parts = []
    for step in _steps(pre):
        if step[0] == "Split":
            parts.append(f"Split({step[1]!r})")
        elif step[0] == "ByteLevel":
            parts.append(f"ByteLevel(add_prefix_space={step[1]}, use_regex={step[2]})")
        elif step[0] == "Digits":
            parts.append(f"Digits(individual_digits={step[1]})")
        else:
            parts.append(str(step[0]))
    return "[" + ", ".join(parts) + "]" if parts else "none"


_reported: set[tuple[str, str]] = set()


def detect_pre_tokenizer(tokenizer_json: dict[str, Any], where: str) -> str:
    """The llama.cpp pre-tokenizer name for a byte-level BPE tokenizer.json.

    ``where`` names the file for error messages. Raises UnsupportedModelError when the
    tokenizer's pre-tokenizer or normalizer is one llama.cpp cannot reproduce.
    """
    normalizer = tokenizer_json.get("normalizer")
    if normalizer is not None and (
        not isinstance(normalizer, dict) or normalizer.get("type") not in ("NFC",)
    ):
        kind = normalizer.get("type") if isinstance(normalizer, dict) else normalizer
        raise UnsupportedModelError(
            f"{where}: byte-level BPE tokenizer with a {kind} normalizer is not supported "
            "(llama.cpp would tokenize differently); use a model with a supported tokenizer"
        )
    pre = tokenizer_json.get("pre_tokenizer")
    steps = tuple(_steps(pre))
    for name, known in KNOWN_PRE_TOKENIZERS:
        if steps == known:
            ignore = bool((tokenizer_json.get("model") or {}).get("ignore_merges", False))
            if ignore != _IGNORE_MERGES.get(name, False):
                logger.warning(
                    "%s: ignore_merges=%s but llama.cpp's %r pre-tokenizer uses %s; "
                    "a few rare words may tokenize differently",
                    where,
                    ignore,
                    name,
                    _IGNORE_MERGES.get(name, False),
                )
            if (where, name) not in _reported:  # a build inspects, then converts: say it once
                _reported.add((where, name))
                logger.info("pre-tokenizer %s -> llama.cpp %r", describe(pre), name)
            return name
    supported = ", ".join(name for name, _ in KNOWN_PRE_TOKENIZERS)
    raise UnsupportedModelError(
        f"{where}: unknown pre-tokenizer {describe(pre)} (packer maps only: {supported}); "
        "this tokenizer cannot be converted yet"
    )
