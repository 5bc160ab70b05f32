"""Continuous batching: N requests decoded together, one ``llama_decode`` per step.

One llama.cpp context holds ``n_parallel`` sequences ("slots") in one unified KV cache of
``n_ctx`` cells: any one request may use the whole context, and requests decoded together
share it. One decode thread runs the loop; per step it

1. hands queued requests (FIFO) to idle slots, each to the idle slot whose cached tokens share
   the longest prefix with its prompt, so only the rest of the prompt is decoded, as long as the
   request's cells fit (see below);
2. puts into ONE ``llama_batch`` the last sampled token of every generating slot and then as
   many prompt tokens of the slots still reading their prompt as the batch has room for;
3. calls ``llama_decode`` once and samples the next token of every slot that has logits, with
   that request's own sampler chain (penalties, grammar, top-k/typical/top-p/min-p/temp/dist or
   mirostat, as llama-cpp-python's ``Llama.generate`` builds it).

A request running alone (the terminal's, or a server's without a grammar or log-probabilities)
skips the per-step Python: the C loop of :mod:`packer.runtime.decode_loop` decodes and picks its
tokens (an argmax, or its sampler chain) for up to 50 ms at a time before its text is made and
handed over (see :meth:`Scheduler._loop_step`).

KV cells are handed out so that ``llama_decode`` never finds the cache full. A running request
holds a *claim*: the cells it may fill. A request with ``max_tokens`` claims its prompt plus
``max_tokens`` when it is admitted, so it always gets all of them. A request without (until
EOS or the context is full) claims its prompt plus its fair share (``n_ctx / n_parallel``, at
least :data:`MIN_NEW` tokens) and grows by :data:`GROW` cells at a time while cells are free;
when none are, it ends with stop type "limit" (finish reason "length"), like a request whose
context is full. A request waits in the queue while its claim does not fit. Idle slots keep
their tokens for prefix reuse, and give them up (least recently used first) when a claim needs
the room.

Text handling per slot is :class:`packer.runtime.textstream.TextStream` (UTF-8 safe, stop strings held
back). Each request's pieces reach its caller through a queue; the caller's iterator polls the
optional ``cancelled`` callback while it waits, and closing the iterator frees the slot at the
next step.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from packer.runtime import ggml_api, grammar_cost, prompt_cache
from packer.runtime.decode_loop import DecodeLoop, Why
from packer.runtime.generate import GenResult, PromptError, Sampling, TokenProb, check_context
from packer.runtime.prompt_cache import common_prefix
from packer.runtime.textstream import TextStream

__all__ = ["QueueFull", "Scheduler", "SchedulerStats", "token_bytes"]

log = logging.getLogger("packer.runtime.scheduler")

N_BATCH = 512  # tokens per llama_decode: every generating slot's token plus prompt chunks
POLL_S = 0.1  # how often a waiting caller checks its ``cancelled`` callback
SHORTLIST_SHARE = 8  # a shortlist (see shortlist_k) of over 1/8 of the vocabulary is not worth it
MIN_NEW = 128  # cells for generated tokens a request without max_tokens claims at least
GROW = 256  # cells such a request's claim grows by when it has filled it
GRAMMAR_DEAD_END = (
    "the grammar allows no token at this point of the answer (it asks for something no token "
    "of this model produces, such as \\x00): change the grammar or the schema"
)
_DONE = object()


class QueueFull(Exception):
    """Every slot is busy and ``max_queue`` requests already wait; ``retry_after`` is a guess in
    seconds of when to try again."""

    def __init__(self, waiting: int, max_queue: int, retry_after: int) -> None:
        super().__init__(
            f"the server is busy: {waiting} requests are already waiting for a slot "
            f"(--max-queue {max_queue}); retry in {retry_after} s"
        )
        self.message = str(self)
        self.retry_after = retry_after


@dataclass
class SchedulerStats:
    """Counters (for tests and debugging): how many steps decoded how many sequences at once."""

    steps: int = 0
    max_seqs_in_step: int = 0
    multi_seq_steps: int = 0  # steps whose batch held tokens of two or more sequences
    prompt_tokens: int = 0  # prompt tokens decoded (cache hits excluded)
    cached_tokens: int = 0  # prompt tokens reused from a slot's cache
    cache_hits: int = 0  # requests that reused at least one cached token
    predicted_tokens: int = 0  # tokens generated
    context_full: int = 0  # requests ended because no KV cell was free to grow into
    evictions: int = 0  # idle slots' cached tokens dropped to make room
    parked: int = 0  # idle slots' cells saved to the host-memory prompt cache (moved or copied)
    restored: int = 0  # prompt cache entries put back into a slot for a new request
    restored_tokens: int = 0


@dataclass(eq=False)
class _Request:
    prompt: list[int]
    params: Sampling
    result: GenResult
    sampler: Any  # llama_sampler_p (a chain), freed by the decode thread
    max_new: int  # tokens it may generate at most
    room: int  # the context left after its prompt
    elastic: bool  # no max_tokens of its own (or more than the room): claims grow as it runs
    cancelled: Callable[[], bool] | None
    preserve: frozenset[int] = frozenset()  # special tokens rendered with their text
    greedy: bool = False  # its chain picks the largest logit, nothing else: see plain_greedy
    shortlist: int = 0  # its chain may run on a shortlist around this top_k: see shortlist_k
    watched: int = 0  # generated tokens its penalties look back over (before top_k)
    out: queue.SimpleQueue[Any] = field(default_factory=queue.SimpleQueue)
    # seconds between two hand-overs of text to the caller (0: every step), see _emit
    every: float = 0.0
    # seconds the C decode loop may run for it between two returns to Python (0: never), see
    # _loop_step; the text it picked then reaches the caller (joined if ``every``)
    burst: float = 0.0
    held: list[str] = field(default_factory=list)  # text not handed over yet
    due: float = 0.0  # when the next piece may be handed over
    stop_flag: bool = False  # set by the caller's side: client gone / iterator closed
    t_submit: float = field(default_factory=time.perf_counter)


@dataclass(eq=False)
class _Slot:
    id: int
    cache: list[int] = field(default_factory=list)  # tokens whose KV is in this sequence
    req: _Request | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens not decoded yet
    next_token: int | None = None  # sampled, to be decoded in the next step
    text: TextStream | None = None
    t_start: float = 0.0
    t_first: float | None = None
    last_used: int = 0
    params: Sampling | None = None  # of the latest request (for /slots)
    claim: int = 0  # KV cells this slot's request may fill (prompt + generated), while it runs


def plain_greedy(p: Sampling) -> bool:
    """Whether the sampler chain :meth:`Scheduler._make_sampler` builds for ``p`` only takes
    the largest logit: temperature 0 (greedy), no grammar, no logit bias, and penalties that
    change nothing (factor 1, no presence or frequency penalty, or no tokens looked back
    over). Such a request is sampled by an argmax of the logits, the same token without
    ``llama_sampler_sample`` filling its candidate array for every token (about 1 % of
    one-shot generation time on the 135M demo model, from a profile)."""
    greedy = p.temperature == 0 and p.grammar is None and not p.logit_bias
    return greedy and not penalties_apply(p)


def penalties_apply(p: Sampling) -> bool:
    """Whether ``p``'s chain has penalties that change a logit: asked for, looking back over
    some tokens, and not all neutral (factor 1, no presence or frequency penalty)."""
    return (
        "penalties" in p.samplers
        and p.repeat_last_n != 0
        and (p.repeat_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0)
    )


def shortlist_k(p: Sampling) -> int:
    """How many tokens the sampler chain of ``p`` keeps of those it cannot move, when it may
    run on a shortlist of the vocabulary instead of all of it: its ``top_k``, or 1 for the
    greedy chain; 0 when it may not.

    ``llama_sampler_sample`` hands the chain every token of the vocabulary (49,152 on the demo
    model), and the penalties look each one up in their history: ~0.39 ms of every token with
    the default settings, ~4 % of one-shot generation time. When nothing before ``top_k`` (or
    the greedy pick) can raise a token over another (temperature scales all logits alike;
    penalties with factor >= 1 and presence/frequency >= 0 only lower the tokens they look back
    over; a logit bias moves only its own tokens), the tokens the chain keeps are among the
    ``k + e`` largest raw logits and the ``e`` tokens it may move: see
    :meth:`Scheduler._sample_shortlist`. Samplers that need the whole distribution (typical,
    top-p, min-p) may only come after ``top_k``. A greedy request with nothing to move takes
    :func:`plain_greedy`'s argmax instead."""
    if p.grammar is not None or p.temperature < 0:
        return 0
    lowers_only = p.repeat_penalty >= 1.0 and p.presence_penalty >= 0 and p.frequency_penalty >= 0
    if p.temperature == 0:  # the penalties (when asked for), then the largest logit
        return 1 if lowers_only or "penalties" not in p.samplers else 0
    if p.mirostat or p.top_k <= 0 or "top_k" not in p.samplers:
        return 0
    before = p.samplers[: p.samplers.index("top_k")]
    if not set(before) <= {"penalties", "temperature"}:
        return 0
    if "penalties" in before and not lowers_only:
        return 0
    return p.top_k


