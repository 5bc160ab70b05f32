"""Models named on the Hugging Face hub: aliases, ``org/name[@revision]`` ids, downloads.

Names are also taken as people paste them: ``hf.co/org/name:Q4_K_M`` (Ollama's and llama.cpp's
form, ``:QUANT`` picks the file of a GGUF repo) and model page URLs
(``https://huggingface.co/org/name[/tree/REV | /blob/REV/FILE]``); see :func:`split_name`.

Everything goes through ``huggingface_hub`` so its shared cache (``HF_HOME`` / ``HF_HUB_CACHE``),
``HF_ENDPOINT`` mirrors, ``HF_TOKEN`` and ``HF_HUB_OFFLINE=1`` behave exactly as for every other
Hugging Face tool. Only the files the converter reads are downloaded; a GGUF repo contributes the
one file of the asked quant; the repo's licence files and model card (:mod:`packer.licence`) come
along, checked like the rest. Files already in the cache are not fetched again; a connection that
drops mid-file is resumed with an HTTP Range request by huggingface_hub. Every file is checked
against the sha256 (LFS) or git blob id the hub lists before it is used (:mod:`packer.digests`,
once per file); offline, the cached LFS files against the sha256 their blobs are named after.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from packer import digests
from packer.errors import OutputError, PackerError, SourceError, UnsupportedModelError, UsageError
from packer.licence import doc_names
from packer.quants import DEFAULT_QUANT, QUANT_TYPES
from packer.runtime.cache import CacheError, cache_subdir
from packer.runtime.sizes import format_size

log = logging.getLogger(__name__)

# ``org/name`` or ``org/name@revision`` (branch, tag or commit; a branch may contain "/").
HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*)(?:@(?P<rev>[\w.\-/]+))?")
REPO_ID = re.compile(r"[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*")
_REVISION = re.compile(r"[\w.\-/]+")
_ALIAS_SHAPE = re.compile(r"[A-Za-z0-9][\w.\-]*")
# What may follow ``org/name:`` (``Q4_K_M``, ``q8_0``, unsloth's ``UD-Q4_K_XL``).
_TAG = re.compile(r"[A-Za-z0-9][\w.\-]*")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://")
HUB_HOSTS = ("huggingface.co", "www.huggingface.co", "hf.co", "www.hf.co")
COMMIT_SHA = re.compile(r"[0-9a-f]{40}")

# What the converter reads from a checkpoint repo (weights are chosen separately).
CHECKPOINT_EXTRAS = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
    "modules.json",  # sentence-transformers: how an embedding model pools (packer.convert.pooling)
    "1_Pooling/config.json",
)
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_SPLIT_GGUF = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.IGNORECASE)
# Names GGUF uploaders use besides llama.cpp's own.
_QUANT_SPELLINGS = {"F16": ("F16", "FP16"), "F32": ("F32", "FP32"), "BF16": ("BF16",)}


# --------------------------------------------------------------------------------- aliases


@dataclass(frozen=True)
class Alias:
    name: str
    repo: str
    params_b: float  # billions of parameters
    architecture: str
    gated: bool
    note: str


@lru_cache(maxsize=1)
def aliases() -> dict[str, Alias]:
    """The short names of ``packer/data/aliases.json``, keyed by lower-case name."""
    text = resources.files("packer").joinpath("data/aliases.json").read_text(encoding="utf-8")
    table: dict[str, dict[str, Any]] = json.loads(text)["aliases"]
    return {
        name.lower(): Alias(
            name=name,
            repo=str(entry["repo"]),
            params_b=float(entry["params_b"]),
            architecture=str(entry.get("architecture", "")),
            gated=bool(entry.get("gated", False)),
            note=str(entry.get("note", "")),
        )
        for name, entry in table.items()
    }


def lookup_alias(name: str) -> Alias | None:
    """Case-insensitive alias lookup (``tinyllama`` -> TinyLlama)."""
    return aliases().get(name.strip().lower())


def closest_aliases(name: str, n: int = 3) -> list[str]:
    table = aliases()
    keys = difflib.get_close_matches(name.strip().lower(), list(table), n=n, cutoff=0.5)
    if not keys:  # a prefix is a good hint too ("smollm2" -> the SmolLM2 family)
        keys = [k for k in table if k.startswith(name.strip().lower())][:n]
    return [table[k].name for k in keys]


# --------------------------------------------------------------------------------- hub ids


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    revision: str | None = None  # None: the repo's default branch

    @property
    def rev(self) -> str:
        return self.revision or "main"

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id


def parse_hub_id(spec: str) -> HubRef | None:
    m = HUB_ID.fullmatch(spec.strip())
    if not m:
        return None
    return HubRef(m.group("repo"), m.group("rev"))


# --------------------------------------------------------------------------------- pasted names


@dataclass(frozen=True)
class HubName:
    """A hub model as the user wrote it, taken apart (aliases are not looked up yet)."""

    name: str  # "org/name", or an alias when written without a host
    revision: str | None = None  # "@REV" or a URL's /tree/REV, /blob/REV/...
    quant: str | None = None  # the ":QUANT" tag, normalised ("Q4_K_M"); None for none or ":latest"
    filename: str | None = None  # the file of a .../blob/REV/FILE or .../resolve/REV/FILE URL
    url: bool = False  # written with a host: hf.co/..., https://huggingface.co/...


def normalise_quant(text: str) -> str:
    """``q4_k_m`` -> ``Q4_K_M``; the spellings GGUF uploaders use besides llama.cpp's (``fp16``)."""
    name = text.strip().upper()
    for canonical, spellings in _QUANT_SPELLINGS.items():
        if name in spellings:
            return canonical
    return name


