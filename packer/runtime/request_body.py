"""Reading and parsing an HTTP request's body for the server, with every limit enforced.

:func:`read_body` takes the framing from the headers (``Content-Length`` or ``Transfer-Encoding:
chunked``) and never reads more than the server's limit, whatever the size fields say: a chunk
size must be plain hexadecimal (no sign, no ``0x``, at most 16 digits), a size line with its
extensions at most :data:`MAX_LINE` bytes, trailers at most :data:`MAX_TRAILER_LINES` lines.
:func:`parse_json_object` turns the bytes into the JSON object every endpoint expects, refusing
what would otherwise fail later with a traceback (nesting deeper than :data:`MAX_DEPTH`, integers
beyond 64 bits, ``NaN``/``Infinity``, lone UTF-16 surrogates). :func:`content_type_refusal`
decides whether the body's media type is acceptable.

Every refusal is an :class:`ApiError` (400, 408, 413, 415 or 501) that the server answers in the
dialect of the endpoint; after a framing error the caller must close the connection, since where
the next request starts is unknown.
"""

from __future__ import annotations

import json
import math
import re
from email.message import Message
from typing import Any, BinaryIO

from packer.runtime.server_api import ApiError

MAX_LINE = 1024  # bytes of one chunk-size line (size and extensions) or trailer line
MAX_TRAILER_LINES = 32
MAX_DEPTH = 100  # nesting of arrays/objects in a JSON body (OpenAI's own schemas allow 5 to 10)
MAX_INT = 2**64  # integers in a JSON body: |n| < 2**64 (a seed may be a uint64)
_MAX_INT_DIGITS = 20
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_DIGITS = re.compile(r"[0-9]{1,19}")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# media types a JSON body may come with; the CORS-safelisted text/plain, multipart/form-data and
# application/x-www-form-urlencoded are what a web page can send elsewhere without a preflight
JSON_TYPES = ("application/json", "application/x-ndjson")
_NON_BROWSER_TYPES = ("", "application/x-www-form-urlencoded")  # none: scripts; form: `curl -d`
_BROWSER_HEADERS = ("Origin", "Sec-Fetch-Site", "Sec-Fetch-Mode")


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"the request body is over {limit / 2**20:g} MB: send less, or start the server "
        "with a larger --max-body-mb",
        "request_too_large",
    )


def read_body(rfile: BinaryIO, headers: Message, max_body: int) -> bytes:
    """The body of the request whose ``headers`` were just read from ``rfile``; at most
    ``max_body`` bytes (413 above). A timeout of the underlying socket becomes a 408."""
    te = ", ".join(headers.get_all("Transfer-Encoding") or []).strip()
    try:
        if te:
            if te.lower() != "chunked":
                raise ApiError(
                    501,
                    f"Transfer-Encoding '{te[:40]}' is not supported: send the body as it is, "
                    "with Content-Length, or chunked",
                    "not_supported_error",
                )
            return _read_chunked(rfile, max_body)
        return _read_sized(rfile, headers, max_body)
    except TimeoutError:
        raise ApiError(
            408, "the request body did not arrive in time: send it at once", "timeout_error"
        ) from None


def _read_sized(rfile: BinaryIO, headers: Message, max_body: int) -> bytes:
    values = {v.strip() for v in headers.get_all("Content-Length") or []}
    if not values:
        return b""
    if len(values) > 1:
        raise ApiError(400, "the request has conflicting Content-Length headers")
    (length_s,) = values
    if not _DIGITS.fullmatch(length_s):
        raise ApiError(
            400, f"bad Content-Length header '{length_s[:40]}': a byte count is expected"
        )
    length = int(length_s)
    if length > max_body:
        raise _too_large(max_body)
    data = rfile.read(length)
    if len(data) < length:
        raise ApiError(400, f"the request body ended after {len(data)} of {length} bytes")
    return data


def _read_chunked(rfile: BinaryIO, max_body: int) -> bytes:
    out = bytearray()
    while True:
        line = _line(rfile, "chunk size line")
        size_field = line.split(b";", 1)[0].strip()
        if not _HEX.fullmatch(size_field):
            shown = size_field[:20].decode("ascii", "replace")
            raise ApiError(
                400, f"bad chunk size '{shown}' in a chunked body: hexadecimal digits are expected"
            )
        size = int(size_field, 16)
        if size == 0:
            _skip_trailers(rfile)
            return bytes(out)
        if len(out) + size > max_body:
            raise _too_large(max_body)
        data = rfile.read(size)
        if len(data) < size:
            raise ApiError(400, "the chunked request body ended inside a chunk")
        out += data
        if rfile.readline(3) not in (b"\r\n", b"\n"):
            raise ApiError(400, "a chunk of the request body is longer than its size says")


