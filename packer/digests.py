"""Files downloaded from the hub checked against the digests the hub publishes, once per file.

The hub lists, for every file of a commit, the sha256 of an LFS file (weights, GGUFs, often the
tokenizer) and the git blob id (sha1) of a small file. huggingface_hub checks only the size of
what arrived, so a proxy, a mirror or a flaky disk could hand the converter other bytes.
:func:`check` hashes a file before it is converted or packed and compares.

Hashing gigabytes takes seconds per file, so a file that passed is remembered: a record named
after its digest in packer's cache (``verified/``) holds the identity of the blob file that
passed (device, inode, size, mtime, ctime). A later build that finds the same blob unchanged
skips the hash; a blob written since (new ctime) is hashed again. Without a packer cache every
check hashes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from packer.runtime.atomic_write import write_json
from packer.runtime.cache import CacheError, cache_subdir

log = logging.getLogger(__name__)

SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 8 << 20


@dataclass(frozen=True)
class Digest:
    kind: Literal["sha256", "git-sha1"]  # an LFS file's sha256, a git blob id
    value: str  # lower-case hex

    @property
    def label(self) -> str:
        return "sha256" if self.kind == "sha256" else "git blob id"


def published(blob_id: str | None, lfs_sha256: str | None) -> Digest | None:
    """The digest the hub lists for one file of a repo (``model_info(files_metadata=True)``)."""
    if lfs_sha256:
        return Digest("sha256", lfs_sha256.lower())
    if blob_id:
        return Digest("git-sha1", blob_id.lower())
    return None


def from_blob_name(path: Path) -> Digest | None:
    """The sha256 a cached LFS file is stored under (huggingface_hub names the blobs of LFS
    files by their sha256), for checking a cache without asking the hub (HF_HUB_OFFLINE)."""
    name = path.resolve().name
    return Digest("sha256", name) if SHA256.fullmatch(name) else None


def digest_of(path: Path, kind: str) -> str:
    """The file's sha256, or its git blob id (sha1 of ``blob <size>\\0`` + the bytes)."""
    with open(path, "rb") as f:
        if kind == "sha256":
            h = hashlib.sha256()
        else:
            h = hashlib.sha1()
            h.update(b"blob %d\0" % os.fstat(f.fileno()).st_size)
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _identity(blob: Path) -> dict[str, int]:
    st = blob.stat()
    return {
        "dev": st.st_dev,
        "ino": st.st_ino,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
    }


def _record(digest: Digest) -> Path | None:
    try:
        return cache_subdir("verified") / f"{digest.kind}-{digest.value}.json"
    except CacheError:
        return None


def _remembered(record: Path | None, blob: Path) -> bool:
    if record is None:
        return False
    try:
        return json.loads(record.read_text(encoding="utf-8")) == _identity(blob)
    except (OSError, ValueError):
        return False


def _remember(record: Path | None, blob: Path) -> None:
    if record is None:
        return
    try:
        record.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_json(record, _identity(blob))
    except OSError as exc:  # only saves time next build
        log.debug("cannot remember that %s was verified: %s", blob, exc)


def check(path: Path, digest: Digest) -> str | None:
    """None when ``path`` has ``digest`` (or was verified unchanged before), else the digest
    it really has."""
    blob = path.resolve()
    record = _record(digest)
    if _remembered(record, blob):
        return None
    actual = digest_of(blob, digest.kind)
    if actual != digest.value:
        return actual
    _remember(record, blob)
    return None


def discard(path: Path) -> None:
    """Remove a damaged download from the HF cache (the blob and the link to it), so that the
    next run fetches it again instead of finding it cached."""
    blob = path.resolve()
    for p in (path, blob):
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.debug("cannot remove %s: %s", p, exc)
