"""The one error type of packer, caught by the CLI's single top-level handler.

Every user-facing failure raises a subclass of :class:`PackerError` whose message is one
line saying what is wrong and what to do. The exit codes are stable: scripts may rely on them.
"""

from __future__ import annotations


class PackerError(Exception):
    """A failure the user can act on. ``str(err)`` is the one-line message."""

    exit_code = 1


class UsageError(PackerError):
    """Bad arguments: unknown quant type, conflicting options."""

    exit_code = 2


class SourceError(PackerError):
    """The model source cannot be found or read (missing folder, no config.json, ...)."""

    exit_code = 3


class UnsupportedModelError(PackerError):
    """The checkpoint is readable but of an architecture/tokenizer we do not convert."""

    exit_code = 4


class ConversionError(PackerError):
    """The checkpoint is inconsistent: missing/extra tensors, wrong shapes, bad dtypes, corrupt files."""

    exit_code = 5


class QuantizeError(PackerError):
    """llama.cpp's quantizer refused or failed."""

    exit_code = 6


class RuntimeStubError(PackerError):
    """The frozen runtime stub could not be built or found."""

    exit_code = 7


class OutputError(PackerError):
    """The output cannot be written (not writable, disk full)."""

    exit_code = 8


class PlatformError(PackerError):
    """This machine cannot run the shipped runtime (not x86-64 Linux, or glibc too old)."""

    exit_code = 9
