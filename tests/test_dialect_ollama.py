"""Ollama's dialect (``/api/generate``, ``/api/chat``, ``/api/embed``, ``/api/embeddings``)
against a fake core: no model, no socket."""

from __future__ import annotations

from typing import Any

import pytest
from fake_core import PROMPT, THINKING, FakeCore, answer, fake_app

from packer.runtime import dialect_ollama as ollama
from packer.runtime.replies import Call, Events
from packer.runtime.server_api import ApiError
from packer.runtime.server_options import ServerFeatures

MSGS = [{"role": "user", "content": "What is 2 + 2?"}]
DURATIONS = {
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
}


def chat(body: dict[str, Any], core: FakeCore) -> Any:
    return answer(ollama.chat(fake_app(core), Call("POST", "/api/chat", body)))


def generate(body: dict[str, Any], core: FakeCore) -> Any:
    return answer(ollama.generate(fake_app(core), Call("POST", "/api/generate", body)))


def test_chat_streams_ndjson() -> None:
    core = FakeCore(["It", " is 4."])
    reply = ollama.chat(fake_app(core), Call("POST", "/api/chat", {"model": "x", "messages": MSGS}))
    assert isinstance(reply, Events) and reply.ndjson  # stream is Ollama's default
    lines = answer(reply)
    assert [line["message"] for line in lines[:2]] == [
        {"role": "assistant", "content": "It"},
        {"role": "assistant", "content": " is 4."},
    ]
    assert [line["done"] for line in lines] == [False, False, True]
    last = lines[-1]
    assert last["done_reason"] == "stop" and last["message"]["content"] == ""
    assert last.keys() >= DURATIONS and last["eval_count"] == 2
    assert all(line["model"] == "x" for line in lines)


def test_chat_whole_answer() -> None:
    core = FakeCore(["It", " is 4."], stop_type="limit")
    out = chat({"messages": MSGS, "stream": False, "options": {"num_predict": 2}}, core)
    assert out["message"] == {"role": "assistant", "content": "It is 4."}
    assert out["done"] is True and out["done_reason"] == "length" and out["model"] == "fake-model"
    assert core.params is not None and core.params.max_tokens == 2


def test_generate_whole_answer_and_context() -> None:
    core = FakeCore(["four", " apples"])
    out = generate({"prompt": "2 + 2?", "system": "Be exact.", "stream": False}, core)
    assert out["response"] == "four apples" and out["done"] is True
    assert out["context"] == [*PROMPT, 9, 9]  # the prompt, then the answer's tokens
    assert core.messages == [
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": "2 + 2?"},
    ]
    out = generate({"prompt": "more", "context": [7, 8], "stream": False}, core)
    assert core.requests[-1].context == [7, 8] and out["context"][:2] == [7, 8]


def test_generate_raw_and_streamed() -> None:
    core = FakeCore(["a", "b"])
    lines = generate({"prompt": "x", "raw": True}, core)
    req = core.requests[0]
    assert req.prompt == "x" and req.messages is None
    assert [line["response"] for line in lines] == ["a", "b", ""]
    assert lines[-1]["done"] and lines[-1]["context"] == [*PROMPT, 9]


def test_empty_requests_load_the_model() -> None:
    core = FakeCore(["never"])
    for body in ({"model": "m"}, {"model": "m", "prompt": ""}):
        out = generate(body, core)
        assert out["done_reason"] == "load" and out["response"] == "" and out["model"] == "m"
    loaded = chat({"model": "m", "messages": []}, core)
    assert loaded["done_reason"] == "load" and loaded["message"]["content"] == ""
    assert core.requests == []


def test_thinking_goes_apart() -> None:
    out = chat({"messages": MSGS, "stream": False}, FakeCore(THINKING))
    assert out["message"] == {
        "role": "assistant",
        "content": "The answer is 4.",
        "thinking": "Let me think.",
    }
    lines = chat({"messages": MSGS, "think": True}, FakeCore(THINKING))
    assert "".join(line["message"].get("thinking", "") for line in lines) == "Let me think."
    assert "".join(line["message"]["content"] for line in lines) == "The answer is 4."
    out = generate({"prompt": "2 + 2?", "stream": False, "think": "high"}, FakeCore(THINKING))
    assert out["thinking"] == "Let me think." and out["response"] == "The answer is 4."


def test_think_false_keeps_the_text_as_it_is() -> None:
    out = chat({"messages": MSGS, "stream": False, "think": False}, FakeCore(THINKING))
    assert out["message"] == {"role": "assistant", "content": "".join(THINKING)}
    server_none = FakeCore(THINKING, features=ServerFeatures(reasoning_format="none"))
    out = generate({"prompt": "x", "stream": False}, server_none)
    assert out["response"] == "".join(THINKING) and "thinking" not in out
    out = generate({"prompt": "x", "raw": True, "stream": False}, FakeCore(THINKING))
    assert out["response"] == "".join(THINKING)  # raw: no template, nothing split