def hub_hosts() -> set[str]:
    """Host names whose URLs name hub models: huggingface.co, hf.co and HF_ENDPOINT's host."""
    return {*HUB_HOSTS, urlsplit(endpoint()).netloc.lower()}


def split_name(spec: str) -> HubName | None:
    """Take apart ``name[@rev][:QUANT]``, ``hf.co/org/name[:QUANT]`` and model page URLs.

    ``spec`` without a host gives None when it is not shaped like an alias or ``org/name`` (the
    caller then says whether it looked like a path). A host form that names no model (a dataset,
    a Space, another site, ``hf.co/name``) is a one-line :class:`SourceError`; a bad ``:QUANT``
    after a well-formed name a :class:`UsageError`.
    """
    text = spec.strip()
    scheme = _SCHEME.match(text)
    rest = text[scheme.end() :] if scheme else text
    host, _, path = rest.partition("/")
    if host.lower() in hub_hosts():
        return _split_url(path, spec)
    if scheme:
        raise SourceError(
            f"{spec} is not a Hugging Face model URL: packer downloads from the hub at "
            f"{endpoint()} (https://huggingface.co/ORG/NAME or hf.co/ORG/NAME[:QUANT]); "
            "download anything else yourself and pass the file"
        )
    return _split_plain(text, spec)


def _split_tag(text: str, spec: str, *, strict: bool) -> tuple[str, str | None] | None:
    """``org/name:Q4_K_M@v1`` or ``org/name@v1:Q4_K_M`` -> (``org/name@v1``, ``Q4_K_M``).

    Git forbids ':' in branch and tag names and the hub in repo names, so one ':' is the tag.
    A bad tag raises when ``strict`` and gives None otherwise.
    """
    if ":" not in text:
        return text, None
    before, _, after = text.partition(":")
    tag, at, rev = after.partition("@")
    if not _TAG.fullmatch(tag):
        if not strict:
            return None
        shown = f"{after!r} after the ':' is not a quant" if after else "nothing follows the ':'"
        raise UsageError(
            f"{shown} in {spec!r}: write the repo's quant after one ':', e.g. {before}:Q4_K_M "
            "(a branch or tag goes after '@')"
        )
    quant = normalise_quant(tag)
    return before + at + rev, None if quant == "LATEST" else quant


def _split_plain(text: str, spec: str) -> HubName | None:
    head = text.partition(":")[0].partition("@")[0]
    strict = bool(REPO_ID.fullmatch(head)) or lookup_alias(head) is not None
    split = _split_tag(text, spec, strict=strict)
    if split is None:
        return None
    rest, quant = split
    name, at, rev = rest.partition("@")
    if not (REPO_ID.fullmatch(name) or _ALIAS_SHAPE.fullmatch(name)):
        return None
    if at and not _REVISION.fullmatch(rev):
        return None
    return HubName(name, rev or None, quant)


