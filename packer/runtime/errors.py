"""The error of a model.run that is not a complete, intact packer bundle.

Its own module because both :mod:`packer.runtime.payload` (the file's layout) and
:mod:`packer.runtime.manifest` (the manifest inside it) raise it.
"""

from __future__ import annotations


class BundleError(Exception):
    """The file is not a (complete, intact) packer bundle. The message is one line for the user."""
