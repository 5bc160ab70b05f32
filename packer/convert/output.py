"""Atomic output (:mod:`packer.runtime.atomic_write`) with the converter's checks and messages.

On any failure (exception, KeyboardInterrupt, disk full) the temp file is removed, so the
output folder never holds a partial GGUF. OS errors while writing become OutputError.
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from packer.errors import OutputError
from packer.runtime.atomic_write import atomic_write

logger = logging.getLogger(__name__)


def output_error(out: Path, err: OSError) -> OutputError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(
            f"disk full while writing {out}; free some space or choose another output folder"
        )
    return OutputError(
        f"cannot write {out} in folder {out.parent}: {err.strerror or err}; "
        "choose a writable output folder"
    )


def check_output_path(out: Path) -> None:
    """Cheap checks before a long conversion: the folder exists and the target is no folder."""
    parent = out.parent
    if not parent.is_dir():
        raise OutputError(
            f"output folder {parent} does not exist; create it or choose another output path"
        )
    if out.is_dir():
        raise OutputError(f"output path {out} is a folder; give a file name such as model.gguf")


@contextlib.contextmanager
def atomic_output(out: Path) -> Iterator[BinaryIO]:
    """Yield a binary file to write; on success it replaces ``out``, on failure it is removed."""
    check_output_path(out)
    try:
        with atomic_write(out) as fh:
            yield fh
    except OSError as err:
        raise output_error(out, err) from err
    logger.info("wrote %s", out)
