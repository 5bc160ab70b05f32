"""``model.run --license``: the licence and model card this file carries, printed on stdout.

``packer build`` stores them in the manifest (:mod:`packer.licence`): the licence id (and the
name and link a model card gives with ``license: other``), each licence file's full text
(``LICENSE``, ``USE_POLICY.md``...) and the model card (``README.md``). They are printed in
that order, each under a header line, in the language of the rest of model.run; the texts
themselves are the model's own, as they were written.

Exit status: 0 when the file carries a licence id, a licence text or a model card; 1 when it
carries none of them (a file built from a source without any, or by a packer before 0.2.0),
with one line on stderr saying so.
"""

from __future__ import annotations

import sys
from typing import TextIO

from packer.runtime.i18n import _
from packer.runtime.manifest import Manifest

EXIT_OK, EXIT_NONE = 0, 1


def _header(title: str) -> str:
    return f"==== {title} ===="


def show(
    manifest: Manifest, file_name: str, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Print the licence id, each licence text and the model card of ``manifest`` (the
    manifest of ``file_name``) on ``out``; see the module's docstring for the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    m = manifest
    if not (m.license or m.license_name or m.license_files or m.model_card):
        print(
            _(
                "{file} carries no licence and no model card: check the model's terms "
                "before sharing it"
            ).format(file=file_name),
            file=err,
        )
        return EXIT_NONE
    licence_id = m.license or _("not given")
    if m.license_name and m.license_name != m.license:
        licence_id = f"{licence_id} ({m.license_name})"
    blocks = [_header(_("Licence: {licence}").format(licence=licence_id))]
    if m.license_link:
        blocks.append(_("Terms: {link}").format(link=m.license_link))
    if not m.license_files:
        blocks.append(
            _(
                "This file carries no licence text, only its name: read the terms where the "
                "model comes from before sharing it."
            )
        )
    out.write("\n".join(blocks) + "\n")
    for licence_file in m.license_files:
        title = _("Licence text: {name}").format(name=licence_file.name)
        out.write(f"\n{_header(title)}\n{_ended(licence_file.text)}")
    if m.model_card:
        out.write(f"\n{_header(_('Model card'))}\n{_ended(m.model_card)}")
    out.flush()
    return EXIT_OK


def _ended(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"
