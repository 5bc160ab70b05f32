"""The code frozen into every model.run: terminal chat, one-shot answers and the HTTP server.

It is configured by the JSON manifest that ``packer build`` appends to the executable
(see :mod:`runtime.payload`), with environment-variable overrides (``PACKER_CACHE``,
``PACKER_ARGS``). It must not import anything from ``packer`` (the build side).
"""

__version__ = "0.1.0"