def _split_url(path: str, spec: str) -> HubName:
    path = re.split(r"[?#]", path, maxsplit=1)[0].strip("/")
    first = path.split("/", 1)[0]
    if first in ("datasets", "spaces"):
        what = "dataset" if first == "datasets" else "Space"
        raise SourceError(
            f"{spec} is a Hugging Face {what}, not a model: give a model page "
            "(https://huggingface.co/ORG/NAME) or hf.co/ORG/NAME[:QUANT]"
        )
    split = _split_tag(path, spec, strict=True)
    assert split is not None
    path, quant = split
    path, at, at_rev = path.partition("@")
    parts = path.split("/")
    if len(parts) < 2 or not REPO_ID.fullmatch(f"{parts[0]}/{parts[1]}"):
        raise SourceError(
            f"{spec} names no model: write hf.co/ORG/NAME[:QUANT] or https://huggingface.co/ORG/NAME"
        )
    repo, tail = f"{parts[0]}/{parts[1]}", parts[2:]
    revision, filename = None, None
    if tail:
        kind, rev, file_parts = tail[0], unquote(tail[1]) if len(tail) > 1 else "", tail[2:]
        if kind not in ("tree", "blob", "resolve", "commit") or not rev:
            raise SourceError(
                f"{spec} is not a model page packer reads: give https://huggingface.co/{repo} "
                "(or its /tree/REV, /blob/REV/FILE)"
            )
        revision = rev
        if kind in ("blob", "resolve") and file_parts:
            filename = unquote("/".join(file_parts))
    if at:
        if not _REVISION.fullmatch(at_rev):
            raise SourceError(f"{spec}: {at_rev!r} is not a branch, tag or commit")
        if revision and revision != at_rev:
            raise UsageError(f"{spec} names two revisions, {revision!r} and {at_rev!r}: give one")
        revision = at_rev
    if quant and filename:
        raise UsageError(f"{spec} names a file and a quant (:{quant}): give one")
    return HubName(repo, revision or None, quant, filename, url=True)


def endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT).rstrip("/")


def cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def is_offline() -> bool:
    from huggingface_hub import constants

    check = getattr(constants, "is_offline_mode", None)  # huggingface_hub >= 1.0
    return bool(check() if check is not None else constants.HF_HUB_OFFLINE)


# --------------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int | None = None


@dataclass(frozen=True)
class Fetched:
    """A downloaded (or cached) model: a checkpoint folder or one GGUF file."""

    kind: Literal["checkpoint", "gguf"]
    path: Path
    repo_id: str
    revision: str | None
    commit: str | None
    from_cache: bool = False
    docs: tuple[Path, ...] = ()  # the repo's licence files and model card (packer.licence)


def gguf_quant_of(filename: str) -> str | None:
    """The quant a GGUF file name announces (``tiny.Q8_0.gguf`` -> ``Q8_0``), if any."""
    stem = _SPLIT_GGUF.sub(".gguf", Path(filename).name)
    found = [q for q in QUANT_TYPES if _name_has_quant(stem, q)]
    # "Q4_K" matches inside nothing else thanks to the boundaries; prefer the longest name
    return max(found, key=len) if found else None


def _name_has_quant(name: str, quant: str) -> bool:
    for spelling in _QUANT_SPELLINGS.get(quant, (quant,)):
        if re.search(rf"(?<![a-z0-9]){re.escape(spelling.lower())}(?![a-z0-9_])", name.lower()):
            return True
    return False


def model_ggufs(names: list[str]) -> list[str]:
    """The GGUF model files of a listing (not the vision projectors of multimodal repos)."""
    return [
        n
        for n in names
        if n.lower().endswith(".gguf") and not Path(n).name.lower().startswith("mmproj")
    ]


def _name_has_tag(name: str, tag: str) -> bool:
    """A free-form ``:TAG`` (``UD-Q4_K_XL``) in a file name, between name boundaries."""
    return bool(re.search(rf"(?<![a-z0-9]){re.escape(tag.lower())}(?![a-z0-9_])", name.lower()))


def _offered(ggufs: list[str]) -> list[str]:
    """What a GGUF repo offers: its quants in llama.cpp's order, then files of no known quant."""
    quants = sorted({q for f in ggufs if (q := gguf_quant_of(f))}, key=list(QUANT_TYPES).index)
    return quants + sorted(Path(f).name for f in ggufs if gguf_quant_of(f) is None)


