"""Importance matrices (``--imatrix FILE``) as llama.cpp's ``llama-imatrix`` tool writes them.

Two formats, both read into ``{tensor name: float32 vector}``, the vector being what llama.cpp's
quantizer takes per weight tensor (mean squared activation of each input column, ``ne[0]`` values
per expert):

- GGUF (current llama.cpp): per tensor ``<name>.in_sum2`` (sums of squared activations,
  ``ne[0] x n_experts``) and ``<name>.counts`` (``n_experts`` token counts), both F32; a vector
  is ``in_sum2 / counts`` per expert, 1 where a count is 0.
- legacy ``.dat``: int32 entry count, then per entry int32 name length, name, int32 ncall,
  int32 nval, nval float32 already averaged and multiplied by ncall; a vector is ``values / ncall``
  (as is when ncall is 0). Optional trailer: int32 chunk count, int32 length + dataset name.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from packer.errors import UsageError

HOW_TO_MAKE = (
    "make one with llama.cpp's `llama-imatrix -m MODEL.f16.gguf -f calibration.txt "
    "-o imatrix.gguf` from this model's F16/F32 GGUF and some representative text"
)


class ImatrixError(UsageError):
    """The importance matrix file is missing, corrupt, or made for another model."""


def check_file(path: Path) -> Path:
    """Cheap early check: the file exists and is a readable, non-empty file."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ImatrixError(f"importance matrix {path} not found: {HOW_TO_MAKE}")
    if not path.is_file():
        raise ImatrixError(f"importance matrix {path} is not a file: give the .gguf or .dat file")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ImatrixError(f"cannot read importance matrix {path}: {exc.strerror}") from exc
    return path.absolute()


def load(path: Path) -> dict[str, np.ndarray]:
    """Read ``path`` (GGUF or legacy .dat) into ``{tensor name: float32 vector}``."""
    path = check_file(path)
    with path.open("rb") as f:
        magic = f.read(4)
    try:
        data = _load_gguf(path) if magic == b"GGUF" else _load_dat(path)
    except ImatrixError:
        raise
    except Exception as exc:  # a truncated/garbled file: one line, no traceback
        raise ImatrixError(
            f"{path.name} is not a valid importance matrix ({exc}): {HOW_TO_MAKE}"
        ) from exc
    if not data:
        raise ImatrixError(f"{path.name} holds no importance matrix entries: {HOW_TO_MAKE}")
    for name, vec in data.items():
        if not np.isfinite(vec).all():
            raise ImatrixError(f"{path.name} is corrupt: non-finite values for {name}")
    return data


def _load_gguf(path: Path) -> dict[str, np.ndarray]:
    import gguf

    reader = gguf.GGUFReader(path)
    kind = reader.fields.get("general.type")
    if kind is not None and str(kind.contents()) != "imatrix":
        raise ImatrixError(
            f"{path.name} is a {kind.contents()} GGUF, not an importance matrix: {HOW_TO_MAKE}"
        )
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        for suffix, into in ((".in_sum2", sums), (".counts", counts)):
            if t.name.endswith(suffix):
                if t.tensor_type != gguf.GGMLQuantizationType.F32:
                    raise ImatrixError(f"{path.name} is corrupt: {t.name} is not F32")
                into[t.name[: -len(suffix)]] = np.asarray(t.data, dtype=np.float32).reshape(-1)
    if not sums and not counts:
        raise ImatrixError(
            f"{path.name} is a GGUF without importance matrix tensors (*.in_sum2, *.counts): "
            f"{HOW_TO_MAKE}"
        )
    out: dict[str, np.ndarray] = {}
    for name in sorted(set(sums) | set(counts)):
        if name not in sums or name not in counts:
            raise ImatrixError(f"{path.name} is corrupt: sums and counts do not pair up for {name}")
        s, c = sums[name], np.rint(counts[name])
        if c.size == 0 or s.size % c.size:
            raise ImatrixError(
                f"{path.name} is corrupt: {s.size} sums for {c.size} counts ({name})"
            )
        per = s.reshape(c.size, -1)
        with np.errstate(divide="ignore", invalid="ignore"):
            vec = np.where(c[:, None] > 0, per / np.where(c > 0, c, 1)[:, None], 1.0)
        out[name] = np.ascontiguousarray(vec.reshape(-1), dtype=np.float32)
    return out


def _load_dat(path: Path) -> dict[str, np.ndarray]:
    raw = path.read_bytes()
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(raw):
            raise ValueError(f"truncated at byte {pos}")
        chunk = raw[pos : pos + n]
        pos += n
        return chunk

    def i32() -> int:
        return struct.unpack("<i", take(4))[0]

    n_entries = i32() if len(raw) >= 4 else 0
    if n_entries < 1 or n_entries > len(raw) // 12:
        raise ValueError("bad entry count; neither a GGUF nor a legacy .dat imatrix")
    out: dict[str, np.ndarray] = {}
    for _ in range(n_entries):
        length = i32()
        if length < 1 or length > 4096:
            raise ValueError(f"bad tensor name length {length}")
        name = take(length).decode("utf-8")
        ncall = i32()
        nval = i32()
        if nval < 1:
            raise ValueError(f"bad value count {nval} for {name}")
        vec = np.frombuffer(take(4 * nval), dtype="<f4").astype(np.float32)
        out[name] = vec / np.float32(ncall) if ncall > 0 else vec
    return out


def check_model(imatrix: dict[str, np.ndarray], model_gguf: Path, imatrix_name: str) -> int:
    """Check the matrix fits ``model_gguf``: some names match, every matching size is right.

    Returns how many of the model's tensors it covers (0 when the model cannot be read: the
    quantizer reports that). Raises :class:`ImatrixError` when it was
    plainly made for another model (no name in common, or a row size that differs).
    """
    import gguf

    try:
        reader = gguf.GGUFReader(model_gguf)
    except Exception:  # not a readable GGUF: llama.cpp's quantizer will say why
        return 0
    covered = 0
    for t in reader.tensors:
        vec = imatrix.get(t.name)
        if vec is None:
            continue
        shape = [int(n) for n in t.shape]  # ne[0], ne[1], ne[2], ...
        want = shape[0] * (shape[2] if len(shape) > 2 else 1)
        if vec.size != want:
            if t.name == "token_embd.weight":  # llama.cpp ignores this one too
                continue
            raise ImatrixError(
                f"{imatrix_name} was made for another model: {vec.size} values for {t.name}, "
                f"which needs {want}; {HOW_TO_MAKE}"
            )
        covered += 1
    if covered == 0:
        raise ImatrixError(
            f"{imatrix_name} was made for another model: none of this model's tensors are in it; "
            f"{HOW_TO_MAKE}"
        )
    return covered
