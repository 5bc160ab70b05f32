"""packer.runtime.decode_loop: the decode loop in C (build/decode_loop.c).

The library is built and installed next to libllama by ``make`` (build/decode-loop.sh). Its
argmax is checked against numpy on arrays with ties, NaNs and infinities; on the real small
model (SmolLM2-135M-Instruct Q4_1) a request decoded by the loop must give what the Python
path gives, token for token, greedy or sampled with a seed, whichever way it ends (length,
end of generation, stop string, a claim that has to grow), and the loop must hand the context
back at once when another request arrives or the caller stops reading.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from conftest import smollm_gguf_path

from packer.runtime import decode_loop
from packer.runtime import generate as gen
from packer.runtime.backend import load_backends
from packer.runtime.engine import Engine, EngineOptions, Sampling
from packer.runtime.server import make_server

EVERY = gen.TERMINAL_EVERY_S
GREEDY: dict[str, Any] = {"temperature": 0.0, "repeat_penalty": 1.0}  # plain greedy


def _lib_dir() -> Path:
    lib_dir = load_backends().lib_dir
    assert lib_dir is not None, "a wheel with its backends linked in: not what make installs"
    return Path(lib_dir)


def test_make_installs_the_loop_next_to_libllama() -> None:
    assert (_lib_dir() / decode_loop.LIBRARY).is_file(), "run build/decode-loop.sh"
    assert decode_loop.load(_lib_dir()) is not None


def test_off_missing_or_another_abi_means_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(decode_loop.ENV, "0")
    assert decode_loop.load(_lib_dir()) is None
    monkeypatch.delenv(decode_loop.ENV)
    assert decode_loop.load(tmp_path) is None  # no library there
    assert decode_loop.load(None) is None  # backends linked into libllama: no folder
    (tmp_path / decode_loop.LIBRARY).write_bytes(b"not an ELF file")
    assert decode_loop.load(tmp_path) is None
    monkeypatch.setattr(decode_loop, "ABI", decode_loop.ABI + 1)
    assert decode_loop.load(_lib_dir()) is None


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler on this machine")
def test_decode_loop_sh_into_a_flavour_site(tmp_path: Path) -> None:
    """A flavour's wheel installed with pip --target (packer/stub.py, the cuda flavour) gets
    the loop too, compiled against that wheel's libllama and llama.h."""
    site = tmp_path / "site"
    shutil.copytree(_lib_dir(), site / "llama_cpp" / "lib", symlinks=True)
    (site / "llama_cpp" / "lib" / decode_loop.LIBRARY).unlink()
    shutil.copytree(Path(sysconfig.get_paths()["purelib"]) / "include", site / "include")
    script = Path(__file__).resolve().parents[1] / "build" / "decode-loop.sh"
    proc = subprocess.run(
        ["bash", str(script), "--into", str(site)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    built = site / "llama_cpp" / "lib" / decode_loop.LIBRARY
    assert proc.stdout.strip() == str(built) and built.is_file()
    proc = subprocess.run(
        ["bash", str(script), "--into", str(tmp_path / "nothing")], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"decode-loop.sh: no llama_cpp/lib/libllama.so in {tmp_path / 'nothing'}"
    ]


def _reference_argmax(x: np.ndarray) -> int:
    """llama.cpp's greedy pick: the first of the largest, NaN never; 0 when all are NaN."""
    finite = np.where(np.isnan(x), -np.inf, x)
    if np.isnan(x).all():
        return 0
    return int(np.flatnonzero(finite == finite.max())[0])


@pytest.mark.parametrize("n", [1, 3, 15, 16, 17, 49152, 49155])
def test_argmax(n: int) -> None:
    loop = decode_loop.load(_lib_dir())
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

    def __init__(self, loop: decode_loop.DecodeLoop) -> None:
        self.loop = loop
        self.runs: list[decode_loop.Run] = []

    def arm(self) -> None:
        self.loop.arm()

    def interrupt(self) -> None:
        self.loop.interrupt()

    def run(self, *args: Any) -> decode_loop.Run:
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


CASES = {
    # a plain greedy request: the loop's argmax
    "greedy-length": (Sampling(**GREEDY, max_tokens=60, ignore_eos=True), "limit"),
    "greedy-eos": (Sampling(**GREEDY, max_tokens=400), "eos"),
    "greedy-stop-string": (
        Sampling(**GREEDY, max_tokens=200, ignore_eos=True, stop=[" the "]),
        "word",
    ),
    # the request's sampler chain: the runtime's defaults (Python: a top-k shortlist), the
    # penalties at temperature 0, and a chain without top-k (Python: the whole chain)
    "defaults": (Sampling(max_tokens=80, ignore_eos=True, seed=7), "limit"),
    "penalties": (Sampling(temperature=0.0, max_tokens=60, ignore_eos=True), "limit"),
    "no-top-k": (
        Sampling(temperature=0.7, top_k=0, max_tokens=60, ignore_eos=True, seed=3),
        "limit",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_the_loop_gives_what_python_gives(engine: Engine, spy: _Spy, case: str) -> None:
    params, stop_type = CASES[case]
    prompt, _ = gen.chat_tokens(engine, [{"role": "user", "content": "Say hello in one line."}], [])
    if params.stop or params.temperature > 0:
        prompt = gen.completion_tokens(engine, "Once upon a time")
    text, result = _generate(engine, prompt, params, spy)
    assert spy.runs, "the loop did not run"
    assert all(r.why is not decode_loop.Why.FAILED for r in spy.runs)
    text_py, result_py = _generate(engine, prompt, params, None)
    assert text == text_py
    assert (result.n_predicted, result.stop_type) == (result_py.n_predicted, result_py.stop_type)
    assert result.stopping_word == result_py.stopping_word
    assert result.stop_type == stop_type  # the ending this case is for
    if stop_type == "limit":
        assert result.n_predicted == params.max_tokens


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
        # each run of the loop goes on to the end of the claim (no time limit to stop it first)
        pieces = gen.generate(engine, prompt, params, result, every=EVERY, burst=3600.0)
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
    assert spy.runs[0].why is decode_loop.Why.LIMIT  # it stopped at the claim
    assert len(spy.runs) >= 2  # and went on once the claim had grown


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
    assert spy.runs and spy.runs[-1].why is decode_loop.Why.STOP
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
    """A grammar, log-probabilities, streaming to a client token by token: the Python path,
    as before (two requests at once: test_another_request_interrupts_the_loop)."""
    prompt = gen.completion_tokens(engine, "Once upon a time")
    _generate(engine, prompt, Sampling(**GREEDY, max_tokens=20, grammar='root ::= "a"+'), spy)
    _generate(engine, prompt, Sampling(**GREEDY, max_tokens=20, n_probs=2), spy)
    _generate(engine, prompt, Sampling(**GREEDY, max_tokens=20), spy, every=0.0)
    assert spy.runs == []


def test_server_answers_use_the_loop_a_stream_keeps_an_event_per_token(
    engine: Engine, spy: _Spy
) -> None:
    """A lone server request is decoded in C, whole or streamed; a stream still gets one event
    per token (in bursts), with the text of the whole answer."""
    srv = make_server(engine, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    body = {"prompt": "Once upon a time", "n_predict": 40, "temperature": 0, "repeat_penalty": 1}
    try:
        _idle(engine)
        whole = requests.post(srv.url + "/completion", json=body, timeout=60).json()
        assert spy.runs and whole["tokens_predicted"] == 40
        spy.runs.clear()
        _idle(engine)
        with requests.post(
            srv.url + "/completion", json=body | {"stream": True}, stream=True, timeout=60
        ) as r:
            events = [line for line in r.iter_lines() if line.startswith(b"data: ")]
        assert spy.runs
        pieces = [json.loads(e[len(b"data: ") :])["content"] for e in events]
        assert "".join(pieces) == whole["content"]
        assert sum(1 for p in pieces if p) > 30  # a piece per token (a few hold back UTF-8)
    finally:
        srv.shutdown()
        srv.server_close()
