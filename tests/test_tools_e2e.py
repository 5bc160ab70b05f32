"""Tool calling end to end (#16 item 3): the real clients against a real server of the small
model (SmolLM2-135M-Instruct, whose plain ChatML template knows no tools: the generic format).

What #16 checks: a required call returns valid JSON arguments for a schema with nested objects
and enums, streamed and not; ``tool_choice: none`` returns text; the result of a tool (role
``tool``) is accepted in the next turn. Then LangChain's ``ChatOpenAI(...).bind_tools(...)``
and ``ChatOllama(...).bind_tools(...)``, and the ``ollama`` package's ``tools``.

Answers are not compared with fixed text (a 135M model's choices differ across CPU variants,
tests/answers.py): only their shape, which the grammar guarantees when a call is required.
Every string in the schema is bounded so that MAX_TOKENS always holds a complete call.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from conftest import smollm_gguf_path
from serving import serving_with_ollama

from packer.runtime.engine import Engine, EngineOptions

ALIAS = "smollm2-test"
MAX_TOKENS = 400  # a complete call of WEATHER is at most about 200 tokens
UNITS = ["celsius", "fahrenheit"]
DAYS = ["today", "tomorrow"]
WEATHER_PARAMS = {  # nested objects and enums, every string bounded
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"type": "string", "enum": UNITS},
        "when": {
            "type": "object",
            "properties": {
                "day": {"type": "string", "enum": DAYS},
                "hour": {"type": "integer"},
            },
            "required": ["day", "hour"],
        },
    },
    "required": ["city", "unit", "when"],
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather forecast for a city",
        "parameters": WEATHER_PARAMS,
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
        },
    },
}
QUESTION = [{"role": "user", "content": "What will the weather be in Paris tomorrow at noon?"}]

pytestmark = pytest.mark.filterwarnings("ignore:.*(sunset|deprecated).*")


def check_weather_args(args: Any) -> None:
    """``args`` (parsed) follows WEATHER_PARAMS: exactly its keys, types and enums."""
    assert isinstance(args, dict) and set(args) == {"city", "unit", "when"}, args
    assert isinstance(args["city"], str) and len(args["city"]) <= 20
    assert args["unit"] in UNITS
    when = args["when"]
    assert isinstance(when, dict) and set(when) == {"day", "hour"}, when
    assert when["day"] in DAYS
    assert isinstance(when["hour"], int) and not isinstance(when["hour"], bool)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    eng = Engine(smollm_gguf_path(), EngineOptions(n_ctx=2048, n_threads=2))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def servers(engine: Engine) -> Iterator[tuple[str, str]]:
    """(main URL, Ollama listener URL) on one engine."""
    with serving_with_ollama(engine, model_alias=ALIAS) as urls:
        yield urls


@pytest.fixture(scope="module")
def main_url(servers: tuple[str, str]) -> str:
    return servers[0]


@pytest.fixture(scope="module")
def ollama_url(servers: tuple[str, str]) -> str:
    return servers[1]


@pytest.fixture(scope="module")
def oai(main_url: str) -> Any:
    import openai

    return openai.OpenAI(base_url=main_url + "/v1", api_key="x", max_retries=0, timeout=300)


def create(oai: Any, **kw: Any) -> Any:
    kw.setdefault("messages", QUESTION)
    kw.setdefault("max_tokens", MAX_TOKENS)
    return oai.chat.completions.create(model=ALIAS, temperature=0, tools=[WEATHER, TIME], **kw)


# -- the engine, without HTTP (passes before the dialects are wired) --------------------------


def test_tools_engine_forced_call_on_the_real_template(engine: Engine) -> None:
    """SmolLM2's own template (generic format): the tools described in a system message, a
    required call forced by the grammar, parsed back into a call with valid arguments; then
    the call and its result in the next turn."""
    from dataclasses import replace

    from packer.runtime.generate import Sampling
    from packer.runtime.tool_calls import (
        ToolCallParser,
        messages_for_template,
        openai_tool_call,
        parse_openai_tools,
        tool_grammar,
    )

    template = engine.chat_template
    tools, choice = parse_openai_tools(
        [WEATHER, TIME], {"type": "function", "function": {"name": "get_weather"}}
    )
    messages, kwargs = messages_for_template(QUESTION, tools, choice, template)
    assert kwargs == {} and messages[0]["role"] == "system"
    grammar = tool_grammar(tools, choice, template)
    sampling = Sampling(temperature=0, max_tokens=MAX_TOKENS, grammar=grammar)
    parser = ToolCallParser(tools, choice, template)
    text, calls = "", []
    for piece in engine.chat(messages, sampling):
        t, c = parser.feed(piece)
        text, calls = text + t, calls + c
    t, c = parser.finish()
    text, calls = text + t, calls + c
    assert engine.last_result.stop_type == "eos", engine.last_result
    assert text == "" and [c.name for c in calls] == ["get_weather"]
    check_weather_args(json.loads(calls[0].arguments))

    history = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [openai_tool_call(calls[0])]},
        {"role": "tool", "tool_call_id": calls[0].id, "content": "Sunny, 24 degrees."},
    ]
    auto = replace(choice, mode="auto", name=None)
    messages, _ = messages_for_template(history, tools, auto, template)
    answer = "".join(engine.chat(messages, replace(sampling, grammar=None, max_tokens=24)))
    assert isinstance(answer, str) and engine.last_result.n_prompt > 0


# -- the openai package ---------------------------------------------------------------------


def test_tools_openai_required_call(oai: Any) -> None:
    r = create(oai, tool_choice="required")
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in ("get_weather", "get_time")
    args = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        check_weather_args(args)
    assert not choice.message.content
    assert r.usage.completion_tokens > 0


def test_tools_openai_named_function_nested_and_enums(oai: Any) -> None:
    forced = {"type": "function", "function": {"name": "get_weather"}}
    r = create(oai, tool_choice=forced)
    assert r.choices[0].finish_reason == "tool_calls"
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    check_weather_args(json.loads(call.function.arguments))


def test_tools_openai_required_call_streamed(oai: Any) -> None:
    forced = {"type": "function", "function": {"name": "get_weather"}}
    full = create(oai, tool_choice=forced)
    chunks = list(create(oai, tool_choice=forced, stream=True))
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for c in chunks:
        if not c.choices:
            continue
        finish = c.choices[0].finish_reason or finish
        for d in c.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] = d.id or entry["id"]
            if d.function is not None:
                entry["name"] += d.function.name or ""
                entry["arguments"] += d.function.arguments or ""
    assert finish == "tool_calls"
    assert list(calls) == [0] and calls[0]["id"].startswith("call_")
    assert calls[0]["name"] == "get_weather"
    args = json.loads(calls[0]["arguments"])
    check_weather_args(args)
    # greedy both ways: the same call
    assert args == json.loads(full.choices[0].message.tool_calls[0].function.arguments)


def test_tools_openai_choice_none_returns_text(oai: Any) -> None:
    r = create(oai, tool_choice="none", max_tokens=24)
    choice = r.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert not choice.message.tool_calls
    assert isinstance(choice.message.content, str) and choice.message.content.strip()


def test_tools_openai_tool_result_next_turn(oai: Any) -> None:
    forced = {"type": "function", "function": {"name": "get_weather"}}
    first = create(oai, tool_choice=forced).choices[0].message
    call = first.tool_calls[0]
    messages = [
        *QUESTION,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24 degrees."},
    ]
    for choice in ("auto", "none"):
        r = create(oai, messages=messages, tool_choice=choice, max_tokens=32)
        assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
        assert r.usage.prompt_tokens > 0
    r = create(oai, messages=messages, tool_choice="none", max_tokens=32)
    assert isinstance(r.choices[0].message.content, str)


def test_tools_openai_bad_tools_are_400s(oai: Any) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as exc:
        create(oai, tool_choice={"type": "function", "function": {"name": "get_stock"}})
    assert "tool_choice" in str(exc.value) and "get_stock" in str(exc.value)
    with pytest.raises(openai.BadRequestError) as exc:
        oai.chat.completions.create(
            model=ALIAS,
            messages=QUESTION,
            tools=[{"type": "function", "function": {"name": "bad name"}}],
        )
    assert "tools[0].function.name" in str(exc.value)


# -- LangChain (tools given in OpenAI's shape, as bind_tools takes them) ----------------------


def test_tools_langchain_chat_openai_bind_tools(main_url: str) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        base_url=main_url + "/v1", api_key="x", model=ALIAS, temperature=0, max_tokens=MAX_TOKENS
    )
    bound = llm.bind_tools([WEATHER], tool_choice="get_weather")
    question = HumanMessage(QUESTION[0]["content"])
    ai = bound.invoke([question])
    (call,) = ai.tool_calls
    assert call["name"] == "get_weather" and call["id"]
    check_weather_args(call["args"])
    streamed = None
    for chunk in bound.stream([question]):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed is not None and streamed.tool_calls[0]["args"] == call["args"]
    # the tool's result in the next turn
    result = ToolMessage("Sunny, 24 degrees.", tool_call_id=call["id"])
    answer = llm.bind_tools([WEATHER]).invoke([question, ai, result])
    assert isinstance(answer.content, str)


def test_tools_langchain_chat_ollama_bind_tools(ollama_url: str) -> None:
    """Ollama's API has no tool_choice: the model may call the tool or answer; either way
    the request works, a call has valid arguments, and its result is taken next turn."""
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langchain_ollama import ChatOllama

    llm = ChatOllama(model=ALIAS, base_url=ollama_url, temperature=0, num_predict=MAX_TOKENS)
    bound = llm.bind_tools([WEATHER])
    question = HumanMessage(QUESTION[0]["content"])
    ai = bound.invoke([question])
    assert isinstance(ai, AIMessage)
    for call in ai.tool_calls:
        assert call["name"] == "get_weather" and isinstance(call["args"], dict)
    past = AIMessage(
        "",
        tool_calls=[
            {
                "name": "get_weather",
                "args": {
                    "city": "Paris",
                    "unit": "celsius",
                    "when": {"day": "tomorrow", "hour": 12},
                },
                "id": "call_1",
            }
        ],
    )
    result = ToolMessage("Sunny, 24 degrees.", tool_call_id="call_1")
    answer = bound.invoke([question, past, result])
    assert isinstance(answer, AIMessage)


# -- the ollama package and Ollama's wire format --------------------------------------------


def test_tools_ollama_package(ollama_url: str) -> None:
    import ollama

    c = ollama.Client(host=ollama_url)
    r = c.chat(
        model=ALIAS,
        messages=QUESTION,
        tools=[WEATHER],
        options={"temperature": 0, "num_predict": MAX_TOKENS},
    )
    assert r.message.role == "assistant"
    for call in r.message.tool_calls or []:
        assert call.function.name == "get_weather" and isinstance(call.function.arguments, dict)
    history = [
        *QUESTION,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "function": {
                        "name": "get_weather",
                        "arguments": {
                            "city": "Paris",
                            "unit": "celsius",
                            "when": {"day": "tomorrow", "hour": 12},
                        },
                    }
                }
            ],
        },
        {"role": "tool", "content": "Sunny, 24 degrees.", "tool_name": "get_weather"},
    ]
    r = c.chat(model=ALIAS, messages=history, tools=[WEATHER], options={"num_predict": 24})
    assert r.done and r.message.role == "assistant"


def test_tools_ollama_bad_tools_are_400s(ollama_url: str) -> None:
    r = requests.post(
        ollama_url + "/api/chat",
        json={"model": ALIAS, "messages": QUESTION, "tools": [{"function": {"name": "a b"}}]},
        timeout=60,
    )
    assert r.status_code == 400 and "tools[0].function.name" in r.json()["error"]
