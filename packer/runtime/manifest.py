"""The manifest of a model.run: what the file holds, what it was built from, how it runs.

``packer build`` fills a :class:`Manifest` (``packer.build``, then ``packer.pack`` adds the
payload's size and checksum) and appends :meth:`Manifest.to_json` to the file; model.run reads
it back with :meth:`Manifest.from_json` (see :mod:`packer.runtime.payload` for where it sits).

The JSON is one flat object plus the ``runtime`` section, keys sorted, so that the same build
gives the same bytes. Reading is tolerant: unknown keys are ignored and missing ones get their
defaults, so files from older (and newer, same-format) packers still start. Only the payload's
``gguf_size`` and ``gguf_sha256`` are required: without them the model cannot be unpacked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from packer.runtime.errors import BundleError

_ZEROS = "0" * 64
FORMAT_VERSION = 2  # the layout version (packer.runtime.payload), recorded as "format"


@dataclass(frozen=True)
class RuntimeInfo:
    """The manifest's ``runtime`` section: the frozen runtime the file ships."""

    flavour: str = ""  # cpu | cuda (packer.stub.FLAVOURS)
    stub: str = ""  # the stub's key (packer.stub.stub_key): which runtime build
    llama_cpp: str = ""  # the llama.cpp build inside the runtime; "" where not recorded


@dataclass(frozen=True)
class LicenseFile:
    """A licence text carried by the file (``LICENSE``, ``USE_POLICY.md``, ...), in full."""

    name: str = ""
    text: str = ""


@dataclass(frozen=True)
class PayloadPart:
    """A file next to model.run holding the next piece of its payload (``packer build
    --split``, ``packer usb`` on FAT32): its file name when written, size and sha256."""

    name: str = ""
    size: int = 0
    sha256: str = ""


@dataclass(frozen=True)
class Quality:
    """``packer build --eval``: the file measured against its own unquantized conversion
    (:mod:`packer.runtime.quality`, llama-perplexity's definitions)."""

    reference: str = ""  # the reference's type: F16 | BF16 | F32
    text: str = ""  # the built-in text's language (en | es), or the text file's name
    ctx: int = 0  # tokens per window
    tokens: int = 0  # tokens scored
    perplexity: float = 0.0
    ref_perplexity: float = 0.0  # the reference's, on the same tokens
    kl_divergence: float = 0.0  # mean, in nats
    top1: float = 0.0  # share of positions with the same most likely token, 0..1


