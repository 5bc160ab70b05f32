"""How an embedding checkpoint turns token vectors into one sentence vector.

sentence-transformers saves its pipeline next to the weights: ``modules.json`` lists the
modules (Transformer, Pooling, optionally Dense and Normalize) and the Pooling module's folder
(``1_Pooling/config.json``) says which pooling: ``pooling_mode_mean_tokens``,
``pooling_mode_cls_token`` or ``pooling_mode_lasttoken``. llama.cpp pools by the GGUF key
``{arch}.pooling_type``; normalization (a ``Normalize`` module) has no llama.cpp key, so it is
recorded as the runtime's ``NORMALIZE_KEY`` (:mod:`packer.runtime.embed`), which it reads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from packer.convert.vocab import read_json
from packer.errors import ConversionError, UnsupportedModelError
from packer.runtime.embed import NORMALIZE_KEY

logger = logging.getLogger(__name__)

_MODES = {
    "pooling_mode_mean_tokens": gguf.PoolingType.MEAN,
    "pooling_mode_cls_token": gguf.PoolingType.CLS,
    "pooling_mode_lasttoken": gguf.PoolingType.LAST,
}
_OTHER_MODES = (
    "pooling_mode_max_tokens",
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
)
_ST = "sentence_transformers.models."
_KNOWN_MODULES = (_ST + "Transformer", _ST + "Pooling", _ST + "Normalize")
_DENSE = _ST + "Dense"
_IDENTITY = ("torch.nn.modules.linear.Identity", "torch.nn.Identity")


@dataclass(frozen=True)
class Pooling:
    type: gguf.PoolingType
    normalize: bool
    # Dense modules after the pooling (embeddinggemma): their folders, in order
    dense: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.type.name.lower()

    def add_to_gguf(self, writer: gguf.GGUFWriter) -> None:
        writer.add_pooling_type(self.type)
        writer.add_bool(NORMALIZE_KEY, self.normalize)


def _modules(src: Path) -> list[dict[str, Any]] | None:
    path = src / "modules.json"
    if not path.is_file():
        return None
    modules = read_json(path)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ConversionError(f"{path} is not a list of modules; re-download it")
    return modules


def _pooling_mode(config_path: Path) -> gguf.PoolingType:
    config = read_json(config_path)
    if not isinstance(config, dict):
        raise ConversionError(f"{config_path} is not a JSON object; re-download it")
    chosen = [key for key in (*_MODES, *_OTHER_MODES) if config.get(key) is True]
    if len(chosen) != 1 or chosen[0] not in _MODES:
        found = ", ".join(chosen) or "none"
        raise UnsupportedModelError(
            f"{config_path}: unknown pooling ({found}); packer converts mean, cls or "
            "lasttoken pooling: set exactly one of those to true"
        )
    return _MODES[chosen[0]]


def _check_dense(src: Path, module: dict[str, Any]) -> str:
    """A Dense module llama.cpp can apply (linear, no bias, no activation): its folder."""
    folder = str(module.get("path", ""))
    path = src / folder / "config.json"
    config = read_json(path) if path.is_file() else None
    if not isinstance(config, dict):
        raise ConversionError(f"no {path} for the Dense module; re-download the model")
    if config.get("bias") or config.get("activation_function") not in (*_IDENTITY, None):
        raise UnsupportedModelError(
            f"{path}: a Dense module with a bias or an activation is not supported by llama.cpp"
        )
    return folder


def read_pooling(
    src: Path, default: gguf.PoolingType = gguf.PoolingType.MEAN, dense: bool = False
) -> Pooling:
    """The checkpoint's sentence-transformers pooling and normalization (``dense``: Dense
    modules after the pooling are allowed, for the architectures llama.cpp applies them to).

    Without ``modules.json`` (a plain transformers checkpoint) the model card's usual recipe
    is assumed: ``default`` pooling, normalized; a warning says so.
    """
    modules = _modules(src)
    if modules is None:
        pooling_dir = src / "1_Pooling"
        if (pooling_dir / "config.json").is_file():
            return Pooling(_pooling_mode(pooling_dir / "config.json"), True)
        logger.warning(
            "%s has no sentence-transformers modules.json: assuming %s pooling and unit-length "
            "vectors (add 1_Pooling/config.json to choose)",
            src,
            default.name.lower(),
        )
        return Pooling(default, True)
    pooling_type: gguf.PoolingType | None = None
    normalize = False
    dense_paths: list[str] = []
    for module in modules:
        kind = str(module.get("type", ""))
        if dense and kind == _DENSE and pooling_type is not None and not normalize:
            dense_paths.append(_check_dense(src, module))
            continue
        if kind not in _KNOWN_MODULES:
            raise UnsupportedModelError(
                f"{src / 'modules.json'}: module {kind or module!r} is not supported (packer "
                "converts Transformer, Pooling and Normalize); use a model without it"
            )
        if kind.endswith(".Pooling"):
            path = src / str(module.get("path", "")) / "config.json"
            if not path.is_file():
                raise ConversionError(f"no {path} for the Pooling module; re-download the model")
            pooling_type = _pooling_mode(path)
        elif kind.endswith(".Normalize"):
            normalize = True
    if pooling_type is None:
        raise UnsupportedModelError(
            f"{src / 'modules.json'} has no Pooling module; packer needs one to know how to "
            "pool (mean, cls or lasttoken)"
        )
    return Pooling(pooling_type, normalize, tuple(dense_paths))