def _pick_gguf(
    ref: HubRef,
    ggufs: list[str],
    quant: str | None,
    *,
    tag: str | None = None,
    filename: str | None = None,
) -> str:
    """The GGUF file to use: the URL's ``filename``, else the ``:TAG``'s, else ``--quant``'s.

    ``tag`` may also be a name no llama.cpp type has (unsloth's ``UD-Q4_K_XL``): then it is
    matched in the file names as it is written.
    """
    offered_txt = ", ".join(_offered(ggufs))
    want: str | None
    if filename is not None:
        if filename not in ggufs:
            raise UsageError(
                f"{ref} has no GGUF model file {filename}; it offers {offered_txt}: "
                f"pick one on {endpoint()}/{ref.repo_id}/tree/{ref.rev}"
            )
        matches = [filename]
        want = gguf_quant_of(filename) or Path(filename).name
    else:
        if tag is not None:
            want = tag
        elif quant and quant.strip().lower() != "keep":
            want = normalise_quant(quant)
        else:
            want = None
        if want is None:
            if len(ggufs) == 1:
                return ggufs[0]
            want = DEFAULT_QUANT
            matches = [f for f in ggufs if _name_has_quant(Path(f).name, want)]
            if not matches:
                raise UsageError(
                    f"{ref} holds several GGUF files: choose one with --quant or "
                    f"{ref.repo_id}:QUANT ({offered_txt})"
                )
        else:
            if want in QUANT_TYPES:
                matches = [f for f in ggufs if _name_has_quant(Path(f).name, want)]
            elif tag is not None:
                matches = [f for f in ggufs if _name_has_tag(Path(f).name, want)]
            else:
                from packer.quants import parse_quant

                parse_quant(want)  # raises the usual "unknown quantization type" error
                matches = []
            if not matches:
                if tag is None:
                    how = "pass one of them with --quant"
                elif want in QUANT_TYPES:
                    how = "put one of them after the ':'"
                else:
                    how = "put one of them after the ':' (a branch or tag goes after '@')"
                raise UsageError(f"{ref} has no {want} GGUF file; it offers {offered_txt}: {how}")
    singles = [f for f in matches if not _SPLIT_GGUF.search(f)]
    if not singles:
        raise UnsupportedModelError(
            f"the {want} GGUF of {ref} is split into parts ({Path(matches[0]).name}, ...), which packer "
            f"does not support yet: merge them with llama-gguf-split --merge and pass the file, or "
            f"choose another quant ({offered_txt})"
        )
    # prefer files at the top of the repo, then the shortest name
    return sorted(singles, key=lambda f: (f.count("/"), len(f), f))[0]


def _kind(
    ref: HubRef,
    names: list[str],
    *,
    quant: str | None,
    tag: str | None,
    filename: str | None,
) -> Literal["checkpoint", "gguf"]:
    """:func:`classify`, where a ``:TAG`` or a ``.gguf`` URL asks for a GGUF file.

    A repo with both a checkpoint and GGUF files gives the GGUF then. A ``:TAG`` on a checkpoint
    repo is refused unless ``--quant`` (which the caller checked agrees with it) says to quantize.
    """
    kind = classify(ref, names)
    gguf_file = filename is not None and filename.lower().endswith(".gguf")
    if kind == "gguf" or not (tag or gguf_file):
        return kind
    if model_ggufs(names):
        return "gguf"
    if gguf_file:
        raise UsageError(f"{ref} has no GGUF file {filename}: it is a safetensors checkpoint")
    if quant and quant.strip().lower() != "keep":
        return kind  # --quant TYPE quantizes the checkpoint; the tag said the same
    if tag in QUANT_TYPES:
        raise UsageError(
            f"{ref} is a safetensors checkpoint, not a GGUF repo, so it has no {tag} file: "
            f"to quantize it to {tag}, give `{ref} --quant {tag}` instead of `:{tag}`"
        )
    raise UsageError(
        f"{ref} is a safetensors checkpoint, not a GGUF repo: ':{tag}' picks a GGUF file and it "
        "has none; drop it (a branch or tag goes after '@'), --quant TYPE sets the quantization"
    )


