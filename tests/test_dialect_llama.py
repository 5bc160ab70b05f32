"""llama.cpp's dialect (``/completion``, ``/embedding``) against a fake core: no model, no socket."""

from __future__ import annotations

import pytest
from fake_core import PROMPT, THINKING, FakeCore, answer, fake_app

from packer.runtime import dialect_llama as llama
from packer.runtime.generate import PromptError
from packer.runtime.replies import Call, Events, Json
from packer.runtime.server_api import ApiError


def post(body: dict, core: FakeCore) -> Json | Events:
    return llama.completion(fake_app(core), Call("POST", "/completion", body))  # type: ignore[return-value]


def test_whole_answer() -> None:
    core = FakeCore(["Hello", ",", " world"])
    out = answer(post({"prompt": "Say hi", "n_predict": 8, "temperature": 0}, core))
    assert out["content"] == "Hello, world" and out["stop"] is True
    assert out["tokens_predicted"] == 3 and out["tokens_evaluated"] == len(PROMPT)
    assert out["stop_type"] == "eos" and out["stopped_eos"] and not out["stopped_limit"]
    assert out["model"] == "fake-model" and out["generation_settings"]["n_ctx"] == 4096
    assert out["generation_settings"]["n_predict"] == 8
    assert out["generation_settings"]["temperature"] == 0
    assert "completion_probabilities" not in out
    req = core.requests[0]
    assert req.prompt == "Say hi" and req.messages is None and not req.stream


def test_streamed_events() -> None:
    core = FakeCore(["a", "b"], stop_type="limit")
    reply = post({"prompt": "x", "stream": True}, core)
    assert isinstance(reply, Events) and not reply.ndjson
    events = answer(reply)
    assert [e["content"] for e in events] == ["a", "b", ""]
    assert [e["stop"] for e in events] == [False, False, True]
    assert events[-1]["stop_type"] == "limit" and events[-1]["stopped_limit"]
    assert events[-1]["timings"]["predicted_n"] == 2


def test_probabilities() -> None:
    core = FakeCore(["a", "b"])
    out = answer(post({"prompt": "x", "n_probs": 2}, core))
    probs = out["completion_probabilities"]
    assert [p["token"] for p in probs] == ["a", "b"]
    assert probs[0]["top_logprobs"][1] == {"id": 7, "token": "x", "bytes": [120], "logprob": -2.0}
    events = answer(post({"prompt": "x", "n_probs": 1, "stream": True}, FakeCore(["a", "b"])))
    assert [len(e["completion_probabilities"]) for e in events[:2]] == [1, 1]


def test_think_text_stays_in_a_raw_completion() -> None:
    out = answer(post({"prompt": "x"}, FakeCore(THINKING)))
    assert out["content"] == "".join(THINKING)


def test_refusals() -> None:
    core = FakeCore(["a"], max_tokens=16)
    with pytest.raises(ApiError) as exc:
        post({"prompt": "x", "n_predict": 17}, core)
    assert exc.value.status == 400 and exc.value.param == "n_predict"
    assert core.params is None  # nothing was generated
    with pytest.raises(ApiError) as exc:
        post({"prompt": "x", "temperature": "hot"}, core)
    assert exc.value.param == "temperature"
    with pytest.raises(ApiError) as exc:
        post({"n_predict": 3}, core)
    assert "'prompt' is required" in exc.value.message
    with pytest.raises(ApiError) as exc:
        post({"prompt": "x", "tools": [{"type": "function"}]}, core)
    assert exc.value.param == "tools"
    answer(post({"prompt": "x"}, core))
    assert core.params is not None and core.params.max_tokens == 16  # the cap is the default


def test_error_event_and_body() -> None:
    render = llama.CompletionRender("m", 4096)
    event = render.error(ApiError(400, "bad grammar"))
    assert event == {
        "content": "",
        "stop": True,
        "error": {"code": 400, "message": "bad grammar", "type": "invalid_request_error"},
    }


def test_an_error_midway_reaches_the_stream() -> None:
    reply = post(
        {"prompt": "x", "stream": True}, FakeCore(["a", "b"], fail=PromptError("dead end"))
    )
    assert isinstance(reply, Events)
    events = iter(reply.events)
    assert next(events)["content"] == "a"
    with pytest.raises(PromptError):
        next(events)
    reply.close()


def test_embedding() -> None:
    app = fake_app(FakeCore([]))
    assert answer(llama.embedding(app, Call("POST", "/embedding", {"content": "hi"}))) == {
        "embedding": [0.6, 0.8]
    }
    many = answer(llama.embedding(app, Call("POST", "/embedding", {"content": ["a", "b"]})))
    assert [e["index"] for e in many] == [0, 1]
    with pytest.raises(ApiError):
        llama.embedding(app, Call("POST", "/embedding", {"content": 3}))
