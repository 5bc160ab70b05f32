"""inspect_checkpoint / convert_checkpoint: the converter's public entry points."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from packer.convert.base import (
    OUTTYPES,
    ModelConverter,
    PlannedTensor,
    converter_for,
    numpy_dtype,
)
from packer.convert.gguf_file import DataWriter, header_bytes
from packer.convert.output import atomic_output, check_output_path
from packer.convert.vocab import (
    clear_json_cache,
    detect_tokenizer,
    has_chat_template,
    read_json,
)
from packer.errors import ConversionError, SourceError, UnsupportedModelError, UsageError

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass
class CheckpointInfo:
    """What a checkpoint is, from config.json and the safetensors headers only."""

    path: Path
    architecture: str
    model_name: str  # the folder name, e.g. "SmolLM2-135M-Instruct"
    n_params: int
    dtype: str  # dominant dtype of the weights: "F32", "F16" or "BF16"
    context_length: int
    has_chat_template: bool


def _read_config(src: Path) -> dict[str, Any]:
    if not src.exists():
        raise SourceError(f"model folder {src} does not exist; check the path")
    if not src.is_dir():
        raise SourceError(f"{src} is not a folder; pass a Hugging Face checkpoint folder")
    config_path = src / "config.json"
    if not config_path.is_file():
        raise SourceError(
            f"no config.json in {src}; pass a Hugging Face checkpoint folder (with config.json)"
        )
    try:
        config = read_json(config_path)
    except ConversionError as err:
        raise SourceError(str(err)) from err
    if not isinstance(config, dict):
        raise SourceError(f"{config_path} is not a JSON object; re-download it")
    return config


def _open(src: Path) -> tuple[ModelConverter, CheckpointInfo]:
    src = Path(src)
    config = _read_config(src)
    architectures = config.get("architectures")
    if not isinstance(architectures, list) or not architectures:
        raise UnsupportedModelError(
            f"config.json in {src} names no 'architectures'; packer needs it to pick a converter"
        )
    architecture = str(architectures[0])
    converter = converter_for(architecture)(src, config)
    converter.tokenizer = detect_tokenizer(src)  # fail early on tokenizers we cannot convert
    info = CheckpointInfo(
        path=src,
        architecture=architecture,
        model_name=src.resolve().name,
        n_params=converter.n_params,
        dtype=converter.dominant_dtype,
        context_length=converter.context_length,
        has_chat_template=has_chat_template(src),
    )
    return converter, info


def inspect_checkpoint(src: Path) -> CheckpointInfo:
    """Validate a checkpoint folder cheaply (config.json, tensor headers, tokenizer kind)."""
    try:
        return _open(src)[1]
    finally:
        clear_json_cache()


def write_tensor(data: DataWriter, t: PlannedTensor) -> None:
    """Append one planned tensor: copied as is from the checkpoint, or loaded and encoded."""
    if t.source is not None:
        data.copy_file(t.source.file, t.source.offset, t.nbytes, t.source.name)
        return
    array = t.load()
    if array.shape != t.shape or array.nbytes != t.nbytes:
        raise ConversionError(
            f"tensor {t.name} came out with shape {list(array.shape)}, expected "
            f"{list(t.shape)}; this is a packer bug, please report it"
        )
    data.write_padded(array)


def convert_checkpoint(
    src: Path,
    out: Path,
    outtype: str = "auto",
    progress: Progress | None = None,
) -> CheckpointInfo:
    """Convert a Hugging Face checkpoint folder to one GGUF file at ``out``.

    ``outtype``: "auto" keeps the checkpoint's precision, or "f32" / "f16" / "bf16".
    1-D tensors are always F32. Streams one tensor at a time; writes atomically.
    """
    if outtype not in OUTTYPES:
        raise UsageError(f"unknown outtype {outtype!r}; use one of {', '.join(OUTTYPES)}")
    out = Path(out)
    try:
        converter, info = _open(src)
        check_output_path(out)
        vocab = converter.load_vocab()
    finally:
        clear_json_cache()  # tokenizer.json was parsed once for all steps; free it
    planned = converter.plan(outtype)
    total = sum(t.nbytes for t in planned)
    logger.info(
        "converting %s (%s, %d tensors, %.1f MB) -> %s",
        info.model_name,
        info.architecture,
        len(planned),
        total / 1e6,
        out,
    )

    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[converter.gguf_arch])
    converter.add_metadata(writer, info.model_name, planned, vocab)
    for t in planned:
        writer.add_tensor_info(
            t.name,
            t.shape,
            numpy_dtype(t.qtype),
            t.nbytes,
            raw_dtype=t.qtype if t.qtype == gguf.GGMLQuantizationType.BF16 else None,
        )
    header = header_bytes(writer)
    with atomic_output(out) as fh:
        # straight to the file descriptor (os.write, copy_file_range): fh's buffer stays empty
        data = DataWriter(fh.fileno(), writer.data_alignment)
        data.write_padded(header)
        done = 0
        if progress is not None:
            progress(0, total)
        for t in planned:
            write_tensor(data, t)
            done += t.nbytes
            if progress is not None:
                progress(done, total)
    return info