def classify(ref: HubRef, names: list[str]) -> Literal["checkpoint", "gguf"]:
    """What kind of model a repo (or a cached snapshot) holds, refusing what packer can't read."""
    root = [n for n in names if "/" not in n]
    has_safetensors = any(n.endswith(".safetensors") for n in root)
    if has_safetensors and "config.json" in root:
        return "checkpoint"
    if model_ggufs(names):
        return "gguf"
    if has_safetensors:
        raise SourceError(
            f"{ref} has safetensors weights but no config.json at its top level: packer needs a "
            "transformers-style checkpoint (config.json + *.safetensors + tokenizer files)"
        )
    if any(n.lower().endswith(PICKLE_SUFFIXES) for n in names):
        raise UnsupportedModelError(
            f"{ref} only has PyTorch pickle weights (.bin/.pt); packer does not unpickle (loading a "
            "pickle can run arbitrary code): use a safetensors or GGUF version of this model"
        )
    raise SourceError(
        f"{ref} has no model weights packer can read (*.safetensors with config.json, or *.gguf)"
    )


def checkpoint_weights(names: list[str], index: dict[str, Any] | None) -> list[str]:
    """The safetensors files the checkpoint loads (not e.g. Mistral's consolidated copy)."""
    if index is not None:
        weight_map = index.get("weight_map") or {}
        return sorted({str(v) for v in weight_map.values()})
    if "model.safetensors" in names:
        return ["model.safetensors"]
    return sorted(n for n in names if "/" not in n and n.endswith(".safetensors"))


# --------------------------------------------------------------------------------- errors


def _connection_errors() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, attr in (("httpx2", "TransportError"), ("httpx", "TransportError")):
        with suppress(ImportError, AttributeError):
            found.append(getattr(__import__(module), attr))
    try:
        import requests

        found.append(requests.exceptions.ConnectionError)
        found.append(requests.exceptions.Timeout)
    except ImportError:
        pass
    return tuple(found)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@contextmanager
def _hub_errors(ref: HubRef, spec_is_path_like: bool = False) -> Iterator[None]:
    """Turn huggingface_hub's exceptions into one-line packer errors."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    page = f"{endpoint()}/{ref.repo_id}"
    try:
        yield
    except PackerError:
        raise
    except GatedRepoError as exc:
        raise SourceError(
            f"{ref.repo_id} is gated: accept its licence on {page} (logged in), then set HF_TOKEN "
            "or pass --token with a token of that account"
        ) from exc
    except RevisionNotFoundError as exc:
        raise SourceError(
            f"{ref.repo_id} has no revision {ref.rev!r}: use a branch, tag or commit listed on "
            f"{page}/tree/main"
        ) from exc
    except RepositoryNotFoundError as exc:
        also = " and no such local folder or file" if spec_is_path_like else ""
        raise SourceError(
            f"no model {ref.repo_id} on {endpoint()}{also} (check the spelling; if it is private, "
            "set HF_TOKEN or pass --token)"
        ) from exc
    except (OfflineModeIsEnabled, LocalEntryNotFoundError) as exc:
        raise _offline_error(ref, exc) from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            raise SourceError(
                f"the hub refused access to {ref.repo_id} ({status}): check that HF_TOKEN/--token is "
                f"valid and that its account was granted access on {page}"
            ) from exc
        raise SourceError(
            f"the hub at {endpoint()} answered {status} for {ref.repo_id}: try again later"
        ) from exc
    except _connection_errors() as exc:
        raise _offline_error(ref, exc) from exc
    except OSError as exc:
        if exc.errno == 28:  # ENOSPC
            raise OutputError(
                f"disk full while downloading {ref.repo_id} into {cache_dir()}: free some space or "
                "set HF_HOME to a bigger disk"
            ) from exc
        raise SourceError(f"cannot download {ref.repo_id}: {_short(exc)}") from exc


def _offline_error(ref: HubRef, exc: BaseException) -> SourceError:
    snapshot = cached_snapshot(ref)
    if is_offline():
        return SourceError(
            f"HF_HUB_OFFLINE is set and {ref} is not (completely) in the cache {cache_dir()}: "
            "unset HF_HUB_OFFLINE to download it, or copy the cache from a connected machine"
        )
    if snapshot is not None:
        return SourceError(
            f"cannot reach {endpoint()} ({_short(exc)}); a cached copy of {ref} exists: "
            "run again with HF_HUB_OFFLINE=1 to use it"
        )
    return SourceError(
        f"cannot reach {endpoint()} ({_short(exc)}) and {ref} is not in the cache {cache_dir()}: "
        "check the network (or HF_ENDPOINT), or download the model where there is internet and "
        "pass its folder"
    )


# --------------------------------------------------------------------------------- cache


def _storage_folder(repo_id: str) -> Path:
    return cache_dir() / ("models--" + repo_id.replace("/", "--"))


def cached_snapshot(ref: HubRef) -> Path | None:
    """The cached snapshot folder of ``ref`` (branch/tag via ``refs/``, or a commit)."""
    storage = _storage_folder(ref.repo_id)
    commit: str | None = ref.rev if COMMIT_SHA.fullmatch(ref.rev) else None
    if commit is None:
        ref_file = storage / "refs" / ref.rev
        if ref_file.is_file():
            commit = ref_file.read_text().strip()
    if commit is None:
        return None
    folder = storage / "snapshots" / commit
    return folder if folder.is_dir() and any(folder.iterdir()) else None


def _listing(folder: Path) -> list[str]:
    return sorted(
        p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()
    )


def fmt_params(n: float) -> str:
    """``1_100_048_384`` -> ``1.10B``, ``134_515_008`` -> ``135M``."""
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.0f}M"
    return f"{n / 1e3:.0f}K" if n >= 1e3 else f"{n:.0f}"


def check_disk_space(ref: HubRef, need: int) -> None:
    """Refuse before downloading when the cache's disk lacks ``need`` bytes."""
    probe = cache_dir()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        raise OutputError(
            f"not enough disk space to download {ref}: it needs {format_size(need)} and {probe} has "
            f"{format_size(free)} free; free some space or set HF_HOME (or HF_HUB_CACHE) to a bigger disk"
        )


