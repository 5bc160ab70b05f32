"""Can this machine run what packer ships? The runtime (frozen llama.cpp) runs here too, at
build time: it quantizes the model (:mod:`packer.quantize`), so the build machine needs what
model.run needs: x86-64 Linux with glibc 2.31 or newer."""

from __future__ import annotations

import os
import platform

from packer.errors import PlatformError

GLIBC_FLOOR = (2, 31)  # the Debian 11 build root's glibc: the oldest model.run runs on
MACHINES = ("x86_64", "amd64")


def machine() -> str:
    return platform.machine().lower()


def glibc() -> str | None:
    """This machine's glibc version ("2.36"), None without glibc (musl, macOS, Windows)."""
    try:
        found = os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.36"
    except (AttributeError, ValueError, OSError):
        return None
    if not found or not found.startswith("glibc "):
        return None
    return found.split()[1]


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


def supported_text() -> str:
    return f"x86-64 Linux with glibc {'.'.join(map(str, GLIBC_FLOOR))} or newer"


def check_host() -> None:
    """:class:`PlatformError` (one line) on a machine the shipped runtime cannot run on."""
    arch, libc = machine(), glibc()
    if arch in MACHINES and libc is not None and version_tuple(libc) >= GLIBC_FLOOR:
        return
    system = platform.system() or "unknown OS"
    here = f"{system} {arch or '?'}" + (f", glibc {libc}" if libc else ", no glibc")
    raise PlatformError(
        f"packer's runtime runs on {supported_text()}; this machine is {here}: build the model "
        "on a supported machine (the model.run it writes then runs on any of them)"
    )
