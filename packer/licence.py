"""The model's licence and model card, carried inside model.run (issue #15).

Llama 3.x and Gemma licences (and Apache-2.0, MIT, CC-BY...) require handing a copy to every
recipient, so ``packer build`` puts the texts into the manifest and ``model.run --license``
prints them. What is collected, from the top folder of the source only:

- licence texts: ``LICENSE``/``LICENCE``/``COPYING``/``NOTICE`` with any extension or suffix
  (``LICENSE.txt``, ``LICENSE-MODEL``), and use policies (``USE_POLICY.md``,
  ``PROHIBITED_USE_POLICY.md``, ...); see :func:`is_licence_file`;
- the model card, ``README.md``;
- the licence id: the model card's YAML metadata (``license``; ``license_name`` and
  ``license_link`` for ``other``), and for a GGUF source the GGUF's own ``general.license``
  (``.name``, ``.link``) first.

A local folder gives its own files; a local GGUF the files next to it; a hub source the files
:mod:`packer.hub` downloaded and verified with the model (:attr:`packer.source.Source.docs`).

Texts are UTF-8 (a BOM is dropped). A file that is not valid UTF-8 is decoded with its bad bytes
replaced by U+FFFD, and the build says so in one warning line; a file with NUL bytes is not text
and is left out, also with one line. Sizes are capped so that a huge README cannot bloat the
manifest every start reads: :data:`MAX_LICENCE_FILE` per licence text, :data:`MAX_LICENCE_TOTAL`
for all of them, :data:`MAX_MODEL_CARD` for the model card, :data:`MAX_FILES` licence files. A
text over its cap is cut at a line end with a note at the cut (``[... cut by packer ...]``) and
one warning line. Nothing here refuses a build: the licence is reported, never enforced.
"""

from __future__ import annotations

import codecs
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from packer.runtime.manifest import LicenseFile

if TYPE_CHECKING:
    from packer.source import Source

log = logging.getLogger(__name__)

MAX_LICENCE_FILE = 128 * 1024  # the GPL-3.0 is 35 kB, the Llama 3.x licences 7 kB
MAX_LICENCE_TOTAL = 512 * 1024
MAX_MODEL_CARD = 128 * 1024  # Llama-3.1-8B-Instruct's README is 44 kB
MAX_FILES = 12
MODEL_CARD = "README.md"

_LICENCE_NAME = re.compile(
    r"(?:LICEN[CS]E|COPYING|NOTICE|(?:ACCEPTABLE[_-]|PROHIBITED[_-])?USE[_-]POLIC(?:Y|IES))"
    r"(?:[-_.][A-Za-z0-9][\w.\-]*)?",
    re.IGNORECASE,
)
_NOT_TEXT = (".pdf", ".doc", ".docx", ".odt", ".rtf", ".png", ".jpg", ".jpeg", ".gif", ".zip")
_BOM = codecs.BOM_UTF8


def is_licence_file(name: str) -> bool:
    """A top-level file name that holds licence terms (``LICENSE``, ``LICENSE.txt``,
    ``LICENCE-MODEL``, ``NOTICE``, ``USE_POLICY.md``...), not a binary (``LICENSE.pdf``)."""
    return (
        "/" not in name
        and _LICENCE_NAME.fullmatch(name) is not None
        and not name.lower().endswith(_NOT_TEXT)
    )


def is_model_card(name: str) -> bool:
    return name.lower() == MODEL_CARD.lower()


def doc_names(names: Iterable[str]) -> list[str]:
    """The licence files (at most :data:`MAX_FILES`) and the model card of a repo listing, in
    the order they are carried: licences, then notices, then use policies, then the card."""
    licences = sorted((n for n in names if is_licence_file(n)), key=_order)[:MAX_FILES]
    cards = sorted(n for n in names if "/" not in n and is_model_card(n))[:1]
    return licences + cards


def _order(name: str) -> tuple[int, str]:
    upper = name.upper()
    rank = 0 if upper.startswith(("LICEN", "COPYING")) else 1 if upper.startswith("NOTICE") else 2
    return rank, upper


# ------------------------------------------------------------------------- what a licence asks


@dataclass(frozen=True)
class Terms:
    """What a known licence asks of whoever shares the model (packer's summary, not advice)."""

    title: str
    pass_on: str | None  # what must go with every copy; None: nothing
    restricts: str | None  # how use is restricted; None: not restricted