def _named_view(snapshot: Path, files: list[str], name: str, commit: str) -> Path:
    """A folder called like the model holding links to the snapshot's files.

    The converter names the model after its folder; a cache snapshot is named by commit hash.
    """
    try:
        view = cache_subdir("hub") / commit[:16] / name
        for f in files:
            target = (snapshot / f).resolve()
            link = view / f
            if link.is_symlink() and link.resolve() == target:
                continue  # already there (an earlier or a concurrent build)
            link.parent.mkdir(parents=True, exist_ok=True)
            tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(target)
            tmp.replace(link)
    except (OSError, CacheError) as exc:
        log.debug("cannot make a named view of %s (%s); using the snapshot", snapshot, exc)
        return snapshot
    return view


# --------------------------------------------------------------------------------- fetch


@contextmanager
def _quiet_client() -> Iterator[None]:
    """huggingface_hub's progress bars on a terminal only; its logs through packer's handler.

    huggingface_hub logs with its own stderr handler *and* propagates (double lines), and its HTTP
    client logs every request at INFO: route the former through the root handler, mute the latter
    unless debugging.
    """
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    turn_off = not sys.stderr.isatty() and not are_progress_bars_disabled()
    if turn_off:
        disable_progress_bars()
    hf_logger = logging.getLogger("huggingface_hub")
    own_handlers = hf_logger.handlers[:]
    if logging.getLogger().handlers and hf_logger.propagate:
        hf_logger.handlers[:] = []
    http_loggers = [logging.getLogger(n) for n in ("httpx2", "httpx", "httpcore", "urllib3")]
    levels = [lg.level for lg in http_loggers]
    if not log.isEnabledFor(logging.DEBUG):
        for lg in http_loggers:
            lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        if turn_off:
            enable_progress_bars()
        hf_logger.handlers[:] = own_handlers
        for lg, level in zip(http_loggers, levels, strict=True):
            lg.setLevel(level)


def model_title(repo_id: str, kind: str) -> str:
    name = repo_id.split("/")[-1]
    if kind == "gguf":
        name = re.sub(r"[-_.]gguf$", "", name, flags=re.IGNORECASE) or name
    return name


def fetch(
    ref: HubRef,
    *,
    quant: str | None = None,
    token: str | None = None,
    need_checkpoint: bool = False,
    spec_is_path_like: bool = False,
    tag: str | None = None,
    filename: str | None = None,
) -> Fetched:
    """Download what packer needs of ``ref`` into the HF cache (or find it there when offline).

    ``quant`` is ``--quant``; ``tag`` the ``:QUANT`` of the name (the caller checked that the two
    agree); ``filename`` the file a ``/blob/REV/FILE`` URL names. Each picks a GGUF repo's file.
    """
    pick = {"quant": quant, "tag": tag, "filename": filename}
    with _hub_errors(ref, spec_is_path_like), _quiet_client():
        if is_offline():
            return _from_cache(ref, need_checkpoint=need_checkpoint, **pick)
        return _download(ref, token=token, need_checkpoint=need_checkpoint, **pick)


