"""Just enough of SentencePiece's model file (a protobuf ``ModelProto``) to read the bits
the ``SentencePieceProcessor`` API does not expose: piece types (USER_DEFINED), the model
type, byte fallback, and the normalizer flags (dummy prefix, whitespace handling).

Field numbers are from sentencepiece's ``sentencepiece_model.proto``. We decode the
protobuf wire format by hand so that no protobuf package is needed at runtime.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

# ModelProto.SentencePiece.Type values; identical to gguf.TokenType's values.
PIECE_NORMAL = 1
PIECE_USER_DEFINED = 4

MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}


@dataclass
class SpmModelInfo:
    piece_types: list[int] = field(default_factory=list)
    model_type: str = "unigram"
    byte_fallback: bool = False
    normalizer_name: str = ""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) for each field; varints/fixed as int, length-delimited as bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, value
        elif wire == 1:
            if pos + 8 > len(buf):
                raise ValueError("truncated fixed64")
            yield number, int.from_bytes(buf[pos : pos + 8], "little")
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError("truncated field")
            yield number, buf[pos : pos + length]
            pos += length
        elif wire == 5:
            if pos + 4 > len(buf):
                raise ValueError("truncated fixed32")
            yield number, int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def parse_spm_model(data: bytes) -> SpmModelInfo:
    """Parse a serialized ``ModelProto``; raises ValueError if it is not one."""
    info = SpmModelInfo()
    for number, value in _fields(data):
        if number == 1 and isinstance(value, bytes):  # repeated SentencePiece pieces
            piece_type = PIECE_NORMAL
            for sub_number, sub_value in _fields(value):
                if sub_number == 3 and isinstance(sub_value, int):
                    piece_type = sub_value
            info.piece_types.append(piece_type)
        elif number == 2 and isinstance(value, bytes):  # TrainerSpec
            for sub_number, sub_value in _fields(value):
                if sub_number == 3 and isinstance(sub_value, int):
                    info.model_type = MODEL_TYPES.get(sub_value, str(sub_value))
                elif sub_number == 35 and isinstance(sub_value, int):
                    info.byte_fallback = bool(sub_value)
        elif number == 3 and isinstance(value, bytes):  # NormalizerSpec
            for sub_number, sub_value in _fields(value):
                if sub_number == 1 and isinstance(sub_value, bytes):
                    info.normalizer_name = sub_value.decode("utf-8", "replace")
                elif sub_number == 3 and isinstance(sub_value, int):
                    info.add_dummy_prefix = bool(sub_value)
                elif sub_number == 4 and isinstance(sub_value, int):
                    info.remove_extra_whitespaces = bool(sub_value)
                elif sub_number == 5 and isinstance(sub_value, int):
                    info.escape_whitespaces = bool(sub_value)
    return info
