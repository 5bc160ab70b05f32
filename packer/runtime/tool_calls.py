"""Tool (function) calling: requests' ``tools``, the prompt, the calls in the answer, and the
grammar that forces a call. Pure: no model, no socket; the dialects wire it in.

* :func:`parse_openai_tools` / :func:`parse_ollama_tools`: the request's ``tools`` and
  ``tool_choice`` validated (``server_api.ApiError`` 400 naming the field) into :class:`Tool`
  and :class:`ToolChoice`;
* :func:`messages_for_template`: what to hand the chat template. Templates that describe tools
  get ``tools=`` (a keyword of llama-cpp-python's ``Jinja2ChatFormatter``; pass only that, not
  ``tool_choice``, or its handler builds a grammar of its own); others get a system message
  describing them. Earlier calls and ``role: "tool"`` results are given in the shape the
  template renders, or written into the messages as text when it renders none;
* :class:`ToolCallParser`: one per generation; text is passed on as it comes, what may be the
  start of a call is held back, complete calls come out with fresh ids;
* :func:`tool_grammar`: when a call is required, a GBNF grammar forcing the family's syntax
  with arguments valid for the tool's JSON schema (llama-cpp-python's converter, per tool).

The template families and their syntax are :mod:`packer.runtime.tool_formats`.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from packer.runtime import grammar_limits as limits
from packer.runtime import tool_formats as tf
from packer.runtime.gbnf_rules import literal, prefix_rules
from packer.runtime.server_api import ApiError, schema_grammar

# OpenAI's rule for function names; its limit of 128 tools
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_TOOLS = 128
TOOLS_MAX_BYTES = 256 * 1024  # all the tools as JSON, descriptions and schemas included
MODES = ("auto", "none", "required")


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments (an object)

    def openai(self) -> dict[str, Any]:
        """The tool in OpenAI's shape, as chat templates expect ``tools``."""
        # some templates (Hermes 2/3 Pro) read every tool's description
        fn = {"name": self.name, "description": self.description, "parameters": self.parameters}
        return {"type": "function", "function": fn}


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text of an object


@dataclass(frozen=True)
class ToolChoice:
    mode: str  # auto | none | required | function
    name: str | None = None  # the function, when mode is "function"


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def openai_tool_call(call: ToolCall, index: int | None = None) -> dict[str, Any]:
    """A call in OpenAI's shape (``message.tool_calls[i]``; with ``index`` for a stream's
    ``delta.tool_calls``)."""
    out: dict[str, Any] = {} if index is None else {"index": index}
    out.update(
        id=call.id, type="function", function={"name": call.name, "arguments": call.arguments}
    )
    return out


def ollama_tool_call(call: ToolCall) -> dict[str, Any]:
    """A call in Ollama's shape (``message.tool_calls[i]``: arguments as an object)."""
    return {"function": {"name": call.name, "arguments": json.loads(call.arguments)}}


# -- requests ---------------------------------------------------------------------------------


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, message[:300], param=param)


def _parse_tools(tools: Any, *, need_type: bool) -> list[Tool]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise _bad("tools", f"'tools' must be a list of function tools, got {tools!r}")
    if len(tools) > MAX_TOOLS:
        raise _bad("tools", f"'tools' has {len(tools)} entries, over the limit of {MAX_TOOLS}")
    size = len(json.dumps(tools, ensure_ascii=False, default=str).encode("utf-8"))
    if size > TOOLS_MAX_BYTES:
        raise _bad(
            "tools",
            f"'tools' is {size} bytes of JSON, over this server's limit of "
            f"{TOOLS_MAX_BYTES}: send fewer or smaller tools",
        )
    out: list[Tool] = []
    for i, entry in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(entry, dict):
            raise _bad("tools", f"'{where}' must be an object, got {entry!r}")
        kind = entry.get("type")
        if (need_type or kind is not None) and kind != "function":
            raise _bad("tools", f"'{where}.type' must be 'function', got {kind!r}")
        fn = entry.get("function")
        if not isinstance(fn, dict):
            raise _bad("tools", f"'{where}.function' must be an object, got {fn!r}")
        out.append(_parse_function(fn, f"{where}.function"))
    names = [t.name for t in out]
    for name in names:
        if names.count(name) > 1:
            raise _bad("tools", f"'tools' has two functions named {name!r}")
    return out