def _from_cache(
    ref: HubRef,
    *,
    quant: str | None,
    need_checkpoint: bool,
    tag: str | None = None,
    filename: str | None = None,
) -> Fetched:
    snapshot = cached_snapshot(ref)
    if snapshot is None:
        raise SourceError(
            f"HF_HUB_OFFLINE is set and {ref} is not in the cache {cache_dir()}: unset "
            "HF_HUB_OFFLINE to download it, or copy the cache from a connected machine"
        )
    names = _listing(snapshot)
    kind = _kind(ref, names, quant=quant, tag=tag, filename=filename)
    commit = snapshot.name
    if kind == "gguf":
        if need_checkpoint:
            raise UsageError(f"{ref} holds GGUF files, not a checkpoint: nothing to convert")
        chosen = _pick_gguf(ref, model_ggufs(names), quant, tag=tag, filename=filename)
        docs = doc_names(names)
        _verify_cached(ref, snapshot, [chosen, *docs])
        log.info("using cached %s (%s, commit %s), offline", chosen, ref, commit[:10])
        return Fetched(
            "gguf",
            snapshot / chosen,
            ref.repo_id,
            ref.revision,
            commit,
            True,
            tuple(snapshot / d for d in docs),
        )
    index = None
    if SAFETENSORS_INDEX in names:
        index = json.loads((snapshot / SAFETENSORS_INDEX).read_text(encoding="utf-8"))
    weights = checkpoint_weights(names, index)
    missing = [w for w in weights if w not in names]
    if missing:
        raise SourceError(
            f"the cached copy of {ref} is incomplete ({missing[0]} missing): unset "
            "HF_HUB_OFFLINE to finish the download"
        )
    files = [n for n in names if n in CHECKPOINT_EXTRAS or n in weights]
    files += [n for n in ("config.json", SAFETENSORS_INDEX) if n in names]
    docs = doc_names(names)  # whatever of them the cache has (the hub lists what is missing)
    files += docs
    _verify_cached(ref, snapshot, files)
    log.info("using cached %s (commit %s), offline", ref, commit[:10])
    view = _named_view(snapshot, sorted(set(files)), model_title(ref.repo_id, "checkpoint"), commit)
    return Fetched(
        "checkpoint", view, ref.repo_id, ref.revision, commit, True, tuple(view / d for d in docs)
    )


