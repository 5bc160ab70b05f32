"""Grammars that are exponentially slow to follow are refused before they stall the server.

A 38-byte grammar (``root ::= x{10}`` / ``x ::= y{10}`` / ``y ::= "a"?``) cost 3 s of the decode
thread per token, and three nested levels over 200 s: every slot stalled. Now a forked child
follows a new grammar for a few tokens first (``packer.runtime.grammar_cost``); one step over
its budget is a 400, remembered for that grammar. The vocabulary-only tests need no model
weights; one test runs a real server in a child process.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import child_server, smollm_gguf_path

from packer.runtime import grammar_cost

ROOT = Path(__file__).resolve().parents[1]
SLOW_GRAMMAR = 'root ::= x{10}\nx ::= y{10}\ny ::= "a"?'  # 38 bytes, 3 s per token
SLOWER_GRAMMAR = 'root ::= x{10}\nx ::= y{10}\ny ::= z{10}\nz ::= "a"?'  # > 200 s per token
JSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age"],
}


@pytest.fixture(scope="module")
def vocab() -> Iterator[tuple[Any, Any, int]]:
    import llama_cpp as ll

    params = ll.llama_model_default_params()
    params.vocab_only = True
    model = ll.llama_model_load_from_file(str(smollm_gguf_path()).encode(), params)
    assert model
    try:
        v = ll.llama_model_get_vocab(model)
        yield ll, v, int(ll.llama_vocab_n_tokens(v))
    finally:
        ll.llama_model_free(model)


def _check(vocab: tuple[Any, Any, int], grammar: str) -> str | None:
    from packer.runtime.scheduler import _Candidates

    ll, v, n = vocab
    return grammar_cost.check(ll, v, grammar, lambda: _Candidates(ll, n))


@pytest.fixture(autouse=True)
def _forget() -> None:
    grammar_cost._verdicts.clear()


def test_real_grammars_pass(vocab: tuple[Any, Any, int]) -> None:
    from llama_cpp import llama_grammar

    schema = str(llama_grammar.json_schema_to_gbnf(json.dumps(JSON_SCHEMA)))
    for grammar in (schema, 'root ::= "yes" | "no"', 'root ::= x*\nx ::= [a-z]+ " "'):
        started = time.monotonic()
        assert _check(vocab, grammar) is None, grammar
        assert time.monotonic() - started < 3


@pytest.mark.parametrize("grammar", [SLOW_GRAMMAR, SLOWER_GRAMMAR])
def test_exponential_grammars_are_refused_quickly(
    vocab: tuple[Any, Any, int], grammar: str
) -> None:
    started = time.monotonic()
    refusal = _check(vocab, grammar)
    took = time.monotonic() - started
    assert refusal is not None and refusal.startswith("the grammar is too expensive to follow (")
    assert "\n" not in refusal and "simplify it" in refusal
    budget = grammar_cost.step_budget(vocab[2])
    assert took < grammar_cost.CONTENTION * budget + 2, took  # the child was stopped in time
    # remembered: the same grammar again costs nothing
    started = time.monotonic()
    assert _check(vocab, grammar) == refusal
    assert time.monotonic() - started < 0.1


@pytest.mark.parametrize(
    ("grammar", "why"),
    [
        (
            "root ::= \x1b[2J\x1b]0;TITLE\x07 oops",
            "expecting newline or end at \\x1b[2J\\x1b]0;TITLE",
        ),
        ("root ::= [0-9", "unexpected end of input"),
        ("root ::= undefined-rule", "Undefined rule identifier 'undefined-rule'"),
        ('start ::= "a"', "grammar does not contain a 'root' symbol"),
    ],
)
def test_a_grammar_llama_cpp_cannot_parse_is_refused_with_its_reason(
    vocab: tuple[Any, Any, int], grammar: str, why: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """llama.cpp prints a grammar it cannot parse whole on stderr: the child parses it, so
    none of it (a client's escape sequences) reaches this process's stderr."""
    refusal = _check(vocab, grammar)
    assert refusal is not None and refusal.startswith(f"invalid grammar ({why}"), refusal
    assert refusal.endswith("llama.cpp cannot parse it as GBNF with a 'root' rule")
    assert refusal.isprintable() and "\x1b" not in refusal
    assert capfd.readouterr().err == ""
    assert _check(vocab, grammar) == refusal  # remembered


def test_a_grammar_the_parser_dies_on_is_refused(
    vocab: tuple[Any, Any, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child ends while it parses (as it would if llama.cpp crashed on the grammar): the
    grammar is refused, so this process never parses it."""
    monkeypatch.setattr(grammar_cost, "_parse", lambda *_: os._exit(1))
    refusal = _check(vocab, 'root ::= "a"')
    assert refusal == grammar_cost.parse_refusal("llama.cpp's parser stopped on it")


def test_complaint_is_one_short_escaped_line() -> None:
    grammar = "root ::= \x1b]52;c;ZWNobw==\x07" + "x" * 500
    said = f"parse: error parsing grammar: expecting name at {grammar[9:]}\n\n{grammar}\n"
    why = grammar_cost.complaint(said + "llama_grammar_init_impl: failed to parse grammar\n")
    assert why.startswith("expecting name at \\x1b]52;c;ZWNobw==\\x07xxx")
    assert len(why) == grammar_cost.COMPLAINT_CHARS and why.endswith("\u2026")
    logged = "unsupported grammar, left recursion detected for nonterminal at index 0\n"
    assert grammar_cost.complaint(logged) == logged.strip()
    assert grammar_cost.complaint("") == ""
    assert grammar_cost.parse_refusal("") == (
        "invalid grammar: llama.cpp cannot parse it as GBNF with a 'root' rule"
    )


def test_no_child_is_left_behind(vocab: tuple[Any, Any, int]) -> None:
    _check(vocab, SLOW_GRAMMAR)
    _check(vocab, 'root ::= "ok"')
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # every child was reaped


def test_a_slow_step_in_the_decode_thread_ends_the_request() -> None:
    assert grammar_cost.too_slow('root ::= "a"', grammar_cost.STEP_MAX_S / 2) is None
    refusal = grammar_cost.too_slow('root ::= "b"', grammar_cost.STEP_MAX_S + 1)
    assert refusal is not None and "one token took" in refusal
    # and that grammar is refused up front from then on, without measuring it again
    assert grammar_cost._verdicts[grammar_cost._key('root ::= "b"')] == refusal


def test_verdicts_are_bounded() -> None:
    for i in range(grammar_cost._REMEMBER + 50):
        grammar_cost.too_slow(f'root ::= "{i}"', grammar_cost.STEP_MAX_S + 1)
    assert len(grammar_cost._verdicts) == grammar_cost._REMEMBER


def test_the_server_refuses_it_while_another_answer_streams() -> None:
    with child_server(n_ctx=1024) as (_proc, url):
        streamed: dict[str, Any] = {}

        def stream() -> None:
            body = {"prompt": "Once upon a time", "n_predict": 48, "stream": True, "seed": 1}
            r = requests.post(url + "/completion", json=body, timeout=120)
            streamed["status"] = r.status_code
            streamed["events"] = [x for x in r.text.split("\n\n") if x.startswith("data: ")]

        other = threading.Thread(target=stream)
        other.start()
        for dialect, body in (
            ("/completion", {"prompt": "hi", "grammar": SLOW_GRAMMAR, "n_predict": 8}),
            (
                "/v1/chat/completions",
                {
                    "messages": [{"role": "user", "content": "hi"}],
                    "grammar": SLOWER_GRAMMAR,
                    "max_tokens": 8,
                },
            ),
        ):
            started = time.monotonic()
            r = requests.post(url + dialect, json=body, timeout=120)
            assert r.status_code == 400, r.text
            assert "too expensive to follow" in r.json()["error"]["message"]
            assert time.monotonic() - started < 15
        other.join(timeout=120)
        assert streamed.get("status") == 200 and len(streamed["events"]) > 10, streamed
        r = requests.post(
            url + "/completion",
            json={"prompt": "hi", "grammar": 'root ::= "yes" | "no"', "temperature": 0},
            timeout=60,
        )
        assert r.status_code == 200 and r.json()["content"] in ("yes", "no"), r.text
