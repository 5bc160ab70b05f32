"""Client text on the server's terminal: escaped, one record one line (packer.runtime.log_text)."""

from __future__ import annotations

import io
import logging
import sys

from packer.runtime.log_text import LogFormatter, printable


def test_ordinary_text_is_unchanged() -> None:
    for text in (
        "GET /v1/models -> 200",
        "¿Qué es la cuantización?",
        "naïve 🤖 日本語",
        "a\tb",
        "",
    ):
        assert printable(text) == text


def test_control_characters_are_written_as_escapes() -> None:
    assert printable("/x\x1b[2J\x1b]0;TITLE\x07") == "/x\\x1b[2J\\x1b]0;TITLE\\x07"
    assert printable("a\nfake: line\rb") == "a\\nfake: line\\rb"
    assert printable("\x00\x7f\x9b31m\x85") == "\\x00\\x7f\\x9b31m\\x85"  # NUL, DEL, C1 CSI, NEL
    assert printable("file\u202egnp.exe") == "file\\u202egnp.exe"  # right-to-left override
    assert printable("\u2066x\u2069") == "\\u2066x\\u2069"


def test_every_control_character_is_escaped() -> None:
    for code in [*range(0x20), *range(0x7F, 0xA0)]:
        if code == 9:
            continue
        shown = printable(f"<{chr(code)}>")
        assert shown.isascii() and shown.isprintable(), (code, shown)


def _formatted(record_args: tuple[object, ...], exc: bool = False) -> str:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(LogFormatter("prog: %(message)s"))
    log = logging.getLogger("test_log_text")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("%s failed", *record_args)
    else:
        log.info("%s %s -> %d: %s", *record_args)
    return out.getvalue()


def test_a_log_record_is_one_escaped_line() -> None:
    text = _formatted(
        ("GET", "/x\x1b]52;c;ZWNobyBoaQ==\x07\nprog: forged", 404, "no such endpoint")
    )
    assert (
        text == "prog: GET /x\\x1b]52;c;ZWNobyBoaQ==\\x07\\nprog: forged -> 404: no such endpoint\n"
    )


def test_a_traceback_keeps_its_lines() -> None:
    text = _formatted(("POST /\x1b[2J",), exc=True)
    first, *rest = text.splitlines()
    assert first == "prog: POST /\\x1b[2J failed"
    assert rest[0].startswith("Traceback") and rest[-1] == "ValueError: boom"


def test_the_runtime_logs_through_it() -> None:
    from packer.runtime import main

    root = logging.getLogger("packer.runtime")
    saved = root.handlers[:], root.level, root.propagate
    try:
        main._setup_logging(False)
        (handler,) = root.handlers
        assert isinstance(handler.formatter, LogFormatter)
        assert getattr(handler, "stream", None) is sys.stderr
    finally:
        root.handlers[:], root.level, root.propagate = saved
