"""Atomic output: write to a hidden temp file next to the target, rename at the end.

On any failure (exception, KeyboardInterrupt, disk full) the temp file is removed, so the
output folder never holds a partial GGUF. OS errors while writing become OutputError.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from packer.errors import OutputError

logger = logging.getLogger(__name__)


def temp_path_for(out: Path) -> Path:
    return out.with_name(f".{out.name}.{secrets.token_hex(4)}.part")


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
def atomic_output(out: Path) -> Iterator[Path]:
    """Yield a temp path to write; on success it replaces ``out``, on failure it is removed."""
    check_output_path(out)
    tmp = temp_path_for(out)
    try:
        # create it ourselves (O_EXCL, mode honouring the umask) so the final file gets
        # ordinary permissions, unlike tempfile's 0600
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        os.close(fd)
    except OSError as err:
        raise output_error(out, err) from err
    try:
        yield tmp
        os.replace(tmp, out)
    except OSError as err:
        _remove(tmp)
        raise output_error(out, err) from err
    except BaseException:
        _remove(tmp)
        raise
    logger.info("wrote %s", out)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as err:  # pragma: no cover - nothing more we can do
        logger.warning("could not remove temporary file %s: %s", path, err)