def test_logprobs() -> None:
    body = {"messages": MSGS, "stream": False, "logprobs": True, "top_logprobs": 1}
    out = chat(body, FakeCore(["a", "b"]))
    assert [p["token"] for p in out["logprobs"]] == ["a", "b"]
    assert out["logprobs"][0]["top_logprobs"] == [{"token": "a", "logprob": -0.5, "bytes": [97]}]


def test_refusals() -> None:
    core = FakeCore(["a"], max_tokens=4)
    for call, body, what in (
        (chat, {"messages": MSGS, "tools": [{"type": "function"}]}, "tools"),
        (chat, {"messages": MSGS, "think": 3}, "think"),
        (chat, {"messages": "hi"}, "messages"),
        (generate, {"prompt": "x", "options": {"num_predict": 5}}, "num_predict"),
        (generate, {"prompt": "x", "images": ["aGk="]}, "images"),
        (generate, {"prompt": "x", "format": "yaml"}, "format"),
    ):
        with pytest.raises(ApiError) as exc:
            call(body, core)
        assert exc.value.status == 400 and what in exc.value.message, body
    assert core.requests == []
    render = ollama.OllamaRender("m", True, 0, False, 0)
    assert render.error(ApiError(400, "nope")) == {"error": "nope"}


def test_embeddings() -> None:
    app = fake_app(FakeCore([]))
    out = answer(ollama.embed(app, Call("POST", "/api/embed", {"model": "e", "input": ["a", "b"]})))
    assert out["model"] == "e" and out["embeddings"] == [[0.6, 0.8], [0.6, 0.8]]
    assert out["prompt_eval_count"] == 4
    one = answer(ollama.embeddings(app, Call("POST", "/api/embeddings", {"prompt": "a"})))
    assert one == {"embedding": [0.6, 0.8]}
    assert answer(ollama.embeddings(app, Call("POST", "/api/embeddings", {}))) == {"embedding": []}
    with pytest.raises(ApiError):
        ollama.embed(app, Call("POST", "/api/embed", {"input": 5}))


# -- tool calling -----------------------------------------------------------------------------

WEATHER = {  # Ollama takes OpenAI's shape; "type" may be left out
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
OLLAMA_CALL = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}


def test_chat_tool_calls_whole_answer() -> None:
    core = FakeCore([CALL[:15], CALL[15:]])
    out = chat({"messages": MSGS, "tools": [WEATHER], "stream": False}, core)
    assert out["message"] == {"role": "assistant", "content": "", "tool_calls": [OLLAMA_CALL]}
    assert out["done"] is True and out["done_reason"] == "stop"  # as Ollama answers calls
    assert core.messages is not None and "get_weather" in core.messages[0]["content"]


def test_chat_tool_calls_streamed() -> None:
    lines = chat({"messages": MSGS, "tools": [WEATHER]}, FakeCore(["Sure. ", CALL[:15], CALL[15:]]))
    assert lines[0]["message"] == {"role": "assistant", "content": "Sure."}
    with_calls = [line for line in lines if "tool_calls" in line["message"]]
    assert len(with_calls) == 1 and with_calls[0]["message"]["tool_calls"] == [OLLAMA_CALL]
    assert with_calls[0]["done"] is False
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop"


def test_chat_takes_calls_and_tool_results_next_turn() -> None:
    history = [
        *MSGS,
        {"role": "assistant", "content": "", "tool_calls": [OLLAMA_CALL]},
        {"role": "tool", "content": "Sunny, 24 degrees.", "tool_name": "get_weather"},
    ]
    core = FakeCore(["Sunny."])
    out = chat({"messages": history, "tools": [WEATHER], "stream": False}, core)
    assert out["message"] == {"role": "assistant", "content": "Sunny."}
    assert core.messages is not None and all(m["role"] != "tool" for m in core.messages)
    assert "Sunny, 24 degrees." in core.messages[-1]["content"]
    assert "get_weather" in core.messages[-1]["content"]


def test_tools_refusals() -> None:
    for call, body, what in (
        (generate, {"prompt": "x", "tools": [WEATHER]}, "/api/chat"),
        (chat, {"messages": MSGS, "tools": [{"function": {"name": "a b"}}]}, "tools[0].function"),
        (chat, {"messages": [{"role": "tool", "content": "x", "tool_name": 3}]}, "tool_name"),
    ):
        with pytest.raises(ApiError) as exc:
            call(body, FakeCore([]))
        assert exc.value.status == 400 and what in exc.value.message, body
