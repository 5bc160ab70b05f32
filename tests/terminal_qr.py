"""Decode a QR code drawn with half-block characters (``packer.runtime.qr.qr_terminal``)."""

from __future__ import annotations

import numpy as np

# each character is two modules stacked: which halves are light (the block drawn)
_HALVES = {"█": (1, 1), "▀": (1, 0), "▄": (0, 1), " ": (0, 0)}


def qr_lines(text: str) -> list[str]:
    """The lines of ``text`` that make up a terminal QR code (only half-block characters)."""
    return [
        line for line in text.splitlines() if line and set(line) <= set(_HALVES) and "█" in line
    ]


def decode_terminal_qr(lines: list[str], scale: int = 6) -> list[str]:
    """The texts zxing-cpp reads from the QR code in ``lines``."""
    import zxingcpp

    width = max(len(line) for line in lines)
    rows = []
    for line in lines:
        line = line.ljust(width, "█")
        rows.append([_HALVES[c][0] for c in line])
        rows.append([_HALVES[c][1] for c in line])
    image = (np.array(rows, dtype=np.uint8) * 255).repeat(scale, 0).repeat(scale, 1)
    image = np.pad(image, 8 * scale, constant_values=255)  # a wide light quiet zone
    return [r.text for r in zxingcpp.read_barcodes(image)]
