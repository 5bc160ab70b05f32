"""Resolve what the user named into a Source: a local folder or .gguf file, an alias, a hub id.

Resolvers are tried in order: local path (an existing path wins, ':' in it or not) -> alias
(``TinyLlama``, see ``packer models``) -> Hugging Face hub id ``org/name[@revision][:QUANT]``,
also written ``hf.co/org/name[:QUANT]`` or as a model page URL (downloaded into the shared HF
cache by :mod:`packer.hub`). ``:QUANT`` picks the file of a GGUF repo, like ``--quant``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from packer.errors import SourceError, UsageError
from packer.quants import QUANT_TYPES, ftype_name

if TYPE_CHECKING:
    from packer import hub as hub_mod

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
    repo_id: str | None = None  # hub sources: "org/name"
    revision: str | None = None  # hub sources: the branch/tag/commit asked for (None = default)
    commit: str | None = None  # hub sources: the commit actually downloaded
    n_params: int | None = None  # GGUF sources: parameter count from the tensor shapes
    # hub sources: the licence files and model card downloaded (and verified) with the model;
    # None: look at the top of the folder (packer.licence)
    docs: tuple[Path, ...] | None = None

    @property
    def display(self) -> str:
        """What the source is, for humans: ``org/name@main (commit abc1234567)`` or the path."""
        if self.repo_id:
            rev = f"@{self.revision}" if self.revision else ""
            commit = f" (commit {self.commit[:10]})" if self.commit else ""
            return f"{self.repo_id}{rev}{commit}"
        return self.spec


@dataclass(frozen=True)
class HubTarget:
    """What a hub name asks for: the repo and revision, and maybe one GGUF file of it."""

    ref: hub_mod.HubRef
    quant: str | None = None  # the ":QUANT" tag ("Q4_K_M")
    filename: str | None = None  # the file a .../blob/REV/FILE URL names
    alias: hub_mod.Alias | None = None  # the alias it was written as
    url: bool = False  # written with a host (hf.co/..., https://huggingface.co/...)


def model_name_from_stem(stem: str) -> str:
    """``SmolLM2-135M-Instruct.Q4_1`` -> ``SmolLM2-135M-Instruct``."""
    return _QUANT_SUFFIX.sub("", stem) or stem


def gguf_source(path: Path, spec: str) -> Source:
    """A local GGUF file as a source (its metadata read, not its tensors); ``spec`` names it
    in messages."""
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
    n_params = sum(int(t.n_elements) for t in reader.tensors) or None
    return Source(
        "gguf",
        path,
        spec,
        model_name_from_stem(path.stem),
        gguf_type=file_type,
        architecture=arch,
        n_params=n_params,
    )


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith((".", "/", "~"))
        or spec.lower().endswith(".gguf")
        or spec.count("/") > 1
        or "\\" in spec
    )


def resolve(
    spec: str,
    *,
    quant: str | None = None,
    revision: str | None = None,
    token: str | None = None,
    need_checkpoint: bool = False,
) -> Source:
    """Find (and for hub models download) the model ``spec`` names.

    ``quant`` (``--quant``) or ``spec:QUANT`` picks the file of a GGUF repo; given both, they
    must agree. ``revision`` (or ``spec@revision``) pins a hub branch, tag or commit; ``token``
    overrides HF_TOKEN; ``need_checkpoint`` refuses GGUF-only repos before downloading (for
    ``packer convert``).
    """
    path = Path(spec).expanduser()
    if path.exists():
        if revision:
            raise UsageError(f"--revision only applies to hub models, not to the local {spec}")
        return _local(path, spec)
    from packer import hub

    target = hub_target(spec, revision)
    ref, tag = target.ref, target.quant
    if tag and quant and quant.strip().lower() != "keep":
        asked = hub.normalise_quant(quant)
        if asked != tag:
            raise UsageError(
                f"{spec} asks for {tag} but --quant says {asked}: give one of them "
                f"({ref.repo_id}:{asked} or --quant {tag})"
            )
    if need_checkpoint and (tag or (target.filename or "").lower().endswith(".gguf")):
        what = f"':{tag}'" if tag else target.filename
        raise UsageError(
            f"{spec}: {what} names a GGUF file, and a checkpoint is needed here (a GGUF has "
            f"nothing to convert): give the repo, {ref}, without it"
        )
    fetched = hub.fetch(
        ref,
        quant=quant,
        token=token,
        need_checkpoint=need_checkpoint,
        spec_is_path_like="/" in spec and not target.url,
        tag=tag,
        filename=target.filename,
    )
    if fetched.kind == "gguf":
        src = gguf_source(fetched.path, spec)
        name = hub.model_title(ref.repo_id, "gguf")
    else:
        src = Source("checkpoint", fetched.path, spec, hub.model_title(ref.repo_id, "checkpoint"))
        name = src.name
    return replace(
        src,
        name=name,
        repo_id=ref.repo_id,
        revision=ref.revision,
        commit=fetched.commit,
        docs=fetched.docs,
    )


def hub_ref(spec: str, revision: str | None = None) -> hub_mod.HubRef:
    """The hub repo an alias, ``org/name[@rev][:QUANT]`` or hub URL names; see :func:`hub_target`."""
    return hub_target(spec, revision).ref


def hub_target(spec: str, revision: str | None = None) -> HubTarget:
    """What an alias, ``org/name[@rev][:QUANT]``, ``hf.co/org/name[:QUANT]`` or a model page URL
    asks for; a helpful one-line error for anything else."""
    from packer import hub

    named = hub.split_name(spec)
    alias = hub.lookup_alias(named.name) if named is not None and not named.url else None
    if named is not None and alias is not None:
        ref = hub.HubRef(alias.repo, named.revision)
    elif named is not None and hub.REPO_ID.fullmatch(named.name):
        ref = hub.HubRef(named.name, named.revision)
    else:
        if _looks_like_path(spec):
            raise SourceError(f"no such folder or .gguf file: {spec}")
        name = named.name if named is not None else spec.partition("@")[0]
        close = hub.closest_aliases(name)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise SourceError(
            f"{spec!r} is not a folder, a .gguf file, a model alias or a hub id (org/name)"
            f"{hint} (`packer models` lists the aliases)"
        )
    if revision:
        if ref.revision and ref.revision != revision:
            raise UsageError(
                f"{spec} names revision {ref.revision!r} but --revision says {revision!r}: give one"
            )
        ref = hub.HubRef(ref.repo_id, revision)
    return HubTarget(ref, named.quant, named.filename, alias, named.url)


def _local(path: Path, spec: str) -> Source:
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SourceError(
                f"{path} has no config.json: point packer at a Hugging Face checkpoint folder "
                "(config.json + *.safetensors + tokenizer files) or a .gguf file"
            )
        return Source("checkpoint", path.resolve(), spec, path.resolve().name)
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return gguf_source(path.resolve(), spec)
        raise SourceError(
            f"{path} is a file but not a .gguf: pass a checkpoint folder or a .gguf file"
        )
    raise SourceError(f"{path} is neither a folder nor a file")


def param_count(spec: str, *, token: str | None = None) -> tuple[int, str]:
    """How many parameters ``spec`` has, and where that figure comes from (no weights download)."""
    path = Path(spec).expanduser()
    if path.exists():
        src = _local(path, spec)
        if src.kind == "gguf":
            if not src.n_params:
                raise SourceError(f"{spec} has no tensors to count: pass --params N")
            return src.n_params, "counted in the GGUF"
        from packer.convert import inspect_checkpoint

        return inspect_checkpoint(src.path).n_params, "counted in the safetensors headers"
    from packer import hub

    target = hub_target(spec)
    alias, ref = target.alias, target.ref
    if alias is not None:
        return int(alias.params_b * 1e9), f"{alias.repo}, from packer's alias table"
    if hub.is_offline():
        raise SourceError(
            f"HF_HUB_OFFLINE is set: cannot ask the hub how big {ref} is; pass --params N"
        )
    n = hub.remote_params(ref, token=token)
    if not n:
        raise SourceError(f"the hub does not say how many parameters {ref} has: pass --params N")
    return n, "from the hub's metadata"