def _line(rfile: BinaryIO, what: str) -> bytes:
    line = rfile.readline(MAX_LINE + 1)
    if not line.endswith(b"\n"):
        if len(line) > MAX_LINE:
            raise ApiError(400, f"a {what} of the chunked request body is over {MAX_LINE} bytes")
        raise ApiError(400, "the chunked request body ended before its last chunk")
    return line


def _skip_trailers(rfile: BinaryIO) -> None:
    for _ in range(MAX_TRAILER_LINES):
        line = rfile.readline(MAX_LINE + 1)
        if line in (b"\r\n", b"\n", b""):
            return
        if not line.endswith(b"\n"):
            raise ApiError(
                400, f"a trailer line of the chunked request body is over {MAX_LINE} bytes"
            )
    raise ApiError(400, f"the chunked request body has over {MAX_TRAILER_LINES} trailer lines")


# -- JSON ------------------------------------------------------------------------------------


class _Refused(ValueError):
    pass


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS or abs(value := int(text)) >= MAX_INT:
        raise _Refused(f"the number {text[:24]}... is too large (integers must be below 2**64)")
    return value


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"the number {text[:24]} is too large for a 64-bit float")
    return value


def _parse_constant(name: str) -> Any:
    raise _Refused(f"{name} is not JSON: numbers must be finite")


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """``raw`` as a JSON object; anything else is a 400 that says what is wrong."""
    if not raw.strip():
        raise ApiError(400, "the request body is empty: send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the request body is not valid UTF-8: {exc}"[:300]) from None
    try:
        body = json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
        )
    except _Refused as exc:
        raise ApiError(400, f"the request body is not acceptable JSON: {exc}") from None
    except RecursionError:
        raise _too_deep() from None
    except ValueError as exc:  # JSONDecodeError, and anything the decoder itself refuses
        raise ApiError(400, f"the request body is not valid JSON: {exc}"[:300]) from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {_json_kind(body)}")
    brackets = raw.count(b"[") + raw.count(b"{")
    surrogates = _SURROGATE_ESCAPE.search(raw) is not None
    if brackets > MAX_DEPTH or surrogates:  # else the depth cannot be over the limit
        _check_tree(body, surrogates)
    return body


def _too_deep() -> ApiError:
    return ApiError(400, f"the request body nests arrays/objects over {MAX_DEPTH} deep")


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def _check_tree(body: dict[str, Any], strings: bool) -> None:
    """Walk ``body`` without recursion: the depth limit, and (``strings``) no lone surrogate
    (JSON's ``\\ud800`` escape makes a str that cannot be encoded as UTF-8)."""
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _too_deep()
        if isinstance(node, dict):
            if strings:
                for key in node:
                    _check_string(key)
            children = node.values()
        else:
            children = node
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
            elif strings and isinstance(child, str):
                _check_string(child)


def _check_string(s: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(
            400,
            "the request body holds a lone UTF-16 surrogate escape (\\ud800-\\udfff), "
            "which is not a character",
        ) from None


# -- media type ------------------------------------------------------------------------------


def content_type_refusal(headers: Message) -> str | None:
    """Why a POST body with these headers is refused (415), or None when it is acceptable.

    JSON media types (``application/json``, ``application/*+json``, ``application/x-ndjson``,
    any parameters) always are. Without a Content-Type, or with the form type that ``curl -d``
    sends, the body is accepted only from a client that is not a browser (no ``Origin`` or
    ``Sec-Fetch-*`` header): a web page can send those without asking the server first, and an
    HTML form cannot write a JSON object in the form type anyway. ``text/plain`` and
    ``multipart/form-data`` (what an HTML form can fill with JSON) are always refused."""
    raw = headers.get("Content-Type") or ""
    mime = raw.split(";", 1)[0].strip().lower()
    if mime in JSON_TYPES or (mime.startswith("application/") and mime.endswith("+json")):
        return None
    browser = any(headers.get(h) is not None for h in _BROWSER_HEADERS)
    if mime in _NON_BROWSER_TYPES and not browser:
        return None
    shown = f"'{raw[:60]}'" if raw else "none"
    return (
        f"the request body must be JSON sent as 'Content-Type: application/json' "
        f"(this request's Content-Type: {shown})"
    )
