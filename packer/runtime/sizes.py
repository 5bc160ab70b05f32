"""Sizes in bytes, for people: one way to print them and one way to read them.

Both sides use it (model.run's first-start and clean-up lines, ``packer build --split``,
``packer usb``). Units are decimal, as disks and file managers count them: ``4G`` is
4,000,000,000 bytes, which fits on a FAT32 stick (its limit is 4 GiB - 1 = 4,294,967,295
bytes). The binary units ``KiB``/``MiB``/``GiB``/``TiB`` are read too.
"""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*$", re.IGNORECASE)


def format_size(n: float) -> str:
    """``n`` bytes as ``4.6 GB``, ``103 MB`` or ``12 kB`` (decimal units)."""
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.0f} MB"
    return f"{n / 1e3:.0f} kB"


def parse_size(text: str) -> int:
    """``4G``, ``3900M``, ``3.5GB``, ``4GiB``, ``1000000`` -> bytes. Raises ValueError with a
    one-line message for anything else (a bare number is bytes)."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(
            f"{text!r} is not a size: give a number with a unit, e.g. 4G, 3900M or 2GiB"
        )
    number, unit = m.group(1), (m.group(2) or "").lower()
    value = int(float(number) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"{text!r} is not a size above 0")
    return value