_NOTICE = "the copyright and licence notice"
_TEXT = "a copy of the licence and its notices"
_COPYLEFT = "the licence text (changed versions under the same licence)"
_LLAMA = "a copy of the licence and a 'Built with Llama' notice"
_LLAMA_USE = (
    "Meta's acceptable use policy, and over 700 million monthly users needs Meta's permission"
)
_RAIL = "a copy of the licence and its use restrictions"
_RAIL_USE = "the use restrictions in the licence"
_QWEN_USE = "over 100 million monthly users needs Alibaba Cloud's permission"
_RESEARCH = "non-commercial (research) use only"


def _terms(pass_on: str | None, restricts: str | None, **titles: str) -> dict[str, Terms]:
    return {key: Terms(title, pass_on, restricts) for key, title in titles.items()}


# Hugging Face's licence ids (https://huggingface.co/docs/hub/repositories-licenses) and the
# `license_name`s model cards give with `license: other`; Creative Commons ids: see _cc_terms.
KNOWN: dict[str, Terms] = {
    "apache-2.0": Terms("Apache License 2.0", "a copy of the licence and its NOTICE file", None),
    **_terms(
        _NOTICE,
        None,
        mit="MIT License",
        bsd="BSD License",
        isc="ISC License",
        zlib="zlib License",
        ncsa="University of Illinois/NCSA License",
        postgresql="PostgreSQL License",
        **{
            "bsd-2-clause": "BSD 2-Clause License",
            "bsd-3-clause": "BSD 3-Clause License",
            "bsd-3-clause-clear": "BSD 3-Clause Clear License",
            "bsl-1.0": "Boost Software License 1.0",
        },
    ),
    **_terms(
        _TEXT,
        None,
        **{
            "afl-3.0": "Academic Free License 3.0",
            "ecl-2.0": "Educational Community License 2.0",
            "artistic-2.0": "Artistic License 2.0",
            "ms-pl": "Microsoft Public License",
            "odc-by": "Open Data Commons Attribution License",
            "cdla-permissive-1.0": "Community Data License Agreement Permissive 1.0",
            "cdla-permissive-2.0": "Community Data License Agreement Permissive 2.0",
            "etalab-2.0": "Etalab Open Licence 2.0",
            "ofl-1.1": "SIL Open Font License 1.1",
            "lppl-1.3c": "LaTeX Project Public License 1.3c",
            "apple-ascl": "Apple Sample Code License",
        },
    ),
    **_terms(
        _COPYLEFT,
        None,
        gpl="GNU General Public License",
        lgpl="GNU Lesser General Public License",
        gfdl="GNU Free Documentation License",
        odbl="Open Database License",
        **{
            "gpl-2.0": "GNU General Public License 2.0",
            "gpl-3.0": "GNU General Public License 3.0",
            "agpl-3.0": "GNU Affero General Public License 3.0",
            "lgpl-2.1": "GNU Lesser General Public License 2.1",
            "lgpl-3.0": "GNU Lesser General Public License 3.0",
            "lgpl-lr": "Lesser General Public License for Linguistic Resources",
            "mpl-2.0": "Mozilla Public License 2.0",
            "epl-1.0": "Eclipse Public License 1.0",
            "epl-2.0": "Eclipse Public License 2.0",
            "eupl-1.1": "European Union Public Licence 1.1",
            "eupl-1.2": "European Union Public Licence 1.2",
            "osl-3.0": "Open Software License 3.0",
            "cdla-sharing-1.0": "Community Data License Agreement Sharing 1.0",
        },
    ),
    **_terms(
        None,
        None,
        unlicense="The Unlicense",
        wtfpl="WTFPL",
        pddl="Open Data Commons Public Domain Dedication",
        **{"cc0-1.0": "CC0 1.0 Universal"},
    ),
    **_terms(
        _LLAMA,
        _LLAMA_USE,
        llama2="Llama 2 Community License",
        llama3="Llama 3 Community License",
        llama4="Llama 4 Community License",
        **{
            "llama3.1": "Llama 3.1 Community License",
            "llama3.2": "Llama 3.2 Community License",
            "llama3.3": "Llama 3.3 Community License",
        },
    ),
    "gemma": Terms(
        "Gemma Terms of Use",
        "a copy of the terms and their use restrictions",
        "Google's Gemma prohibited use policy",
    ),
    **_terms(
        _RAIL,
        _RAIL_USE,
        openrail="Open RAIL License",
        deepseek="DeepSeek License",
        **{
            "openrail++": "Open RAIL++-M License",
            "creativeml-openrail-m": "CreativeML Open RAIL-M",
            "bigscience-openrail-m": "BigScience Open RAIL-M",
            "bigscience-bloom-rail-1.0": "BigScience BLOOM RAIL 1.0",
            "bigcode-openrail-m": "BigCode Open RAIL-M",
        },
    ),
    **_terms(
        "a copy of the licence",
        _QWEN_USE,
        qwen="Qwen License",
        **{"tongyi-qianwen": "Tongyi Qianwen License"},
    ),
    **_terms(
        _TEXT,
        _RESEARCH,
        mrl="Mistral AI Research License",
        **{
            "qwen-research": "Qwen Research License",
            "tongyi-qianwen-research": "Tongyi Qianwen Research License",
            "fair-noncommercial-research-license": "FAIR Noncommercial Research License",
            "intel-research": "Intel Research Use License",
            "apple-amlr": "Apple Machine Learning Research Model License",
            "deepfloyd-if-license": "DeepFloyd IF License",
            "c-uda": "Computational Use of Data Agreement",
        },
    ),
}

