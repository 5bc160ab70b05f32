"""How expensive a GBNF grammar is to follow, measured before a request may use it.

llama.cpp's grammar engine keeps one parse stack per way the text so far can match, and checks
every token of the vocabulary against each stack at every step. Nested optional repetitions make
the number of stacks explode: ``root ::= x{10}`` / ``x ::= y{10}`` / ``y ::= "a"?`` (38 bytes)
costs 3 s per token on a 49k vocabulary, three nested levels over 200 s, while a JSON-schema
grammar costs 5-40 ms. Size and depth limits (:mod:`packer.runtime.grammar_limits`) cannot see
this, and the cost is paid in the decode thread, where it stalls every slot.

So before a grammar is queued, :func:`check` follows it for a few tokens in a forked child
(the vocabulary is already in memory; one child at a time; killed when it overruns) and refuses
it when one step costs more than :func:`step_budget` of CPU. A grammar that turns expensive only
later is caught in the decode thread by :func:`too_slow` after one slow step, and refused from
then on. Verdicts are remembered by the grammar's hash (the same JSON schema sent again costs
nothing).

The child parses the grammar first, and the server parses it only once the child could.
llama.cpp's parser prints a grammar it cannot parse on stderr, whole and raw: a client's text,
escape sequences included, on the terminal of whoever runs the server. In the child stderr is a
memfd; the client gets llama.cpp's reason in one line (:func:`complaint`), escaped.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import select
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from packer.runtime.log_text import printable

PREFLIGHT_STEPS = 3  # tokens followed by the child
# CPU one step may take in the child, per 64k tokens of vocabulary (a JSON-schema grammar takes
# 5-40 ms on 49k tokens; the 38-byte grammar above 3.3 s)
STEP_CPU_S = 0.25
CONTENTION = 4  # the child is killed at this many times its CPU budget in wall time, plus 1 s
STEP_MAX_S = 2.0  # one grammar step in the decode thread above this (CPU) ends the request
_REMEMBER = 512  # verdicts kept
COMPLAINT_CHARS = 120  # of llama.cpp's reason for refusing a grammar, in a refusal

_verdicts: OrderedDict[str, str | None] = OrderedDict()  # hash -> refusal message or None
_lock = threading.Lock()
_measuring = threading.BoundedSemaphore(1)  # one child at a time: they cannot starve the decode


def _key(grammar: str) -> str:
    return hashlib.sha256(grammar.encode("utf-8", "surrogatepass")).hexdigest()


def _refusal(what: str) -> str:
    return (
        f"the grammar is too expensive to follow ({what}; "
        "nested optional or repeated parts multiply the work at every token): simplify it, "
        "e.g. fewer nested '?'/'*'/'{m,n}' groups"
    )


def complaint(said: str) -> str:
    """llama.cpp's reason for refusing a grammar, from what it printed on stderr while parsing
    it: its parser's ``error parsing grammar: WHY`` (the grammar follows on the next lines), else
    the last line it logged (no 'root' rule, left recursion). One line of at most
    :data:`COMPLAINT_CHARS`, control characters escaped ("" when it said nothing)."""
    marker = "error parsing grammar: "
    at = said.find(marker)
    if at >= 0:
        why = said[at + len(marker) :].split("\n", 1)[0]
    else:
        lines = [ln.strip() for ln in said.splitlines()]
        lines = [ln for ln in lines if ln and "failed to parse grammar" not in ln]
        why = lines[-1] if lines else ""
    why = printable(why)
    return why if len(why) <= COMPLAINT_CHARS else why[: COMPLAINT_CHARS - 1] + "…"


def parse_refusal(why: str) -> str:
    """The refusal of a grammar llama.cpp cannot parse, ``why`` being its :func:`complaint`."""
    reason = f" ({why})" if why else ""
    return f"invalid grammar{reason}: llama.cpp cannot parse it as GBNF with a 'root' rule"


def _remember(key: str, verdict: str | None) -> None:
    with _lock:
        _verdicts[key] = verdict
        _verdicts.move_to_end(key)
        while len(_verdicts) > _REMEMBER:
            _verdicts.popitem(last=False)


def step_budget(n_vocab: int) -> float:
    """CPU seconds one grammar step may take in the pre-flight, for this vocabulary size."""
    return STEP_CPU_S * max(1.0, n_vocab / 65536)


def check(ll: Any, vocab: Any, grammar: str, make_candidates: Callable[[], Any]) -> str | None:
    """None when llama.cpp can parse ``grammar`` and it is cheap enough to follow, else a
    one-line refusal for the client (:func:`parse_refusal` or a cost's). Call it before
    parsing ``grammar`` in this process.
    ``ll``: the llama_cpp module; ``vocab``: the model's vocabulary handle;
    ``make_candidates()``: a fresh candidates buffer over the vocabulary (``fill(logits)`` ->
    token data array), made only when the grammar is measured (not for a remembered verdict)
    and used only in the child."""
    key = _key(grammar)
    with _lock:
        if key in _verdicts:
            _verdicts.move_to_end(key)
            return _verdicts[key]
    candidates = make_candidates()
    budget = step_budget(candidates.size)
    with _measuring:
        verdict = _measure(ll, vocab, grammar.encode("utf-8"), candidates, budget)
    _remember(key, verdict)
    return verdict


def too_slow(grammar: str, seconds: float) -> str | None:
    """After a grammar step of ``seconds`` in the decode thread: a refusal (remembered for this
    grammar) when the step was over :data:`STEP_MAX_S`, else None."""
    if seconds <= STEP_MAX_S:
        return None
    verdict = _refusal(f"one token took {seconds:.1f} s of CPU")
    _remember(_key(grammar), verdict)
    return verdict


def _measure(ll: Any, vocab: Any, grammar: bytes, candidates: Any, budget: float) -> str | None:
    """Parse and follow ``grammar`` in a forked child that reports on a pipe whether it parsed
    (``ok``, or ``!`` and llama.cpp's complaint), then each step's CPU seconds. A refusal when
    it did not parse, or as soon as one step is over ``budget`` (or takes over CONTENTION times
    it in wall time: the child is killed), else None."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: llama.cpp calls and numpy, then _exit (no Python cleanup)
        code = 1
        try:
            os.close(r)
            sampler, said = _parse(ll, vocab, grammar)
            if not sampler:
                os.write(w, b"!" + complaint(said).encode("utf-8") + b"\n")
            else:
                os.write(w, b"ok\n")
                _follow(ll, sampler, candidates, lambda spent: os.write(w, b"%.6f\n" % spent))
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    wall = CONTENTION * budget + 1.0
    try:
        poller = select.poll()
        poller.register(r, select.POLLIN)
        pending = b""

        def next_line() -> bytes | None:
            """The child's next line (never empty); b"" once it closed the pipe, None when it
            said nothing for ``wall`` seconds."""
            nonlocal pending
            while b"\n" not in pending:
                if not poller.poll(int(wall * 1000)):
                    return None
                chunk = os.read(r, 4096)
                if not chunk:
                    return b""
                pending += chunk
            line, pending = pending.split(b"\n", 1)
            return line

        parsed = next_line()
        if parsed is None:
            return _refusal(f"parsing it took over {wall:.1f} s")
        if not parsed:  # the child died parsing it, and so would this process
            return parse_refusal("llama.cpp's parser stopped on it")
        if parsed != b"ok":  # "!" and llama.cpp's complaint
            return parse_refusal(parsed[1:].decode("utf-8", "replace"))
        for _ in range(PREFLIGHT_STEPS):
            line = next_line()
            if line is None:
                return _refusal(f"one of its first tokens took over {wall:.1f} s")
            if not line:
                return None  # finished early: the grammar ended or allows nothing
            spent = float(line)
            if spent > budget:
                return _refusal(f"one of its first tokens took {spent:.1f} s of CPU")
        return None
    finally:
        os.close(r)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # done or not: nothing more is needed from it
        os.waitpid(pid, 0)


def _parse(ll: Any, vocab: Any, grammar: bytes) -> tuple[Any, str]:
    """In the child: llama.cpp's grammar sampler for ``grammar`` (None when it cannot parse it)
    and what llama.cpp printed on stderr meanwhile, which went to a memfd instead."""
    said = os.memfd_create("grammar-parse")
    saved_fd, saved_file = os.dup(2), sys.stderr
    os.dup2(said, 2)  # llama.cpp's parser writes there
    # llama-cpp-python's log callback prints llama.cpp's messages to sys.stderr: a file of the
    # child's own (the parent's may have been locked by a thread writing when it forked), and
    # all of them (it reads ggml's errors as debug messages, which the runtime does not print)
    sys.stderr = open(said, "w", encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG)
    try:
        sampler = ll.llama_sampler_init_grammar(vocab, grammar, b"root")
        sys.stderr.flush()
    finally:
        sys.stderr = saved_file
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
    os.lseek(said, 0, os.SEEK_SET)
    text = os.read(said, 64 * 1024).decode("utf-8", "replace")
    os.close(said)
    return sampler, text


def _follow(ll: Any, sampler: Any, candidates: Any, report: Callable[[float], object]) -> None:
    """In the child: apply the grammar ``sampler`` to the whole vocabulary for PREFLIGHT_STEPS
    tokens, accepting the likeliest allowed token of pseudo-random logits each time, and
    ``report`` the CPU seconds of each step."""
    import numpy as np

    rng = np.random.default_rng(0)
    n = candidates.size
    for _ in range(PREFLIGHT_STEPS):
        arr = candidates.fill(rng.standard_normal(n, dtype=np.float32))
        start = time.process_time()
        ll.llama_sampler_apply(sampler, ctypes.byref(arr))
        report(time.process_time() - start)
        logits = candidates.logits()
        best = int(np.argmax(logits))
        if not np.isfinite(logits[best]):
            return  # the grammar is complete or allows nothing: cheap either way
        ll.llama_sampler_accept(sampler, candidates.token(best))
