"""What the web chat page (``templates/chat.html``) gets from the server besides the API.

* ``GET /packer/page.json?lang=xx``: the model (name, quant, size, licence, measured quality,
  whether it makes embeddings rather than text), the addresses the class can type with a QR
  code of the first (for the teacher's projector) and the page's translations
  (:func:`packer.runtime.i18n.web_catalog`: ``?lang=`` first, then the browser's
  ``Accept-Language``). Public like ``/``: it holds nothing a student may not see.
* ``GET /packer/license``: the licence texts and model card the file carries, in full.
* ``GET /packer/vendor/...``: the page's vendored scripts (``templates/vendor/``, see its
  README), so the page needs nothing from outside the server.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

from packer.runtime.i18n import web_catalog
from packer.runtime.manifest import LicenseFile, Manifest, Quality

# URL path -> (file under templates/, Content-Type)
VENDOR: dict[str, tuple[str, str]] = {
    "/packer/vendor/markdown-it.min.js": (
        "vendor/markdown-it/markdown-it.min.js",
        "text/javascript; charset=utf-8",
    ),
}


@dataclass(frozen=True)
class PageInfo:
    """What the page shows about the model, from the file's manifest (``size``: the GGUF's
    bytes, 0 when unknown; ``license``: the model card's licence id, ``license_name`` its name
    when the id is "other")."""

    quant: str = ""
    size: int = 0
    license: str | None = None
    license_name: str | None = None
    license_link: str | None = None  # where the terms are (Gemma's repos carry no licence file)
    license_files: tuple[LicenseFile, ...] = ()
    model_card: str | None = None
    quality: Quality | None = None  # measured at build time (packer build --eval)

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> PageInfo:
        return cls(
            quant=manifest.quant,
            size=manifest.gguf_size,
            license=manifest.license,
            license_name=manifest.license_name,
            license_link=manifest.license_link,
            license_files=manifest.license_files,
            model_card=manifest.model_card,
            quality=manifest.quality,
        )


@functools.lru_cache(maxsize=8)
def _qr(url: str) -> str:
    from packer.runtime.qr import qr_svg  # segno: only loaded when there is a URL to show

    return qr_svg(url)


def page_json(
    model: str,
    page: PageInfo | None,
    urls: tuple[str, ...],
    lang: str | None,
    accept_language: str,
    embedding: bool = False,
) -> dict[str, Any]:
    """The body of ``GET /packer/page.json`` (``embedding``: the model makes embeddings, so
    the page shows how to call ``/v1/embeddings`` instead of a chat)."""
    info = page or PageInfo()
    code, messages = web_catalog(lang or None, accept_language)
    return {
        "model": model,
        "embedding": embedding,
        "quant": info.quant or None,
        "size": info.size or None,
        "license": {
            "id": info.license,
            "name": info.license_name,
            "link": info.license_link,
            "files": [f.name for f in info.license_files],
            "model_card": info.model_card is not None,
        },
        # KL divergence and top-1 agreement against the unquantized model, perplexity
        "quality": dataclasses.asdict(info.quality) if info.quality else None,
        "urls": list(urls),
        "qr_svg": _qr(urls[0]) if urls else None,
        "lang": code,
        "messages": messages,
    }


def license_json(page: PageInfo | None) -> dict[str, Any]:
    """The body of ``GET /packer/license``: every licence text and the model card, in full."""
    info = page or PageInfo()
    return {
        "id": info.license,
        "name": info.license_name,
        "link": info.license_link,
        "files": [{"name": f.name, "text": f.text} for f in info.license_files],
        "model_card": info.model_card,
    }
