"""QR codes of the server's address (segno, pure Python, frozen into the runtime): for the
teacher's terminal and the web page on the classroom projector."""

from __future__ import annotations

import io

import segno


def qr_svg(text: str) -> str:
    """``text`` as an SVG QR code (black on white, 4-module quiet zone), for the web page."""
    buf = io.BytesIO()
    segno.make(text, error="m").save(buf, kind="svg", scale=8, border=4, xmldecl=False)
    return buf.getvalue().decode("utf-8")


def qr_terminal(text: str) -> str:
    """``text`` as a QR code drawn with half-block characters, two modules per character row,
    dark modules as spaces on a light background made of '█' so it scans on dark terminals."""
    code = segno.make(text, error="m")
    rows = [list(r) for r in code.matrix_iter(scale=1, border=2)]
    if len(rows) % 2:
        rows.append([0] * len(rows[0]))
    glyph = {(0, 0): "█", (1, 0): "▄", (0, 1): "▀", (1, 1): " "}
    lines = []
    for top, bottom in zip(rows[0::2], rows[1::2], strict=True):
        lines.append("".join(glyph[(bool(t), bool(b))] for t, b in zip(top, bottom, strict=True)))
    return "\n".join(lines)
