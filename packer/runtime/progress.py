"""A progress bar on stderr, drawn only when stderr is a terminal (both sides use it:
model.run's first-start unpacking, ``packer usb`` copying)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from packer.runtime.sizes import format_size

WIDTH = 30
INTERVAL = 0.1  # seconds between redraws


class ProgressBar:
    """``with ProgressBar(total, label) as bar: bar.advance(n)``; silent off a terminal."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None) -> None:
        self.total = max(total, 1)
        self.label = label
        self.stream = stream or sys.stderr
        self.done = 0
        self._shown = 0.0
        try:
            self.enabled = self.stream.isatty()
        except (AttributeError, ValueError):
            self.enabled = False

    def __enter__(self) -> ProgressBar:
        self._draw()
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if not self.enabled:
            return
        if exc_type is None:
            self.done = self.total
            self._draw()
        self.stream.write("\n")
        self.stream.flush()

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._shown >= INTERVAL:
            self._draw()

    def _draw(self) -> None:
        if not self.enabled:
            return
        self._shown = time.monotonic()
        frac = min(self.done / self.total, 1.0)
        filled = int(frac * WIDTH)
        bar = "#" * filled + "-" * (WIDTH - filled)
        self.stream.write(
            f"\r{self.label} [{bar}] {frac * 100:3.0f}% "
            f"{format_size(self.done)} / {format_size(self.total)}\x1b[K"
        )
        self.stream.flush()
