"""Small, pure helpers to compose GBNF grammars (llama.cpp's grammar syntax) from parts.

Several grammars made separately (one per tool, by the JSON-schema converter) each define
``root``, ``space``, ``char``...: put side by side they would clash. :func:`prefix_rules` gives
every rule of one grammar a prefix, definitions and references alike, leaving literals
(``"..."``), character classes (``[...]``), repetition counts (``{m,n}``) and comments alone.
"""

from __future__ import annotations


def _is_word(c: str) -> bool:
    """A character of a rule name, as llama.cpp's GBNF parser reads them."""
    return c == "-" or ("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9")


def skip_quoted(text: str, i: int, close: str) -> int:
    """The index after ``close`` ending a literal or class that starts at ``i`` (escapes
    honoured), or the end of ``text``."""
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        i += 1
        if c == close:
            return i
    return n


def prefix_rules(grammar: str, prefix: str) -> str:
    """``grammar`` with ``prefix`` put before every rule name (``root`` becomes
    ``{prefix}root``). ``prefix`` must itself be made of rule-name characters."""
    if not prefix or not all(_is_word(c) for c in prefix):
        raise ValueError(f"not a GBNF rule-name prefix: {prefix!r}")
    out: list[str] = []
    i, n = 0, len(grammar)
    while i < n:
        c = grammar[i]
        if c == '"' or c == "[":
            end = skip_quoted(grammar, i + 1, '"' if c == '"' else "]")
        elif c == "{":  # a repetition count {m,n}: digits that are not rule names
            end = grammar.find("}", i)
            end = n if end < 0 else end + 1
        elif c == "#":
            end = grammar.find("\n", i)
            end = n if end < 0 else end
        elif _is_word(c):
            end = i
            while end < n and _is_word(grammar[end]):
                end += 1
            out.append(prefix)
        else:
            end = i + 1
        out.append(grammar[i:end])
        i = end
    return "".join(out)


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def literal(text: str) -> str:
    """``text`` as a GBNF string literal (other control characters as ``\\xHH``)."""
    parts = []
    for c in text:
        if c in _ESCAPES:
            parts.append(_ESCAPES[c])
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            parts.append(f"\\x{ord(c):02X}")
        else:
            parts.append(c)
    return '"' + "".join(parts) + '"'