def _download(
    ref: HubRef,
    *,
    quant: str | None,
    token: str | None,
    need_checkpoint: bool,
    tag: str | None = None,
    filename: str | None = None,
) -> Fetched:
    from huggingface_hub import HfApi, hf_hub_download, try_to_load_from_cache

    info = HfApi().model_info(ref.repo_id, revision=ref.revision, files_metadata=True, token=token)
    commit = info.sha
    sizes: dict[str, int | None] = {}
    published: dict[str, digests.Digest] = {}
    for s in info.siblings or []:
        sizes[s.rfilename] = s.lfs.size if s.lfs is not None else s.size
        digest = digests.published(s.blob_id, s.lfs.sha256 if s.lfs is not None else None)
        if digest is not None:
            published[s.rfilename] = digest
    names = sorted(sizes)
    kind = _kind(ref, names, quant=quant, tag=tag, filename=filename)
    if kind == "gguf" and need_checkpoint:
        raise UsageError(f"{ref} holds GGUF files, not a checkpoint: nothing to convert")

    def get(filename: str) -> Path:
        path = Path(
            hf_hub_download(
                ref.repo_id, filename, revision=ref.revision, token=token, cache_dir=cache_dir()
            )
        )
        if commit and path.parent.name != commit and commit not in path.parts:
            raise SourceError(
                f"{ref} changed on the hub while downloading (commit {commit[:10]} -> "
                f"{path.parent.name[:10]}): run the command again"
            )
        if filename in published:
            _verify(ref, filename, path, published[filename], offline=False)
        return path

    docs = doc_names(names)  # the licence files and the model card travel with the model
    if kind == "gguf":
        chosen = _pick_gguf(ref, model_ggufs(names), quant, tag=tag, filename=filename)
        wanted = [*docs, chosen]  # small files first: a damaged one fails before the weights
    else:
        config = get("config.json")  # small: fail early on gated repos and unknown models
        _check_architecture(ref, config)
        index = None
        if SAFETENSORS_INDEX in sizes:
            index = json.loads(get(SAFETENSORS_INDEX).read_text(encoding="utf-8"))
        weights = checkpoint_weights(names, index)
        absent = [w for w in weights if w not in sizes]
        if absent:
            raise SourceError(
                f"{ref}: {SAFETENSORS_INDEX} names {absent[0]}, which the repo does not have"
            )
        extras = [n for n in CHECKPOINT_EXTRAS if n in sizes]
        wanted = ["config.json", *([SAFETENSORS_INDEX] if index is not None else []), *extras]
        wanted += docs + weights  # small files first: a damaged one fails before the weights

    todo = [
        f
        for f in wanted
        if not isinstance(
            try_to_load_from_cache(ref.repo_id, f, cache_dir=cache_dir(), revision=commit), str
        )
    ]
    need = sum(sizes.get(f) or 0 for f in todo)
    total = sum(sizes.get(f) or 0 for f in wanted)
    params = getattr(getattr(info, "safetensors", None), "total", None)
    if todo:
        check_disk_space(ref, need)
        log.info(
            "downloading %s (commit %s%s): %d file%s, %s%s",
            ref,
            (commit or "?")[:10],
            f", {fmt_params(params)} parameters" if params else "",
            len(todo),
            "" if len(todo) == 1 else "s",
            format_size(need),
            f" ({format_size(total - need)} already cached)" if total - need >= 1_000_000 else "",
        )
    else:
        log.info("%s (commit %s) is already in the cache", ref, (commit or "?")[:10])
    paths = {f: get(f) for f in wanted}
    if kind == "gguf":
        return Fetched(
            "gguf",
            paths[wanted[-1]],
            ref.repo_id,
            ref.revision,
            commit,
            docs=tuple(paths[d] for d in docs),
        )
    snapshot = paths["config.json"].parent
    view = _named_view(
        snapshot, sorted(wanted), model_title(ref.repo_id, "checkpoint"), commit or snapshot.name
    )
    return Fetched(
        "checkpoint", view, ref.repo_id, ref.revision, commit, docs=tuple(view / d for d in docs)
    )


def _verify(ref: HubRef, name: str, path: Path, digest: digests.Digest, *, offline: bool) -> None:
    """Refuse a file whose bytes are not the ones the hub published (removing it from the
    cache, so that the next run downloads it again)."""
    actual = digests.check(path, digest)
    if actual is None:
        return
    digests.discard(path)
    again = "unset HF_HUB_OFFLINE and run again" if offline else "run again"
    raise SourceError(
        f"{name} of {ref} is damaged: its {digest.label} is {actual[:16]}..., the hub lists "
        f"{digest.value[:16]}...; it was removed from the cache: {again} to download it again"
    )


def _verify_cached(ref: HubRef, snapshot: Path, files: list[str]) -> None:
    """Offline: check the cached LFS files against the sha256 their blobs are named after."""
    for name in files:
        digest = digests.from_blob_name(snapshot / name)
        if digest is not None:
            _verify(ref, name, snapshot / name, digest, offline=True)


def _check_architecture(ref: HubRef, config_path: Path) -> None:
    """Refuse before the big download when the converter cannot handle the model."""
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        archs = config.get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return  # the converter reports a broken config.json with the full story
    if not archs:
        return
    from packer.convert import SUPPORTED_ARCHITECTURES

    if archs[0] not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(
            f"{ref} is a {archs[0]}, which packer cannot convert yet (it converts "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}): look for a GGUF version of it on the hub"
        )


def remote_params(ref: HubRef, token: str | None = None) -> int | None:
    """Parameter count from the hub's metadata, without downloading (None when unknown)."""
    from huggingface_hub import HfApi

    with _hub_errors(ref), _quiet_client():
        info = HfApi().model_info(ref.repo_id, revision=ref.revision, token=token)
    total = getattr(getattr(info, "safetensors", None), "total", None)
    if total:
        return int(total)
    gguf_info = getattr(info, "gguf", None)
    if isinstance(gguf_info, dict) and gguf_info.get("total"):
        return int(gguf_info["total"])
    return None