@dataclass(frozen=True)
class Manifest:
    # the model
    name: str = ""
    architecture: str | None = None  # Hugging Face architecture, e.g. LlamaForCausalLM
    n_params: int | None = None
    context_length: int | None = None  # the model's trained context
    quant: str = ""  # e.g. Q4_K_M, or the GGUF's own type when packed as it is
    imatrix: str | None = None  # the importance matrix's file name, when one was used
    # what it was built from
    source: str = ""  # what the user gave `packer build`: a path or a hub id
    source_kind: str = ""  # checkpoint | gguf
    source_repo: str | None = None  # hub sources: the repository, revision and exact commit
    source_revision: str | None = None
    source_commit: str | None = None
    # the licence and model card, carried in full (Llama and Gemma licences require handing a
    # copy to every recipient): the model card's `license` id (and `license_name` for "other"),
    # or a GGUF's `general.license`; `license_link` where the terms are (a URL or a file name)
    license: str | None = None
    license_name: str | None = None
    license_link: str | None = None
    license_files: tuple[LicenseFile, ...] = ()
    model_card: str | None = None  # the checkpoint's README.md
    # how it runs
    args: tuple[str, ...] = ()  # model.run flags baked in at build time (--args)
    quality: Quality | None = None  # measured at build time (packer build --eval)
    runtime: RuntimeInfo = field(default_factory=RuntimeInfo)
    # the payload (filled in by packer.pack)
    format: int = FORMAT_VERSION
    compression: str = "zstd"
    gguf_size: int = 0
    gguf_sha256: str = ""
    payload_size: int = 0
    packer_version: str = ""
    # checksums for `model.run --verify` (packer.runtime.verify): the launcher, the runtime
    # archive, the compressed payload (all its parts together), this manifest itself (its JSON
    # with this field's value replaced by 64 zeros), and the parts that hold the payload when it
    # is not inside the file (then the trailer's payload is empty)
    payload_sha256: str = ""
    launcher_sha256: str = ""
    runtime_sha256: str = ""
    manifest_sha256: str = ""
    parts: tuple[PayloadPart, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, fields in their declared order (``--info`` prints this)."""
        out = dataclasses.asdict(self)
        out["args"] = list(self.args)
        out["license_files"] = [dataclasses.asdict(f) for f in self.license_files]
        out["parts"] = [dataclasses.asdict(p) for p in self.parts]
        return out

    def to_json(self) -> bytes:
        """The bytes appended to model.run: deterministic (sorted keys, fixed separators)."""
        text = json.dumps(
            self.to_dict(), indent=1, sort_keys=True, ensure_ascii=False, separators=(",", ": ")
        )
        return text.encode("utf-8")

    def sealed_json(self) -> bytes:
        """:meth:`to_json` with ``manifest_sha256`` filled in (see :func:`seal_matches`)."""
        unsealed = dataclasses.replace(self, manifest_sha256=_ZEROS).to_json()
        digest = hashlib.sha256(unsealed).hexdigest()
        return dataclasses.replace(self, manifest_sha256=digest).to_json()

    @classmethod
    def from_json(cls, data: bytes | str, source: str = "the model file") -> Manifest:
        """Parse a manifest; ``source`` names the file in errors. Raises :class:`BundleError`
        (one line) for a manifest that is no JSON object, has a field of the wrong type, lacks
        the payload's size or checksum, or comes from a newer format."""
        damaged = BundleError(
            f"{source}: the model manifest is damaged: the file is corrupted; copy it again"
        )
        try:
            raw = json.loads(data)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
            raise damaged from exc
        if not isinstance(raw, dict):
            raise damaged
        try:
            fmt = _int(raw.get("format"), 0)
            if fmt > FORMAT_VERSION:
                raise BundleError(
                    f"{source} was made by a newer packer (format {fmt}); "
                    f"this runtime reads format {FORMAT_VERSION}"
                )
            rt = raw.get("runtime") or {}
            if not isinstance(rt, dict):
                raise TypeError("runtime is not an object")
            if "gguf_size" not in raw or "gguf_sha256" not in raw:
                raise KeyError("gguf_size/gguf_sha256")
            return cls(
                name=_str(raw.get("name")),
                architecture=_opt_str(raw.get("architecture")),
                n_params=_opt_int(raw.get("n_params")),
                context_length=_opt_int(raw.get("context_length")),
                quant=_str(raw.get("quant")),
                imatrix=_opt_str(raw.get("imatrix")),
                source=_str(raw.get("source")),
                source_kind=_str(raw.get("source_kind")),
                source_repo=_opt_str(raw.get("source_repo")),
                source_revision=_opt_str(raw.get("source_revision")),
                source_commit=_opt_str(raw.get("source_commit")),
                license=_opt_str(raw.get("license")),
                license_name=_opt_str(raw.get("license_name")),
                license_link=_opt_str(raw.get("license_link")),
                license_files=tuple(_license_file(f) for f in _list(raw.get("license_files"))),
                model_card=_opt_str(raw.get("model_card")),
                args=tuple(_str(a) for a in _list(raw.get("args"))),
                quality=_quality(raw.get("quality")),
                runtime=RuntimeInfo(
                    flavour=_str(rt.get("flavour")),
                    stub=_str(rt.get("stub")),
                    llama_cpp=_str(rt.get("llama_cpp")),
                ),
                format=fmt,
                compression=_str(raw.get("compression"), "zstd"),
                gguf_size=_int(raw.get("gguf_size"), 0),
                gguf_sha256=_str(raw.get("gguf_sha256")),
                payload_size=_int(raw.get("payload_size"), 0),
                packer_version=_str(raw.get("packer_version")),
                payload_sha256=_str(raw.get("payload_sha256")),
                launcher_sha256=_str(raw.get("launcher_sha256")),
                runtime_sha256=_str(raw.get("runtime_sha256")),
                manifest_sha256=_str(raw.get("manifest_sha256")),
                parts=tuple(_part(p) for p in _list(raw.get("parts"))),
            )
        except (TypeError, KeyError) as exc:
            raise damaged from exc


def seal_matches(raw: bytes, recorded: str) -> bool:
    """Whether the manifest bytes ``raw`` are exactly what :meth:`Manifest.sealed_json` wrote:
    their sha256, with the recorded value replaced by zeros, is the recorded value."""
    field_bytes = f'"manifest_sha256": "{recorded}"'.encode()
    if len(recorded) != len(_ZEROS) or raw.count(field_bytes) != 1:
        return False
    unsealed = raw.replace(field_bytes, f'"manifest_sha256": "{_ZEROS}"'.encode())
    return hashlib.sha256(unsealed).hexdigest() == recorded


# -- field readers: None (missing or null) gives the default, a wrong type raises TypeError --


def _str(value: object, default: str = "") -> str:
    if value is None:
        return default
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _opt_str(value: object) -> str | None:
    return None if value is None else _str(value)


def _int(value: object, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _opt_int(value: object) -> int | None:
    return None if value is None else _int(value, 0)


def _license_file(value: object) -> LicenseFile:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {value!r}")
    return LicenseFile(name=_str(value.get("name")), text=_str(value.get("text")))


def _part(value: object) -> PayloadPart:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {value!r}")
    return PayloadPart(
        name=_str(value.get("name")),
        size=_int(value.get("size"), 0),
        sha256=_str(value.get("sha256")),
    )


def _float(value: object) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _quality(value: object) -> Quality | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {value!r}")
    return Quality(
        reference=_str(value.get("reference")),
        text=_str(value.get("text")),
        ctx=_int(value.get("ctx"), 0),
        tokens=_int(value.get("tokens"), 0),
        perplexity=_float(value.get("perplexity")),
        ref_perplexity=_float(value.get("ref_perplexity")),
        kl_divergence=_float(value.get("kl_divergence")),
        top1=_float(value.get("top1")),
    )


def _list(value: object) -> list[object]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {value!r}")
    return value
