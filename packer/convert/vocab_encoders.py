"""The vocabularies of encoder (embedding) models, from ``tokenizer.json``.

* WordPiece (BERT: all-MiniLM, bge-*-en) -> llama.cpp ``bert`` vocabulary. llama.cpp marks
  word starts instead of continuations: a token ``##ing`` is written ``ing`` and a word-start
  token ``play`` is written ``\u2581play``; special tokens stay as they are. llama.cpp's
  WordPiece always lowercases and strips accents (BERT "uncased"), so a cased vocabulary is
  refused.
* Unigram (XLM-RoBERTa: bge-m3, multilingual-e5) -> llama.cpp ``t5`` (UGM) vocabulary with
  scores, the SentencePiece normalization table (``precompiled_charsmap``) and its whitespace
  flags, read from the tokenizer's normalizer and pre-tokenizer.
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from packer.errors import ConversionError, UnsupportedModelError

logger = logging.getLogger(__name__)

PHANTOM_SPACE = "\u2581"


@dataclass
class EncoderTokens:
    entries: dict[int, tuple[str, int]]  # id -> (text as llama.cpp wants it, token type)
    scores: dict[int, float] | None = None
    add_space_prefix: bool | None = None
    remove_extra_whitespaces: bool | None = None
    charsmap: bytes | None = None


def _added(tokenizer_json: dict[str, Any], path: Path) -> dict[int, tuple[str, bool]]:
    out: dict[int, tuple[str, bool]] = {}
    for added in tokenizer_json.get("added_tokens") or []:
        if not isinstance(added, dict):
            raise ConversionError(f"{path}: added token {added!r} is not an object")
        token_id, content = added.get("id"), added.get("content")
        if not isinstance(token_id, int) or token_id < 0 or not isinstance(content, str):
            raise ConversionError(f"{path}: added token {added!r} has no valid id/content")
        out[token_id] = (content, bool(added.get("special")))
    return out


def _normalizers(tokenizer_json: dict[str, Any]) -> list[dict[str, Any]]:
    norm = tokenizer_json.get("normalizer")
    if not isinstance(norm, dict):
        return []
    if norm.get("type") == "Sequence":
        return [n for n in norm.get("normalizers") or [] if isinstance(n, dict)]
    return [norm]


def wordpiece_tokens(tokenizer_json: dict[str, Any], path: Path) -> EncoderTokens:
    model = tokenizer_json["model"]
    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        raise ConversionError(f"{path}: model.vocab is missing; re-download the tokenizer")
    prefix = model.get("continuing_subword_prefix", "##")
    for norm in _normalizers(tokenizer_json):
        if norm.get("type") == "BertNormalizer" and norm.get("lowercase") is False:
            raise UnsupportedModelError(
                f"{path}: a cased WordPiece tokenizer; llama.cpp's BERT tokenizer always "
                "lowercases, so this model cannot be converted (use an uncased model)"
            )
    added = _added(tokenizer_json, path)
    entries: dict[int, tuple[str, int]] = {}
    for text, token_id in vocab.items():
        if not isinstance(token_id, int) or token_id < 0:
            raise ConversionError(f"{path}: token {text!r} has invalid id {token_id!r}")
        if token_id in added and added[token_id][1]:
            entries[token_id] = (text, int(gguf.TokenType.CONTROL))
        elif prefix and text.startswith(prefix):
            entries[token_id] = (text[len(prefix) :], int(gguf.TokenType.NORMAL))
        else:
            entries[token_id] = (PHANTOM_SPACE + text, int(gguf.TokenType.NORMAL))
    for token_id, (text, special) in added.items():
        if token_id not in entries:
            kind = gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED
            entries[token_id] = (text, int(kind))
    return EncoderTokens(entries)


def _charsmap(norm: dict[str, Any], path: Path) -> bytes:
    try:
        return base64.b64decode(norm.get("precompiled_charsmap") or "", validate=True)
    except (binascii.Error, ValueError) as err:
        raise ConversionError(f"{path}: precompiled_charsmap is not base64 ({err})") from err


def unigram_tokens(tokenizer_json: dict[str, Any], path: Path) -> EncoderTokens:
    model = tokenizer_json["model"]
    vocab = model.get("vocab")
    if not isinstance(vocab, list):
        raise ConversionError(f"{path}: Unigram model.vocab is missing; re-download it")
    if model.get("byte_fallback"):
        raise UnsupportedModelError(
            f"{path}: a Unigram tokenizer with byte fallback is not supported by llama.cpp's "
            "UGM tokenizer"
        )
    unk_id = model.get("unk_id")
    added = _added(tokenizer_json, path)
    entries: dict[int, tuple[str, int]] = {}
    scores: dict[int, float] = {}
    for token_id, entry in enumerate(vocab):
        if (
            not isinstance(entry, list)
            or len(entry) != 2
            or not isinstance(entry[0], str)
            or not isinstance(entry[1], (int, float))
        ):
            raise ConversionError(
                f"{path}: Unigram entry {token_id} {entry!r} is not [piece, score]"
            )
        kind = gguf.TokenType.NORMAL
        if token_id == unk_id:
            kind = gguf.TokenType.UNKNOWN
        elif token_id in added:
            kind = gguf.TokenType.CONTROL if added[token_id][1] else gguf.TokenType.USER_DEFINED
        entries[token_id] = (entry[0], int(kind))
        scores[token_id] = float(entry[1])
    for token_id, (text, special) in added.items():
        if token_id not in entries:
            kind = gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED
            entries[token_id] = (text, int(kind))
            scores[token_id] = 0.0

    charsmap: bytes | None = None
    collapse = False
    for norm in _normalizers(tokenizer_json):
        kind = norm.get("type")
        if kind == "Precompiled":
            charsmap = _charsmap(norm, path) or None
        elif kind == "Replace" and (norm.get("pattern") or {}).get("Regex") == " {2,}":
            collapse = True
        elif kind in ("NFKC", "Strip"):
            logger.warning(
                "%s: %s normalization without a precompiled table; llama.cpp skips it, so "
                "unusual characters may tokenize differently",
                path,
                kind,
            )
        else:
            logger.warning("%s: normalizer %s is not applied by llama.cpp", path, kind)
    pre = tokenizer_json.get("pre_tokenizer")
    steps = (
        pre.get("pretokenizers", [])
        if isinstance(pre, dict) and pre.get("type") == "Sequence"
        else [pre]
    )
    metaspace = [s for s in steps if isinstance(s, dict) and s.get("type") == "Metaspace"]
    if not metaspace:
        raise UnsupportedModelError(
            f"{path}: a Unigram tokenizer without a Metaspace pre-tokenizer is not supported "
            "by llama.cpp's UGM tokenizer"
        )
    scheme = metaspace[0].get("prepend_scheme")
    if scheme is None:
        scheme = "always" if metaspace[0].get("add_prefix_space", True) else "never"
    return EncoderTokens(
        entries,
        scores,
        add_space_prefix=scheme != "never",
        remove_extra_whitespaces=collapse,
        charsmap=charsmap,
    )
