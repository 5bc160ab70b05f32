"""Which filesystem a path is on (``/proc/self/mountinfo``), and what that means for big files.

FAT32 (``vfat``/``msdos``, what most USB sticks come formatted with) holds no file over
4 GiB - 1 bytes; exFAT, NTFS and the Linux filesystems have no such limit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

FAT32_MAX = 4 * 1024**3 - 1  # the largest file FAT32 holds
FAT_TYPES = frozenset({"vfat", "msdos", "fat", "umsdos"})
MOUNTINFO = Path("/proc/self/mountinfo")


@dataclass(frozen=True)
class Mount:
    point: Path
    fstype: str
    options: tuple[str, ...] = ()

    @property
    def is_fat(self) -> bool:
        return self.fstype in FAT_TYPES

    @property
    def max_file(self) -> int | None:
        """The largest file this filesystem holds; None: no limit that matters here."""
        return FAT32_MAX if self.is_fat else None

    @property
    def noexec(self) -> bool:
        return "noexec" in self.options


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \\040, \\011, \\012, \\134
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_of(path: str | os.PathLike[str], mountinfo: Path = MOUNTINFO) -> Mount | None:
    """The mount that holds ``path`` (its nearest existing folder): the longest mount point
    that is a prefix of its real path; None when mountinfo cannot be read."""
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    real = Path(os.path.realpath(probe))
    try:
        lines = mountinfo.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    best: Mount | None = None
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 6 or not tail:
            continue
        point = Path(_unescape(fields[4]))
        if real != point and point not in real.parents:
            continue
        if best is None or len(point.parts) >= len(best.point.parts):
            opts = tuple(fields[5].split(",")) + tuple(tail[2].split(",") if len(tail) > 2 else ())
            best = Mount(point, tail[0], opts)
    return best