def _parse_function(fn: dict[str, Any], where: str) -> Tool:
    name = fn.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise _bad(
            "tools",
            f"'{where}.name' must be 1 to 64 letters, digits, '_' or '-', got {name!r}",
        )
    description = fn.get("description", "")
    if description is None:
        description = ""
    if not isinstance(description, str):
        raise _bad("tools", f"'{where}.description' must be a string, got {description!r}")
    params = fn.get("parameters")
    if params is None:
        params = {"type": "object", "properties": {}}
    if not isinstance(params, dict) or params.get("type", "object") != "object":
        raise _bad(
            "tools", f"'{where}.parameters' must be a JSON schema of an object, got {params!r}"
        )
    try:
        limits.schema_json(params)
    except limits.LimitError as exc:
        raise _bad("tools", f"'{where}.parameters': {exc.message}") from None
    return Tool(name=name, description=description, parameters=params)


def _parse_choice(choice: Any, tools: list[Tool]) -> ToolChoice:
    if choice is None:
        return ToolChoice("auto" if tools else "none")
    if isinstance(choice, str):
        if choice not in MODES:
            raise _bad(
                "tool_choice",
                f"'tool_choice' must be 'auto', 'none', 'required' or "
                f"{{'type': 'function', 'function': {{'name': ...}}}}, got {choice!r}",
            )
        if choice == "required" and not tools:
            raise _bad("tool_choice", "'tool_choice' is 'required' but 'tools' is empty")
        return ToolChoice(choice if tools else "none")
    if not isinstance(choice, dict) or choice.get("type") != "function":
        raise _bad(
            "tool_choice",
            f"'tool_choice' must be 'auto', 'none', 'required' or "
            f"{{'type': 'function', 'function': {{'name': ...}}}}, got {choice!r}",
        )
    fn = choice.get("function")
    name = fn.get("name") if isinstance(fn, dict) else choice.get("name")
    if not isinstance(name, str):
        raise _bad("tool_choice", f"'tool_choice.function.name' must be a string, got {name!r}")
    if name not in {t.name for t in tools}:
        raise _bad(
            "tool_choice", f"'tool_choice' names the function {name!r}, which is not in 'tools'"
        )
    return ToolChoice("function", name)


def parse_openai_tools(tools: Any, tool_choice: Any) -> tuple[list[Tool], ToolChoice]:
    """OpenAI's ``tools`` and ``tool_choice`` (absent: ``auto`` with tools, else ``none``)."""
    parsed = _parse_tools(tools, need_type=True)
    return parsed, _parse_choice(tool_choice, parsed)


def parse_ollama_tools(tools: Any) -> list[Tool]:
    """Ollama's ``tools`` (OpenAI's shape; ``type`` may be left out)."""
    return _parse_tools(tools, need_type=False)


# -- the prompt -------------------------------------------------------------------------------


def _text(content: Any) -> str:
    """A message's content as text (None, a string, text parts, or JSON for anything else)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, str) or (isinstance(p, dict) and isinstance(p.get("text"), str))
        for p in content
    ):
        return "\n".join(p if isinstance(p, str) else p["text"] for p in content)
    return tf.compact(content)


def _arguments(value: Any, where: str) -> Any:
    """A past call's arguments as a JSON value (templates write them with ``tojson``)."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            return json.loads(value) if value.strip() else {}
        except ValueError:
            raise _bad(
                "messages", f"'{where}.arguments' must be JSON text, got {value!r}"
            ) from None
    return value


