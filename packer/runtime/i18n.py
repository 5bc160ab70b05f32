"""The language model.run speaks: gettext catalogs, chosen from the locale or ``--lang``.

Every text a student sees is written in English in the code, wrapped in :func:`_` (or
:func:`ngettext`), and translated through the standard gettext catalogs of the ``packer``
domain: ``packer/runtime/locale/<lang>/LC_MESSAGES/packer.po`` in the source, compiled to
``packer.mo`` next to it (``build/i18n.py``; ``tests/test_i18n.py`` checks both are complete
and in step). A teacher adds a language by compiling a ``packer.po`` of their own
(``msgfmt -o packer.mo xx.po``) into ``$PACKER_LOCALEDIR/<lang>/LC_MESSAGES/packer.mo``.

Choice, first match wins: ``--lang`` (or ``PACKER_LANG``; an unknown one is an error), then
the usual gettext variables: the ``LANGUAGE`` list (ignored in the ``C`` locale, as GNU gettext
does), then the locale ``LC_ALL``, ``LC_MESSAGES`` or ``LANG`` (the first one set); no catalog
for them (or ``C``/``POSIX``) means English. argparse's own words ("usage:", "options") come from
the same catalog, so ``--help`` is all one language. The web page asks :func:`web_catalog` with
the browser's languages.
"""

from __future__ import annotations

import argparse
import errno
import gettext
import os
import re
from collections.abc import Mapping
from pathlib import Path

DOMAIN = "packer"
SOURCE_LANGUAGE = "en"
LOCALE_DIR = Path(__file__).resolve().parent / "locale"  # frozen: the same path in _MEIPASS
_TAG = re.compile(r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})?$")

_translation: gettext.NullTranslations = gettext.NullTranslations()
_language = SOURCE_LANGUAGE


class LanguageError(ValueError):
    """``--lang``/``PACKER_LANG`` names a language with no catalog. ``str()`` is one line, in the
    language spoken when it is shown (not when it was raised: the language just failed)."""

    def __init__(self, requested: str, source: str = "--lang", malformed: bool = False) -> None:
        super().__init__(requested)
        self.requested = requested
        self.source = source  # "--lang" or "PACKER_LANG"
        self.malformed = malformed

    def __str__(self) -> str:
        given = (
            f"--lang {self.requested}"
            if self.source == "--lang"
            else f"PACKER_LANG={self.requested}"
        )
        if self.malformed:
            text = _("{given}: not a language code: use one of {languages}")
        else:
            text = _(
                "{given}: no translation for this language: use one of {languages} (or add a "
                "catalog in $PACKER_LOCALEDIR)"
            )
        return text.format(given=given, languages=", ".join(available()))


def _(message: str) -> str:
    """``message`` in the chosen language (the English text when it has no translation)."""
    return _translation.gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return _translation.ngettext(singular, plural, n)


def os_reason(exc: OSError) -> str:
    """Why an operating-system call failed, in the chosen language: the C library's own text
    (``exc.strerror``) is English whatever the locale, as Python never sets ``LC_MESSAGES``."""
    reasons = {
        errno.ENOENT: _("no such file or folder"),
        errno.EACCES: _("permission denied"),
        errno.EPERM: _("operation not permitted"),
        errno.ENOSPC: _("no space left on the device"),
        errno.EDQUOT: _("disk quota exceeded"),
        errno.EROFS: _("read-only file system"),
        errno.EEXIST: _("it already exists"),
        errno.ENOTDIR: _("not a folder"),
        errno.EISDIR: _("it is a folder"),
        errno.EFBIG: _("file too large for this file system"),
        errno.ENAMETOOLONG: _("file name too long"),
        errno.EIO: _("input/output error (a damaged disk or a removed USB stick?)"),
        errno.EADDRINUSE: _("address already in use"),
        errno.EADDRNOTAVAIL: _("this machine has no such address"),
    }
    if exc.errno in reasons:
        return reasons[exc.errno]
    return exc.strerror or str(exc)


def language() -> str:
    """The chosen language's code (``en``, ``es``, ...)."""
    return _language


def locale_dirs() -> list[Path]:
    """Where catalogs are looked for, first match wins: ``$PACKER_LOCALEDIR``, then ours."""
    extra = os.environ.get("PACKER_LOCALEDIR")
    return ([Path(extra)] if extra else []) + [LOCALE_DIR]


def available() -> list[str]:
    """Languages with a catalog (English, the source language, always)."""
    found = {SOURCE_LANGUAGE}
    for folder in locale_dirs():
        found.update(p.parent.parent.name for p in folder.glob(f"*/LC_MESSAGES/{DOMAIN}.mo"))
    return sorted(found)


