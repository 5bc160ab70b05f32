"""packer.runtime.greedy_loop: the greedy decode loop in C (build/greedy_loop.c).

The library is built and installed next to libllama by ``make`` (build/greedy-loop.sh). Its
argmax is checked against numpy on arrays with ties, NaNs and infinities; on the real small
model (SmolLM2-135M-Instruct Q4_1) a request decoded by the loop must give what the Python
path gives, token for token, whichever way it ends (length, end of generation, stop string,
a claim that has to grow), and the loop must hand the context back at once when another
request arrives or the caller stops reading.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import smollm_gguf_path

from packer.runtime import generate as gen
from packer.runtime import greedy_loop
from packer.runtime.backend import load_backends
from packer.runtime.engine import Engine, EngineOptions, Sampling

EVERY = gen.TERMINAL_EVERY_S
GREEDY: dict[str, Any] = {"temperature": 0.0, "repeat_penalty": 1.0}  # plain greedy


def _lib_dir() -> Path:
    lib_dir = load_backends().lib_dir
    assert lib_dir is not None, "a wheel with its backends linked in: not what make installs"
    return Path(lib_dir)


def test_make_installs_the_loop_next_to_libllama() -> None:
    assert (_lib_dir() / greedy_loop.LIBRARY).is_file(), "run build/greedy-loop.sh"
    assert greedy_loop.load(_lib_dir()) is not None


def test_off_missing_or_another_abi_means_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(greedy_loop.ENV, "0")
    assert greedy_loop.load(_lib_dir()) is None
    monkeypatch.delenv(greedy_loop.ENV)
    assert greedy_loop.load(tmp_path) is None  # no library there
    assert greedy_loop.load(None) is None  # backends linked into libllama: no folder
    (tmp_path / greedy_loop.LIBRARY).write_bytes(b"not an ELF file")
    assert greedy_loop.load(tmp_path) is None
    monkeypatch.setattr(greedy_loop, "ABI", greedy_loop.ABI + 1)
    assert greedy_loop.load(_lib_dir()) is None


def _reference_argmax(x: np.ndarray) -> int:
    """llama.cpp's greedy pick: the first of the largest, NaN never; 0 when all are NaN."""
    finite = np.where(np.isnan(x), -np.inf, x)
    if np.isnan(x).all():
        return 0
    return int(np.flatnonzero(finite == finite.max())[0])


