"""OpenAI's dialect (``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``,
``/v1/embeddings``) against a fake core: no model, no socket."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest
from fake_core import THINKING, FakeCore, answer, fake_app

from packer.runtime import dialect_openai as openai
from packer.runtime.replies import Call, Events
from packer.runtime.server_api import ApiError
from packer.runtime.server_options import ServerFeatures

MSGS = [{"role": "user", "content": "What is 2 + 2?"}]


def chat(body: dict[str, Any], core: FakeCore) -> Any:
    return answer(openai.chat(fake_app(core), Call("POST", "/v1/chat/completions", body)))


def completion(body: dict[str, Any], core: FakeCore) -> Any:
    return answer(openai.completion(fake_app(core), Call("POST", "/v1/completions", body)))


def test_chat_whole_answer() -> None:
    core = FakeCore(["It", " is", " 4."])
    out = chat({"messages": MSGS, "max_tokens": 5}, core)
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    choice = out["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "It is 4."}
    assert choice["finish_reason"] == "stop" and choice["logprobs"] is None
    assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    assert core.messages == MSGS and core.params is not None and core.params.max_tokens == 5


def test_chat_stream_chunks() -> None:
    core = FakeCore(["It", " is"], stop_type="limit")
    body = {"messages": MSGS, "stream": True, "stream_options": {"include_usage": True}}
    reply = openai.chat(fake_app(core), Call("POST", "/v1/chat/completions", body))
    assert isinstance(reply, Events) and not reply.ndjson
    events = answer(reply)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"] for c in chunks[1:3]] == [
        {"content": "It"},
        {"content": " is"},
    ]
    assert chunks[3]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "length",
    }
    assert chunks[4]["choices"] == [] and chunks[4]["usage"]["completion_tokens"] == 2


def test_chat_logprobs() -> None:
    core = FakeCore(["a", "b"])
    out = chat({"messages": MSGS, "logprobs": True, "top_logprobs": 2}, core)
    content = out["choices"][0]["logprobs"]["content"]
    assert [c["token"] for c in content] == ["a", "b"]
    assert content[0]["top_logprobs"][1] == {"token": "x", "logprob": -2.0, "bytes": [120]}
    events = chat({"messages": MSGS, "logprobs": True, "stream": True}, FakeCore(["a", "b"]))
    assert [len(e["choices"][0]["logprobs"]["content"]) for e in events[1:3]] == [1, 1]


def test_reasoning_goes_to_reasoning_content() -> None:
    out = chat({"messages": MSGS}, FakeCore(THINKING))
    message = out["choices"][0]["message"]
    assert message == {
        "role": "assistant",
        "content": "The answer is 4.",
        "reasoning_content": "Let me think.",
    }
    events = chat({"messages": MSGS, "stream": True}, FakeCore(THINKING))
    deltas = [e["choices"][0]["delta"] for e in events[1:-2]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "Let me think."
    assert "".join(d.get("content", "") for d in deltas) == "The answer is 4."
    assert all("<think>" not in d.get("content", "") for d in deltas)


@pytest.mark.parametrize(
    "features,body",
    [
        (ServerFeatures(reasoning_format="none"), {}),
        (None, {"reasoning_format": "none"}),
    ],
)
def test_reasoning_kept_inline(features: ServerFeatures | None, body: dict[str, Any]) -> None:
    out = chat({"messages": MSGS, **body}, FakeCore(THINKING, features=features))
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "".join(THINKING)}


def test_reasoning_format_field() -> None:
    out = chat(
        {"messages": MSGS, "reasoning_format": "deepseek"},
        FakeCore(THINKING, features=ServerFeatures(reasoning_format="none")),
    )
    assert out["choices"][0]["message"]["reasoning_content"] == "Let me think."
    with pytest.raises(ApiError) as exc:
        chat({"messages": MSGS, "reasoning_format": "loud"}, FakeCore([]))
    assert exc.value.param == "reasoning_format"


def test_system_prompt_of_the_server() -> None:
    core = FakeCore(["ok"], features=ServerFeatures(system_prompt="Be brief."))
    chat({"messages": MSGS}, core)
    assert core.messages == [{"role": "system", "content": "Be brief."}, *MSGS]
    own = [{"role": "system", "content": "Be long."}, *MSGS]
    chat({"messages": own}, core)
    assert core.messages == own


def test_chat_refusals() -> None:
    core = FakeCore(["a"], max_tokens=4)
    for body, param in (
        ({"messages": MSGS, "tools": [{"type": "function"}]}, "tools"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": MSGS, "max_tokens": 5}, "max_tokens"),
        ({"messages": MSGS, "n": 2}, "n"),
    ):
        with pytest.raises(ApiError) as exc:
            chat(body, core)
        assert exc.value.status == 400 and exc.value.param == param, body
    err = openai.ChatRender(openai.OpenAIIds("chatcmpl", "m"), None).error(  # type: ignore[arg-type]
        ApiError(400, "nope", param="x")
    )
    assert err == {
        "error": {"message": "nope", "type": "invalid_request_error", "param": "x", "code": None}
    }


def test_text_completion() -> None:
    out = completion({"prompt": "2 + 2 =", "echo": True, "logprobs": 1}, FakeCore([" 4", "."]))
    choice = out["choices"][0]
    assert out["object"] == "text_completion" and choice["text"] == "2 + 2 = 4."
    assert choice["logprobs"]["tokens"] == [" 4", "."]
    assert choice["logprobs"]["text_offset"] == [7, 9]
    assert choice["logprobs"]["top_logprobs"][0] == {" 4": -0.5}


def test_text_completion_stream() -> None:
    events = completion(
        {"prompt": [5, 6], "echo": True, "stream": True, "logprobs": 0}, FakeCore(["a", "b"])
    )
    assert events[-1] == "[DONE]"
    texts = [e["choices"][0]["text"] for e in events[:-1]]
    assert texts == ["<1,2,3>", "a", "b", ""]  # the prompt's tokens, as text (the fake's)
    assert events[2]["choices"][0]["logprobs"]["text_offset"] == [8]
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


def test_think_text_stays_in_a_text_completion() -> None:
    out = completion({"prompt": "x"}, FakeCore(THINKING))
    assert out["choices"][0]["text"] == "".join(THINKING)


def test_models_and_embeddings() -> None:
    app = fake_app(FakeCore([]))
    models = answer(openai.models(app, Call("GET", "/v1/models")))
    assert models["data"][0]["id"] == "fake-model" and models["data"][0]["meta"]["n_ctx"] == 4096
    body = {"input": ["a", "b"], "encoding_format": "base64"}
    out = answer(openai.embeddings(app, Call("POST", "/v1/embeddings", body)))
    assert out["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    raw = base64.b64decode(out["data"][1]["embedding"])
    assert struct.unpack("<2f", raw) == pytest.approx((0.6, 0.8))
    with pytest.raises(ApiError):
        openai.embeddings(app, Call("POST", "/v1/embeddings", {"input": "a", "encoding_format": 1}))


# -- tool calling -----------------------------------------------------------------------------

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "when": {"type": "object", "properties": {"day": {"enum": ["today", "tomorrow"]}}},
            },
            "required": ["city"],
        },
    },
}
# the fake's template is "" (knows no tools): calls come Hermes-style, as the generic prompt asks
CALL = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "when": {"day": "today"}}}'
)
CALLS = ["Let me look.", CALL[:20], CALL[20:], "\n</tool_call>", "\n" + CALL, "</tool_call>"]
ARGS = '{"city":"Paris","when":{"day":"today"}}'
# a template that describes tools itself (Hermes/Qwen family)
HERMES_TEMPLATE = "{% if tools %}{{ tools | tojson }}{% endif %}<tool_call>{{ tool_calls }}'tool'"


def test_chat_tool_calls_whole_answer() -> None:
    core = FakeCore(CALLS)
    out = chat({"messages": MSGS, "tools": [WEATHER]}, core)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] == "Let me look."
    assert [c["function"] for c in message["tool_calls"]] == [
        {"name": "get_weather", "arguments": ARGS}
    ] * 2
    ids = [c["id"] for c in message["tool_calls"]]
    assert all(i.startswith("call_") for i in ids) and len(set(ids)) == 2
    assert all(c["type"] == "function" for c in message["tool_calls"])
    # the generic template: tools described in a system message, nothing else for the template
    assert core.messages is not None and core.messages[0]["role"] == "system"
    assert "get_weather" in core.messages[0]["content"] and core.template_kwargs == {}
    assert core.params is not None and core.params.grammar is None  # auto: no grammar


MISTRAL_TEMPLATE = "{{ tools }}[TOOL_CALLS]{{ message.tool_calls }}[THINK]"


def test_chat_markers_are_preserved_tokens() -> None:
    """A chat answer's reasoning and tool-call markers go to the decode loop as preserved
    tokens (shown even where they are special tokens); a plain completion has none."""
    core = FakeCore(["ok"], chat_template=MISTRAL_TEMPLATE)
    chat({"messages": MSGS, "tools": [WEATHER]}, core)
    assert core.params is not None
    assert set(core.params.preserved_tokens) == {"[TOOL_CALLS]", "[THINK]", "[/THINK]"}
    chat({"messages": MSGS}, core)  # no tools: only the reasoning markers
    assert set(core.params.preserved_tokens) == {"[THINK]", "[/THINK]"}
    core = FakeCore(["ok"], chat_template=HERMES_TEMPLATE)
    chat({"messages": MSGS, "tools": [WEATHER]}, core)
    assert core.params is not None
    assert set(core.params.preserved_tokens) == {
        "<tool_call>",
        "</tool_call>",
        "<think>",
        "</think>",
    }
    completion({"prompt": "Hi"}, core)
    assert core.params.preserved_tokens == ()


def test_chat_only_calls_have_null_content() -> None:
    out = chat({"messages": MSGS, "tools": [WEATHER]}, FakeCore([CALL, "</tool_call>"]))
    message = out["choices"][0]["message"]
    assert message["content"] is None and len(message["tool_calls"]) == 1


def test_chat_tool_calls_streamed() -> None:
    events = chat({"messages": MSGS, "tools": [WEATHER], "stream": True}, FakeCore(CALLS))
    chunks = [e["choices"][0] for e in events[:-1]]
    deltas = [c["delta"] for c in chunks]
    assert deltas[1] == {"content": "Let me look."}
    streamed = [tc for d in deltas for tc in d.get("tool_calls", [])]
    assert [tc["index"] for tc in streamed] == [0, 1]
    for tc in streamed:
        assert tc["id"].startswith("call_") and tc["type"] == "function"
        assert tc["function"] == {"name": "get_weather", "arguments": ARGS}
    assert all("content" not in d for d in deltas if "tool_calls" in d)
    assert chunks[-1]["finish_reason"] == "tool_calls"


def test_chat_tool_calls_streamed_rebuilt_by_the_openai_sdk() -> None:
    streaming = pytest.importorskip("openai.lib.streaming.chat")
    from openai.types.chat import ChatCompletionChunk

    events = chat({"messages": MSGS, "tools": [WEATHER], "stream": True}, FakeCore(CALLS))
    state = streaming.ChatCompletionStreamState()
    for e in events[:-1]:
        state.handle_chunk(ChatCompletionChunk.model_validate(e))
    choice = state.get_final_completion().choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me look."
    calls = choice.message.tool_calls
    assert [(c.function.name, c.function.arguments) for c in calls] == [("get_weather", ARGS)] * 2


def test_chat_required_tool_choice_sets_the_grammar() -> None:
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        core = FakeCore([CALL])
        out = chat({"messages": MSGS, "tools": [WEATHER], "tool_choice": choice}, core)
        assert out["choices"][0]["finish_reason"] == "tool_calls"  # missing </tool_call>: a call
        assert core.params is not None and core.params.grammar is not None
        assert "get_weather" in core.params.grammar and "root ::=" in core.params.grammar
    with pytest.raises(ApiError) as exc:
        chat(
            {
                "messages": MSGS,
                "tools": [WEATHER],
                "tool_choice": "required",
                "response_format": {"type": "json_object"},
            },
            FakeCore([]),
        )
    assert exc.value.status == 400 and exc.value.param == "tool_choice"
    assert "response_format" in exc.value.message


def test_chat_tool_choice_none_is_text_and_offers_no_tools() -> None:
    core = FakeCore([CALL, "</tool_call>"])
    out = chat({"messages": MSGS, "tools": [WEATHER], "tool_choice": "none"}, core)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "stop" and "tool_calls" not in choice["message"]
    assert choice["message"]["content"] == CALL + "</tool_call>"
    assert core.messages == MSGS and core.template_kwargs == {}
    assert core.params is not None and core.params.grammar is None


def test_chat_template_describing_tools_gets_them() -> None:
    core = FakeCore(["ok"], chat_template=HERMES_TEMPLATE)
    chat({"messages": MSGS, "tools": [WEATHER]}, core)
    assert core.messages == MSGS
    assert core.template_kwargs == {"tools": [WEATHER]}


def test_chat_takes_calls_and_tool_results_next_turn() -> None:
    history = [
        *MSGS,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ARGS},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 24 degrees."},
    ]
    core = FakeCore(["Sunny."], chat_template=HERMES_TEMPLATE)
    out = chat({"messages": history, "tools": [WEATHER]}, core)
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "Sunny."}
    assert core.messages is not None
    assert core.messages[1]["tool_calls"][0]["function"]["arguments"] == json.loads(ARGS)
    assert core.messages[2] == {
        "role": "tool",
        "content": "Sunny, 24 degrees.",
        "tool_call_id": "call_1",
        "name": "get_weather",
    }
    # a template that knows no tools: the call and its result written into the messages
    core = FakeCore(["Sunny."])
    chat({"messages": history}, core)
    assert core.messages is not None and all(m["role"] != "tool" for m in core.messages)
    assert "Sunny, 24 degrees." in core.messages[-1]["content"]


def test_tools_refused_where_not_taken() -> None:
    for body, param in (
        ({"prompt": "x", "tools": [WEATHER]}, "tools"),
        ({"prompt": "x", "functions": [WEATHER["function"]]}, "functions"),
    ):
        with pytest.raises(ApiError) as exc:
            completion(body, FakeCore([]))
        assert exc.value.status == 400 and exc.value.param == param
    with pytest.raises(ApiError) as exc:
        chat({"messages": MSGS, "tools": [WEATHER], "tool_choice": "sometimes"}, FakeCore([]))
    assert exc.value.param == "tool_choice"
