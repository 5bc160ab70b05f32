"""``packer compare --plot``: file size against KL divergence, one point per quantization type.

SVG is written here, with no dependency (a class can open it in any browser); PNG needs
matplotlib (the ``plot`` extra: ``pip install 'packer-llm[plot]'``), checked before any work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from packer.errors import OutputError, UsageError
from packer.runtime.atomic_write import atomic_path, atomic_write

FORMATS = (".svg", ".png")
W, H = 720, 480
LEFT, RIGHT, TOP, BOTTOM = 80, 30, 50, 60


@dataclass(frozen=True)
class Point:
    label: str  # the quantization type
    size: int  # bytes
    kl: float  # mean KL divergence, nats


def check_plot_path(path: Path) -> None:
    """Before minutes of work: a known format, and matplotlib for PNG."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise UsageError(f"--plot {path}: give a file ending in .svg or .png")
    if suffix == ".png":
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError(
                f"--plot {path}: PNG needs matplotlib (pip install 'packer-llm[plot]'); "
                "or give a .svg file, which needs nothing"
            ) from None
    from packer.build import check_writable

    check_writable(path.expanduser().absolute())


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    out = []
    v = first
    while v <= hi + step * 1e-9:
        out.append(round(v, 12))
        v += step
    return out


def _num(v: float) -> str:
    return f"{v:g}"


def svg(points: list[Point], title: str) -> str:
    """The picture as SVG text: size (MB) across, KL divergence up."""
    sizes = [p.size / 1e6 for p in points]
    kls = [p.kl for p in points]
    xt = _ticks(min(sizes) * 0.9 if sizes else 0, max(sizes) * 1.05 if sizes else 1)
    yt = _ticks(0.0, max(kls) * 1.1 if kls and max(kls) > 0 else 0.01)
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(v: float) -> float:
        return LEFT + (v - x0) / (x1 - x0 or 1) * pw

    def py(v: float) -> float:
        return TOP + ph - (v - y0) / (y1 - y0 or 1) * ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="13">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{W / 2}" y="28" text-anchor="middle" font-size="16">{escape(title)}</text>',
    ]
    for v in xt:
        x = px(v)
        out.append(
            f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + ph}" stroke="#ddd"/>'
            f'<text x="{x:.1f}" y="{TOP + ph + 18}" text-anchor="middle">{_num(v)}</text>'
        )
    for v in yt:
        y = py(v)
        out.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + pw}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_num(v)}</text>'
        )
    out.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>'
        f'<text x="{LEFT + pw / 2}" y="{H - 15}" text-anchor="middle">file size (MB)</text>'
        f'<text transform="translate(20 {TOP + ph / 2}) rotate(-90)" text-anchor="middle">'
        "KL divergence vs the unquantized model (lower is better)</text>"
    )
    ordered = sorted(points, key=lambda p: p.size)
    if len(ordered) > 1:
        path = " ".join(f"{px(p.size / 1e6):.1f},{py(p.kl):.1f}" for p in ordered)
        out.append(f'<polyline points="{path}" fill="none" stroke="#4a7ebb"/>')
    for p in ordered:
        x, y = px(p.size / 1e6), py(p.kl)
        out.append(
            f'<g class="point" data-quant="{escape(p.label)}" data-size="{p.size}" '
            f'data-kl="{p.kl:.6g}"><circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="#4a7ebb"/>'
            f'<text x="{x + 8:.1f}" y="{y - 8:.1f}">{escape(p.label)}</text></g>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _png(points: list[Point], title: str, tmp: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4.8), dpi=100)
    ordered = sorted(points, key=lambda p: p.size)
    xs = [p.size / 1e6 for p in ordered]
    ys = [p.kl for p in ordered]
    ax.plot(xs, ys, marker="o")
    for p, x, y in zip(ordered, xs, ys, strict=True):
        ax.annotate(p.label, (x, y), textcoords="offset points", xytext=(6, 6))
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel("KL divergence vs the unquantized model")
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(tmp, format="png")
    plt.close(fig)


def write_plot(path: Path, points: list[Point], title: str) -> Path:
    """Write the picture (format by ``path``'s suffix) atomically; returns ``path``."""
    try:
        if path.suffix.lower() == ".png":
            with atomic_path(path) as tmp:
                _png(points, title, tmp)
        else:
            with atomic_write(path) as f:
                f.write(svg(points, title).encode("utf-8"))
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from exc
    return path
