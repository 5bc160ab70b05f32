"""OpenAI's dialect (``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``,
``/v1/embeddings``) against a fake core: no model, no socket."""

from __future__ import annotations

import base64
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
