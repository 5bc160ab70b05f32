"""``logit_bias`` and ``repeat_last_n`` are honoured, not silently ignored (#14 follow-up: the
project's rule is "refuse or honour"). Parsing in each dialect is plain unit tests; the effect on
the sampler runs the small real model through the scheduler."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from conftest import smollm_gguf_path

from packer.runtime import generate as gen
from packer.runtime import ollama_api as oll
from packer.runtime import server_api as api
from packer.runtime.engine import Engine, EngineOptions, Sampling

D = Sampling()
MSGS = [{"role": "user", "content": "hi"}]


def _params(dialect: str, fields: dict[str, Any]) -> Sampling:
    if dialect == "llama":
        return api.parse_completion({"prompt": "hi", **fields}, D).params
    if dialect == "openai":
        return api.parse_chat({"messages": MSGS, **fields}, D).params
    return oll.parse_generate({"prompt": "hi", "options": fields}, D).params


@pytest.mark.parametrize("dialect", ["llama", "openai", "ollama"])
def test_repeat_last_n_is_read(dialect: str) -> None:
    assert _params(dialect, {}).repeat_last_n == 64  # llama.cpp's and Ollama's default
    assert _params(dialect, {"repeat_last_n": 0}).repeat_last_n == 0
    assert _params(dialect, {"repeat_last_n": -1}).repeat_last_n == -1  # the whole context
    with pytest.raises(api.ApiError) as exc:
        _params(dialect, {"repeat_last_n": -2})
    assert exc.value.status == 400 and exc.value.param == "repeat_last_n"


def test_logit_bias_forms() -> None:
    # OpenAI: {"token id": bias}
    assert _params("openai", {"logit_bias": {"42": -100, "7": 5.5}}).logit_bias == (
        (42, -100.0),
        (7, 5.5),
    )
    # llama.cpp: [[id, bias], ...], false = never
    got = _params("llama", {"logit_bias": [[42, False], [7, 2]]}).logit_bias
    assert got == ((42, -math.inf), (7, 2.0))
    assert _params("llama", {"logit_bias": {}}).logit_bias == ()
    assert _params("llama", {}).logit_bias == ()


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("not a map", "logit_bias"),
        ([[1, 2, 3]], "pairs of a token id and a bias"),
        ([["Hello", 5]], "is not a token id (get ids from /tokenize)"),
        ({"7": "big"}, "a number"),
        ({"7": True}, "a number"),
        ({str(i): 1 for i in range(api.LOGIT_BIAS_MAX + 1)}, "over this server's limit"),
    ],
)
def test_bad_logit_bias_is_a_400(value: Any, words: str) -> None:
    with pytest.raises(api.ApiError) as exc:
        _params("llama", {"logit_bias": value})
    assert exc.value.status == 400 and exc.value.param == "logit_bias"
    assert words in exc.value.message


@pytest.mark.parametrize("dialect", ["llama", "openai"])
def test_samplers_order(dialect: str) -> None:
    assert _params(dialect, {}).samplers == gen.DEFAULT_SAMPLERS
    names = ["temperature", "top_k", "dry", "min_p"]
    assert _params(dialect, {"samplers": names}).samplers == ("temperature", "top_k", "min_p")
    # llama.cpp's web UI sends letters: "edkypmxt" is its default order
    assert _params(dialect, {"samplers": "edkypmxt"}).samplers == gen.DEFAULT_SAMPLERS
    assert _params(dialect, {"samplers": []}).samplers == ()


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"samplers": ["top_k", "mystery"]}, "samplers", "unknown sampler 'mystery'"),
        ({"samplers": "kq"}, "samplers", "letters of"),
        ({"samplers": 3}, "samplers", "a list of sampler names"),
        ({"dry_multiplier": 0.8}, "dry_multiplier", "no DRY sampler"),
        ({"xtc_probability": 0.5}, "xtc_probability", "no XTC sampler"),
        ({"top_n_sigma": 1.5}, "top_n_sigma", "no TOP sampler"),
    ],
)
def test_samplers_this_server_lacks_are_refused(
    fields: dict[str, Any], param: str, words: str
) -> None:
    with pytest.raises(api.ApiError) as exc:
        _params("llama", fields)
    assert exc.value.status == 400 and exc.value.param == param
    assert words in exc.value.message
    # their "off" values are fine
    _params("llama", {"dry_multiplier": 0, "xtc_probability": 0.0, "top_n_sigma": -1})


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    eng = Engine(smollm_gguf_path(), EngineOptions(n_ctx=1024, n_threads=2, n_parallel=1))
    yield eng
    eng.close()


def _tokens(
    engine: Engine, params: Sampling, prompt: str = "The capital of France is"
) -> tuple[str, list[int]]:
    """The text generated and the ids of its tokens."""
    result = gen.GenResult()
    tokens = gen.completion_tokens(engine, prompt)
    text = "".join(gen.generate(engine, tokens, replace(params, n_probs=1), result))
    return text, [p.token for p in result.probs]


GREEDY = {"temperature": 0.0, "max_tokens": 12, "ignore_eos": True}


def test_logit_bias_changes_what_is_sampled(engine: Engine) -> None:
    text, tokens = _tokens(engine, Sampling(**GREEDY))
    first = tokens[0]
    # never the greedy first token: the answer starts otherwise
    banned, banned_tokens = _tokens(engine, Sampling(**GREEDY, logit_bias=((first, -math.inf),)))
    assert banned_tokens[0] != first and banned != text
    # a large bias on some other token makes it the first one
    other = engine.llm.tokenize(b" banana", add_bos=False, special=False)[0]
    _, forced = _tokens(engine, Sampling(**GREEDY, logit_bias=((other, 100.0),)))
    assert forced[0] == other


def test_logit_bias_outside_the_vocabulary_is_refused(engine: Engine) -> None:
    with pytest.raises(gen.PromptError, match="not in this model's vocabulary"):
        _tokens(engine, Sampling(**GREEDY, logit_bias=((10**7, 1.0),)))


def test_sampler_order_is_followed(engine: Engine) -> None:
    """top_k 1 leaves one token whatever the temperature: the greedy answer; the samplers left
    out of the list are not applied (the penalties; every filter)."""
    greedy = _tokens(engine, Sampling(**GREEDY))[0]
    hot = {**GREEDY, "temperature": 5.0, "seed": 3}
    chain = ("penalties", "top_k", "temperature")
    sure = _tokens(engine, Sampling(**hot, top_k=1, samplers=chain))[0]
    assert sure == greedy
    # without "penalties" in the list, the repeat penalty is not applied: another answer
    unpenalized = _tokens(engine, Sampling(**hot, top_k=1, samplers=chain[1:]))[0]
    assert unpenalized == _tokens(engine, Sampling(**GREEDY, repeat_penalty=1.0))[0] != greedy
    free = _tokens(engine, Sampling(**hot, samplers=("temperature",)))[0]
    assert free != greedy  # no filter at all at temperature 5: not the greedy path


def test_repeat_last_n_sets_the_penalty_window(engine: Engine) -> None:
    prompt = "one one one one one one one one one one one"
    plain = _tokens(engine, Sampling(**GREEDY, repeat_penalty=1.0), prompt)[0]
    # a strong penalty over no tokens is no penalty at all
    none = _tokens(engine, Sampling(**GREEDY, repeat_penalty=1.8, repeat_last_n=0), prompt)[0]
    assert none == plain
    # over the last 64 tokens (the prompt's "one"s) it changes the answer
    window = _tokens(engine, Sampling(**GREEDY, repeat_penalty=1.8, repeat_last_n=64), prompt)[0]
    assert window != plain