_CC = re.compile(r"cc-by(?P<nc>-nc)?(?P<kind>-sa|-nd)?-(?P<version>\d\.\d)")


def _cc_terms(key: str) -> Terms | None:
    """``cc-by-nc-sa-4.0`` and the other Creative Commons Attribution licences."""
    m = _CC.fullmatch(key)
    if m is None:
        return None
    parts = ["Attribution"]
    pass_on = "credit to the authors and a link to the licence"
    restricts = []
    if m["nc"]:
        parts.append("NonCommercial")
        restricts.append("non-commercial use only")
    if m["kind"] == "-sa":
        parts.append("ShareAlike")
        pass_on += " (changed versions under the same licence)"
    elif m["kind"] == "-nd":
        parts.append("NoDerivatives")
        restricts.append("no sharing of changed versions (a quantized copy may count as one)")
    title = f"Creative Commons {'-'.join(parts)} {m['version']}"
    return Terms(title, pass_on, "; ".join(restricts) or None)


def terms_of(licence_id: str | None) -> Terms | None:
    """packer's summary of a licence id (``apache-2.0``, ``llama3.2``, ``cc-by-nc-4.0``...);
    None for ``other``, ``unknown`` and ids packer does not know."""
    if not licence_id:
        return None
    key = licence_id.strip().lower()
    return KNOWN.get(key) or _cc_terms(key)


def _combined_terms(ids: list[str], name: str | None) -> Terms | None:
    """The terms of one or more ids (a model card may list several); ``other`` and ``unknown``
    are looked up by ``license_name``. None when any of them is not known."""
    found = []
    for licence_id in ids:
        key = licence_id.strip().lower()
        terms = terms_of(name) if key in ("other", "unknown") and name else terms_of(key)
        if terms is None:
            return None
        found.append(terms)
    if not found:
        return None
    if len(found) == 1:
        return found[0]
    pass_on = [t.pass_on for t in found if t.pass_on]
    restricts = [t.restricts for t in found if t.restricts]
    return Terms(
        " and ".join(t.title for t in found),
        ", plus ".join(pass_on) or None,
        "; ".join(restricts) or None,
    )


# ------------------------------------------------------------------------- what a source carries


