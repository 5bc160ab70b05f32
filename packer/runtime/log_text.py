"""Text from clients, made safe to write on the server's terminal.

A server's log lines carry what clients sent: the path, a Content-Type, a model name, a grammar
llama.cpp could not parse. Written raw, a control character in them reaches the terminal of
whoever runs ``--server`` (in a classroom, the teacher's): ``ESC [ 2 J`` clears it, ``ESC ] 0 ;``
retitles it, ``ESC ] 52`` writes its clipboard where the terminal allows it, a carriage return or
a newline forges the start of another log line. So every log record's message goes through
:func:`printable`, and so does any client text the runtime quotes in its own words.
"""

from __future__ import annotations

import logging

# Unicode's bidirectional embeddings, overrides and isolates: they reorder the text shown after
# them (a forged line can read as another); the other control characters are category Cc
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text: str) -> str:
    """``text`` with every control character (C0 but the tab, DEL, C1) and every bidirectional
    control written as its Python escape (``\\x1b``, ``\\n``, ``\\u202e``): one line, shown as
    sent, never acted on by a terminal. Other text, accents and emoji included, is unchanged."""
    if text.isprintable():  # the usual case: nothing to escape (a tab is not printable)
        return text
    return "".join(
        c.encode("unicode_escape").decode("ascii")
        if (c != "\t" and (c < " " or "\x7f" <= c <= "\x9f")) or c in _BIDI
        else c
        for c in text
    )


class LogFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose messages are :func:`printable`: one record, one line.
    A traceback (``log.exception``) keeps its own lines; it is the runtime's own text."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = printable(record.message)
        return super().formatMessage(record)
