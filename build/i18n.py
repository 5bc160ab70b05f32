#!/usr/bin/env python3
"""Compile model.run's gettext catalogs: every ``packer/runtime/locale/<lang>/LC_MESSAGES/packer.po``
to the ``packer.mo`` next to it (committed, so a checkout and the wheel need no compiler step).

    python build/i18n.py            # write the .mo files that are out of date
    python build/i18n.py --check    # exit 1 when a .mo is missing or differs from its .po

Uses Babel (``runtime-build`` extra); the output is deterministic, so ``--check`` compares bytes.
"""

from __future__ import annotations

import argparse
import datetime
import io
import sys
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

PINNED_DATE = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
LOCALE = Path(__file__).resolve().parents[1] / "packer" / "runtime" / "locale"


def compile_po(po: Path) -> bytes:
    data = po.read_bytes()
    catalog = read_po(io.BytesIO(data), abort_invalid=True)
    if b"POT-Creation-Date:" not in data:  # else Babel writes the current time into the .mo
        catalog.creation_date = PINNED_DATE
    out = io.BytesIO()
    write_mo(out, catalog, use_fuzzy=False)
    return out.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check that every .mo is current")
    args = ap.parse_args()
    stale = []
    for po in sorted(LOCALE.glob("*/LC_MESSAGES/*.po")):
        mo = po.with_suffix(".mo")
        data = compile_po(po)
        if mo.is_file() and mo.read_bytes() == data:
            continue
        stale.append(mo)
        if not args.check:
            tmp = mo.with_suffix(".mo.tmp")
            tmp.write_bytes(data)
            tmp.replace(mo)
            print(f"wrote {mo.relative_to(LOCALE.parents[2])}")
    if args.check and stale:
        for mo in stale:
            print(f"{mo}: out of date: run python build/i18n.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