@dataclass(frozen=True)
class Licence:
    """The licence id, texts and model card found for a source (for the manifest), and what the
    build says about them."""

    license: str | None = None  # the id, e.g. "llama3.2"; several are joined with ", "
    license_name: str | None = None  # the name given with `license: other`
    license_link: str | None = None
    files: tuple[LicenseFile, ...] = ()
    model_card: str | None = None
    where: str = ""  # where the texts and metadata were looked for, e.g. "the checkpoint folder"
    notes: tuple[str, ...] = field(default=())  # one line each: a text cut, not UTF-8, left out

    @property
    def ids(self) -> list[str]:
        return [i.strip() for i in (self.license or "").split(",") if i.strip()]

    @property
    def terms(self) -> Terms | None:
        return _combined_terms(self.ids, self.license_name)

    def label(self) -> str:
        """``llama3.2 (Llama 3.2 Community License)``; with ``license: other`` the name it gives:
        ``qwen (Qwen License)``, ``my-licence``."""
        text = self.license or ""
        if self.license_name and text.lower() in ("other", "unknown", ""):
            text = self.license_name
        terms = self.terms
        return f"{text} ({terms.title})" if terms is not None and terms.title else text

    def carried(self) -> list[str]:
        return [f.name for f in self.files] + (["model card"] if self.model_card else [])

    def notice(self) -> str:
        """The one line ``packer build`` prints: which licence, whether it must be passed on
        and whether it restricts use, or that none was found."""
        carried = self.carried()
        carried_txt = (
            f"carried in the file: {', '.join(carried)} (model.run --license prints "
            f"{'it' if len(carried) == 1 else 'them'})"
            if carried
            else ""
        )
        if not self.license:
            if self.files:
                names = ", ".join(f.name for f in self.files)
                found = f"no licence id in the model card or metadata, {names} found"
                return f"licence: {found}: read it before sharing the file; {carried_txt}"
            card = "the model card has no licence id" if self.model_card else "no model card"
            line = (
                f"licence: none found in {self.where} ({card}, no LICENSE file): "
                "check the model's terms before sharing the file"
            )
            return f"{line}; {carried_txt}" if carried_txt else line
        terms = self.terms
        bits = []
        if terms is None:
            if self.files:
                bits.append("packer does not know this licence: read it before sharing the file")
            else:
                link = f" ({self.license_link})" if self.license_link else ""
                bits.append(
                    f"packer does not know this licence and found no text of it in {self.where}: "
                    f"read its terms{link} before sharing the file"
                )
        elif terms.pass_on is None and terms.restricts is None:
            bits.append("no conditions on sharing")
        else:
            if terms.pass_on:
                bits.append(f"requires passing on {terms.pass_on} with every copy")
            if terms.restricts:
                bits.append(f"restricts use: {terms.restricts}")
            if terms.pass_on and not self.files:
                link = f" ({self.license_link})" if self.license_link else ""
                bits.append(
                    f"no licence text found in {self.where}, only its id{link}: "
                    "pass the terms on yourself"
                )
        if carried_txt:
            bits.append(carried_txt)
        return f"licence: {self.label()}: " + "; ".join(bits)


def for_source(src: Source) -> Licence:
    """What :func:`collect` finds for a resolved source: a hub source's downloaded files, a
    local folder's own, the files next to a local GGUF (and the GGUF's metadata)."""
    gguf = src.path if src.kind == "gguf" else None
    folder = src.path
    if src.kind == "gguf":
        # next to the file as the user named it: a link (into an HF cache snapshot, say)
        # resolves to a folder of blobs
        named = Path(src.spec).expanduser()
        folder = (named if named.is_file() else src.path).absolute().parent
    if src.repo_id:
        where = f"the repo {src.repo_id}"
    elif src.kind == "gguf":
        where = f"{src.path.name} or next to it"
    else:
        where = f"the folder {src.path}"
    return collect(folder, src.docs, gguf=gguf, where=where)


