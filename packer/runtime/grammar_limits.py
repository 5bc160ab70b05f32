"""How much constrained output and how many stop strings one request may ask for.

llama.cpp's GBNF parser recurses once per nested group and once per rule a rule starts with, in
the thread that parses (the HTTP request's thread, 8 MiB of stack by default): about 15,000
nested parentheses, or 50,000 rules each starting with the next, overflow it and the whole
server dies (measured with this runtime's llama.cpp, 1 MiB stacks: 2,000-3,000 parentheses).
llama-cpp-python's JSON-schema converter writes ``maxLength``/``maxItems``/``{m,n}`` as that
many nested groups, so a 60-byte schema with ``"maxLength": 100000`` does it, and a large
``minLength`` builds the grammar text in memory (5 GB for 10^9). Stop strings are checked
against the text after every token of every slot, in the decode thread.

The limits below are far above what real requests use (and above what llama.cpp itself accepts:
its parser refuses the converter's ``maxLength`` above about 1,000 and any GBNF repetition above
2,000) and far below where anything breaks. They are checked before the converter runs, and on
the grammar text handed to llama.cpp, the converter's included. Each refusal is a
:class:`LimitError` whose message says what is over which limit and what to do.
"""

from __future__ import annotations

import json
import re
from typing import Any

from packer.runtime.gbnf_rules import skip_quoted

# JSON schemas (llama.cpp's json_schema, OpenAI's response_format, Ollama's format)
SCHEMA_MAX_BYTES = 64 * 1024  # the schema as JSON
SCHEMA_MAX_DEPTH = 64  # objects and lists inside each other
SCHEMA_MAX_REPEAT = 1000  # minLength/maxLength/minItems/maxItems and {m,n} in a pattern
SCHEMA_MAX_ENTRIES = 500  # properties of one object; enum, anyOf/oneOf/allOf, prefixItems...
# GBNF grammars (llama.cpp's grammar, and what the converter makes of a schema)
GBNF_MAX_BYTES = 128 * 1024
GBNF_MAX_DEPTH = 1024  # parentheses inside each other
GBNF_MAX_RULES = 4096  # `name ::= ...` definitions
# stop strings (every dialect's stop / options.stop)
STOP_MAX_COUNT = 16
STOP_MAX_CHARS = 256

_BOUNDS = ("minLength", "maxLength", "minItems", "maxItems")
_LISTS = ("enum", "anyOf", "oneOf", "allOf", "prefixItems", "items", "type", "required")
# keywords whose value maps names to schemas (the names are not keywords)
_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
# keywords whose value is data, not a schema
_DATA = frozenset({"const", "enum", "default", "examples"})
_QUANTIFIER = re.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")


class LimitError(ValueError):
    """A request over one of these limits; ``message`` is one line for the client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def schema_json(schema: Any) -> str:
    """``schema`` as JSON text for the converter, or a :class:`LimitError` when its grammar
    would be too big to build or to parse (see the limits above)."""
    stack: list[tuple[Any, int, bool]] = [(schema, 1, False)]  # (node, depth, a name map)
    while stack:
        node, depth, names = stack.pop()
        if depth > SCHEMA_MAX_DEPTH:
            raise LimitError(
                f"the JSON schema is nested more than {SCHEMA_MAX_DEPTH} levels deep: flatten it"
            )
        if isinstance(node, list):
            stack.extend((v, depth + 1, False) for v in node)
        elif isinstance(node, dict) and names:
            stack.extend((v, depth + 1, False) for v in node.values())
        elif isinstance(node, dict):
            _check_keywords(node)
            for key, value in node.items():
                if key not in _DATA and isinstance(value, (dict, list)):
                    stack.append((value, depth + 1, key in _MAPS))
    text = json.dumps(schema)
    size = len(text.encode("utf-8"))
    if size > SCHEMA_MAX_BYTES:
        raise LimitError(
            f"the JSON schema is {size} bytes, over this server's limit of "
            f"{SCHEMA_MAX_BYTES}: send a smaller schema"
        )
    return text


def _check_keywords(node: dict[str, Any]) -> None:
    for key in _BOUNDS:
        value = node.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise LimitError(f"'{key}' must be a whole number from 0, got {value!r}"[:200])
        if value > SCHEMA_MAX_REPEAT:
            raise LimitError(
                f"'{key}' is {value}, over this server's limit of {SCHEMA_MAX_REPEAT}: "
                "ask for less, or drop it and check the length of the answer yourself"
            )
    for key in _LISTS:
        value = node.get(key)
        if isinstance(value, list) and len(value) > SCHEMA_MAX_ENTRIES:
            raise LimitError(
                f"'{key}' has {len(value)} entries, over this server's limit of "
                f"{SCHEMA_MAX_ENTRIES}: use fewer"
            )
    props = node.get("properties")
    if isinstance(props, dict) and len(props) > SCHEMA_MAX_ENTRIES:
        raise LimitError(
            f"an object has {len(props)} properties, over this server's limit of "
            f"{SCHEMA_MAX_ENTRIES}: split it"
        )
    pattern = node.get("pattern")
    if isinstance(pattern, str):
        for m in _QUANTIFIER.finditer(pattern):
            for n in m.groups():
                if n and int(n) > SCHEMA_MAX_REPEAT:
                    raise LimitError(
                        f"'pattern' has the quantifier {m.group(0)}, over this server's limit "
                        f"of {SCHEMA_MAX_REPEAT} repetitions: use a smaller count"
                    )


def check_gbnf(grammar: str) -> None:
    """Refuse a GBNF grammar too large or too deeply nested for llama.cpp's recursive parser."""
    size = len(grammar.encode("utf-8"))
    if size > GBNF_MAX_BYTES:
        raise LimitError(
            f"the grammar is {size} bytes, over this server's limit of {GBNF_MAX_BYTES}: "
            "simplify it"
        )
    depth, rules = gbnf_shape(grammar)
    if depth > GBNF_MAX_DEPTH:
        raise LimitError(
            f"the grammar nests parentheses {depth} deep, over this server's limit of "
            f"{GBNF_MAX_DEPTH}: move inner groups into rules of their own"
        )
    if rules > GBNF_MAX_RULES:
        raise LimitError(
            f"the grammar has {rules} rules, over this server's limit of {GBNF_MAX_RULES}: "
            "simplify it"
        )


def gbnf_shape(grammar: str) -> tuple[int, int]:
    """The deepest nesting of parentheses and the number of ``::=`` definitions in a GBNF
    text, not counting what is inside literals, character classes and comments."""
    depth = deepest = rules = 0
    i, n = 0, len(grammar)
    while i < n:
        c = grammar[i]
        if c == '"' or c == "[":
            i = skip_quoted(grammar, i + 1, '"' if c == '"' else "]")
            continue
        if c == "#":
            end = grammar.find("\n", i)
            i = n if end < 0 else end
            continue
        if c == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif c == ")":
            depth = max(depth - 1, 0)
        elif c == ":" and grammar.startswith("::=", i):
            rules += 1
            i += 3
            continue
        i += 1
    return deepest, rules


def check_stop(stops: list[str]) -> None:
    """Refuse more than STOP_MAX_COUNT stop strings, or one longer than STOP_MAX_CHARS."""
    if len(stops) > STOP_MAX_COUNT:
        raise LimitError(
            f"{len(stops)} stop strings, over this server's limit of {STOP_MAX_COUNT}: send fewer"
        )
    for s in stops:
        if len(s) > STOP_MAX_CHARS:
            raise LimitError(
                f"a stop string of {len(s)} characters, over this server's limit of "
                f"{STOP_MAX_CHARS}: send a shorter one"
            )
