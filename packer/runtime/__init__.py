"""The code frozen into every model.run: terminal chat, one-shot answers and the HTTP server.

It is configured by the JSON manifest that ``packer build`` appends to the executable
(see :mod:`packer.runtime.payload`), with environment-variable overrides (``PACKER_CACHE``,
``PACKER_ARGS``). It must not import the build side (``packer``'s other modules, which are
not frozen): only ``packer/__init__.py``, for the one version number.
"""

from packer import __version__

__all__ = ["__version__"]
