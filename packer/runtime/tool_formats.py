"""How a chat template's model family writes tool calls, read from the template's text.

The same checks llama.cpp's ``common/chat.cpp`` makes (facts, not code, taken from it):

* **hermes** (Hermes 2/3 Pro, Qwen 2.5, Qwen 3...): the template mentions ``<tool_call>``; a
  call is ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, anywhere in the answer;
* **llama3** (Llama 3.1/3.2/3.3): the template has an ``ipython`` turn
  (``<|start_header_id|>ipython<|end_header_id|>``); a call is a JSON object
  ``{"name": ..., "parameters": {...}}`` opening the answer, or after ``<|python_tag|>``;
* **mistral** (Mistral Nemo, Small 3.0/3.1): the template mentions ``[TOOL_CALLS]``; calls are
  ``[TOOL_CALLS][{"name": ..., "arguments": {...}, "id": ...}, ...]``;
* **mistral_args** (Mistral Small 3.2, Devstral, Magistral, Ministral 3): the template also
  has ``[ARGS]``; each call is ``[TOOL_CALLS]name[ARGS]{...}`` (``[CALL_ID]id`` may sit
  before ``[ARGS]``);
* **generic**: a template that knows no tools (e.g. SmolLM2's plain ChatML). The tools are
  described in a system message that asks for Hermes-style ``<tool_call>`` blocks, and the
  conversation's earlier calls and results are written into the messages as text.

What a template can do with tools is read from its text too: whether it uses ``tools``
(describes them itself), renders an assistant's ``tool_calls``, and takes ``tool`` messages.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

HERMES = "hermes"
LLAMA3 = "llama3"
MISTRAL = "mistral"
MISTRAL_ARGS = "mistral_args"
GENERIC = "generic"

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
TOOL_CALLS = "[TOOL_CALLS]"
ARGS = "[ARGS]"
CALL_ID = "[CALL_ID]"


# the markers of each family's calls (see ToolFormat.markers)
_MARKERS = {
    HERMES: (TOOL_CALL_OPEN, TOOL_CALL_CLOSE),
    LLAMA3: (PYTHON_TAG,),
    MISTRAL: (TOOL_CALLS,),
    MISTRAL_ARGS: (TOOL_CALLS, ARGS, CALL_ID),
}


@dataclass(frozen=True)
class ToolFormat:
    """One template's tool-call syntax and what the template renders itself."""

    family: str
    describes_tools: bool  # the template writes the ``tools`` it is given into the prompt
    renders_calls: bool  # ... an assistant message's ``tool_calls``
    renders_results: bool  # ... ``role: "tool"`` messages
    # the template checks that user and assistant turns alternate (merge what would break it)
    alternates: bool = False
    # the template takes a system message (else it goes into the first user message)
    system_role: bool = True
    # the template takes one call per assistant message (Llama 3.x)
    single_call: bool = False

    @property
    def markers(self) -> tuple[str, ...]:
        """The texts the family's calls are marked with: special tokens in some vocabularies
        (Mistral's ``[TOOL_CALLS]``), which the answer must then show for calls to be found."""
        return _MARKERS.get(self.family, ())

    @property
    def args_key(self) -> str:
        """The key holding a call's arguments in the family's JSON."""
        return "parameters" if self.family == LLAMA3 else "arguments"


def detect(template: str) -> ToolFormat:
    """The tool-call format of a chat template (Jinja text; "" for none)."""
    if TOOL_CALL_OPEN in template:
        family = HERMES
    elif "<|start_header_id|>ipython<|end_header_id|>" in template and "<function=" not in template:
        family = LLAMA3  # (Functionary v3.1 has the ipython turn but its own syntax: generic)
    elif TOOL_CALLS in template:
        family = MISTRAL_ARGS if ARGS in template else MISTRAL
    else:
        family = GENERIC
    native = family != GENERIC
    return ToolFormat(
        family=family,
        describes_tools=native and re.search(r"\btools\b", template) is not None,
        renders_calls=native and "tool_calls" in template,
        renders_results=native and re.search(r"""["']tool["']|ipython""", template) is not None,
        alternates="alternate" in template,
        system_role=not re.search(r"raise_exception\([^)]*[Ss]ystem role", template),
        single_call="single tool-call" in template,
    )


def compact(value: Any) -> str:
    """JSON text without spaces, as tool-call arguments are returned."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _spaced(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def call_text(fmt: ToolFormat, name: str, arguments: Any) -> str:
    """One call as the family's model writes it (for templates that do not render calls)."""
    if fmt.family == LLAMA3:
        return _spaced({"name": name, "parameters": arguments})
    if fmt.family == MISTRAL:
        return TOOL_CALLS + _spaced([{"name": name, "arguments": arguments}])
    if fmt.family == MISTRAL_ARGS:
        return f"{TOOL_CALLS}{name}{ARGS}{_spaced(arguments)}"
    return f"{TOOL_CALL_OPEN}\n{_spaced({'name': name, 'arguments': arguments})}\n{TOOL_CALL_CLOSE}"


def result_text(name: str | None, content: str) -> str:
    """A tool's result as text for templates without ``tool`` messages (Hermes' own form)."""
    body: dict[str, Any] = {"name": name, "content": content} if name else {"content": content}
    return f"<tool_response>\n{_spaced(body)}\n</tool_response>"


def describe_tools(fmt: ToolFormat, tools: list[dict[str, Any]], must_call: str | None) -> str:
    """A system-prompt text describing ``tools`` (OpenAI's shape) and the family's call syntax,
    for templates that do not describe tools themselves. ``must_call``: "" when some tool must
    be called, a name when that one must, None when the model may also just answer."""
    example = call_text(fmt, "<function-name>", {"<argument>": "<value>"})
    lines = [
        "You can call functions (tools). Their signatures, as JSON schemas, are inside "
        "<tools></tools>:",
        "<tools>",
        *(_spaced(t) for t in tools),
        "</tools>",
        "To call a function, write only this, with the arguments as a JSON object that follows "
        "the function's parameters schema (one block per call):",
        example,
        "Each function's result is given back to you inside <tool_response></tool_response>.",
    ]
    if must_call is None:
        lines.append("When no function is needed, answer normally.")
    elif must_call:
        lines.append(f"Call the function {must_call!r} now.")
    else:
        lines.append("Call one of these functions now.")
    return "\n".join(lines)