def collect(
    folder: Path | None,
    paths: Iterable[Path] | None = None,
    *,
    gguf: Path | None = None,
    where: str = "",
) -> Licence:
    """The licence of a source: its texts from ``paths`` (hub downloads) or, without them, the
    licence files and model card at the top of ``folder``; the id from the model card's
    metadata, or first from the GGUF's own ``general.license`` when ``gguf`` is given."""
    notes: list[str] = []
    if paths is None:
        paths = _listing(folder, notes) if folder is not None else []
    by_name = {p.name: p for p in paths}
    names = doc_names(by_name)
    dropped = [n for n in by_name if is_licence_file(n) and n not in names]
    if dropped:
        notes.append(
            f"more than {MAX_FILES} licence files: {', '.join(sorted(dropped))} not carried"
        )
    files: list[LicenseFile] = []
    card: str | None = None
    budget = MAX_LICENCE_TOTAL
    over: list[str] = []  # licence files left out: the others filled the budget
    for name in names:
        if is_model_card(name):
            card = _read_text(by_name[name], MAX_MODEL_CARD, notes)
            continue
        if budget <= 0:
            over.append(name)
            continue
        text = _read_text(by_name[name], min(MAX_LICENCE_FILE, budget), notes)
        if text is not None:
            files.append(LicenseFile(name, text))
            budget -= len(text.encode("utf-8"))
    if over:
        notes.append(
            f"the licence texts fill {_kb(MAX_LICENCE_TOTAL)}: {', '.join(over)} not carried"
        )
    meta: dict[str, str] = {}
    if gguf is not None:
        meta = _gguf_metadata(gguf)
    if not meta.get("license") and card is not None:
        meta = _card_metadata(card, notes)
    return Licence(
        license=meta.get("license"),
        license_name=meta.get("license_name"),
        license_link=meta.get("license_link"),
        files=tuple(files),
        model_card=card,
        where=where or (str(folder) if folder is not None else "the source"),
        notes=tuple(notes),
    )


def _listing(folder: Path, notes: list[str]) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_file())
    except OSError as exc:
        notes.append(f"cannot list {folder} for licence files: {exc.strerror}")
        return []


def _kb(n: int) -> str:
    return f"{n / 1024:,.0f} KiB" if n >= 1024 else f"{n} bytes"


def _read_text(path: Path, cap: int, notes: list[str]) -> str | None:
    """The file as text, cut at ``cap`` bytes (at a line end, with a note at the cut); None
    when it cannot be read or is not text. Every problem adds one line to ``notes``."""
    name = path.name
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(cap + 1)
    except OSError as exc:
        notes.append(f"cannot read {name}: {exc.strerror}; not carried")
        return None
    if b"\0" in raw:
        notes.append(f"{name} is not a text file (it has NUL bytes); not carried")
        return None
    cut = len(raw) > cap
    raw = raw[:cap]
    if raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    try:
        text = decoder.decode(raw, final=not cut)  # a character split by the cut is dropped
    except UnicodeDecodeError:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        text = decoder.decode(raw, final=not cut)
        notes.append(f"{name} is not valid UTF-8: its undecodable bytes were replaced with U+FFFD")
    if cut:
        line_end = text.rfind("\n")
        if line_end > len(text) // 2:
            text = text[: line_end + 1]
        else:
            text += "\n"
        text += f"[... cut by packer: the full {name} is {_kb(size)}; read it where the model comes from]\n"
        notes.append(f"{name} is {_kb(size)}: only its first {_kb(cap)} are carried in the file")
    return text


_YAML_BLOCK = re.compile(r"\A\s*---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.DOTALL)
_FIELDS = ("license", "license_name", "license_link")


def _card_metadata(card: str, notes: list[str]) -> dict[str, str]:
    """``license``, ``license_name``, ``license_link`` of the model card's YAML metadata."""
    import yaml  # comes with huggingface_hub

    m = _YAML_BLOCK.match(card)
    if m is None:
        return {}
    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 2})" if where is not None else ""
        notes.append(
            f"the model card's metadata is not valid YAML{line}: its licence id is ignored"
        )
        return {}
    if not isinstance(data, dict):
        return {}
    return {key: text for key in _FIELDS if (text := _meta_text(data.get(key)))}


def _meta_text(value: object) -> str | None:
    if isinstance(value, list):
        items = [str(v).strip() for v in value if v is not None and str(v).strip()]
        return ", ".join(items) or None
    if value is None or isinstance(value, dict):
        return None
    return str(value).strip() or None


def _gguf_metadata(path: Path) -> dict[str, str]:
    """``general.license`` (``.name``, ``.link``) of a GGUF file; {} when it has none."""
    try:
        import gguf

        reader = gguf.GGUFReader(path)
        keys = {
            "license": gguf.Keys.General.LICENSE,
            "license_name": gguf.Keys.General.LICENSE_NAME,
            "license_link": gguf.Keys.General.LICENSE_LINK,
        }
        out = {}
        for name, key in keys.items():
            entry = reader.fields.get(key)
            if entry is not None and (text := _meta_text(entry.contents())):
                out[name] = text
        return out
    except Exception as exc:  # the source reader already vouched for the file
        log.debug("no licence metadata in %s: %s", path, exc)
        return {}