def _past_calls(m: dict[str, Any], i: int) -> list[tuple[str, str, Any]]:
    """An assistant message's ``tool_calls`` (OpenAI's or Ollama's shape) as
    ``(id, name, arguments)``."""
    raw = m.get("tool_calls")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _bad("messages", f"'messages[{i}].tool_calls' must be a list, got {raw!r}")
    calls = []
    for j, tc in enumerate(raw):
        where = f"messages[{i}].tool_calls[{j}]"
        fn = tc.get("function") if isinstance(tc, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _bad("messages", f"'{where}' must be {{'function': {{'name', 'arguments'}}}}")
        call_id = tc.get("id")
        if not isinstance(call_id, str) or not call_id:
            call_id = f"call_{i}_{j}"
        calls.append((call_id, fn["name"], _arguments(fn.get("arguments"), f"{where}.function")))
    return calls


def _mistral_id(call_id: str) -> str:
    """Mistral's templates want 9 letters or digits as a call id: ours mapped, the same way
    in the call and in its result."""
    if re.fullmatch(r"[A-Za-z0-9]{9}", call_id):
        return call_id
    return hashlib.sha256(call_id.encode("utf-8")).hexdigest()[:9]


def messages_for_template(
    messages: list[dict[str, Any]], tools: list[Tool], choice: ToolChoice, template: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``messages`` as the chat ``template`` can render them, and the keyword arguments for
    the template (``tools`` when it describes them itself). With ``tool_choice: none`` the
    tools are not shown at all; earlier calls and results still are."""
    fmt = tf.detect(template)
    if fmt.single_call:
        for i, m in enumerate(messages):  # checked first: errors name the caller's indexes
            if m.get("role") == "assistant" and m.get("tool_calls"):
                _past_calls(m, i)
        messages = _one_call_each(messages)
    ids = _mistral_id if fmt.family in (tf.MISTRAL, tf.MISTRAL_ARGS) else (lambda s: s)
    out: list[dict[str, Any]] = []
    from_results: set[int] = set()  # indexes in ``out`` of user messages made of tool results
    names: dict[str, str] = {}  # call id -> function name
    unanswered: list[str] = []  # ids of the last calls, for results that name none
    for i, m in enumerate(messages):
        role = m.get("role")
        if role == "assistant" and m.get("tool_calls"):
            calls = _past_calls(m, i)
            names.update((cid, name) for cid, name, _ in calls)
            unanswered = [cid for cid, _, _ in calls]
            content = _text(m.get("content"))
            if fmt.renders_calls:
                out.append(
                    {
                        "role": "assistant",
                        "content": content,
                        "tool_calls": [
                            {
                                "id": ids(cid),
                                "type": "function",
                                "function": {"name": name, "arguments": args},
                            }
                            for cid, name, args in calls
                        ],
                    }
                )
            else:
                texts = [tf.call_text(fmt, name, args) for _, name, args in calls]
                out.append({"role": "assistant", "content": "\n".join([content, *texts]).strip()})
        elif role == "tool":
            call_id = m.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                call_id = unanswered[0] if unanswered else f"call_{i}"
            if call_id in unanswered:
                unanswered.remove(call_id)
            name = m.get("name") or m.get("tool_name") or names.get(call_id)
            content = _text(m.get("content"))
            if fmt.renders_results:
                msg = {"role": "tool", "content": content, "tool_call_id": ids(call_id)}
                if isinstance(name, str):
                    msg["name"] = name
                out.append(msg)
            else:
                text = tf.result_text(name if isinstance(name, str) else None, content)
                if out and len(out) - 1 in from_results:
                    out[-1]["content"] += "\n" + text
                else:
                    from_results.add(len(out))
                    out.append({"role": "user", "content": text})
        else:
            msg = {k: v for k, v in m.items() if k != "tool_calls"}  # e.g. "tool_calls": []
            msg["content"] = _text(m.get("content"))
            if fmt.alternates and role == "user" and out and len(out) - 1 in from_results:
                out[-1]["content"] += "\n\n" + msg["content"]
            else:
                out.append(msg)
    if not fmt.system_role and out and out[0].get("role") == "system":
        system = out.pop(0)["content"]  # a template without a system role: into the first user turn
        _add_system(out, system, fmt)
    kwargs: dict[str, Any] = {}
    if tools and choice.mode != "none":
        shown = [t.openai() for t in tools]
        if fmt.describes_tools:
            kwargs["tools"] = shown
        else:
            must = None if choice.mode == "auto" else (choice.name or "")
            _add_system(out, tf.describe_tools(fmt, shown, must), fmt)
    return out, kwargs


def _one_call_each(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For templates taking one call per assistant message: an assistant message with several
    calls becomes one message per call, each followed by its result."""
    out: list[dict[str, Any]] = []
    i = 0
    while i < len(messages):
        m = messages[i]
        calls = m.get("tool_calls") if m.get("role") == "assistant" else None
        if not isinstance(calls, list) or len(calls) < 2:
            out.append(m)
            i += 1
            continue
        results = []
        i += 1
        while i < len(messages) and messages[i].get("role") == "tool":
            results.append(messages[i])
            i += 1
        for k, call in enumerate(calls):
            out.append({**m, "content": m.get("content") if k == 0 else "", "tool_calls": [call]})
            call_id = call.get("id") if isinstance(call, dict) else None
            mine = [r for r in results if call_id and r.get("tool_call_id") == call_id]
            if not mine and results and not results[0].get("tool_call_id"):
                mine = results[:1]  # results without ids answer the calls in order
            for r in mine:
                results.remove(r)
            out.extend(mine)
        out.extend(results)
    return out


def _add_system(out: list[dict[str, Any]], text: str, fmt: tf.ToolFormat) -> None:
    """``text`` into the system message (made when there is none), or, for templates that
    refuse one, at the start of the first user message."""
    if out and out[0].get("role") == "system":
        out[0] = {**out[0], "content": (out[0]["content"] + "\n\n" + text).strip()}
    elif fmt.system_role:
        out.insert(0, {"role": "system", "content": text})
    else:
        for k, m in enumerate(out):
            if m.get("role") == "user":
                out[k] = {**m, "content": text + "\n\n" + m["content"]}
                return
        out.insert(0, {"role": "user", "content": text})


# -- the answer -------------------------------------------------------------------------------

# the keys a call object may open with (a JSON object opening with another is plain content)
_CALL_KEYS = ("name", "type", "function", "id", "arguments", "parameters")
_MISTRAL_NAME = re.compile(
    r"([A-Za-z0-9_.-]+)\s*(?:"
    + re.escape(tf.CALL_ID)
    + r"\s*([A-Za-z0-9_-]+)\s*)?"
    + re.escape(tf.ARGS)
)
_MISTRAL_NAME_PARTIAL = re.compile(r"[A-Za-z0-9_.-]*(?:\[[A-Z_]*\]?[A-Za-z0-9_-]*)*\s*")


def _json_end(text: str, i: int) -> int | None:
    """The index after the JSON object or array starting at ``text[i]``, None while it is
    still open."""
    depth = 0
    in_string = escaped = False
    for k in range(i, len(text)):
        c = text[k]
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return k + 1
    return None


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _may_open_call(text: str) -> bool:
    """Whether ``text`` (starting with ``{`` or ``[``) can still be the start of a call: a
    JSON object whose first key is one a call has."""
    rest = text[1:].lstrip()
    if text[0] == "[":
        if not rest:
            return True
        if rest[0] != "{":
            return False
        rest = rest[1:].lstrip()
    if not rest:
        return True
    if rest[0] != '"':
        return False
    key = rest[1:]
    end = key.find('"')
    if end < 0:
        return any(k.startswith(key) for k in _CALL_KEYS)
    return key[:end] in _CALL_KEYS


_BARE = "\0name"  # the marker of a call opening the answer with a function's name

# (characters consumed, the calls found or None when that text is plain content), or None
# while the call is not complete yet
_Step = tuple[int, list[ToolCall] | None] | None


class ToolCallParser:
    """Splits one generation's text into content and tool calls, as it streams.

    Text before a call is passed on as it comes; text that may be the start of a call marker
    is held back until it is known; a complete call comes out as a :class:`ToolCall` with a
    fresh id and its arguments as compact JSON. Whitespace around calls is dropped. A call
    that turns out malformed (bad JSON, an unknown function, not an object) is content, never
    lost. With ``tool_choice: none`` (or no tools) everything is content, unchanged."""

    def __init__(self, tools: list[Tool], choice: ToolChoice, template: str) -> None:
        self._fmt = tf.detect(template)
        names = {t.name for t in tools}
        self._names = {choice.name} if choice.mode == "function" and choice.name else names
        self._off = choice.mode == "none" or not tools
        family = self._fmt.family
        if family == tf.LLAMA3:
            self._markers, self._openers = (tf.PYTHON_TAG,), "{"
        elif family in (tf.MISTRAL, tf.MISTRAL_ARGS):
            self._markers, self._openers = (tf.TOOL_CALLS,), "["
        else:
            self._markers, self._openers = (tf.TOOL_CALL_OPEN,), ""
        self._buf = ""
        self._ws = ""  # whitespace held: dropped when a call follows it
        self._said = False  # content other than whitespace was passed on
        self._called = False
        self._trim = False  # whitespace (and Llama's ';') after a call that opened the answer
        self._out: list[str] = []

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        """Text safe to show now, and the calls completed by ``text``."""
        if self._off:
            return text, []
        self._buf += text
        return self._scan(final=False)

    def finish(self) -> tuple[str, list[ToolCall]]:
        """The rest at the end of the generation: held text, a call missing only its closing
        tag, or a call left unfinished (as content)."""
        if self._off:
            return "", []
        text, calls = self._scan(final=True)
        if not self._called:
            text += self._ws
        self._ws = ""
        return text, calls

    # -- scanning

    def _emit(self, text: str) -> None:
        if self._trim:
            text = text.lstrip()
            if text.startswith(";") and self._fmt.family == tf.LLAMA3:
                text = text[1:].lstrip()
            if not text:
                return
            self._trim = False
        if not text:
            return
        if not text.strip():
            self._ws += text
            return
        body = text.rstrip()
        self._out.append(self._ws + body)
        self._ws = text[len(body) :]
        self._said = True

    def _scan(self, final: bool) -> tuple[str, list[ToolCall]]:
        calls: list[ToolCall] = []
        while self._buf:
            buf = self._buf
            pos, marker = -1, ""
            for m in self._markers:
                k = buf.find(m)
                if k >= 0 and (pos < 0 or k < pos):
                    pos, marker = k, m
            if not self._said and self._openers:
                k = _skip_ws(buf, 0)
                if k < len(buf) and (pos < 0 or k < pos):
                    if buf[k] in self._openers:
                        pos, marker = k, buf[k]
                    elif self._fmt.family == tf.MISTRAL_ARGS:
                        pos, marker = k, _BARE  # "name[ARGS]{...}" without its marker
            if pos < 0:
                hold = 0 if final else self._partial_marker(buf)
                self._emit(buf[: len(buf) - hold])
                self._buf = buf[len(buf) - hold :]
                break
            self._emit(buf[:pos])
            rest = buf[pos:]
            step = self._call_at(rest, marker, final)
            if step is None:  # not complete yet
                self._buf = rest
                break
            used, found = step
            if found is None:
                self._emit(rest[:used])
            else:
                calls.extend(found)
                self._called = True
                self._ws = ""
                self._trim = not self._said
            self._buf = rest[used:]
        text = "".join(self._out)
        self._out.clear()
        return text, calls

    def _partial_marker(self, buf: str) -> int:
        """How many characters at the end of ``buf`` may be the start of a marker."""
        for n in range(min(len(buf), max(len(m) for m in self._markers) - 1), 0, -1):
            if any(m.startswith(buf[-n:]) for m in self._markers):
                return n
        return 0

    def _call_at(self, rest: str, marker: str, final: bool) -> _Step:
        """The call(s) at the start of ``rest``, which starts with ``marker``."""
        if marker == _BARE:
            return self._bare_call(rest, final)
        if marker in ("{", "["):  # an answer opening with JSON (Llama 3.x, Mistral)
            if not final and any(m.startswith(rest) for m in self._markers):
                return None  # "[TOOL_CALLS]" coming
            if not _may_open_call(rest):
                return 1, None
            return self._json_calls(rest, 0, final)
        i = _skip_ws(rest, len(marker))
        if i == len(rest):
            return (len(rest), None) if final else None
        if marker == tf.TOOL_CALLS and self._fmt.family == tf.MISTRAL_ARGS and rest[i] not in "[{":
            return self._mistral_args_call(rest, i, final)
        if rest[i] not in "{[":
            return len(marker), None
        step = self._json_calls(rest, i, final)
        if marker != tf.TOOL_CALL_OPEN or step is None or step[1] is None:
            return step
        end = _skip_ws(rest, step[0])
        if rest.startswith(tf.TOOL_CALL_CLOSE, end):
            return end + len(tf.TOOL_CALL_CLOSE), step[1]
        if not final and tf.TOOL_CALL_CLOSE.startswith(rest[end:]):
            return None  # the closing tag may be coming
        return step  # a call missing its closing tag is still a call

    def _json_calls(self, rest: str, i: int, final: bool) -> _Step:
        """A call object (or a list of them) at ``rest[i]``."""
        end = _json_end(rest, i)
        if end is None:
            return (len(rest), None) if final else None
        try:
            value = json.loads(rest[i:end])
        except ValueError:
            return end, None
        items = value if isinstance(value, list) else [value]
        calls = [self._call(item) for item in items]
        if not items or any(c is None for c in calls):
            return end, None
        if self._fmt.family == tf.LLAMA3:  # several calls may be separated by ';'
            k = _skip_ws(rest, end)
            if rest.startswith(";", k):
                end = k + 1
        return end, [c for c in calls if c is not None]

    def _mistral_args_call(self, rest: str, i: int, final: bool) -> _Step:
        """``name[ARGS]{...}`` (or ``name[CALL_ID]id[ARGS]{...}``) after ``[TOOL_CALLS]``."""
        m = _MISTRAL_NAME.match(rest, i)
        if m is None:
            if not final and _MISTRAL_NAME_PARTIAL.fullmatch(rest, i) and len(rest) - i < 200:
                return None
            return len(tf.TOOL_CALLS), None
        j = _skip_ws(rest, m.end())
        if j == len(rest):
            return (len(rest), None) if final else None
        if rest[j] != "{":
            return m.end(), None
        end = _json_end(rest, j)
        if end is None:
            return (len(rest), None) if final else None
        call = self._call({"name": m.group(1), "arguments": rest[j:end]})
        return (end, None) if call is None else (end, [call])

    def _bare_call(self, rest: str, final: bool) -> _Step:
        """``name{...}`` or ``name[ARGS]{...}`` opening the answer: Mistral's calls when its
        control tokens ``[TOOL_CALLS]``/``[ARGS]`` were not written out as text."""
        for name in sorted(self._names, key=len, reverse=True):
            if not rest.startswith(name):
                if not final and name.startswith(rest):
                    return None  # may be this name
                continue
            j = _skip_ws(rest, len(name))
            if rest.startswith(tf.ARGS, j):
                j = _skip_ws(rest, j + len(tf.ARGS))
            elif not final and tf.ARGS.startswith(rest[j:]) and rest[j:]:
                return None
            if j == len(rest):
                return (len(rest), None) if final else None
            if rest[j] != "{":
                continue
            end = _json_end(rest, j)
            if end is None:
                return (len(rest), None) if final else None
            call = self._call({"name": name, "arguments": rest[j:end]})
            return (end, None) if call is None else (end, [call])
        return 1, None

    def _call(self, item: Any) -> ToolCall | None:
        """A :class:`ToolCall` from a parsed call object, None when it is not a valid call."""
        if not isinstance(item, dict):
            return None
        if isinstance(item.get("function"), dict):  # OpenAI's shape
            item = item["function"]
        name = item.get("name")
        if not isinstance(name, str) or name not in self._names:
            return None
        args = item.get("arguments", item.get("parameters"))
        if args is None:
            args = {}
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                return None
        if not isinstance(args, dict):
            return None
        return ToolCall(id=new_call_id(), name=name, arguments=tf.compact(args))


# -- forcing a call ---------------------------------------------------------------------------


def tool_grammar(tools: list[Tool], choice: ToolChoice, template: str) -> str | None:
    """A GBNF grammar (root rule ``root``) forcing one call in the template family's syntax,
    with arguments valid for the tool's parameters, when ``choice`` requires a call
    (``required``: any of ``tools``; ``function``: that one); None otherwise. Each tool's
    schema goes through :func:`server_api.schema_grammar` (this server's limits), its rules
    renamed ``t<N>-...`` so they cannot clash."""
    if choice.mode == "function":
        chosen = [t for t in tools if t.name == choice.name]
    elif choice.mode == "required":
        chosen = list(tools)
    else:
        return None
    if not chosen:
        return None
    fmt = tf.detect(template)
    rules: list[str] = []
    calls: list[str] = []
    for n, tool in enumerate(chosen):
        index = tools.index(tool)
        args = schema_grammar(tool.parameters, f"tools[{index}].function.parameters")
        rules.append(prefix_rules(args, f"t{n}-").strip())
        calls.append(_call_rule(fmt, tool.name, f"t{n}-root"))
    head, tail = _wrapper(fmt)
    grammar = "\n".join(
        [
            "root ::= " + " ".join(part for part in (head, "call", tail) if part),
            "call ::= " + " | ".join(f"call{n}" for n in range(len(calls))),
            *(f"call{n} ::= {rule}" for n, rule in enumerate(calls)),
            *rules,
        ]
    )
    try:
        limits.check_gbnf(grammar)
    except limits.LimitError as exc:
        raise _bad("tools", f"'tools': {exc.message}") from None
    return grammar + "\n"


def _wrapper(fmt: tf.ToolFormat) -> tuple[str, str]:
    """What comes before and after the call in the family's syntax (GBNF)."""
    if fmt.family == tf.MISTRAL:
        return literal(tf.TOOL_CALLS + "["), literal("]")
    if fmt.family == tf.MISTRAL_ARGS:
        return literal(tf.TOOL_CALLS), ""
    if fmt.family == tf.LLAMA3:
        return "", ""
    return literal(tf.TOOL_CALL_OPEN + "\n"), literal("\n" + tf.TOOL_CALL_CLOSE)


def _call_rule(fmt: tf.ToolFormat, name: str, args_rule: str) -> str:
    """One call of ``name`` with arguments ``args_rule`` (GBNF)."""
    if fmt.family == tf.MISTRAL_ARGS:
        return f"{literal(name + tf.ARGS)} {args_rule}"
    head = json.dumps({"name": name, fmt.args_key: 0}, ensure_ascii=False)
    head = head[: head.rindex("0")]  # '{"name": "NAME", "arguments": '
    return f'{literal(head)} {args_rule} "}}"'
