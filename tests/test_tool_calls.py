"""Tool calling without a model or a socket (packer.runtime.tool_calls, tool_formats, gbnf_rules).

Requests' ``tools``/``tool_choice`` validated into one-line 400s; the messages handed to chat
templates of each family (rendered with llama-cpp-python's own ``Jinja2ChatFormatter``); the
streaming parser of each family's call syntax; and the grammar that forces a call, parsed and
followed by llama.cpp's grammar engine over SmolLM2's vocabulary (no weights loaded).

The templates below are small stand-ins written for these tests, each with the markers and
the checks of its family's real templates (Qwen 2.5, Llama 3.1, Mistral Nemo, Mistral Small
3.2, SmolLM2's plain ChatML, a template refusing system messages, one enforcing alternation).
"""

from __future__ import annotations

import ctypes
import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import smollm_gguf_path

from packer.runtime import gbnf_rules, tool_formats
from packer.runtime.server_api import ApiError
from packer.runtime.tool_calls import (
    Tool,
    ToolCall,
    ToolCallParser,
    ToolChoice,
    messages_for_template,
    ollama_tool_call,
    openai_tool_call,
    parse_ollama_tools,
    parse_openai_tools,
    tool_grammar,
)

# -- templates -----------------------------------------------------------------------------

CHATML = (  # SmolLM2-135M-Instruct's: no tools, content concatenated as a string
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
HERMES = (  # Qwen 2.5-like
    "{%- if tools %}<|im_start|>system\n# Tools\n<tools>"
    "{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}\n</tools>\n"
    "Return <tool_call></tool_call> blocks.<|im_end|>\n{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant\n"
    "{{- message.content }}{%- for tool_call in message.tool_calls %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    '\n<tool_call>\n{"name": "{{ tool_call.name }}", "arguments": {{ tool_call.arguments | tojson }}}'
    "\n</tool_call>{%- endfor %}<|im_end|>\n"
    "{%- elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}"
    "\n</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)
LLAMA3 = (  # Llama 3.1-like: tools in the first user message, one call per message
    "{{- bos_token }}{%- for message in messages %}"
    "{%- if message.role == 'user' and loop.first and tools is not none %}"
    "<|start_header_id|>user<|end_header_id|>\n\n"
    "{%- for t in tools %}{{ t | tojson }}\n{%- endfor %}{{ message.content }}<|eot_id|>"
    "{%- elif message.tool_calls is defined and message.tool_calls %}"
    "{%- if message.tool_calls | length != 1 %}"
    "{{- raise_exception('This model only supports single tool-calls at once!') }}{%- endif %}"
    "{%- set tool_call = message.tool_calls[0].function %}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
    '{"name": "{{ tool_call.name }}", "parameters": {{ tool_call.arguments | tojson }}}<|eot_id|>'
    "{%- elif message.role == 'tool' or message.role == 'ipython' %}"
    "<|start_header_id|>ipython<|end_header_id|>\n\n{{ message.content }}<|eot_id|>"
    "{%- else %}<|start_header_id|>{{ message.role }}<|end_header_id|>\n\n"
    "{{ message.content }}<|eot_id|>{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{%- endif %}"
)
_MISTRAL_CHECKS = (
    "{%- if tool_call.id is not defined or tool_call.id | length != 9 %}"
    "{{- raise_exception('Tool call IDs should be alphanumeric strings with length 9!') }}"
    "{%- endif %}"
)
MISTRAL = (  # Mistral Nemo-like
    "{{- bos_token }}{%- for message in messages %}"
    "{%- if message.role == 'user' %}"
    "{%- if tools is not none and loop.last %}[AVAILABLE_TOOLS]{{ tools | tojson }}"
    "[/AVAILABLE_TOOLS]{%- endif %}[INST]{{ message.content }}[/INST]"
    "{%- elif message.tool_calls is defined and message.tool_calls is not none %}[TOOL_CALLS]["
    "{%- for tool_call in message.tool_calls %}"
    + _MISTRAL_CHECKS
    + "{{ (tool_call.function | tojson)[:-1] }}"
    ', "id": "{{ tool_call.id }}"}{%- if not loop.last %}, {% endif %}{%- endfor %}]{{ eos_token }}'
    "{%- elif message.role == 'assistant' %}{{ message.content }}{{ eos_token }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if message.tool_call_id is not defined or message.tool_call_id | length != 9 %}"
    "{{- raise_exception('Tool call IDs should be alphanumeric strings with length 9!') }}"
    "{%- endif %}[TOOL_RESULTS]{{ message.content }}[/TOOL_RESULTS]"
    "{%- else %}{{- raise_exception('Only user and assistant roles are supported!') }}"
    "{%- endif %}{%- endfor %}"
)
MISTRAL_ARGS = (  # Mistral Small 3.2-like
    "{{- bos_token }}{%- for message in messages %}"
    "{%- if message.role == 'system' %}[SYSTEM_PROMPT]{{ message.content }}[/SYSTEM_PROMPT]"
    "{%- elif message.role == 'user' %}"
    "{%- if tools is not none and loop.last %}[AVAILABLE_TOOLS]{{ tools | tojson }}"
    "[/AVAILABLE_TOOLS]{%- endif %}[INST]{{ message.content }}[/INST]"
    "{%- elif message.role == 'assistant' and message.tool_calls %}"
    "{%- for tool_call in message.tool_calls %}" + _MISTRAL_CHECKS + "[TOOL_CALLS]"
    "{{ tool_call.function.name }}[CALL_ID]{{ tool_call.id }}"
    "[ARGS]{{ tool_call.function.arguments | tojson }}{%- endfor %}{{ eos_token }}"
    "{%- elif message.role == 'assistant' %}{{ message.content }}{{ eos_token }}"
    "{%- elif message.role == 'tool' %}[TOOL_RESULTS]{{ message.tool_call_id }}"
    "[TOOL_CONTENT]{{ message.content }}[/TOOL_RESULTS]"
    "{%- endif %}{%- endfor %}"
)
NO_SYSTEM = (  # Gemma 2-like
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}<start_of_turn>{{ message['role'] }}\n{{ message['content'] | trim }}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
ALTERNATING = (  # Llama 2 / Mistral v1-like: user and assistant must alternate
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}<<SYS>>{{ message['content'] }}<</SYS>>"
    "{% elif (message['role'] == 'user') != (loop.index0 % 2 == (0 if messages[0]['role'] != "
    "'system' else 1)) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% elif message['role'] == 'user' %}[INST] {{ message['content'] }} [/INST]"
    "{% else %}{{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
FAMILIES = {
    "generic": CHATML,
    "hermes": HERMES,
    "llama3": LLAMA3,
    "mistral": MISTRAL,
    "mistral_args": MISTRAL_ARGS,
}

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
BOOKING = {  # nested objects and enums
    "type": "function",
    "function": {
        "name": "book_table",
        "parameters": {
            "type": "object",
            "properties": {
                "restaurant": {"type": "string"},
                "party": {
                    "type": "object",
                    "properties": {
                        "size": {"type": "integer"},
                        "seating": {"type": "string", "enum": ["indoor", "outdoor"]},
                    },
                    "required": ["size", "seating"],
                },
            },
            "required": ["restaurant", "party"],
        },
    },
}
TOOLS, AUTO = parse_openai_tools([WEATHER, BOOKING], "auto")


def render(template: str, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    """The prompt llama-cpp-python's Jinja formatter (the one model.run uses) makes."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    fmt = Jinja2ChatFormatter(template, eos_token="</s>", bos_token="<s>")
    return fmt(messages=messages, **kwargs).prompt


def api_error(fn: Any, *args: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        fn(*args)
    err = info.value
    assert err.status == 400 and "\n" not in err.message and len(err.message) <= 300
    return err


# -- requests ------------------------------------------------------------------------------


def test_openai_tools_parsed() -> None:
    tools, choice = parse_openai_tools([WEATHER], None)
    assert tools == [
        Tool("get_weather", "The weather in a city", WEATHER["function"]["parameters"])
    ]
    assert choice == ToolChoice("auto")
    assert tools[0].openai() == WEATHER
    bare, _ = parse_openai_tools([{"type": "function", "function": {"name": "now"}}], "auto")
    assert bare[0].parameters == {"type": "object", "properties": {}}
    assert bare[0].openai() == {
        "type": "function",
        "function": {
            "name": "now",
            "description": "",
            "parameters": {"type": "object", "properties": {}},
        },
    }


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, ToolChoice("auto")),
        ("auto", ToolChoice("auto")),
        ("none", ToolChoice("none")),
        ("required", ToolChoice("required")),
        (
            {"type": "function", "function": {"name": "book_table"}},
            ToolChoice("function", "book_table"),
        ),
        ({"type": "function", "name": "get_weather"}, ToolChoice("function", "get_weather")),
    ],
)
def test_tool_choice(choice: Any, expected: ToolChoice) -> None:
    assert parse_openai_tools([WEATHER, BOOKING], choice)[1] == expected


def test_no_tools_means_none() -> None:
    assert parse_openai_tools(None, None) == ([], ToolChoice("none"))
    assert parse_openai_tools([], "auto") == ([], ToolChoice("none"))
    err = api_error(parse_openai_tools, [], "required")
    assert err.param == "tool_choice" and "'tools' is empty" in err.message


@pytest.mark.parametrize(
    ("tools", "choice", "param", "words"),
    [
        ({"name": "x"}, None, "tools", "'tools' must be a list"),
        (["x"], None, "tools", "'tools[0]' must be an object"),
        ([{"function": {"name": "x"}}], None, "tools", "'tools[0].type' must be 'function'"),
        ([{"type": "code_interpreter"}], None, "tools", "'tools[0].type' must be 'function'"),
        ([{"type": "function"}], None, "tools", "'tools[0].function' must be an object"),
        ([{"type": "function", "function": {}}], None, "tools", "'tools[0].function.name'"),
        ([{"type": "function", "function": {"name": "a b"}}], None, "tools", "letters, digits"),
        ([{"type": "function", "function": {"name": "x" * 65}}], None, "tools", "1 to 64"),
        (
            [{"type": "function", "function": {"name": "x", "description": 3}}],
            None,
            "tools",
            "'tools[0].function.description' must be a string",
        ),
        (
            [{"type": "function", "function": {"name": "x", "parameters": {"type": "string"}}}],
            None,
            "tools",
            "'tools[0].function.parameters' must be a JSON schema of an object",
        ),
        (
            [{"type": "function", "function": {"name": "x", "parameters": []}}],
            None,
            "tools",
            "JSON schema of an object",
        ),
        ([WEATHER, WEATHER], None, "tools", "two functions named 'get_weather'"),
        ([WEATHER], "sometimes", "tool_choice", "'tool_choice' must be 'auto', 'none'"),
        ([WEATHER], {"type": "web_search"}, "tool_choice", "'tool_choice' must be"),
        ([WEATHER], {"type": "function", "function": {}}, "tool_choice", "name' must be a string"),
        (
            [WEATHER],
            {"type": "function", "function": {"name": "get_time"}},
            "tool_choice",
            "names the function 'get_time', which is not in 'tools'",
        ),
    ],
)
def test_bad_requests_are_400s(tools: Any, choice: Any, param: str, words: str) -> None:
    err = api_error(parse_openai_tools, tools, choice)
    assert err.param == param
    assert words in err.message, err.message


def test_limits() -> None:
    huge = {"type": "object", "properties": {"s": {"type": "string", "maxLength": 100000}}}
    err = api_error(
        parse_openai_tools,
        [{"type": "function", "function": {"name": "x", "parameters": huge}}],
        None,
    )
    assert "'tools[0].function.parameters'" in err.message and "maxLength" in err.message
    many = [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]
    assert "over the limit of 128" in api_error(parse_openai_tools, many, None).message
    long = "d" * 9000
    big = [
        {"type": "function", "function": {"name": f"f{i}", "description": long}} for i in range(40)
    ]
    assert "bytes of JSON" in api_error(parse_openai_tools, big, None).message


def test_ollama_tools() -> None:
    untyped = [{"function": WEATHER["function"]}]
    assert parse_ollama_tools(untyped) == parse_ollama_tools([WEATHER]) == TOOLS[:1]
    assert parse_ollama_tools(None) == []
    err = api_error(parse_ollama_tools, [{"type": "function", "function": {"name": "@"}}])
    assert err.param == "tools"


# -- template families ---------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_families_detected(family: str) -> None:
    fmt = tool_formats.detect(FAMILIES[family])
    assert fmt.family == family
    native = family != "generic"
    assert (fmt.describes_tools, fmt.renders_calls, fmt.renders_results) == (native,) * 3


def test_template_abilities() -> None:
    assert tool_formats.detect("").family == "generic"
    assert not tool_formats.detect(NO_SYSTEM).system_role
    assert tool_formats.detect(NO_SYSTEM).alternates
    assert tool_formats.detect(CHATML).system_role and not tool_formats.detect(CHATML).alternates
    # mentions <tool_call> but takes neither tools nor calls: described in a system message
    bare = tool_formats.detect("{{ messages[0]['content'] }} <tool_call>")
    assert bare.family == "hermes" and not bare.describes_tools and not bare.renders_calls


# -- messages for the template -------------------------------------------------------------

HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_abc",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {
                "id": "call_def",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
            },
        ],
    },
    {"role": "tool", "tool_call_id": "call_abc", "content": "18 C, sunny"},
    {"role": "tool", "tool_call_id": "call_def", "content": [{"type": "text", "text": "25 C"}]},
    {"role": "user", "content": "Thanks! And tomorrow?"},
]


def test_generic_template_gets_a_system_message_and_text() -> None:
    msgs, kwargs = messages_for_template(HISTORY, TOOLS, AUTO, CHATML)
    assert kwargs == {}
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "user"]
    system = msgs[0]["content"]
    assert system.startswith("Be brief.\n\n")
    assert all(json.dumps(t.openai(), ensure_ascii=False) in system for t in TOOLS)
    assert "<tool_call>" in system and "answer normally" in system
    assert msgs[2]["content"] == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
    )
    # both results in one user turn, named after the calls they answer
    assert msgs[3]["content"] == (
        '<tool_response>\n{"name": "get_weather", "content": "18 C, sunny"}\n</tool_response>\n'
        '<tool_response>\n{"name": "get_weather", "content": "25 C"}\n</tool_response>'
    )
    prompt = render(CHATML, msgs, **kwargs)
    assert "<|im_start|>assistant\n<tool_call>" in prompt and "25 C" in prompt
    assert HISTORY[2]["content"] is None  # the caller's messages are left alone


def test_generic_template_forced_call_and_none() -> None:
    msgs, _ = messages_for_template(HISTORY[1:2], TOOLS, ToolChoice("required"), CHATML)
    assert msgs[0]["role"] == "system" and msgs[0]["content"].endswith(
        "Call one of these functions now."
    )
    msgs, _ = messages_for_template(
        HISTORY[1:2], TOOLS, ToolChoice("function", "book_table"), CHATML
    )
    assert msgs[0]["content"].endswith("Call the function 'book_table' now.")
    msgs, kwargs = messages_for_template(HISTORY, TOOLS, ToolChoice("none"), CHATML)
    assert kwargs == {} and msgs[0] == {"role": "system", "content": "Be brief."}
    assert "<tool_call>" in msgs[2]["content"]  # earlier calls are still shown
    render(CHATML, msgs)


def test_template_without_system_role() -> None:
    msgs, _ = messages_for_template(HISTORY, TOOLS, ToolChoice("none"), NO_SYSTEM)
    assert msgs[0] == {"role": "user", "content": "Be brief.\n\nWeather in Paris and Rome?"}
    render(NO_SYSTEM, msgs)
    msgs, _ = messages_for_template(HISTORY[1:], TOOLS, AUTO, NO_SYSTEM)
    assert msgs[0]["role"] == "user" and msgs[0]["content"].startswith("You can call functions")
    assert msgs[0]["content"].endswith("Weather in Paris and Rome?")
    # tool results merged into the next user turn: roles still alternate
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert "<tool_response>" in msgs[2]["content"]
    assert msgs[2]["content"].endswith("Thanks! And tomorrow?")
    render(NO_SYSTEM, msgs)


def test_alternating_template() -> None:
    msgs, _ = messages_for_template(HISTORY, TOOLS, AUTO, ALTERNATING)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    render(ALTERNATING, msgs)


def test_hermes_template_gets_tools_and_calls() -> None:
    msgs, kwargs = messages_for_template(HISTORY, TOOLS, AUTO, HERMES)
    booking = {"type": "function", "function": {**BOOKING["function"], "description": ""}}
    assert kwargs == {"tools": [WEATHER, booking]}
    assert msgs[0] == HISTORY[0]
    assert msgs[2] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_abc",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
            },
            {
                "id": "call_def",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Rome"}},
            },
        ],
    }
    assert msgs[3] == {
        "role": "tool",
        "content": "18 C, sunny",
        "tool_call_id": "call_abc",
        "name": "get_weather",
    }
    assert msgs[4]["content"] == "25 C"
    prompt = render(HERMES, msgs, **kwargs)
    assert '"name": "book_table"' in prompt
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}' in prompt
    # tool_choice none: the tools are not shown
    assert messages_for_template(HISTORY, TOOLS, ToolChoice("none"), HERMES)[1] == {}


def test_llama3_template_takes_one_call_per_message() -> None:
    msgs, kwargs = messages_for_template(HISTORY, TOOLS, AUTO, LLAMA3)
    assert [m["role"] for m in msgs] == [
        "system", "user", "assistant", "tool", "assistant", "tool", "user"
    ]  # fmt: skip
    assert [m["content"] for m in msgs if m["role"] == "tool"] == ["18 C, sunny", "25 C"]
    prompt = render(LLAMA3, msgs, **kwargs)
    paris = '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>'
    assert paris + "<|start_header_id|>ipython<|end_header_id|>\n\n18 C, sunny" in prompt
    assert '{"city": "Rome"}}<|eot_id|><|start_header_id|>ipython' in prompt
    # results without ids answer the calls in order
    no_ids = [dict(m) for m in HISTORY]
    for m in no_ids[3:5]:
        del m["tool_call_id"]
    assert messages_for_template(no_ids, TOOLS, AUTO, LLAMA3)[0][3]["content"] == "18 C, sunny"


@pytest.mark.parametrize("template", [MISTRAL, MISTRAL_ARGS], ids=["mistral", "mistral_args"])
def test_mistral_templates_get_nine_character_ids(template: str) -> None:
    msgs, kwargs = messages_for_template(HISTORY[1:], TOOLS, AUTO, template)
    first, second = (tc["id"] for tc in msgs[1]["tool_calls"])
    assert len(first) == len(second) == 9 and first != second and first.isalnum()
    assert [msgs[2]["tool_call_id"], msgs[3]["tool_call_id"]] == [first, second]
    prompt = render(template, msgs, **kwargs)
    assert "[AVAILABLE_TOOLS]" in prompt and first in prompt
    # an id already of Mistral's kind is kept
    mine = [dict(HISTORY[2], tool_calls=[{"id": "a1b2c3d4e", "function": {"name": "x"}}])]
    assert messages_for_template(mine, TOOLS, AUTO, template)[0][0]["tool_calls"][0]["id"] == (
        "a1b2c3d4e"
    )


def test_ollama_shaped_history() -> None:
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "18 C", "tool_name": "get_weather"},
    ]
    msgs, _ = messages_for_template(history, TOOLS, AUTO, HERMES)
    call_id = msgs[1]["tool_calls"][0]["id"]
    assert msgs[2] == {
        "role": "tool",
        "content": "18 C",
        "tool_call_id": call_id,
        "name": "get_weather",
    }
    msgs, _ = messages_for_template(history, TOOLS, AUTO, MISTRAL)
    assert msgs[2]["tool_call_id"] == msgs[1]["tool_calls"][0]["id"]  # paired by order
    render(MISTRAL, msgs)
    msgs, _ = messages_for_template(history, TOOLS, AUTO, CHATML)
    assert '"name": "get_weather"' in msgs[-1]["content"]


@pytest.mark.parametrize(
    ("tool_calls", "words"),
    [
        ("x", "'messages[0].tool_calls' must be a list"),
        (["x"], "'messages[0].tool_calls[0]' must be"),
        ([{"function": {"arguments": "{}"}}], "'messages[0].tool_calls[0]' must be"),
        ([{"function": {"name": "f", "arguments": "{oops"}}], "arguments' must be JSON text"),
    ],
)
def test_bad_history_is_a_400(tool_calls: Any, words: str) -> None:
    messages = [{"role": "assistant", "content": "", "tool_calls": tool_calls}]
    for template in (HERMES, LLAMA3, CHATML):
        err = api_error(messages_for_template, messages, TOOLS, AUTO, template)
        assert err.param == "messages" and words in err.message, err.message


# -- parsing the answer --------------------------------------------------------------------

CALLS = {  # one call to get_weather, as each family writes it
    "generic": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    "hermes": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    "llama3": '{"name": "get_weather", "parameters": {"city": "Paris"}}',
    "mistral": '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "a1b2c3d4e"}]',
    "mistral_args": '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}',
}


def run(
    text: str,
    template: str,
    choice: ToolChoice = AUTO,
    tools: list[Tool] = TOOLS,
    chunks: Iterator[int] | None = None,
) -> tuple[str, list[ToolCall]]:
    """``text`` through a parser in pieces (one character at a time by default)."""
    parser = ToolCallParser(tools, choice, template)
    out, calls = [], []
    i = 0
    while i < len(text):
        n = next(chunks) if chunks else 1
        piece, found = parser.feed(text[i : i + n])
        out.append(piece)
        calls += found
        i += n
    piece, found = parser.finish()
    return "".join(out) + piece, calls + found


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_call_is_parsed(family: str) -> None:
    text, calls = run(CALLS[family], FAMILIES[family])
    assert text == ""
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", '{"city":"Paris"}')]
    assert calls[0].id.startswith("call_") and len(calls[0].id) == 29


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_random_chunks_give_the_same_answer(family: str) -> None:
    rng = random.Random(family)
    answer = CALLS[family] if family in ("llama3", "mistral") else "Checking. " + CALLS[family]
    for _ in range(20):
        chunks = iter(lambda: rng.randint(1, 7), 0)
        text, calls = run(answer, FAMILIES[family], chunks=chunks)
        assert text == answer[: answer.find(CALLS[family])].rstrip()
        assert [c.arguments for c in calls] == ['{"city":"Paris"}']


def test_text_before_a_call_is_passed_on_at_once_and_markers_held() -> None:
    parser = ToolCallParser(TOOLS, AUTO, HERMES)
    assert parser.feed("Let me check.") == ("Let me check.", [])
    assert parser.feed(" <tool") == ("", [])  # may be a marker: held (and the space)
    assert parser.feed('_call>\n{"name": "get_weather", ') == ("", [])
    text, calls = parser.feed('"arguments": {"city": "Paris"}}\n</tool_call>')
    assert text == "" and [c.name for c in calls] == ["get_weather"]
    assert parser.feed(" Done.") == (" Done.", [])
    assert parser.finish() == ("", [])
    parser = ToolCallParser(TOOLS, AUTO, HERMES)
    assert parser.feed("a <tool") == ("a", [])
    assert parser.feed("s> b") == (" <tools> b", [])  # not a marker after all
    assert parser.feed("\n\n") == ("", [])
    assert parser.finish() == ("\n\n", [])  # no call: trailing whitespace kept


def test_call_shapes() -> None:
    call = ToolCall("call_1", "get_weather", '{"city":"Paris"}')
    assert openai_tool_call(call) == {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
    }
    assert openai_tool_call(call, 0)["index"] == 0
    assert ollama_tool_call(call) == {
        "function": {"name": "get_weather", "arguments": {"city": "Paris"}}
    }


def test_several_calls_and_text_around_them() -> None:
    paris = CALLS["hermes"]
    rome = paris.replace("Paris", "Rome")
    text, calls = run(f"Sure.\n{paris}\n{rome}\nDone.", HERMES)
    assert text == "Sure.\nDone."
    assert [c.arguments for c in calls] == ['{"city":"Paris"}', '{"city":"Rome"}']
    assert calls[0].id != calls[1].id
    text, calls = run(CALLS["llama3"] + "; " + CALLS["llama3"].replace("Paris", "Rome"), LLAMA3)
    assert text == "" and len(calls) == 2
    two = '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "A"}}, ' + (
        '{"name": "book_table", "arguments": {"restaurant": "B", "party": {}}}]'
    )
    text, calls = run(two, MISTRAL)
    assert text == "" and [c.name for c in calls] == ["get_weather", "book_table"]
    args = CALLS["mistral_args"]
    text, calls = run(
        args + args.replace("get_weather", "get_weather[CALL_ID]x1y2z3w4v"), MISTRAL_ARGS
    )
    assert text == "" and len(calls) == 2


@pytest.mark.parametrize(
    "answer",
    [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par',  # cut off
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": Paris}}\n</tool_call>',
        '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>',  # unknown function
        '<tool_call>\n{"name": "get_weather", "arguments": [1]}\n</tool_call>',
        '<tool_call>\n{"name": "get_weather", "arguments": "not json"}\n</tool_call>',
        "<tool_call>get_weather(city='Paris')</tool_call>",
        "<tool_call>",
        "Use <tool_call> tags.",
    ],
)
def test_malformed_calls_are_content(answer: str) -> None:
    text, calls = run(answer, HERMES)
    assert calls == [] and text == answer


FRAGMENTS = [
    "<tool_call>", "</tool_call>", "<tool", "[TOOL_CALLS]", "[ARGS]", "<|python_tag|>", "{", "}",
    "[", "]", '"', "\\", ":", ",", ";", " ", "\n", '"name"', '"arguments"', '"parameters"',
    '"get_weather"', "get_weather", '{"city": "Paris"}', "text", "ñ", "\x00",
]  # fmt: skip


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_any_text_is_kept_or_parsed_never_a_crash(family: str) -> None:
    rng = random.Random(family)
    for _ in range(400):
        answer = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 14)))
        chunks = iter(lambda: rng.randint(1, 5), 0)
        text, calls = run(answer, FAMILIES[family], chunks=chunks)
        if not calls:
            assert text == answer
        for c in calls:
            assert c.name == "get_weather" and isinstance(json.loads(c.arguments), dict)


def test_call_without_closing_tag_at_the_end() -> None:
    answer = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
    text, calls = run(answer, HERMES)
    assert text == "" and len(calls) == 1
    text, calls = run(answer + "\nmore", HERMES)  # another word instead of the tag: still a call
    assert text == "more" and len(calls) == 1


def test_arguments_normalised() -> None:
    answer = '<tool_call>{"name": "book_table", "arguments": "{\\"restaurant\\": \\"Chez Ñ\\", \\"party\\": {\\"size\\": 2}}"}</tool_call>'
    _, calls = run(answer, HERMES)
    assert calls[0].arguments == '{"restaurant":"Chez Ñ","party":{"size":2}}'
    _, calls = run('<tool_call>{"name": "get_weather"}</tool_call>', HERMES)
    assert calls[0].arguments == "{}"
    openai_shape = '<tool_call>{"type": "function", "function": {"name": "get_weather", "arguments": {}}}</tool_call>'
    assert run(openai_shape, HERMES)[1][0].name == "get_weather"


def test_json_answers_that_are_not_calls_stay_content() -> None:
    parser = ToolCallParser(TOOLS, AUTO, LLAMA3)
    assert parser.feed('{"na') == ("", [])  # may be a call ("name"...) until the key is known
    assert parser.feed('tion": "France"}') == ('{"nation": "France"}', [])
    assert run('{"answer": 42}', LLAMA3) == ('{"answer": 42}', [])
    answer = '{"name": "Paris", "country": "France"}'  # a "name" key, but not a call
    assert run(answer, LLAMA3) == (answer, [])
    # JSON later in an answer is never a call for families whose calls open the answer
    later = "Here: " + CALLS["llama3"]
    assert run(later, LLAMA3) == (later, [])
    assert run("[1, 2, 3]", MISTRAL) == ("[1, 2, 3]", [])
    # ...but Llama's <|python_tag|> marks a call anywhere
    text, calls = run("Here: <|python_tag|>" + CALLS["llama3"], LLAMA3)
    assert text == "Here:" and len(calls) == 1


def test_mistral_calls_without_their_marker_at_the_start() -> None:
    bare = CALLS["mistral"].removeprefix("[TOOL_CALLS]")
    assert [c.name for c in run(bare, MISTRAL)[1]] == ["get_weather"]
    assert run("[TOOL_CALLS]oops", MISTRAL_ARGS) == ("[TOOL_CALLS]oops", [])
    # [TOOL_CALLS] and [ARGS] are control tokens: the text may lack them
    for bare in ('get_weather{"city": "Paris"}', 'get_weather[ARGS]{"city": "Paris"}'):
        text, calls = run(bare, MISTRAL_ARGS)
        assert text == "" and [c.arguments for c in calls] == ['{"city":"Paris"}']
    for answer in ("get_weather is a tool.", "get", "Sunny today.", "get_weather{oops"):
        assert run(answer, MISTRAL_ARGS) == (answer, [])


def test_tool_choice_none_and_named_function() -> None:
    call = CALLS["hermes"]
    assert run(call, HERMES, ToolChoice("none")) == (call, [])
    assert run(call, HERMES, tools=[]) == (call, [])
    parser = ToolCallParser(TOOLS, ToolChoice("none"), HERMES)
    assert parser.feed("<tool") == ("<tool", [])  # nothing held back
    # a named function: other functions' calls are content
    assert run(call, HERMES, ToolChoice("function", "book_table")) == (call, [])
    assert len(run(call, HERMES, ToolChoice("function", "get_weather"))[1]) == 1


# -- grammars ------------------------------------------------------------------------------


def test_prefix_rules() -> None:
    grammar = (
        'root ::= "{" space item{1,3} [a-z\\]-]+ "\\"x" # a comment: root\n'
        "item-1 ::= ( root | space )? .\n"
        'space ::= | " "\n'
    )
    assert gbnf_rules.prefix_rules(grammar, "t0-") == (
        't0-root ::= "{" t0-space t0-item{1,3} [a-z\\]-]+ "\\"x" # a comment: root\n'
        "t0-item-1 ::= ( t0-root | t0-space )? .\n"
        't0-space ::= | " "\n'
    )
    with pytest.raises(ValueError):
        gbnf_rules.prefix_rules(grammar, "t_")


def test_gbnf_literal() -> None:
    assert gbnf_rules.literal('<a "b">\\\n\t\x01') == '"<a \\"b\\">\\\\\\n\\t\\x01"'


def test_no_grammar_unless_a_call_is_required() -> None:
    assert tool_grammar(TOOLS, AUTO, HERMES) is None
    assert tool_grammar(TOOLS, ToolChoice("none"), HERMES) is None
    assert tool_grammar([], ToolChoice("required"), HERMES) is None


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_grammar_shape(family: str) -> None:
    grammar = tool_grammar(TOOLS, ToolChoice("required"), FAMILIES[family])
    assert grammar is not None
    lines = grammar.splitlines()
    assert lines[0].startswith("root ::= ")
    assert lines[1] == "call ::= call0 | call1"
    assert sum(line.startswith("t0-root ::=") for line in lines) == 1
    assert sum(line.startswith("t1-root ::=") for line in lines) == 1
    names = [line.split(" ::= ")[0] for line in lines]
    assert len(names) == len(set(names)), "a rule defined twice"
    one = tool_grammar(TOOLS, ToolChoice("function", "book_table"), FAMILIES[family])
    assert one is not None and "get_weather" not in one and "book_table" in one


def test_grammar_limits() -> None:
    """Tools each within the limits whose grammars together are over them: a 400."""
    values = [f"value-{j:04}" for j in range(400)]
    many = [
        {
            "type": "function",
            "function": {
                "name": f"pick{i}",
                "parameters": {"type": "object", "properties": {"v": {"enum": values}}},
            },
        }
        for i in range(30)
    ]
    tools, choice = parse_openai_tools(many, "required")
    err = api_error(tool_grammar, tools, choice, HERMES)
    assert err.param == "tools" and "the grammar is" in err.message, err.message
    assert tool_grammar(tools[:2], choice, HERMES)  # a few are fine


@pytest.fixture(scope="module")
def vocab() -> Iterator[tuple[Any, Any]]:
    """SmolLM2's vocabulary (no weights), for llama.cpp's grammar engine."""
    import llama_cpp as ll

    params = ll.llama_model_default_params()
    params.vocab_only = True
    model = ll.llama_model_load_from_file(str(smollm_gguf_path()).encode(), params)
    assert model
    try:
        yield ll, ll.llama_model_get_vocab(model)
    finally:
        ll.llama_model_free(model)


def grammar_accepts(vocab: tuple[Any, Any], grammar: str, text: str) -> bool:
    """Whether llama.cpp's grammar engine lets the model write ``text`` (tokenized by the
    vocabulary) and then end: each token is offered alone and must keep a finite logit."""
    ll, v = vocab
    sampler = ll.llama_sampler_init_grammar(v, grammar.encode("utf-8"), b"root")
    assert sampler, "llama.cpp cannot parse the grammar"
    try:
        data = text.encode("utf-8")
        tokens = (ll.llama_token * (len(data) + 8))()
        n = ll.llama_tokenize(v, data, len(data), tokens, len(data) + 8, False, False)
        assert n > 0
        for tok in [*tokens[:n], ll.llama_vocab_eos(v)]:
            cell = ll.llama_token_data(id=tok, logit=0.0, p=0.0)
            arr = ll.llama_token_data_array(
                data=ctypes.pointer(cell), size=1, selected=-1, sorted=False
            )
            ll.llama_sampler_apply(sampler, ctypes.byref(arr))
            if cell.logit == float("-inf"):
                return False
            if tok != ll.llama_vocab_eos(v):
                ll.llama_sampler_accept(sampler, tok)
        return True
    finally:
        ll.llama_sampler_free(sampler)


BOOK = {"restaurant": "Chez Nous", "party": {"size": 4, "seating": "outdoor"}}
GOOD = {  # a forced call of book_table, as the grammar of each family lets it be written
    "generic": f'<tool_call>\n{{"name": "book_table", "arguments": {json.dumps(BOOK)}}}\n</tool_call>',
    "hermes": f'<tool_call>\n{{"name": "book_table", "arguments": {json.dumps(BOOK)}}}\n</tool_call>',
    "llama3": f'{{"name": "book_table", "parameters": {json.dumps(BOOK)}}}',
    "mistral": f'[TOOL_CALLS][{{"name": "book_table", "arguments": {json.dumps(BOOK)}}}]',
    "mistral_args": f"[TOOL_CALLS]book_table[ARGS]{json.dumps(BOOK)}",
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_grammar_in_llama_cpp(vocab: tuple[Any, Any], family: str) -> None:
    template = FAMILIES[family]
    grammar = tool_grammar(TOOLS, ToolChoice("required"), template)
    assert grammar is not None
    good = GOOD[family]
    assert grammar_accepts(vocab, grammar, good)
    # what the grammar lets through, the parser takes as a call
    text, calls = run(good, template)
    assert text == "" and json.loads(calls[0].arguments) == BOOK
    weather = good.replace("book_table", "get_weather").replace(
        json.dumps(BOOK), '{"city": "Oslo"}'
    )
    assert grammar_accepts(vocab, grammar, weather)
    for bad in (
        good.replace("outdoor", "rooftop"),  # not in the enum
        good.replace('"size": 4', '"size": "four"'),  # not an integer
        good.replace(', "seating": "outdoor"', ""),  # a required property missing
        good.replace("book_table", "drop_table"),  # not a tool
        "Sure! " + good,  # text first
        good + " Done.",  # text after
    ):
        assert not grammar_accepts(vocab, grammar, bad), bad
    named = tool_grammar(TOOLS, ToolChoice("function", "get_weather"), template)
    assert named is not None
    assert grammar_accepts(vocab, named, weather)
    assert not grammar_accepts(vocab, named, good)
