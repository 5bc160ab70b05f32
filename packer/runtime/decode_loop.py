"""The decode loop in C (``libpacker-decode.so``, from ``build/decode_loop.c``).

Between two ``llama_decode`` calls the scheduler's Python picks the token and turns it into
text: ~130-180 µs a token, ~2 % of generation on a 2-core CPU, more on a GPU whose decodes
are shorter; a server stream adds its handler thread waking for every token. llama-bench and
llama-server, the yardsticks of #16 item 7, have none of it. When one request runs alone, the
scheduler hands its decoding to this loop, which decodes and picks tokens in C for up to the
request's ``burst`` (50 ms: the terminal's hand-over interval; the server's too) and returns
them; Python then makes the text from them (stop strings, UTF-8) and hands it over: joined
for the terminal and whole answers, one piece per token for a stream. The pick is an argmax
for a plain greedy request, else the request's own llama.cpp sampler chain
(``llama_sampler_sample``: the tokens the Python path picks, same seed, same draws).

``build/decode-loop.sh`` compiles the library against the wheel's ``libllama.so`` and installs
it next to it (``llama_cpp/lib``; frozen with the rest of that folder). Without it, or with
``PACKER_DECODE_LOOP=0``, the scheduler decodes token by token in Python as for every other
request: the same tokens, each handed over as soon as it is decoded."""

from __future__ import annotations

import ctypes
import enum
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("packer.runtime.decode_loop")

LIBRARY = "libpacker-decode.so"
ABI = 1  # packer_decode_abi() of the C source this module speaks to
ENV = "PACKER_DECODE_LOOP"  # "0": never use it
CAPACITY = 4096  # tokens one run picks at most


class Why(enum.IntEnum):
    """Why :meth:`DecodeLoop.run` returned (``PACKER_DECODE_*`` in the C source)."""

    LIMIT = 0  # it picked as many tokens as it was allowed
    EOG = 1  # the last token picked ends generation
    STOP = 2  # :meth:`DecodeLoop.interrupt` was called
    TIME = 3  # its time was up
    FAILED = 4  # llama_decode failed (see ``Run.rc``) or gave no logits


@dataclass(slots=True)
class Run:
    """What one :meth:`DecodeLoop.run` did: ``tokens`` picked, each but the last decoded
    (an end-of-generation token last included: it is not decoded either)."""

    why: Why
    tokens: list[int]
    rc: int  # llama_decode's code when ``why`` is FAILED


class DecodeLoop:
    """The loaded library. One decode thread calls :meth:`run`; any thread may call
    :meth:`interrupt` to make a run return after the token it is on."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        p, i32 = ctypes.c_void_p, ctypes.c_int32
        self._run = lib.packer_decode_run
        self._run.restype = i32
        self._run.argtypes = [p, p, p, i32, i32, i32, i32, i32, ctypes.c_double, p, p, p, p]
        self._argmax = lib.packer_decode_argmax
        self._argmax.restype = i32
        self._argmax.argtypes = [p, i32]
        self._stop = ctypes.c_int32(0)
        self._out = (ctypes.c_int32 * CAPACITY)()
        self._n = ctypes.c_int32(0)
        self._rc = ctypes.c_int32(0)
        # the addresses, taken once: each ctypes.byref/addressof call makes an object
        self._args = [ctypes.addressof(x) for x in (self._stop, self._out, self._n, self._rc)]

    def arm(self) -> None:
        """Clear an earlier :meth:`interrupt` (before deciding to start a run)."""
        self._stop.value = 0

    def interrupt(self) -> None:
        self._stop.value = 1

    def run(
        self,
        ctx: Any,
        vocab: Any,
        sampler: Any,
        token: int,
        pos: int,
        seq: int,
        max_tokens: int,
        ignore_eos: bool,
        seconds: float,
    ) -> Run:
        """Decode ``token`` at ``pos`` of sequence ``seq`` and go on, picking with ``sampler``
        (a ``llama_sampler *`` chain; None: the largest logit): at most ``max_tokens`` picks
        (and :data:`CAPACITY`), until an end-of-generation token (unless ``ignore_eos``),
        :meth:`interrupt`, or ``seconds``. The GIL is released meanwhile."""
        why = self._run(
            ctx,
            vocab,
            sampler,
            token,
            pos,
            seq,
            min(max_tokens, CAPACITY),
            int(ignore_eos),
            seconds,
            *self._args,
        )
        return Run(Why(why), self._out[: self._n.value], self._rc.value)

    def argmax(self, address: int, n: int) -> int:
        """The C loop's pick among ``n`` floats at ``address`` (for tests)."""
        return int(self._argmax(address, n))


def load(lib_dir: str | Path | None) -> DecodeLoop | None:
    """The loop from ``lib_dir`` (the backends' folder, where ``libllama.so`` is), or None
    where it is turned off, missing (a wheel built without build/decode-loop.sh) or of
    another ABI: the scheduler then decodes in Python."""
    if os.environ.get(ENV, "1") == "0":
        log.debug("decode loop: off (%s=0)", ENV)
        return None
    if lib_dir is None:
        return None
    path = Path(lib_dir) / LIBRARY
    if not path.is_file():
        log.debug("decode loop: no %s: decoding in Python", path)
        return None
    try:
        lib = ctypes.CDLL(str(path))
        abi = int(lib.packer_decode_abi())
    except (OSError, AttributeError) as exc:
        log.debug("decode loop: cannot load %s: %s", path, exc)
        return None
    if abi != ABI:
        log.debug("decode loop: %s has ABI %d, this runtime speaks %d", path, abi, ABI)
        return None
    log.debug("decode loop: %s", path)
    return DecodeLoop(lib)