@pytest.mark.parametrize("n", [1, 3, 15, 16, 17, 49152, 49155])
def test_argmax(n: int) -> None:
    loop = greedy_loop.load(_lib_dir())
    assert loop is not None
    rng = np.random.default_rng(n)
    cases = [rng.normal(size=n).astype(np.float32)]
    tie = rng.integers(-3, 3, size=n).astype(np.float32)  # many equal largest values
    cases.append(tie)
    nan = cases[0].copy()
    nan[rng.integers(0, n, size=max(1, n // 10))] = np.nan
    cases.append(nan)
    cases.append(np.full(n, -np.inf, dtype=np.float32))
    cases.append(np.full(n, np.nan, dtype=np.float32))
    last = np.zeros(n, dtype=np.float32)
    last[-1] = 1.0  # the largest in the scalar tail
    cases.append(last)
    for x in cases:
        assert loop.argmax(x.ctypes.data, n) == _reference_argmax(x), x[:20]
    x = cases[0]
    assert loop.argmax(x.ctypes.data, n) == int(x.argmax())  # the Python path's pick


class _Spy:
    """The loop, counting its runs."""

    def __init__(self, loop: greedy_loop.GreedyLoop) -> None:
        self.loop = loop
        self.runs: list[greedy_loop.Run] = []

    def arm(self) -> None:
        self.loop.arm()

    def interrupt(self) -> None:
        self.loop.interrupt()

    def run(self, *args: Any) -> greedy_loop.Run:
        out = self.loop.run(*args)
        self.runs.append(out)
        return out


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    eng = Engine(smollm_gguf_path(), EngineOptions(n_ctx=2048, n_threads=2, n_parallel=4))
    assert eng.scheduler._loop is not None
    yield eng
    eng.close()


@pytest.fixture
def spy(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> _Spy:
    loop = engine.scheduler._loop
    assert loop is not None
    s = _Spy(loop)
    monkeypatch.setattr(engine.scheduler, "_loop", s)
    return s


def _idle(engine: Engine) -> None:
    deadline = time.monotonic() + 30
    while engine.scheduler.busy() or engine.scheduler.queued:
        assert time.monotonic() < deadline, "the scheduler did not go idle"
        time.sleep(0.02)


def _generate(
    engine: Engine, prompt: list[int], params: Sampling, loop: Any, every: float = EVERY
) -> tuple[str, gen.GenResult]:
    _idle(engine)
    saved = engine.scheduler._loop
    engine.scheduler._loop = loop
    try:
        result = gen.GenResult()
        text = "".join(gen.generate(engine, prompt, params, result, every=every))
    finally:
        engine.scheduler._loop = saved
    assert text == result.text
    return text, result


@pytest.mark.parametrize(
    "params",
    [
        Sampling(**GREEDY, max_tokens=60, ignore_eos=True),  # ends by its length
        Sampling(**GREEDY, max_tokens=400),  # ends with an end-of-generation token
        Sampling(**GREEDY, max_tokens=200, ignore_eos=True, stop=[" the "]),
    ],
    ids=["length", "eos", "stop-string"],
)
def test_the_loop_gives_what_python_gives(engine: Engine, spy: _Spy, params: Sampling) -> None:
    prompt, _ = gen.chat_tokens(engine, [{"role": "user", "content": "Say hello in one line."}], [])
    if params.stop:
        prompt = gen.completion_tokens(engine, "Once upon a time")
    text, result = _generate(engine, prompt, params, spy)
    assert spy.runs, "the loop did not run"
    assert all(r.why is not greedy_loop.Why.FAILED for r in spy.runs)
    text_py, result_py = _generate(engine, prompt, params, None)
    assert text == text_py
    assert (result.n_predicted, result.stop_type) == (result_py.n_predicted, result_py.stop_type)
    assert result.stopping_word == result_py.stopping_word
    expected = {"length": "limit", "eos": "eos", "stop-string": "word"}
    assert result.stop_type in expected.values()
    if params.stop:
        assert result.stop_type == "word"  # the case this parameter is for
    elif params.ignore_eos:
        assert result.stop_type == "limit" and result.n_predicted == 60
    else:
        assert result.stop_type == "eos"


def test_tokens_decoded_past_a_stop_string_stay_usable(engine: Engine, spy: _Spy) -> None:
    """The loop decodes a few tokens after a stop string before Python sees it: the slot's
    cache lists them (they are in the KV cache), and the next request, which shares only
    part of them, answers as it would from a fresh context."""
    prompt = gen.completion_tokens(engine, "The capital of France is")
    params = Sampling(**GREEDY, max_tokens=200, ignore_eos=True, stop=["."])
    text, result = _generate(engine, prompt, params, spy, every=3600.0)
    assert result.stop_type == "word" and spy.runs
    slot = next(s for s in engine.scheduler._slots if s.cache[: len(prompt)] == prompt)
    assert len(slot.cache) > len(prompt) + result.n_predicted  # decoded past the stop
    follow = gen.completion_tokens(engine, "The capital of France is" + text + ". It is")
    params2 = Sampling(**GREEDY, max_tokens=30, ignore_eos=True)
    again, _ = _generate(engine, follow, params2, spy)
    engine.scheduler._ll.llama_memory_seq_rm(engine.scheduler._mem, -1, -1, -1)
    for s in engine.scheduler._slots:
        s.cache.clear()
    fresh, _ = _generate(engine, follow, params2, None)
    assert again == fresh


def test_a_claim_that_grows(engine: Engine, spy: _Spy) -> None:
    """A request without max_tokens claims its share of the context (2048 / 4 slots) and
    grows past it: the loop stops at the claim, a Python step grows it, the loop goes on."""
    prompt = gen.completion_tokens(engine, "Write a very long story about a lighthouse.")
    share = engine.scheduler.share
    texts = []
    for loop in (spy, None):
        _idle(engine)
        engine.scheduler._loop = loop
        result = gen.GenResult()
        params = Sampling(**GREEDY, max_tokens=-1, ignore_eos=True)
        pieces = gen.generate(engine, prompt, params, result, every=EVERY)
        text = ""
        for piece in pieces:
            text += piece
            if result.n_predicted > share + 100 or len(text) > 4 * (share + 100):
                break
        pieces.close()
        texts.append(text)
    engine.scheduler._loop = spy
    n = min(len(t) for t in texts)
    assert n > 0 and texts[0][:n] == texts[1][:n]
    assert any(r.why is greedy_loop.Why.LIMIT for r in spy.runs)  # it stopped at the claim


def test_another_request_interrupts_the_loop(engine: Engine, spy: _Spy) -> None:
    """A request arriving while the loop runs is decoded together with the running one (the
    loop returns after its current token), and stopping the reader ends the loop too."""
    _idle(engine)
    long_result = gen.GenResult()
    long = gen.generate(
        engine,
        gen.completion_tokens(engine, "Story:"),
        Sampling(**GREEDY, max_tokens=100_000, ignore_eos=True),
        long_result,
        every=3600.0,  # the loop would run for an hour
    )
    assert next(long)  # the first piece: from here on the loop runs
    deadline = time.monotonic() + 10
    while not _loop_running():
        assert time.monotonic() < deadline, "the loop did not start"
        time.sleep(0.01)
    started = time.monotonic()
    short = gen.GenResult()
    text = "".join(
        gen.generate(
            engine,
            gen.completion_tokens(engine, "Hello"),
            Sampling(**GREEDY, max_tokens=5, ignore_eos=True),
            short,
        )
    )
    assert text and short.n_predicted == 5
    assert time.monotonic() - started < 10
    assert spy.runs and spy.runs[-1].why is greedy_loop.Why.STOP
    assert engine.scheduler.busy()  # the long one still runs, batched with it meanwhile
    t0 = time.monotonic()
    long.close()
    _idle(engine)
    assert time.monotonic() - t0 < 5 and long_result.stop_type == "abort"


def _loop_running() -> bool:
    """True once the decode thread is inside the loop (in :meth:`_Spy.run`)."""
    thread = next((t for t in threading.enumerate() if t.name == "decode"), None)
    frame = sys._current_frames().get(thread.ident) if thread and thread.ident else None
    while frame is not None:
        if frame.f_code is _Spy.run.__code__:
            return True
        frame = frame.f_back
    return False


def test_the_loop_is_not_used_for_others(engine: Engine, spy: _Spy) -> None:
    """Sampling, log-probabilities, streaming to a client token by token, two requests at
    once: the Python path, as before."""
    prompt = gen.completion_tokens(engine, "Once upon a time")
    _generate(engine, prompt, Sampling(**GREEDY | {"temperature": 0.8}, max_tokens=20), spy)
    _generate(engine, prompt, Sampling(temperature=0.0, max_tokens=20), spy)  # penalties
    _generate(engine, prompt, Sampling(**GREEDY, max_tokens=20, n_probs=2), spy)
    _generate(engine, prompt, Sampling(**GREEDY, max_tokens=20), spy, every=0.0)
    assert spy.runs == []