def _candidates(tag: str) -> list[str]:
    """``es_ES.UTF-8@euro`` -> ``['es_ES', 'es']``; ``pt-BR`` -> ``['pt_BR', 'pt']``."""
    tag = tag.split(".", 1)[0].split("@", 1)[0].replace("-", "_").strip()
    if not _TAG.match(tag):  # C, POSIX, empty, or not a language (never a path into the catalogs)
        return []
    lang, _sep, region = tag.partition("_")
    out = [f"{lang.lower()}_{region.upper()}"] if region else []
    return out + [lang.lower()]


def _short(code: str) -> str:
    """English, the source language, is ``en`` whatever its region (it needs no catalog)."""
    return SOURCE_LANGUAGE if code.split("_", 1)[0] == SOURCE_LANGUAGE else code


def _load(code: str) -> gettext.NullTranslations | None:
    """The catalog of ``code`` (``es_ES`` or ``es``), or None; English needs none."""
    if code.split("_", 1)[0] == SOURCE_LANGUAGE:
        return gettext.NullTranslations()
    for folder in locale_dirs():
        mo = folder / code / "LC_MESSAGES" / f"{DOMAIN}.mo"
        if mo.is_file():
            try:
                with open(mo, "rb") as f:
                    return gettext.GNUTranslations(f)
            except (OSError, ValueError):  # a damaged or foreign file: as if it were not there
                continue
    return None


def _locale_name(env: Mapping[str, str]) -> str:
    """The messages locale as POSIX defines it: the first set of ``LC_ALL``, ``LC_MESSAGES``,
    ``LANG`` ("" when none is)."""
    for var in ("LC_ALL", "LC_MESSAGES", "LANG"):
        if env.get(var):
            return env[var]
    return ""


def resolve(requested: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The language to speak: ``requested`` (``--lang``, else ``PACKER_LANG``) must exist;
    otherwise, as GNU gettext does, the first language of the ``LANGUAGE`` list we have (unless
    the locale is ``C``/``POSIX``: then ``LANGUAGE`` is ignored, so ``LC_ALL=C`` means English),
    else the locale's language (``LC_ALL``, ``LC_MESSAGES``, ``LANG``, first set wins) if we
    have it; otherwise English. Raises :class:`LanguageError`."""
    env = os.environ if environ is None else environ
    source = "--lang"
    if not requested:
        requested, source = env.get("PACKER_LANG") or None, "PACKER_LANG"
    if requested:
        if not _TAG.match(requested.split(".", 1)[0]):
            raise LanguageError(requested, source, malformed=True)
        for code in _candidates(requested):
            if _load(code) is not None:
                return _short(code)
        raise LanguageError(requested, source)
    locale = _locale_name(env)
    tags = [locale]
    if env.get("LANGUAGE") and _candidates(locale or "C"):
        tags = env["LANGUAGE"].split(":") + tags  # a list of preferences, best first
    for tag in tags:
        for code in _candidates(tag):
            if _load(code) is not None:
                return _short(code)
    return SOURCE_LANGUAGE


def setup(requested: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """Choose the language (see :func:`resolve`) and speak it from now on, argparse included.
    Returns its code."""
    global _translation, _language
    code = resolve(requested, environ)
    _translation = _load(code) or gettext.NullTranslations()
    _language = code
    # argparse looks its words up through the module globals `_` and `ngettext` at call time
    argparse._ = _translation.gettext  # type: ignore[attr-defined]
    argparse.ngettext = _translation.ngettext  # type: ignore[attr-defined]
    return code


def web_catalog(requested: str | None, accept_language: str = "") -> tuple[str, dict[str, str]]:
    """For the web page: the first of ``requested`` (the page's ``?lang=``) and the browser's
    ``Accept-Language`` preferences that we have, and its messages ``{english: translated}``
    (empty for English: the page's own text is English)."""
    tags = [requested] if requested else []
    prefs = []
    for i, part in enumerate(accept_language.split(",")[:20]):
        tag, _sep, params = part.strip().partition(";")
        q = 1.0
        for p in params.split(";"):
            k, _s, v = p.strip().partition("=")
            if k == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        if tag and tag != "*" and q > 0:
            prefs.append((-q, i, tag))
    tags += [tag for _q, _i, tag in sorted(prefs)]
    for tag in tags:
        if not _TAG.match(tag):
            continue
        for code in _candidates(tag):
            catalog = _load(code)
            if catalog is None:
                continue
            messages = dict(getattr(catalog, "_catalog", {}))  # GNUTranslations' parsed .mo
            return _short(code), {
                k: v for k, v in messages.items() if isinstance(k, str) and k and v
            }
    return SOURCE_LANGUAGE, {}
