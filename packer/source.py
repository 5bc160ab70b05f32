"""Resolve what the user named (a local checkpoint folder or a .gguf file) into a Source.

Resolvers are tried in order; the hub/alias resolvers of a later issue slot in before the
final "not found" error without changing callers.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from packer.errors import SourceError
from packer.quants import QUANT_TYPES, ftype_name

log = logging.getLogger(__name__)

_QUANT_SUFFIX = re.compile(r"[.\-_](" + "|".join(QUANT_TYPES) + r")$", re.IGNORECASE)


@dataclass(frozen=True)
class Source:
    kind: Literal["checkpoint", "gguf"]
    path: Path
    spec: str  # what the user typed
    name: str  # model name used for the output file and the manifest
    gguf_type: str | None = (
        None  # for GGUF sources: the file's quant/precision ("F16", "Q4_1", ...)
    )
    architecture: str | None = None


def model_name_from_stem(stem: str) -> str:
    """``SmolLM2-135M-Instruct.Q4_1`` -> ``SmolLM2-135M-Instruct``."""
    return _QUANT_SUFFIX.sub("", stem) or stem


def _gguf_source(path: Path, spec: str) -> Source:
    try:
        import gguf

        reader = gguf.GGUFReader(path)
    except Exception as exc:  # gguf raises ValueError/struct errors on garbage
        raise SourceError(
            f"{path} is not a readable GGUF file ({exc}): check the file or download it again"
        ) from exc
    file_type = None
    arch = None
    if "general.file_type" in reader.fields:
        file_type = ftype_name(int(reader.fields["general.file_type"].contents()))
    if "general.architecture" in reader.fields:
        arch = str(reader.fields["general.architecture"].contents())
    if file_type is None:  # older files: judge by the tensors
        types = {t.tensor_type.name for t in reader.tensors if len(t.shape) > 1}
        file_type = next(iter(types)) if len(types) == 1 else None
    return Source(
        "gguf", path, spec, model_name_from_stem(path.stem), gguf_type=file_type, architecture=arch
    )


def resolve(spec: str) -> Source:
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SourceError(
                f"{path} has no config.json: point packer at a Hugging Face checkpoint folder "
                "(config.json + *.safetensors + tokenizer files) or a .gguf file"
            )
        return Source("checkpoint", path.resolve(), spec, path.resolve().name)
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return _gguf_source(path.resolve(), spec)
        raise SourceError(
            f"{path} is a file but not a .gguf: pass a checkpoint folder or a .gguf file"
        )
    if path.exists():
        raise SourceError(f"{path} is neither a folder nor a file")
    hint = ""
    if re.fullmatch(r"[\w.\-]+/[\w.\-]+(@[\w.\-/]+)?", spec):
        hint = " (downloading from the Hugging Face hub is not supported yet: download the checkpoint and pass its folder)"
    raise SourceError(f"no such folder or .gguf file: {spec}{hint}")
