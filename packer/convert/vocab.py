"""Tokenizer -> GGUF vocabulary.

Two tokenizer families are supported:

* ``tokenizer.json`` with a GPT-2 style byte-level BPE model -> llama.cpp ``gpt2`` model,
  with tokens, types, merges and the ``tokenizer.ggml.pre`` name detected from the
  tokenizer's own pre-tokenizer (see :mod:`packer.convert.pretokenizer`);
* SentencePiece ``tokenizer.model`` (Llama-2 / TinyLlama style) -> llama.cpp ``llama``
  model with scores and types;
* encoder (embedding) models' ``tokenizer.json``: WordPiece -> llama.cpp ``bert``, Unigram
  without a ``tokenizer.model`` -> llama.cpp ``t5`` (see :mod:`packer.convert.vocab_encoders`).

Special tokens, add_bos/add_eos flags and the chat template come from gguf's
``SpecialVocab`` (tokenizer_config.json, tokenizer.json, config.json), completed by us where
it leaves gaps (e.g. a SentencePiece tokenizer without tokenizer.json).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import gguf

from packer.convert.pretokenizer import detect_pre_tokenizer
from packer.convert.spm_model import PIECE_USER_DEFINED, parse_spm_model
from packer.convert.vocab_encoders import EncoderTokens, unigram_tokens, wordpiece_tokens
from packer.errors import ConversionError, SourceError, UnsupportedModelError

logger = logging.getLogger(__name__)

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_MODEL = "tokenizer.model"
TOKENIZER_CONFIG = "tokenizer_config.json"
CHAT_TEMPLATE_JINJA = "chat_template.jinja"
CHAT_TEMPLATE_JSON = "chat_template.json"

MODEL_BPE = "gpt2"
MODEL_SPM = "llama"
MODEL_WPM = "bert"  # WordPiece
MODEL_UGM = "t5"  # Unigram (SentencePiece's, as in tokenizer.json)

_SPECIAL_TYPES = ("bos", "eos", "unk", "pad")
_ADDED_TOKEN_SCORE = -1000.0


@dataclass(frozen=True)
class TokenizerSpec:
    """Which tokenizer a checkpoint has, found cheaply before converting anything."""

    model: str  # "gpt2" (byte-level BPE), "llama" (SentencePiece), "bert" or "t5"
    pre: str | None  # llama.cpp pre-tokenizer name, BPE only
    file: Path


# Parsed JSON files by (path, inode, size, mtime): tokenizer.json (megabytes) is needed by
# several steps of one conversion. Kept small; cleared by clear_json_cache().
_JSON_CACHE: dict[tuple[str, int, int, int], Any] = {}
_JSON_CACHE_SIZE = 8


def read_json(path: Path) -> Any:
    """Parse a JSON file of the checkpoint; ConversionError naming the file if it is broken.

    The result is shared by later calls for the same unchanged file: do not modify it.
    """
    try:
        stat = os.stat(path)
        key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if key in _JSON_CACHE:
            return _JSON_CACHE[key]
        with open(path, "rb") as f:
            raw = f.read()
        value = json.loads(raw.decode("utf-8"))
    except OSError as err:
        raise SourceError(f"cannot read {path}: {err.strerror or err}; check the file") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConversionError(f"{path} is not valid JSON ({err}); re-download it") from err
    if len(_JSON_CACHE) >= _JSON_CACHE_SIZE:
        del _JSON_CACHE[next(iter(_JSON_CACHE))]
    _JSON_CACHE[key] = value
    return value


def clear_json_cache() -> None:
    """Forget the parsed JSON files (frees tokenizer.json's memory)."""
    _JSON_CACHE.clear()


def _is_byte_level_bpe(tokenizer_json: dict[str, Any]) -> bool:
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        return False
    decoder = tokenizer_json.get("decoder") or {}
    return "ByteLevel" in json.dumps(tokenizer_json.get("pre_tokenizer")) or (
        decoder.get("type") == "ByteLevel"
    )


def detect_tokenizer(src: Path) -> TokenizerSpec:
    """Find the checkpoint's tokenizer and check that we can convert it."""
    tj_path = src / TOKENIZER_JSON
    spm_path = src / TOKENIZER_MODEL
    kind = None
    if tj_path.is_file():
        tokenizer_json = read_json(tj_path)
        if not isinstance(tokenizer_json, dict) or not isinstance(
            tokenizer_json.get("model"), dict
        ):
            raise ConversionError(f"{tj_path} has no 'model' section; re-download it")
        model = tokenizer_json["model"]
        kind = model.get("type")
        if _is_byte_level_bpe(tokenizer_json):
            for key in ("continuing_subword_prefix", "end_of_word_suffix"):
                if model.get(key):
                    raise UnsupportedModelError(
                        f"{tj_path}: BPE with {key}={model[key]!r} is not supported by "
                        "llama.cpp; use a model with a GPT-2 style tokenizer"
                    )
            pre = detect_pre_tokenizer(tokenizer_json, str(tj_path))
            return TokenizerSpec(MODEL_BPE, pre, tj_path)
        if kind == "WordPiece":
            return TokenizerSpec(MODEL_WPM, "default", tj_path)
        if kind == "Unigram" and not spm_path.is_file():
            return TokenizerSpec(MODEL_UGM, "default", tj_path)
    if spm_path.is_file():
        return TokenizerSpec(MODEL_SPM, None, spm_path)
    if kind is not None:
        raise UnsupportedModelError(
            f"{tj_path}: {kind} tokenizer without a byte-level pre-tokenizer or a "
            f"{TOKENIZER_MODEL} is not supported; add the SentencePiece {TOKENIZER_MODEL} file"
        )
    raise SourceError(
        f"no tokenizer ({TOKENIZER_JSON} or {TOKENIZER_MODEL}) in {src}; "
        "download the tokenizer files with the model"
    )


def _chat_template_file(src: Path) -> str | None:
    jinja = src / CHAT_TEMPLATE_JINJA
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    if (src / CHAT_TEMPLATE_JSON).is_file():
        template = read_json(src / CHAT_TEMPLATE_JSON)
        if isinstance(template, dict) and isinstance(template.get("chat_template"), str):
            return str(template["chat_template"])
    return None


def has_chat_template(src: Path) -> bool:
    config_path = src / TOKENIZER_CONFIG
    if config_path.is_file():
        config = read_json(config_path)
        if isinstance(config, dict) and config.get("chat_template"):
            return True
    return _chat_template_file(src) is not None


@dataclass
class Vocab:
    spec: TokenizerSpec
    tokens: list[str]
    types: list[int]
    scores: list[float] | None
    special: gguf.SpecialVocab
    add_space_prefix: bool | None = None
    remove_extra_whitespaces: bool | None = None
    charsmap: bytes | None = None  # SentencePiece's normalization table (UGM)

    def write(self, writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model(self.spec.model)
        if self.spec.pre:
            writer.add_tokenizer_pre(self.spec.pre)
        writer.add_token_list(self.tokens)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        writer.add_token_types(self.types)
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
        if self.remove_extra_whitespaces is not None:
            writer.add_remove_extra_whitespaces(self.remove_extra_whitespaces)
        if self.charsmap:
            writer.add_precompiled_charsmap(self.charsmap)
        self.special.add_to_gguf(writer, quiet=True)


def _bpe_tokens(path: Path) -> dict[int, tuple[str, int]]:
    tokenizer_json = read_json(path)
    vocab = tokenizer_json["model"].get("vocab")
    if not isinstance(vocab, dict):
        raise ConversionError(f"{path}: model.vocab is missing; re-download the tokenizer")
    if vocab and not (set(map(type, vocab.values())) == {int} and min(vocab.values()) >= 0):
        for text, token_id in vocab.items():
            if not isinstance(token_id, int) or token_id < 0:
                raise ConversionError(f"{path}: token {text!r} has invalid id {token_id!r}")
    normal = int(gguf.TokenType.NORMAL)
    entries = dict(zip(vocab.values(), zip(vocab.keys(), repeat(normal)), strict=True))
    for added in tokenizer_json.get("added_tokens") or []:
        if not isinstance(added, dict):
            raise ConversionError(f"{path}: added token {added!r} is not an object")
        token_id, content = added.get("id"), added.get("content")
        if not isinstance(token_id, int) or token_id < 0 or not isinstance(content, str):
            raise ConversionError(f"{path}: added token {added!r} has no valid id/content")
        kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        entries[token_id] = (content, int(kind))
    return entries


def _bpe_merges(path: Path) -> list[str] | None:
    """tokenizer.json's merges as GGUF wants them ("a b", a space inside a part written as
    U+0120), or None where gguf's SpecialVocab must look itself (no merges in tokenizer.json,
    or a format it may reject). Same result as SpecialVocab's, without its per-character
    loop over every merge."""
    model = read_json(path).get("model")
    merges = model.get("merges") if isinstance(model, dict) else None
    if not isinstance(merges, list) or not merges:
        return None
    first = merges[0]
    if isinstance(first, str):
        return merges
    if not (isinstance(first, list) and len(first) == 2 and isinstance(first[0], str)):
        return None
    try:
        joined = list(map(" ".join, merges))
        # each joined pair has len(pair) - 1 spaces, unless a part has spaces of its own
        if sum(map(str.count, joined, repeat(" "))) != sum(map(len, merges)) - len(merges):
            spaced = [i for i, t in enumerate(joined) if t.count(" ") != len(merges[i]) - 1]
            logger.warning("%s: spaces in merges, written as %r", path, "\u0120")
            for i in spaced:
                joined[i] = " ".join(part.replace(" ", "\u0120") for part in merges[i])
    except (TypeError, AttributeError):
        return None  # malformed: gguf's SpecialVocab reports it
    return joined


def _special_vocab(src: Path, load_merges: bool, n_vocab: int) -> gguf.SpecialVocab:
    """gguf's SpecialVocab (special tokens, add_* flags, chat template) for ``src``.

    SpecialVocab parses tokenizer.json again (about 50 ms for a 49k-token vocabulary) but,
    without merges to load, uses none of its vocabulary or merges. So it reads a temporary
    folder instead: links to the checkpoint's files, and a tokenizer.json without those two
    (written from the copy parsed already, in about a millisecond).
    """
    tj_path = src / TOKENIZER_JSON
    tokenizer_json = read_json(tj_path) if not load_merges and tj_path.is_file() else None
    model = tokenizer_json.get("model") if isinstance(tokenizer_json, dict) else None
    if not isinstance(tokenizer_json, dict) or not isinstance(model, dict):
        return gguf.SpecialVocab(src, load_merges=load_merges, n_vocab=n_vocab)
    slim = {k: v for k, v in model.items() if k not in ("vocab", "merges")}
    try:
        tmp = tempfile.mkdtemp(prefix="packer-vocab-")
    except OSError:  # no temporary folder: let it read the original
        return gguf.SpecialVocab(src, load_merges=False, n_vocab=n_vocab)
    try:
        for entry in os.listdir(src):
            if entry != TOKENIZER_JSON:
                os.symlink(os.path.abspath(src / entry), os.path.join(tmp, entry))
        with open(os.path.join(tmp, TOKENIZER_JSON), "w", encoding="utf-8") as f:
            json.dump({**tokenizer_json, "model": slim}, f)
    except OSError:  # no symlinks here: let it read the original
        return gguf.SpecialVocab(src, load_merges=False, n_vocab=n_vocab)
    else:
        return gguf.SpecialVocab(tmp, load_merges=False, n_vocab=n_vocab)
    finally:
        _remove_links(tmp)


def _remove_links(folder: str) -> None:
    """Remove a folder of links and plain files (never following the links)."""
    try:
        for entry in os.listdir(folder):
            os.unlink(os.path.join(folder, entry))
        os.rmdir(folder)
    except OSError as err:  # pragma: no cover - nothing more we can do
        logger.debug("could not remove temporary folder %s: %s", folder, err)


def _added_tokens_from_configs(src: Path) -> dict[int, tuple[str, bool]]:
    """Added tokens declared by tokenizer_config.json / tokenizer.json: id -> (text, special)."""
    added: dict[int, tuple[str, bool]] = {}
    tj_path = src / TOKENIZER_JSON
    if tj_path.is_file():
        tokenizer_json = read_json(tj_path)
        entries = tokenizer_json.get("added_tokens") if isinstance(tokenizer_json, dict) else None
        for entry in entries or []:
            if (
                isinstance(entry, dict)
                and isinstance(entry.get("id"), int)
                and isinstance(entry.get("content"), str)
            ):
                added[entry["id"]] = (entry["content"], bool(entry.get("special")))
    tc_path = src / TOKENIZER_CONFIG
    if tc_path.is_file():
        config = read_json(tc_path)
        decoder = config.get("added_tokens_decoder") if isinstance(config, dict) else None
        for key, entry in (decoder or {}).items():
            if (
                str(key).isdigit()
                and isinstance(entry, dict)
                and isinstance(entry.get("content"), str)
            ):
                added[int(key)] = (entry["content"], bool(entry.get("special")))
    return added


def _spm_tokens(
    src: Path, path: Path
) -> tuple[dict[int, tuple[str, int]], dict[int, float], Any, bool]:
    try:
        spm_vocab = gguf.vocab.SentencePieceVocab(src)
        pieces = list(spm_vocab.all_tokens())
        info = parse_spm_model(path.read_bytes())
    except OSError as err:
        raise SourceError(f"cannot read {path}: {err.strerror or err}; check the file") from err
    except Exception as err:  # sentencepiece raises RuntimeError, gguf ValueError
        raise ConversionError(
            f"{path} is not a valid SentencePiece model ({err}); re-download it"
        ) from err
    if info.model_type != "bpe":
        logger.warning(
            "%s is a SentencePiece %s model; llama.cpp tokenizes it BPE-style, so some "
            "texts may split differently",
            path,
            info.model_type,
        )
    if info.normalizer_name not in ("", "identity"):
        logger.warning(
            "%s normalizes text with %r, which llama.cpp does not apply; "
            "unusual characters may tokenize differently",
            path,
            info.normalizer_name,
        )
    if info.remove_extra_whitespaces:
        logger.warning(
            "%s collapses repeated spaces, which llama.cpp does not; texts with repeated "
            "spaces may tokenize differently",
            path,
        )
    entries: dict[int, tuple[str, int]] = {}
    scores: dict[int, float] = {}
    for token_id, (text, score, kind) in enumerate(pieces):
        if (
            kind == gguf.TokenType.NORMAL
            and token_id < len(info.piece_types)
            and info.piece_types[token_id] == PIECE_USER_DEFINED
        ):
            kind = gguf.TokenType.USER_DEFINED
        entries[token_id] = (text.decode("utf-8"), int(kind))
        scores[token_id] = float(score)
    for token_id, (text, special) in _added_tokens_from_configs(src).items():
        kind = gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED
        if token_id not in entries:
            entries[token_id] = (text, kind)
            scores[token_id] = _ADDED_TOKEN_SCORE
        elif entries[token_id][1] == gguf.TokenType.NORMAL and entries[token_id][0] == text:
            entries[token_id] = (text, kind)
    return entries, scores, spm_vocab.sentencepiece_tokenizer, info.add_dummy_prefix


def _special_token_text(entry: Any) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("content"), str):
        return str(entry["content"])
    return None


def load_vocab(src: Path, n_vocab: int, spec: TokenizerSpec | None = None) -> Vocab:
    """Build the GGUF vocabulary, padded to the model's ``n_vocab`` embedding rows.

    ``spec``: what :func:`detect_tokenizer` found, when the caller already asked it."""
    if spec is None:
        spec = detect_tokenizer(src)
    processor = None
    add_space_prefix: bool | None = None
    scores_by_id: dict[int, float] | None = None
    encoder: EncoderTokens | None = None
    if spec.model == MODEL_BPE:
        entries = _bpe_tokens(spec.file)
    elif spec.model in (MODEL_WPM, MODEL_UGM):
        read = wordpiece_tokens if spec.model == MODEL_WPM else unigram_tokens
        encoder = read(read_json(spec.file), spec.file)
        entries, scores_by_id = encoder.entries, encoder.scores
        add_space_prefix = encoder.add_space_prefix
    else:
        entries, scores_by_id, processor, add_space_prefix = _spm_tokens(src, spec.file)

    n_tokens = max(entries) + 1 if entries else 0
    if n_tokens > n_vocab:
        raise ConversionError(
            f"the tokenizer has {n_tokens} tokens but config.json vocab_size (embedding rows) "
            f"is {n_vocab}; the tokenizer does not belong to this model"
        )
    if n_tokens < n_vocab:
        logger.info("padding the vocabulary from %d to %d tokens", n_tokens, n_vocab)
    tokens = [""] * n_vocab
    types = [int(gguf.TokenType.UNUSED)] * n_vocab
    filled = 0
    for token_id, (text, kind) in entries.items():
        if token_id >= 0:
            tokens[token_id] = text
            types[token_id] = int(kind)
            filled += 1
    if filled < n_vocab:
        for token_id in range(n_vocab):
            if token_id not in entries:
                tokens[token_id] = f"[PAD{token_id}]"
    scores: list[float] | None = None
    if scores_by_id is not None:
        scores = [scores_by_id.get(token_id, _ADDED_TOKEN_SCORE) for token_id in range(n_vocab)]

    merges = _bpe_merges(spec.file) if spec.model == MODEL_BPE else None
    try:
        special = _special_vocab(src, spec.model == MODEL_BPE and merges is None, n_vocab)
    except (ValueError, KeyError, TypeError) as err:
        raise ConversionError(f"cannot read the special tokens of {src}: {err}") from err
    if merges is not None:
        special.merges = merges
        special.load_merges = True
    if spec.model == MODEL_BPE and not special.merges:
        raise ConversionError(f"{spec.file} has no BPE merges; re-download the tokenizer")

    if encoder is None:
        _complete_special_tokens(src, special, tokens, processor)
    if special.chat_template is None:
        special.chat_template = _chat_template_file(src)
    vocab = Vocab(spec, tokens, types, scores, special, add_space_prefix)
    if encoder is not None:
        vocab.remove_extra_whitespaces = encoder.remove_extra_whitespaces
        vocab.charsmap = encoder.charsmap
    return vocab


def _complete_special_tokens(
    src: Path, special: gguf.SpecialVocab, tokens: list[str], processor: Any
) -> None:
    """Fill special token ids and add_* flags that SpecialVocab could not find."""
    config: dict[str, Any] = {}
    if (src / TOKENIZER_CONFIG).is_file():
        loaded = read_json(src / TOKENIZER_CONFIG)
        config = loaded if isinstance(loaded, dict) else {}
    for typ in _SPECIAL_TYPES:
        if typ in special.special_token_ids:
            continue
        text = _special_token_text(config.get(f"{typ}_token"))
        if text is not None and text in tokens:
            special.special_token_ids[typ] = tokens.index(text)  # the first with that text
        elif processor is not None:
            token_id = int(getattr(processor, f"{typ}_id")())
            if 0 <= token_id < len(tokens):
                special.special_token_ids[typ] = token_id
    is_spm = processor is not None
    # HF defaults: LlamaTokenizer adds BOS; byte-level BPE tokenizers only via post-processor.
    special.add_special_token.setdefault("bos", is_spm)
    special.add_special_token.setdefault("eos", False)
    for typ in ("bos", "eos"):
        if special.add_special_token[typ] and typ not in special.special_token_ids:
            logger.warning("tokenizer asks to add a %s token but has none; not adding it", typ)
            special.add_special_token[typ] = False