def top_indices(values: Any, k: int) -> Any:
    """The indices, in order, of every value of the numpy vector ``values`` that reaches its
    ``k``-th largest (``k`` at most its length): ``k`` of them, more with equal values there.

    A cut from every 16th value, a little below where the ``k``-th largest should be, leaves a
    few hundred values to look at instead of partitioning the whole vector: ~2.5 times faster
    on a 49,152-token vocabulary. When fewer than ``k`` values reach the cut (the large ones
    sit together), the whole vector is partitioned."""
    import numpy as np

    sample = values[::16]
    rank = 2 * k // 16 + 4
    if rank < len(sample):
        cut = np.partition(sample, len(sample) - rank)[len(sample) - rank]
        near = np.flatnonzero(values >= cut)
        if len(near) >= k:
            some = values[near]
            return near[some >= np.partition(some, len(some) - k)[len(some) - k]]
    return np.flatnonzero(values >= np.partition(values, len(values) - k)[len(values) - k])


class Scheduler:
    """Owns a generation context of one model and its decode thread.

    ``model`` and ``vocab`` are llama.cpp's ``llama_model *`` and ``llama_vocab *``; ``params``
    the ``llama_context_params`` to create the context with (``n_ctx``, threads, flash
    attention set by the caller; the scheduler sets the sequences, batch size and the unified
    KV cache)."""

    def __init__(
        self,
        model: Any,
        vocab: Any,
        params: Any,
        *,
        n_parallel: int = 1,
        max_queue: int = 64,
        cache_ram: int | None = None,
        decode_loop: DecodeLoop | None = None,
    ) -> None:
        import llama_cpp

        self._ll = llama_cpp
        self.n_parallel = max(1, n_parallel)
        self.max_queue = max(0, max_queue)
        self._vocab = vocab
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        params = llama_cpp.llama_context_params.from_buffer_copy(params)
        params.n_seq_max = self.n_parallel
        params.n_batch = params.n_ubatch = N_BATCH
        params.kv_unified = True  # one KV cache of n_ctx cells shared by every slot
        params.embeddings = False
        if any(f[0] == "n_outputs_max" for f in type(params)._fields_):
            # a batch has one output per slot at most: the compute buffer is sized for that,
            # not for N_BATCH rows of logits (100 MB with a 49k vocabulary)
            params.n_outputs_max = self.n_parallel
        self._ctx = llama_cpp.llama_init_from_model(model, params)
        if not self._ctx:
            raise RuntimeError(f"llama.cpp could not create a context of {params.n_ctx} tokens")
        # llama-server's and llama-bench's way: one ggml threadpool for the context, made
        # once; without it ggml makes a throwaway one for every llama_decode (and a variant
        # built without OpenMP starts and joins its threads each time)
        self._threadpool = Threadpool.attach(
            llama_cpp, self._ctx, int(params.n_threads), int(params.n_threads_batch)
        )
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self.n_ctx_total = int(llama_cpp.llama_n_ctx(self._ctx))
        # what one request may use: with the unified cache, the whole context
        self.n_ctx = min(self.n_ctx_total, int(llama_cpp.llama_n_ctx_seq(self._ctx)))
        self.share = max(1, self.n_ctx_total // self.n_parallel)
        self._batch = llama_cpp.llama_batch_init(N_BATCH, 0, 1)
        b = self._batch  # its arrays, fetched once: each field access makes a ctypes object
        self._b_arrays = (b.token, b.pos, b.n_seq_id, b.seq_id, b.logits)
        self._slots = [_Slot(i) for i in range(self.n_parallel)]
        # idle slots' cells, moved out of the shared KV cache when a request starts (bytes;
        # None: llama-server's default, capped by memory; 0: idle slots keep their cells)
        if cache_ram is None:
            from packer.runtime.context_size import available_memory

            cache_ram = prompt_cache.default_limit(available_memory())
        self._prompt_cache = prompt_cache.PromptCache(cache_ram if cache_ram >= 0 else 1 << 62)
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._stopped = False  # a request was stopped by its caller: _admit has work
        self._use = itertools.count(1)
        self._pieces: dict[int, bytes] = {}
        self._special_pieces: dict[int, bytes] = {}
        self._preserved: dict[tuple[str, ...], frozenset[int]] = {}
        self._eog: dict[int, bool] = {}
        self._candidates: _Candidates | None = None  # see _candidate_array (decode thread)
        # llama_get_logits_ith returning the address as an int (a function object of its own:
        # llama-cpp-python's returns a ctypes pointer), and a numpy view per address, see _logits
        self._logits_at = llama_cpp.llama_cpp._lib["llama_get_logits_ith"]
        self._logits_at.argtypes = [ctypes.c_void_p, ctypes.c_int32]
        self._logits_at.restype = ctypes.c_void_p
        self._views: dict[int, Any] = {}
        self._loop = decode_loop  # decodes a request running alone in C: see _loop_step
        self._outbox: list[tuple[queue.SimpleQueue[Any], Any]] = []
        self._avg_s = 5.0  # running mean of request durations, for Retry-After
        self.stats = SchedulerStats()
        self._thread = threading.Thread(target=self._run, name="decode", daemon=True)
        self._thread.start()

    # -- callers' side ------------------------------------------------------------------
    def submit(
        self,
        prompt: list[int],
        params: Sampling,
        result: GenResult,
        cancelled: Callable[[], bool] | None = None,
        every: float = 0.0,
        burst: float | None = None,
    ) -> Iterator[str]:
        """Queue a generation after ``prompt``; returns an iterator of text pieces (final: never
        part of a stop string, never half a UTF-8 character). ``result`` is complete once the
        iterator is exhausted. ``every`` > 0: the text comes at most that often (seconds), the
        pieces decoded in between joined into one (see :meth:`_emit`). ``burst`` > 0 (default:
        ``every``): while it runs alone, its tokens may be decoded in C for up to that long
        before their pieces (one per token unless ``every``) reach the caller together (see
        :meth:`_loop_step`). Raises
        :class:`PromptError` (too long, bad grammar) or :class:`QueueFull` here, before
        anything is queued."""
        check_context(self, len(prompt))  # reads only .n_ctx, which this has too
        room = self.n_ctx - len(prompt)
        elastic = params.max_tokens < 0 or params.max_tokens >= room
        max_new = room if elastic else params.max_tokens
        result.n_prompt = len(prompt)
        sampler = self._make_sampler(params)
        req = _Request(
            list(prompt),
            params,
            result,
            sampler,
            max_new,
            room,
            elastic,
            cancelled,
            self.preserved_ids(params.preserved_tokens),
            plain_greedy(params),
            shortlist_k(params),
            self._watched(params),
            every=every,
            burst=every if burst is None else burst,
        )
        with self._cond:
            try:
                if self._closing:
                    raise RuntimeError("the model is closing")
                idle = sum(s.req is None for s in self._slots)
                waiting = len(self._queue) - idle
                if waiting >= self.max_queue:
                    retry = self._avg_s * (waiting + 1) / self.n_parallel
                    raise QueueFull(
                        max(waiting, 0), self.max_queue, max(1, min(60, math.ceil(retry)))
                    )
            except BaseException:
                self._ll.llama_sampler_free(sampler)
                raise
            self._queue.append(req)
            self._cond.notify()
            if self._loop is not None:  # a running C loop returns: this one joins the batch
                self._loop.interrupt()
        return self._consume(req)

    def _consume(self, req: _Request) -> Iterator[str]:
        done = False
        try:
            while True:
                if not req.stop_flag and req.cancelled is not None and req.cancelled():
                    self._stop(req)
                try:
                    item = req.out.get(timeout=POLL_S)
                except queue.Empty:
                    continue
                if item is _DONE:
                    done = True
                    return
                if isinstance(item, BaseException):
                    done = True
                    raise item
                yield item
        finally:
            if not done:
                self._stop(req)

    def _stop(self, req: _Request) -> None:
        with self._cond:
            req.stop_flag = True
            self._stopped = True
            self._cond.notify()
            if self._loop is not None:
                self._loop.interrupt()

    # -- introspection ------------------------------------------------------------------
    def busy(self) -> bool:
        with self._cond:
            return any(s.req is not None for s in self._slots)

    def slots(self) -> list[dict[str, Any]]:
        """One dict per slot: id, n_ctx, is_processing, params (Sampling or None), counters."""
        with self._cond:
            out = []
            for s in self._slots:
                r = s.req
                out.append(
                    {
                        "id": s.id,
                        "n_ctx": self.n_ctx,
                        "is_processing": r is not None,
                        "params": r.params if r else s.params,
                        "n_prompt_tokens": r.result.n_prompt if r else 0,
                        "n_prompt_tokens_processed": (len(r.prompt) - len(s.pending)) if r else 0,
                        "n_cached": len(s.cache),
                        "n_decoded": r.result.n_predicted if r else 0,
                        "n_remain": (r.max_new - r.result.n_predicted) if r else 0,
                        "has_next_token": r is not None,
                    }
                )
            return out

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    def metrics_snapshot(self) -> dict[str, float]:
        """Gauges and counters for /metrics: slots busy and total, requests waiting, KV cells
        used (tokens in the cache, idle slots' cached prompts included), reserved (cells the
        running requests may fill) and total, tokens predicted and prompt tokens decoded
        (cache hits excluded) since start, and the host-memory prompt cache: bytes held, its
        limit, entries, idle slots saved into it and entries put back (with their tokens)."""
        with self._cond:
            busy = sum(s.req is not None for s in self._slots)
            return {
                "slots_busy": float(busy),
                "slots_total": float(self.n_parallel),
                "queue_depth": float(len(self._queue)),
                "kv_cells_used": float(sum(len(s.cache) for s in self._slots)),
                "kv_cells_reserved": float(self._held()),
                "kv_cells_total": float(self.n_ctx_total),
                "tokens_predicted_total": float(self.stats.predicted_tokens),
                "tokens_prompt_total": float(self.stats.prompt_tokens),
                "tokens_prompt_cached_total": float(self.stats.cached_tokens),
                "requests_context_full_total": float(self.stats.context_full),
                "prompt_cache_bytes": float(self._prompt_cache.size),
                "prompt_cache_limit_bytes": float(self._prompt_cache.limit),
                "prompt_cache_entries": float(len(self._prompt_cache)),
                "prompt_cache_saved_total": float(self.stats.parked),
                "prompt_cache_restored_total": float(self.stats.restored),
                "prompt_cache_restored_tokens_total": float(self.stats.restored_tokens),
            }

    def close(self) -> None:
        """Stop every request (stop type "abort"), end the decode thread, free the context."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify()
            if self._loop is not None:
                self._loop.interrupt()
        self._thread.join()
        ll = self._ll
        ll.llama_batch_free(self._batch)
        ll.llama_free(self._ctx)
        self._ctx = None
        if self._threadpool is not None:
            self._threadpool.free()
            self._threadpool = None

    # -- samplers -----------------------------------------------------------------------
    def _make_sampler(self, p: Sampling) -> Any:
        ll = self._ll
        if p.grammar is not None:  # parsed and measured in a child first: see grammar_cost
            refusal = grammar_cost.check(
                ll, self._vocab, p.grammar, lambda: _Candidates(ll, self.n_vocab)
            )
            if refusal is not None:
                raise PromptError(refusal)
        seed = p.seed if p.seed >= 0 else ll.LLAMA_DEFAULT_SEED  # the default seed = random
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())

        def add(s: Any) -> None:
            ll.llama_sampler_chain_add(chain, s)

        if p.logit_bias:
            bad = [t for t, _ in p.logit_bias if not 0 <= t < self.n_vocab]
            if bad:
                ll.llama_sampler_free(chain)
                raise PromptError(
                    f"'logit_bias': token {bad[0]} is not in this model's vocabulary "
                    f"(0 to {self.n_vocab - 1})"
                )
            biases = (ll.llama_logit_bias * len(p.logit_bias))(
                *(ll.llama_logit_bias(t, b) for t, b in p.logit_bias)
            )
            add(ll.llama_sampler_init_logit_bias(self.n_vocab, len(p.logit_bias), biases))

        def penalties() -> Any:
            return ll.llama_sampler_init_penalties(
                self.n_vocab,
                p.repeat_last_n if p.repeat_last_n >= 0 else self.n_ctx,
                p.repeat_penalty,
                p.frequency_penalty,
                p.presence_penalty,
            )

        if p.grammar is not None:
            grammar = ll.llama_sampler_init_grammar(self._vocab, p.grammar.encode("utf-8"), b"root")
            if not grammar:  # the child parsed it: not expected
                ll.llama_sampler_free(chain)
                raise PromptError(grammar_cost.parse_refusal(""))
            add(grammar)
        if "penalties" in p.samplers and (p.temperature <= 0 or p.mirostat):
            add(penalties())  # greedy and mirostat: the penalties, then their own sampler
        if p.temperature < 0:
            add(ll.llama_sampler_init_dist(seed))
        elif p.temperature == 0:
            add(ll.llama_sampler_init_greedy())
        elif p.mirostat == 1:
            add(ll.llama_sampler_init_temp(p.temperature))
            add(
                ll.llama_sampler_init_mirostat(
                    self.n_vocab, seed, p.mirostat_tau, p.mirostat_eta, 100
                )
            )
        elif p.mirostat == 2:
            add(ll.llama_sampler_init_temp(p.temperature))
            add(ll.llama_sampler_init_mirostat_v2(seed, p.mirostat_tau, p.mirostat_eta))
        else:  # the request's order (llama.cpp's `samplers`), then a draw
            make = {
                "penalties": penalties,
                "top_k": lambda: ll.llama_sampler_init_top_k(p.top_k),
                "typ_p": lambda: ll.llama_sampler_init_typical(p.typical_p, 1),
                "top_p": lambda: ll.llama_sampler_init_top_p(p.top_p, 1),
                "min_p": lambda: ll.llama_sampler_init_min_p(p.min_p, 1),
                "temperature": lambda: ll.llama_sampler_init_temp(p.temperature),
            }
            for name in p.samplers:
                add(make[name]())
            add(ll.llama_sampler_init_dist(seed))
        return chain

    def _watched(self, p: Sampling) -> int:
        """How many of the last generated tokens ``p``'s penalties lower before the chain keeps
        its ``top_k`` or greedy pick (0: none, or they change nothing)."""
        if not penalties_apply(p):
            return 0
        if p.temperature > 0 and (
            "top_k" not in p.samplers or p.samplers.index("penalties") > p.samplers.index("top_k")
        ):
            return 0
        return p.repeat_last_n if p.repeat_last_n > 0 else self.n_ctx

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token (cached; the vocabulary does not change); ``special``: a
        special token's own text, else nothing for one."""
        pieces = self._special_pieces if special else self._pieces
        raw = pieces.get(token)
        if raw is None:
            raw = pieces[token] = token_bytes(self._ll, self._vocab, token, special=special)
        return raw

    def preserved_ids(self, texts: tuple[str, ...]) -> frozenset[int]:
        """The ids of ``texts`` (:attr:`Sampling.preserved_tokens`) that are one token each."""
        ids = self._preserved.get(texts)
        if ids is None:
            ids = self._preserved[texts] = single_token_ids(texts, self._tokenize_special)
        return ids

    def _tokenize_special(self, text: str) -> list[int]:
        raw = text.encode("utf-8")
        n_max = len(raw) + 8
        buf = (self._ll.llama_token * n_max)()
        n = self._ll.llama_tokenize(self._vocab, raw, len(raw), buf, n_max, False, True)
        return list(buf[: max(n, 0)])

    # -- the decode thread ----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closing and not self._queue and not self._any_active():
                    self._cond.wait()
                if self._closing:
                    break
                if self._queue or self._stopped:
                    self._stopped = False
                    self._admit()
                    self._flush()
            try:
                self._step()
            except Exception as exc:  # a bug or llama.cpp failing: fail the requests, keep going
                log.exception("decode step failed")
                for slot in self._slots:
                    if slot.req is not None:
                        self._fail(slot, exc)
            self._flush()
        with self._cond:
            for slot in self._slots:
                if slot.req is not None:
                    self._finish(slot, "abort")
            while self._queue:
                self._abort_queued(self._queue.popleft())
        self._flush()

    def _any_active(self) -> bool:
        return any(s.req is not None for s in self._slots)

    def _admit(self) -> None:
        """Under the lock: drop stopped requests, then hand queued ones to idle slots, in
        order, while their claims fit in the KV cache."""
        for slot in self._slots:
            if slot.req is not None and slot.req.stop_flag:
                self._finish(slot, "abort")
        if any(r.stop_flag for r in self._queue):
            for r in self._queue:
                if r.stop_flag:
                    self._abort_queued(r)
            self._queue = deque(r for r in self._queue if not r.stop_flag)
        while self._queue:
            idle = [s for s in self._slots if s.req is None]
            if not idle:
                break
            req = self._queue[0]
            best = max(idle, key=lambda s: (common_prefix(s.cache, req.prompt), -s.last_used))
            claim = len(req.prompt) + self._first_claim(req)
            # the cells the slot holds now become part of its claim
            if not self._make_room(claim - len(best.cache), keep=best):
                break  # it waits (first in line) until running requests give cells back
            self._queue.popleft()
            if self._prompt_cache.limit:
                self._park_idle(keep=best)
                self._restore(best, req.prompt)
                self._save_replaced(best, req.prompt)
            self._assign(best, req, claim)

    def _save(self, slot: _Slot) -> None:
        """Copy an idle slot's cells into the prompt cache (when they fit in it)."""
        ll = self._ll
        size = int(ll.llama_state_seq_get_size(self._ctx, slot.id))
        if 0 < size <= self._prompt_cache.limit:
            buf = (ctypes.c_uint8 * size)()
            n = int(ll.llama_state_seq_get_data(self._ctx, buf, size, slot.id))
            state = buf if n == size else memoryview(buf)[:n].tobytes()
            if n and self._prompt_cache.put(slot.cache, state):
                self.stats.parked += 1

    def _park(self, slot: _Slot) -> None:
        """Move an idle slot's cells to the prompt cache (when they fit in it) and clear them
        from the KV cache."""
        self._save(slot)
        self._ll.llama_memory_seq_rm(self._mem, slot.id, -1, -1)
        slot.cache.clear()

    def _save_replaced(self, slot: _Slot, prompt: list[int]) -> None:
        """Under the lock, as ``prompt`` starts in ``slot``: when it keeps less than half of
        the slot's cached tokens (the slot held another conversation, and no slot held a
        better start for this one), a copy of those cells goes to the prompt cache before the
        new prompt overwrites them, so that conversation's next turn gets them back (as
        llama-server saves a slot's prompt before loading another one). Without it, whichever
        conversation sat in the least recently used slot lost its cells."""
        n = len(slot.cache)
        if n and 2 * common_prefix(slot.cache, prompt) < n:
            self._save(slot)

    def _park_idle(self, keep: _Slot) -> None:
        """Under the lock, as a request starts in ``keep``: every other idle slot's cells go to
        the prompt cache. A decode step attends over every cell up to the last one used, so
        cells kept for a later turn slow down every running request (llama-server's
        --cache-idle-slots)."""
        for slot in self._slots:
            if slot is not keep and slot.req is None and slot.cache:
                self._park(slot)

    def _restore(self, slot: _Slot, prompt: list[int]) -> None:
        """Give ``slot`` the prompt cache's cells sharing the longest prefix with ``prompt``,
        when that beats what the slot holds and they fit; otherwise leave it as it is."""
        ll = self._ll
        found = self._prompt_cache.best(prompt, better_than=common_prefix(slot.cache, prompt))
        if found is None:
            return
        entry, n = found
        if len(entry.tokens) > self.n_ctx_total - (self._held() - len(slot.cache)):
            return  # no room for all its cells now: the prompt is decoded instead
        if slot.cache:
            self._park(slot)
        buf = entry.state
        if not isinstance(buf, ctypes.Array):
            buf = (ctypes.c_uint8 * len(buf)).from_buffer_copy(buf)  # type: ignore[arg-type]
        if not ll.llama_state_seq_set_data(self._ctx, buf, len(buf), slot.id):
            ll.llama_memory_seq_rm(self._mem, slot.id, -1, -1)  # whatever it placed
            return
        slot.cache = list(entry.tokens)
        self._prompt_cache.remove(entry)
        self.stats.restored += 1
        self.stats.restored_tokens += n

    def _first_claim(self, req: _Request) -> int:
        """Generated tokens' cells ``req`` claims when admitted: all it asked for, or for a
        request without a limit, its fair share of the context (at least MIN_NEW)."""
        if not req.elastic:
            return req.max_new
        return min(req.max_new, max(min(MIN_NEW, self.share), self.share - len(req.prompt)))

    def _held(self) -> int:
        """KV cells spoken for: running requests' claims and idle slots' cached tokens."""
        return sum((s.claim if s.req is not None else len(s.cache)) for s in self._slots)

    def _make_room(self, cells: int, keep: _Slot | None = None) -> bool:
        """Make ``cells`` KV cells free beyond what is spoken for, dropping idle slots' cached
        tokens (least recently used first, never ``keep``'s) if needed; False, dropping
        nothing, when even that would not be enough."""
        free = self.n_ctx_total - self._held()
        if free >= cells:
            return True
        idle = sorted(
            (s for s in self._slots if s.req is None and s is not keep and s.cache),
            key=lambda s: s.last_used,
        )
        if free + sum(len(s.cache) for s in idle) < cells:
            return False
        for slot in idle:
            free += len(slot.cache)
            self._ll.llama_memory_seq_rm(self._mem, slot.id, -1, -1)
            slot.cache.clear()
            self.stats.evictions += 1
            if free >= cells:
                break
        return True

    def _grow(self, slot: _Slot) -> bool:
        """Give a running request without a limit more cells, when it has filled its claim;
        False when none are free."""
        req = slot.req
        assert req is not None
        want = min(GROW, len(req.prompt) + req.max_new - slot.claim)
        idle = sum(len(s.cache) for s in self._slots if s.req is None)
        want = min(want, self.n_ctx_total - self._held() + idle)
        if want <= 0:
            return False
        self._make_room(want)
        slot.claim += want
        return True

    def _assign(self, slot: _Slot, req: _Request, claim: int) -> None:
        prompt = req.prompt
        n_keep = min(common_prefix(slot.cache, prompt), len(prompt) - 1)
        if n_keep < len(slot.cache):
            if not self._ll.llama_memory_seq_rm(self._mem, slot.id, n_keep, -1):
                self._ll.llama_memory_seq_rm(self._mem, slot.id, -1, -1)
                n_keep = 0
            del slot.cache[n_keep:]
        req.result.n_cached = n_keep
        if n_keep:
            self.stats.cache_hits += 1
            self.stats.cached_tokens += n_keep
        slot.req = req
        slot.claim = claim
        slot.params = req.params
        slot.pending = prompt[n_keep:]
        slot.next_token = None
        slot.text = TextStream(req.params.stop)
        slot.t_start = time.perf_counter()
        slot.t_first = None
        slot.last_used = next(self._use)
        if req.max_new <= 0:  # no room to generate (only with a prompt filling the context)
            self._finish(slot, "limit")

    def _step(self) -> None:
        if self._loop is not None and self._loop_step(self._loop):
            return
        ll = self._ll
        batch = self._batch
        tok, pos, nseq, seq, logits = self._b_arrays
        n = 0
        outputs: list[tuple[_Slot, int]] = []
        seqs = 0
        ingesting = []
        for slot in self._slots:
            if slot.req is None:
                continue
            if slot.pending:
                ingesting.append(slot)
            if slot.next_token is not None:
                tok[n] = slot.next_token
                pos[n] = len(slot.cache)
                nseq[n] = 1
                seq[n][0] = slot.id
                logits[n] = 1
                slot.cache.append(slot.next_token)
                slot.next_token = None
                outputs.append((slot, n))
                n += 1
                seqs += 1
        if len(ingesting) > 1:
            ingesting.sort(key=lambda s: s.last_used)
        for slot in ingesting:
            room = N_BATCH - n
            if room <= 0:
                break
            chunk = slot.pending[:room]
            del slot.pending[:room]
            start = len(slot.cache)
            for i, t in enumerate(chunk):
                tok[n] = t
                pos[n] = start + i
                nseq[n] = 1
                seq[n][0] = slot.id
                logits[n] = 0
                n += 1
            slot.cache.extend(chunk)
            self.stats.prompt_tokens += len(chunk)
            seqs += 1
            if not slot.pending:
                logits[n - 1] = 1
                outputs.append((slot, n - 1))
        if n == 0:
            return
        batch.n_tokens = n
        self.stats.steps += 1
        self.stats.max_seqs_in_step = max(self.stats.max_seqs_in_step, seqs)
        if seqs > 1:
            self.stats.multi_seq_steps += 1
        rc = ll.llama_decode(self._ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed (code {rc})")
        with self._cond:
            for slot, idx in outputs:
                if slot.req is not None:
                    self._sample(slot, idx)

    def _loop_step(self, loop: DecodeLoop) -> bool:
        """Decode in C (:mod:`packer.runtime.decode_loop`) for up to the request's ``burst``
        when one request that allows it runs alone and has a token to decode; then take the
        tokens it picked as :meth:`_sample` would have, one by one. The loop picks by argmax
        for a plain greedy request, else with the request's sampler chain: the tokens
        :meth:`_sample` picks (its shortlist gives the chain's answer). Not with a grammar (a
        dead end would throw through llama.cpp's C API and abort, see
        :meth:`_sample_grammar`) or log-probabilities (computed in Python from each token's
        logits). False (nothing done) otherwise: a normal step follows.

        Tokens the loop decoded after a stop string are in the KV cache, so they go into the
        slot's cache too (as a chat's next turn drops them by its common prefix). A request
        queued or stopped meanwhile interrupts the loop (:meth:`submit`, :meth:`_stop`)."""
        with self._cond:
            if self._queue or self._stopped:
                return False
            running = [s for s in self._slots if s.req is not None]
            if len(running) != 1:
                return False
            slot = running[0]
            req = slot.req
            token = slot.next_token
            if (
                req is None
                or token is None
                or slot.pending
                or req.params.grammar is not None
                or req.burst <= 0
                or req.params.n_probs > 0
                or req.stop_flag
            ):
                return False
            # cells it may fill without growing its claim, tokens it may still generate
            room = min(req.max_new - req.result.n_predicted, slot.claim - len(slot.cache))
            if room < 2:
                return False  # a normal step handles the end and the growing
            loop.arm()
        run = loop.run(
            self._ctx,
            self._vocab,
            None if req.greedy else req.sampler,
            token,
            len(slot.cache),
            slot.id,
            room,
            req.params.ignore_eos,
            req.burst,
        )
        if run.why is Why.FAILED:  # _run fails the request
            raise RuntimeError(f"llama_decode failed (code {run.rc})")
        decoded = [token, *run.tokens[:-1]]
        self.stats.steps += len(decoded)
        self.stats.max_seqs_in_step = max(self.stats.max_seqs_in_step, 1)
        with self._cond:
            slot.next_token = None
            n = 0
            for picked in run.tokens:
                slot.cache.append(decoded[n])
                n += 1
                self._take(slot, picked, 0)  # (output 0: unused, no n_probs here)
                if slot.next_token is None:  # the request ended
                    break
                if n < len(run.tokens):  # decoded already: not the next one to decode
                    slot.next_token = None
            slot.cache.extend(decoded[n:])
        return True

    def _sample(self, slot: _Slot, idx: int) -> None:
        ll = self._ll
        req = slot.req
        assert req is not None
        if req.greedy:  # the chain's answer without its 49,152-entry candidate array
            token = self._argmax(idx)
        elif req.shortlist:
            token = self._sample_shortlist(slot, idx)
        elif req.params.grammar is None:
            token = ll.llama_sampler_sample(req.sampler, self._ctx, idx)
        else:
            started = time.thread_time()  # this thread's CPU: other threads' work is not counted
            picked = self._sample_grammar(req.sampler, idx)
            assert req.params.grammar is not None
            slow = grammar_cost.too_slow(req.params.grammar, time.thread_time() - started)
            if picked is None or slow is not None:
                self._refuse(slot, PromptError(slow or GRAMMAR_DEAD_END))
                return
            token = picked
        self._take(slot, token, idx)

    def _take(self, slot: _Slot, token: int, idx: int) -> None:
        """The token picked for ``slot`` from output ``idx`` of the last decode: its text, or
        the end of the request; otherwise it is decoded next (``slot.next_token``)."""
        req = slot.req
        assert req is not None and slot.text is not None
        result = req.result
        now = time.perf_counter()
        if slot.t_first is None:
            slot.t_first = now
        if not req.params.ignore_eos and self._is_eog(token):
            self._finish(slot, "eos")
            return
        result.n_predicted += 1
        self.stats.predicted_tokens += 1
        if req.params.n_probs > 0:
            result.probs.append(self._token_prob(idx, token, req.params.n_probs))
        piece = slot.text.add(self.piece(token, token in req.preserve))
        if piece:
            self._emit(req, piece)
        if slot.text.stopped:
            self._finish(slot, "word")
        elif result.n_predicted >= req.max_new:
            self._finish(slot, "limit")
        elif len(slot.cache) >= slot.claim and not self._grow(slot):
            self.stats.context_full += 1  # the shared context is full: as if this one were
            self._finish(slot, "limit", context_full=True)
        else:
            slot.next_token = token

    def _logits(self, idx: int) -> Any:
        """The logits of output ``idx`` of the last decode, as a numpy view (no copy) of
        llama.cpp's buffer: valid until the next ``llama_decode``.

        Once per generated token, in the Python between two decodes, which runs with caches
        the weights have just flushed: every object made there costs. So the address comes
        back as a plain int, and the view of each address is made once (llama.cpp keeps its
        logits buffer from one decode to the next: one view per output row); making a view
        from a ctypes pointer each time took ~50 µs of the ~225 µs between decodes."""
        addr = self._logits_at(self._ctx, idx)
        if not addr:
            raise RuntimeError(f"llama.cpp has no logits for output {idx}")
        view = self._views.get(addr)
        if view is None:
            import numpy as np

            if len(self._views) >= 4 * self.n_parallel:  # the buffer moved: forget old rows
                self._views.clear()
            row = (ctypes.c_float * self.n_vocab).from_address(addr)
            view = self._views[addr] = np.ctypeslib.as_array(row)
        return view

    def _argmax(self, idx: int) -> int:
        """The token with the largest logit at output ``idx``, the first of equals, as
        llama.cpp's greedy sampler picks it.

        Not llama.cpp's backend sampling (``llama_set_sampler`` with a greedy chain: the
        argmax in the decode graph, no logits copied out): the same tokens, but 0.978x of this
        path's generation speed (zen4 variant on a Zen 4 VM, 30 alternations in one process,
        0.899-1.051); each attach and detach also makes the next decode reserve the graph
        again, and attaching a chain a second time aborts the process."""
        return int(self._logits(idx).argmax())

    def _sample_shortlist(self, slot: _Slot, idx: int) -> int:
        """``llama_sampler_sample`` of a :func:`shortlist_k` request: the chain run over the
        tokens the chain may move before it keeps ``k`` (the logit bias's, and the generated
        tokens its penalties look back over: ``e`` of them) and every token whose raw logit
        reaches the ``(k + e)``-th largest.

        Why that is the chain's answer: every other token keeps its logit up to ``top_k`` or
        the greedy pick (temperature scales all alike), so a token the chain keeps can only
        have the ``e`` moved ones and fewer than ``k`` unmoved ones over it in the raw logits:
        it is on the shortlist, and so is every token equal to it. ``top_k`` then keeps the
        same tokens, and what follows it (typical, top-p, min-p, temperature, the draw) sees
        only those; the draw takes one number from the seeded generator either way. The
        shortlist is in token order, as the whole array is, so the greedy pick (the first of
        equal largest logits) is the same token."""
        import numpy as np

        ll = self._ll
        req = slot.req
        assert req is not None
        logits = self._logits(idx)
        moved = {t for t, _ in req.params.logit_bias}
        if req.watched:
            moved.update(slot.cache[max(len(req.prompt), len(slot.cache) - req.watched) :])
        m = req.shortlist + len(moved)
        if m * SHORTLIST_SHARE > self.n_vocab:  # as much work as the whole array
            return int(ll.llama_sampler_sample(req.sampler, self._ctx, idx))
        ids = top_indices(logits, m)  # in token order
        moved.difference_update(ids.tolist())
        if moved:
            ids = np.concatenate((ids, np.fromiter(moved, dtype=ids.dtype, count=len(moved))))
            ids.sort()
        candidates = self._candidate_array()
        cur = candidates.fill_some(ids, logits)
        ll.llama_sampler_apply(req.sampler, ctypes.byref(cur))
        sel = cur.selected
        if not 0 <= sel < cur.size:
            raise RuntimeError(f"llama.cpp's sampler chain selected no token ({sel})")
        token = candidates.token(sel)
        ll.llama_sampler_accept(req.sampler, token)
        return token

    def _candidate_array(self) -> _Candidates:
        """The decode thread's candidate array, made on first use."""
        if self._candidates is None:
            self._candidates = _Candidates(self._ll, self.n_vocab)
        return self._candidates

    def _sample_grammar(self, sampler: Any, idx: int) -> int | None:
        """``llama_sampler_sample`` in its two steps, for a chain with a grammar: when the
        grammar allows no token here, llama.cpp would accept a refused one anyway and throw
        through its C API, which aborts the whole process. None in that case."""
        ll = self._ll
        cur = self._candidate_array().fill(self._logits(idx))
        ll.llama_sampler_apply(sampler, ctypes.byref(cur))
        sel = cur.selected
        # the grammar sets the logit of every token it refuses to -inf; no sampler after it
        # makes one finite again
        if not 0 <= sel < cur.size or not cur.data[sel].logit > -math.inf:
            return None
        token = int(cur.data[sel].id)
        ll.llama_sampler_accept(sampler, token)
        return token

    def _refuse(self, slot: _Slot, exc: Exception) -> None:
        """End the slot's request with ``exc`` for its caller (under the lock); what the slot
        decoded stays cached."""
        req = slot.req
        assert req is not None
        self._ll.llama_sampler_free(req.sampler)
        req.sampler = None
        slot.req = None
        slot.claim = 0
        slot.next_token = None
        slot.text = None
        self._emit(req, exc)

    def _emit(self, req: _Request, item: Any) -> None:
        """Queue ``item`` for ``req``'s caller; delivered by :meth:`_flush` at the end of the
        step, so that the callers' threads wake while llama_decode runs, not between the
        sampling calls (fewer GIL hand-overs in the decode thread).

        A request with ``every`` (text for a person: the terminal's one-shot and chat) gets
        its first piece at once and then at most one piece per ``every`` seconds, the text
        decoded in between joined: each hand-over wakes the caller's thread, which then takes
        a core from the decode's threads in the middle of the next ``llama_decode`` (on two
        cores, ~1 % of generation speed on the demo model at ~130 tokens/s). The end of the
        request (or its error) hands over what is held first."""
        if req.every > 0:
            if isinstance(item, str):
                req.held.append(item)
                now = time.perf_counter()
                if now < req.due:
                    return
                req.due = now + req.every
                item = "".join(req.held)
                req.held.clear()
            elif req.held:
                self._outbox.append((req.out, "".join(req.held)))
                req.held.clear()
        self._outbox.append((req.out, item))

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        for out, item in outbox:
            out.put(item)

    def _is_eog(self, token: int) -> bool:
        eog = self._eog.get(token)
        if eog is None:
            eog = self._eog[token] = bool(self._ll.llama_vocab_is_eog(self._vocab, token))
        return eog

    def _token_prob(self, idx: int, token: int, n: int) -> TokenProb:
        """The chosen token's log-probability and the ``n`` most likely tokens' (the most likely
        first; of equal ones, the lower id first), from the raw logits as llama-server's
        ``n_probs``. The normaliser is summed in float64 over exponentials taken in float32
        (a relative error of ~1e-7 in the probabilities), and the ``n`` are found with
        :func:`top_indices`: ~4 times less time per token than a float64 copy of the logits
        and a partition of all of them."""
        import numpy as np

        logits = self._logits(idx)
        top_logit = float(logits.max())
        lse = top_logit + math.log(float(np.exp(logits - top_logit).sum(dtype=np.float64)))
        n = min(n, self.n_vocab)
        best = top_indices(logits, n)  # in token order, ties at the n-th included
        best = best[np.argsort(-logits[best], kind="stable")][:n]
        top = [(int(t), self._text(int(t)), float(logits[t]) - lse) for t in best]
        return TokenProb(token, self._text(token), float(logits[token]) - lse, top)

    def _text(self, token: int) -> str:
        return self.piece(token).decode("utf-8", errors="replace")

    def _finish(self, slot: _Slot, stop_type: str, context_full: bool = False) -> None:
        """End the slot's request (under the lock): flush its text, fill its result, free its
        sampler; the slot keeps its cache for the next request."""
        req = slot.req
        assert req is not None and slot.text is not None
        result = req.result
        tail = slot.text.finish()
        if tail:
            self._emit(req, tail)
        now = time.perf_counter()
        t_first = slot.t_first or now
        result.text = slot.text.text
        result.stop_type = stop_type
        result.stopping_word = slot.text.stopping_word
        if stop_type == "limit":
            result.truncated = context_full or req.max_new == req.room
        result.t_prompt_ms = (t_first - slot.t_start) * 1e3
        result.t_predicted_ms = (now - t_first) * 1e3
        self._avg_s = 0.8 * self._avg_s + 0.2 * (now - req.t_submit)
        self._ll.llama_sampler_free(req.sampler)
        req.sampler = None
        if slot.pending:  # stopped while reading its prompt: that part of the cache is unknown
            slot.pending = []
        slot.req = None
        slot.claim = 0
        slot.next_token = None
        slot.text = None
        self._emit(req, _DONE)

    def _fail(self, slot: _Slot, exc: Exception) -> None:
        with self._cond:
            req = slot.req
            assert req is not None
            self._ll.llama_memory_seq_rm(self._mem, slot.id, -1, -1)
            slot.cache.clear()
            self._ll.llama_sampler_free(req.sampler)
            slot.req = None
            slot.claim = 0
            slot.next_token = None
            slot.pending = []
            self._emit(req, RuntimeError(f"generation failed: {exc}"))

    def _abort_queued(self, req: _Request) -> None:
        req.result.stop_type = "abort"
        self._ll.llama_sampler_free(req.sampler)
        self._emit(req, _DONE)


class Threadpool:
    """A ggml CPU threadpool attached to one llama.cpp context (llama-cpp-python binds none of
    this: the functions come from libllama's ggml and from the loaded CPU backend)."""

    def __init__(self, pools: list[int], free: Callable[[int], None]) -> None:
        self._pools = pools
        self._free = free

    @classmethod
    def attach(cls, ll: Any, ctx: Any, n_threads: int, n_threads_batch: int) -> Threadpool | None:
        """The pools attached to ``ctx`` (one for generation; another for prompt batches when
        ``n_threads_batch`` differs, as llama-server's ``-tb``); None (ggml's own per-decode
        pools) where this llama.cpp or its CPU backend does not offer them."""
        try:
            lib = ll.llama_cpp._lib
            g = ggml_api.bind(lib)
            p = ctypes.c_void_p
            attach = lib.llama_attach_threadpool
            attach.restype, attach.argtypes = None, [p, p, p]
            dev = g.backend_dev_by_type(ggml_api.DEVICE_KINDS.index("cpu"))
            reg = g.backend_dev_backend_reg(dev) if dev else None
            new_at = g.backend_reg_get_proc_address(reg, b"ggml_threadpool_new") if reg else None
            free_at = g.backend_reg_get_proc_address(reg, b"ggml_threadpool_free") if reg else None
            if not new_at or not free_at:
                return None
            new = ctypes.CFUNCTYPE(p, ctypes.POINTER(ggml_api.ThreadpoolParams))(new_at)
            free = ctypes.CFUNCTYPE(None, p)(free_at)

            def make(threads: int) -> int | None:
                params = ggml_api.ThreadpoolParams()
                g.threadpool_params_init(ctypes.byref(params), threads)
                return new(ctypes.byref(params))

            pools = [make(n_threads)]
            if n_threads_batch != n_threads:
                pools.append(make(n_threads_batch))
            if not all(pools):
                for pool in filter(None, pools):
                    free(pool)
                return None
            attach(ctx, pools[0], pools[-1] if len(pools) > 1 else None)
            return cls(pools, free)
        except (AttributeError, OSError) as exc:  # an older llama.cpp: ggml's own pools
            log.debug("no ggml threadpool: %s", exc)
            return None

    def free(self) -> None:
        """After the context is freed."""
        for pool in self._pools:
            self._free(pool)


class _Candidates:
    """One ``llama_token_data_array`` over the whole vocabulary, refilled for each token."""

    def __init__(self, ll: Any, n_vocab: int) -> None:
        import numpy as np

        self._ll = ll
        self._n = n_vocab
        fields = [("id", np.intc), ("logit", np.single), ("p", np.single)]
        self._data = np.zeros(n_vocab, dtype=np.dtype(fields, align=True))
        self._ids = np.arange(n_vocab, dtype=np.intc)
        self._array = ll.llama_token_data_array(
            data=self._data.ctypes.data_as(ll.llama_token_data_p),
            size=n_vocab,
            selected=-1,
            sorted=False,
        )

    def fill(self, logits: Any) -> Any:
        self._data["id"] = self._ids
        self._data["logit"] = logits
        self._data["p"] = 0.0
        return self._reset(self._n)

    def fill_some(self, ids: Any, logits: Any) -> Any:
        """The tokens ``ids`` only (distinct), with their ``logits``."""
        n = len(ids)
        part = self._data[:n]
        part["id"] = ids
        part["logit"] = logits[ids]
        part["p"] = 0.0
        return self._reset(n)

    def _reset(self, size: int) -> Any:
        arr = self._array
        arr.size = size
        arr.selected = -1
        arr.sorted = False
        return arr

    @property
    def size(self) -> int:
        return self._n

    def logits(self) -> Any:
        """The logits after the samplers applied to the last :meth:`fill` (in place: the
        grammar sets refused tokens to -inf without reordering)."""
        return self._data["logit"][: self._array.size]

    def token(self, i: int) -> int:
        return int(self._data["id"][i])


def single_token_ids(
    texts: Iterable[str], tokenize: Callable[[str], Sequence[int]]
) -> frozenset[int]:
    """The ids of the markers (a reasoning family's :attr:`~packer.runtime.reasoning.Markers.
    preserved`, a tool format's markers) that are one token each. The decode loop renders
    these with their text even when they are special (control) tokens, as llama-server does
    with its "preserved tokens"; other special tokens stay unrendered. ``tokenize``: text to
    ids with special tokens parsed, no BOS."""
    ids: set[int] = set()
    for text in texts:
        tokens = list(tokenize(text))
        if len(tokens) == 1:
            ids.add(int(tokens[0]))
    return frozenset(ids)


def token_bytes(ll: Any, vocab: Any, token: int, special: bool = False) -> bytes:
    """The bytes of one token, as llama.cpp's server streams them (no 32-byte limit)."""
    size = 64
    while True:
        buf = ctypes.create_string_buffer(size)
        n = ll.llama_token_to_piece(vocab, token, buf, size, 0, special)
        if n >= 0:
            return buf.raw[:n]
        size = -n
