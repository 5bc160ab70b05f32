"""The endpoints that generate nothing: the web chat's files, health, what the server and
model are (llama.cpp's ``/props`` and ``/slots``, Ollama's ``/api/tags``, ``/api/ps``,
``/api/show``, ``/api/version``) and tokenizing.

Handlers take the server (:class:`packer.runtime.server.PackerHTTPServer`) and a
:class:`packer.runtime.replies.Call` and return a reply; :mod:`packer.runtime.routes` lists them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packer.runtime import generate as gen
from packer.runtime import server_api as api
from packer.runtime.dialect_llama import generation_settings
from packer.runtime.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from packer.runtime.ollama_api import OLLAMA_VERSION
from packer.runtime.replies import Call, Json, Raw, Reply
from packer.runtime.server_api import ApiError
from packer.runtime.webpage import VENDOR, license_json, page_json

if TYPE_CHECKING:
    from packer.runtime.server import PackerHTTPServer


def templates_dir() -> Path:
    if getattr(sys, "frozen", False):
        return Path(sys._MEIPASS) / "templates"  # type: ignore[attr-defined]
    return Path(__file__).resolve().parents[1] / "templates"


# -- the web chat ---------------------------------------------------------------------------


def page(srv: PackerHTTPServer, call: Call) -> Reply:
    """``GET /``: the web chat; "Ollama is running" on the Ollama listener or without it."""
    if srv.ollama or not srv.http.webui:
        return Raw(b"Ollama is running", "text/plain; charset=utf-8")
    try:
        body = (templates_dir() / "chat.html").read_bytes()
    except OSError:
        raise ApiError(
            404, "the web chat page is not part of this build", "not_found_error"
        ) from None
    return Raw(body, "text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})


def vendor(srv: PackerHTTPServer, call: Call) -> Reply:
    """The page's vendored scripts (templates/vendor/), part of the web chat."""
    if not srv.http.webui:
        raise ApiError(404, f"no such endpoint: {call.method} {call.path}", "not_found_error")
    name, kind = VENDOR[call.path]
    try:
        body = (templates_dir() / name).read_bytes()
    except OSError:
        raise ApiError(404, f"{name} is not part of this build", "not_found_error") from None
    return Raw(body, kind, headers={"Cache-Control": "max-age=86400"})


def page_data(srv: PackerHTTPServer, call: Call) -> Reply:
    """``GET /packer/page.json``: what the page shows (model, LAN addresses, its strings)."""
    body = page_json(
        srv.model_name,
        srv.http.page,
        srv.http.public_urls,
        (call.query.get("lang") or [None])[0],
        call.headers.get("Accept-Language", ""),
        embedding=srv.embedding_only,
    )
    return Json(body, headers={"Cache-Control": "no-cache", "Vary": "Accept-Language"})


def license_(srv: PackerHTTPServer, call: Call) -> Reply:
    return Json(license_json(srv.http.page))


def favicon(srv: PackerHTTPServer, call: Call) -> Reply:
    return Raw(b"", "image/x-icon", status=204)


# -- the server and the model -----------------------------------------------------------------


def health(srv: PackerHTTPServer, call: Call) -> Reply:
    if srv.gate.closing:
        raise ApiError(503, "the server is shutting down", "unavailable_error")
    return Json({"status": "ok"})


def metrics(srv: PackerHTTPServer, call: Call) -> Reply:
    """``GET /metrics``: Prometheus text (``--metrics``), else llama-server's 501."""
    if srv.metrics is None:
        raise ApiError(
            501,
            "this server does not serve /metrics: start it with --metrics",
            "not_supported_error",
        )
    text = srv.metrics.render(srv.engine.scheduler.metrics_snapshot())
    return Raw(text.encode("utf-8"), METRICS_CONTENT_TYPE)


def props(srv: PackerHTTPServer, call: Call) -> Reply:
    """llama-server's ``GET /props``."""
    import llama_cpp

    engine = srv.engine
    return Json(
        {
            "default_generation_settings": {
                "id": 0,
                "id_task": -1,
                "n_ctx": engine.n_ctx,
                "speculative": False,
                "is_processing": engine.scheduler.busy(),
                "params": generation_settings(srv.defaults),
                "prompt": "",
            },
            "total_slots": engine.scheduler.n_parallel,
            "model_alias": srv.model_name,
            "model_path": str(engine.path),
            "chat_template": engine.chat_template,
            "modalities": {"vision": False, "audio": False},
            "build_info": f"packer-runtime / llama-cpp-python {llama_cpp.__version__}",
        }
    )


def slots(srv: PackerHTTPServer, call: Call) -> Reply:
    """llama-server's ``GET /slots``: one object per slot."""
    out = []
    for s in srv.engine.scheduler.slots():
        out.append(
            {
                "id": s["id"],
                "id_task": -1,
                "n_ctx": s["n_ctx"],
                "speculative": False,
                "is_processing": s["is_processing"],
                "params": generation_settings(s["params"] or srv.defaults),
                "prompt": "",
                "n_prompt_tokens": s["n_prompt_tokens"],
                "n_prompt_tokens_processed": s["n_prompt_tokens_processed"],
                "n_cached_tokens": s["n_cached"],
                "next_token": {
                    "has_next_token": s["has_next_token"],
                    "has_new_line": False,
                    "n_remain": s["n_remain"],
                    "n_decoded": s["n_decoded"],
                    "stopping_word": "",
                },
            }
        )
    return Json(out)


def tokenize(srv: PackerHTTPServer, call: Call) -> Reply:
    """llama.cpp's ``POST /tokenize`` (``with_pieces``: each token's text too)."""
    body = call.body
    content = body.get("content")
    if not isinstance(content, str):
        raise ApiError(400, "'content' (a string) is required", param="content")
    add_special = api.get_bool(body, "add_special", False)
    parse_special = api.get_bool(body, "parse_special", True)
    with_pieces = api.get_bool(body, "with_pieces", False)
    engine = srv.engine
    with srv.gate.use(), srv.token_line.use():
        tokens = gen.tokenize(engine, content, add_special=add_special, parse_special=parse_special)
        if not with_pieces:
            return Json({"tokens": tokens})
        out: list[Any] = []
        for t in tokens:
            raw = gen.token_piece(engine, t, special=True)
            try:
                piece: Any = raw.decode("utf-8")
            except UnicodeDecodeError:
                piece = list(raw)
            out.append({"id": t, "piece": piece})
        return Json({"tokens": out})


def detokenize(srv: PackerHTTPServer, call: Call) -> Reply:
    """llama.cpp's ``POST /detokenize``."""
    tokens = call.body.get("tokens", [])
    if not isinstance(tokens, list):
        raise ApiError(400, "'tokens' must be a list of token ids", param="tokens")
    with srv.gate.use(), srv.token_line.use():
        ids = gen.check_tokens(srv.engine, tokens)
        return Json({"content": gen.detokenize(srv.engine, ids)})


# -- Ollama: the model --------------------------------------------------------------------------


def ollama_version(srv: PackerHTTPServer, call: Call) -> Reply:
    return Json({"version": OLLAMA_VERSION})


def ollama_tags(srv: PackerHTTPServer, call: Call) -> Reply:
    return Json(srv.card().tags())


def ollama_ps(srv: PackerHTTPServer, call: Call) -> Reply:
    return Json(srv.card().ps())


def ollama_show(srv: PackerHTTPServer, call: Call) -> Reply:
    return Json(srv.card().show())  # any model name: this server holds one model
