"""packer.runtime.scheduler: continuous batching on the real small model (SmolLM2-135M-Instruct Q4_1).

Several requests share one llama.cpp context (4 slots, one unified KV cache) and are decoded
together; these tests check that batching changes nothing in the output, that it really
batches, and the slot bookkeeping around it (prefix cache, cancellation, queue limit, grammar, log-probabilities).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
import requests
from conftest import smollm_gguf_path

from packer.runtime import generate as gen
from packer.runtime import scheduler as sched
from packer.runtime.engine import Engine, EngineOptions, Sampling
from packer.runtime.scheduler import QueueFull, plain_greedy, shortlist_k, top_indices
from packer.runtime.server import make_server

SLOTS = 4
PROMPTS = [
    "Once upon a time",
    "The capital of France is",
    "def fibonacci(n):",
    "My favourite colour is",
]
GREEDY = {"temperature": 0.0, "max_tokens": 20, "ignore_eos": True}
# Batched or alone, cached prompt or not, the same CPU variant computed the same logits (before
# the unified KV cache, see test_concurrent_greedy_equals_alone_and_is_batched): bit for
# bit on 12 of the 13 variants measured; ivybridge's batched steps differ by 8e-6 at most, and
# the greedy paths of PROMPTS stay further from a tie than that (0.0013 at the least). Across
# variants they are near ties (tests/answers.py): answers are compared here, never asserted.


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    eng = Engine(smollm_gguf_path(), EngineOptions(n_ctx=2048, n_threads=2, n_parallel=SLOTS))
    yield eng
    eng.close()


def _run(engine: Engine, prompt: str | list[int], params: Sampling) -> gen.GenResult:
    result = gen.GenResult()
    tokens = gen.completion_tokens(engine, prompt) if isinstance(prompt, str) else prompt
    text = "".join(gen.generate(engine, tokens, params, result))
    assert text == result.text
    return result


def _idle_within(engine: Engine, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while engine.scheduler.busy() or engine.scheduler.queued:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _long_running(engine: Engine, n: int) -> list[tuple[Iterator[str], gen.GenResult]]:
    """``n`` generations that would run for minutes, each started (first piece received)."""
    out = []
    for i in range(n):
        result = gen.GenResult()
        prompt = gen.completion_tokens(engine, f"Story number {i}:")
        params = Sampling(max_tokens=100_000, ignore_eos=True, seed=i)
        out.append((gen.generate(engine, prompt, params, result), result))
    return out


def test_every_request_may_use_the_whole_context(engine: Engine) -> None:
    # one unified KV cache: a slot is not limited to n_ctx / n_parallel (512) tokens
    assert engine.scheduler.n_parallel == SLOTS
    assert engine.n_ctx == engine.scheduler.n_ctx_total == 2048
    r = _run(engine, "hello " * 600, Sampling(max_tokens=4, ignore_eos=True))
    assert r.n_prompt > 512 and r.n_predicted == 4
    with pytest.raises(gen.PromptError) as exc:
        _run(engine, "hello " * 2100, Sampling(max_tokens=4))
    assert exc.value.n_ctx == 2048 and exc.value.n_prompt is not None and exc.value.n_prompt > 2048


@pytest.mark.parametrize("repeat_penalty", [1.1, 1.0], ids=["chain", "argmax"])
def test_concurrent_greedy_equals_alone_and_is_batched(
    engine: Engine, repeat_penalty: float
) -> None:
    """With penalties the greedy pick goes through the sampler chain; without, it is the
    argmax of each slot's logits (see plain_greedy): batched as alone, either way."""
    params = Sampling(**GREEDY, repeat_penalty=repeat_penalty)
    alone = [_run(engine, p, params).text for p in PROMPTS]
    assert all(alone) and len(set(alone)) == len(alone)

    stats = engine.scheduler.stats
    multi_before = stats.multi_seq_steps
    together: dict[int, str] = {}
    start = threading.Barrier(len(PROMPTS))

    def go(i: int) -> None:
        start.wait()
        together[i] = _run(engine, PROMPTS[i], replace(params)).text

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    # With one unified KV cache a sequence's attention runs over cells of the others too
    # (masked), and ggml splits that range between threads by its length, so batched logits
    # may differ from alone ones in the last bits (llama-server -kvu alike): a greedy answer
    # may take another turn at a near tie, never a different start.
    got = [together.get(i) or "" for i in range(len(PROMPTS))]
    assert all(g[:8] == a[:8] for g, a in zip(got, alone, strict=True)), (got, alone)
    assert len(set(got)) == len(got)
    # the steps really put several sequences into one llama_decode
    assert stats.max_seqs_in_step >= 2
    assert stats.multi_seq_steps - multi_before >= GREEDY["max_tokens"] // 2


def test_prefix_cache(engine: Engine) -> None:
    base = gen.completion_tokens(engine, "A long shared system prompt about the solar system. ")
    first = _run(engine, base, Sampling(max_tokens=3, temperature=0.0))
    assert first.n_cached < len(base)
    hits = engine.scheduler.stats.cache_hits

    # the same prompt again: all but the last token come from the slot's cache
    again = _run(engine, base, Sampling(max_tokens=3, temperature=0.0))
    assert again.n_cached == len(base) - 1
    assert again.text == first.text
    assert again.timings()["prompt_n"] == 1

    # a longer prompt starting with it: only the new part is decoded
    longer = base + gen.tokenize(engine, "Tell me about Mars.", add_special=False)
    more = _run(engine, longer, Sampling(max_tokens=3, temperature=0.0))
    assert more.n_cached == len(base)
    assert engine.scheduler.stats.cache_hits == hits + 2


def test_closing_the_iterator_frees_the_slot(engine: Engine) -> None:
    assert _idle_within(engine, 30)
    pieces, result = _long_running(engine, 1)[0]
    next(pieces)
    assert engine.scheduler.busy()
    pieces.close()  # what the server does when the client is gone
    assert _idle_within(engine, 10), "the slot was not freed"
    assert result.stop_type == "abort"


def test_every_joins_the_pieces_between_hand_overs(engine: Engine) -> None:
    """Text for a person (``every``): the first piece at once, then at most one piece per
    ``every`` seconds holding the text decoded in between; the same text, the end's tail and
    stop string handling included."""
    tokens = gen.completion_tokens(engine, PROMPTS[0])
    params = Sampling(**GREEDY | {"max_tokens": 24}, stop=["zzz-never"])

    def pieces(every: float) -> tuple[list[str], gen.GenResult]:
        result = gen.GenResult()
        return list(gen.generate(engine, tokens, params, result, every=every)), result

    each, r_each = pieces(0.0)
    held, r_held = pieces(3600.0)  # nothing is due again within the request
    assert len(each) >= 12  # a piece per token or so
    assert held == [each[0], "".join(each[1:])]
    assert r_held.text == r_each.text == "".join(each)
    assert r_held.n_predicted == r_each.n_predicted == 24
    # closing the iterator early still frees the slot with text held back
    result = gen.GenResult()
    it = gen.generate(
        engine, tokens, Sampling(max_tokens=100_000, ignore_eos=True), result, every=3600.0
    )
    assert next(it)
    it.close()
    assert _idle_within(engine, 10) and result.stop_type == "abort"


def test_cancel_callback_frees_the_slot(engine: Engine) -> None:
    assert _idle_within(engine, 30)
    gone = threading.Event()
    result = gen.GenResult()
    prompt = gen.completion_tokens(engine, "Write a very long story.")
    params = Sampling(max_tokens=100_000, ignore_eos=True)
    pieces = gen.generate(engine, prompt, params, result, cancelled=gone.is_set)
    for n, _ in enumerate(pieces, 1):
        if n == 3:
            gone.set()
    assert result.stop_type == "abort" and 3 <= result.n_predicted < 1000
    assert _idle_within(engine, 10)


def test_queue_full(engine: Engine) -> None:
    assert _idle_within(engine, 30)
    sched = engine.scheduler
    old = sched.max_queue
    sched.max_queue = 1
    running = _long_running(engine, SLOTS)
    try:
        for pieces, _ in running:
            next(pieces)  # all four slots generating
        waited = gen.GenResult()
        hi = gen.completion_tokens(engine, "Hi")
        waiting = gen.generate(engine, hi, Sampling(max_tokens=2, ignore_eos=True), waited)
        assert sched.queued == 1
        with pytest.raises(QueueFull) as exc:
            gen.generate(
                engine, gen.completion_tokens(engine, "Hi"), Sampling(max_tokens=2), gen.GenResult()
            )
        assert exc.value.retry_after >= 1 and "--max-queue 1" in str(exc.value)

        srv = make_server(engine, "127.0.0.1", 0)
        t = threading.Thread(target=srv.serve_forever, daemon=True)
        t.start()
        try:
            r = requests.post(srv.url + "/completion", json={"prompt": "Hi"}, timeout=30)
            assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
            assert r.json()["error"]["code"] == 503 and "busy" in r.json()["error"]["message"]
            r = requests.post(
                srv.url + "/v1/chat/completions",
                json={"model": "x", "messages": [{"role": "user", "content": "Hi"}]},
                timeout=30,
            )
            assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
            err = r.json()["error"]
            assert err["type"] == "unavailable_error" and "busy" in err["message"]

            slots = requests.get(srv.url + "/slots", timeout=30).json()
            assert [s["id"] for s in slots] == list(range(SLOTS))
            assert all(s["is_processing"] and s["n_ctx"] == engine.n_ctx for s in slots)
            assert all(s["next_token"]["n_decoded"] >= 1 for s in slots)
            assert all(s["params"]["n_predict"] == 100_000 for s in slots)
            props = requests.get(srv.url + "/props", timeout=30).json()
            assert props["total_slots"] == SLOTS
            assert props["default_generation_settings"]["is_processing"] is True
        finally:
            srv.shutdown()
            srv.server_close()
        # the queued request runs once a slot is free
        running[0][0].close()
        assert "".join(waiting) == waited.text and waited.n_predicted == 2
    finally:
        sched.max_queue = old
        for pieces, _ in running:
            pieces.close()
    assert _idle_within(engine, 10)


def test_grammar_constrains_the_output(engine: Engine) -> None:
    params = Sampling(grammar='root ::= [0-9]+ " apples"', max_tokens=12, seed=3)
    r = _run(engine, "How many apples are on the table? Answer:", params)
    digits, _, rest = r.text.partition(" ")
    assert digits.isdigit(), r.text
    assert rest in ("apples", "apples"[: len(rest)]), r.text


def test_invalid_grammar_is_a_prompt_error(engine: Engine) -> None:
    prompt = gen.completion_tokens(engine, "Hi")
    for bad in ("root ::= [0-9", "root ::= undefined-rule", 'start ::= "a"'):
        with pytest.raises(gen.PromptError, match="invalid grammar"):
            gen.generate(engine, prompt, Sampling(grammar=bad), gen.GenResult())
    assert _run(engine, "Hi", Sampling(max_tokens=2, ignore_eos=True)).n_predicted == 2


def test_logprobs(engine: Engine) -> None:
    params = Sampling(temperature=0.0, repeat_penalty=1.0, n_probs=5, max_tokens=8)
    result = gen.GenResult()
    seen: list[int] = []
    pieces = gen.generate(engine, gen.completion_tokens(engine, "The sky is"), params, result)
    for piece in pieces:
        assert piece
        seen.append(len(result.probs))  # an entry comes before the text it holds
    assert seen and seen[0] >= 1
    assert len(result.probs) == result.n_predicted
    for p in result.probs:
        assert len(p.top) == 5
        lps = [lp for _, _, lp in p.top]
        assert lps == sorted(lps, reverse=True)
        assert all(lp <= 0 for lp in lps) and p.logprob <= 0
        assert sum(math.exp(lp) for lp in lps) <= 1 + 1e-6
        # greedy without penalties: the chosen token is the most likely one
        assert p.top[0][0] == p.token and p.top[0][2] == pytest.approx(p.logprob)
        assert p.text == p.top[0][1]
    assert "".join(p.text for p in result.probs).startswith(result.text)


@pytest.mark.parametrize("n", [1, 5, 20])
def test_token_prob_matches_the_whole_vocabulary_in_float64(n: int) -> None:
    """The log-probabilities of ``n_probs`` (float32 exponentials summed in float64, the top
    ``n`` from :func:`top_indices`) against a float64 softmax over the whole vocabulary."""
    import types

    import numpy as np

    rng = np.random.default_rng(n)
    logits = (rng.standard_normal(49_152) * 4).astype(np.float32)
    logits[[7, 900, 31_000]] = logits.max() + 1  # three equal most likely tokens
    fake = types.SimpleNamespace(
        _logits=lambda idx: logits, n_vocab=len(logits), _text=lambda t: f"<{t}>"
    )
    got = sched.Scheduler._token_prob(fake, 0, 1234, n)  # type: ignore[arg-type]
    l64 = logits.astype(np.float64)
    lse = float(np.log(np.exp(l64 - l64.max()).sum()) + l64.max())
    order = sorted(range(len(l64)), key=lambda t: (-l64[t], t))[:n]  # equal ones: lower id first
    assert [t for t, _, _ in got.top] == order
    assert [text for _, text, _ in got.top] == [f"<{t}>" for t in order]
    for t, _, lp in got.top:
        assert lp == pytest.approx(l64[t] - lse, abs=1e-6)
    assert got.token == 1234 and got.text == "<1234>"
    assert got.logprob == pytest.approx(l64[1234] - lse, abs=1e-6)


@pytest.mark.parametrize(
    ("changes", "plain"),
    [
        ({}, True),  # greedy, penalty factor 1
        ({"repeat_penalty": 1.1}, False),
        ({"repeat_penalty": 1.1, "repeat_last_n": 0}, True),  # looks back over nothing
        ({"repeat_penalty": 1.1, "samplers": ("top_k", "min_p")}, True),  # penalties left out
        ({"presence_penalty": 0.5}, False),
        ({"frequency_penalty": 0.5}, False),
        ({"logit_bias": ((5, 0.0),)}, False),
        ({"grammar": 'root ::= "a"'}, False),
        ({"temperature": 0.7}, False),
        ({"temperature": -1.0}, False),  # a draw from the unmodified distribution
        ({"n_probs": 3, "mirostat": 2, "stop": ["x"]}, True),  # they do not change the pick
    ],
)
def test_plain_greedy(changes: dict, plain: bool) -> None:
    base = Sampling(temperature=0.0, repeat_penalty=1.0)
    assert plain_greedy(replace(base, **changes)) is plain


def test_plain_greedy_picks_what_the_chain_picks(engine: Engine) -> None:
    """The argmax shortcut gives the tokens llama.cpp's greedy sampler chain gives: a zero
    logit bias changes no logit but sends the request through the chain."""
    for prompt in PROMPTS:
        params = Sampling(temperature=0.0, repeat_penalty=1.0, max_tokens=24, ignore_eos=True)
        assert plain_greedy(params)
        via_chain = replace(params, logit_bias=((0, 0.0),))
        assert not plain_greedy(via_chain)
        assert _run(engine, prompt, params).text == _run(engine, prompt, via_chain).text


@pytest.mark.parametrize(
    ("changes", "k"),
    [
        ({}, 40),  # the defaults: penalties, top_k 40, typical, top-p, min-p, temperature
        ({"top_k": 5, "repeat_penalty": 1.0}, 5),
        ({"presence_penalty": 0.5, "frequency_penalty": 0.2}, 40),
        ({"logit_bias": ((5, 3.0),)}, 40),  # the biased tokens join the shortlist
        ({"samplers": ("temperature", "top_k", "min_p")}, 40),  # scaling keeps the order
        ({"samplers": ("top_k", "penalties"), "repeat_penalty": 0.8}, 40),  # after top_k
        ({"repeat_penalty": 0.8}, 0),  # a factor under 1 raises the tokens it looks at
        ({"presence_penalty": -0.5}, 0),
        ({"frequency_penalty": -0.5}, 0),
        ({"samplers": ("min_p", "top_k")}, 0),  # min-p needs the whole distribution
        ({"samplers": ("penalties", "typ_p", "top_k")}, 0),
        ({"samplers": ("penalties", "top_p", "min_p")}, 0),  # no top_k at all
        ({"top_k": 0}, 0),  # top_k off
        ({"temperature": 0.0}, 1),  # greedy after the penalties
        ({"temperature": 0.0, "mirostat": 2}, 1),  # mirostat needs a temperature
        ({"temperature": 0.0, "logit_bias": ((5, 3.0),)}, 1),
        ({"temperature": 0.0, "repeat_penalty": 0.8}, 0),
        ({"temperature": 0.0, "repeat_penalty": 0.8, "samplers": ("top_k",)}, 1),  # no penalties
        ({"temperature": -1.0}, 0),  # a draw from the whole distribution
        ({"mirostat": 2}, 0),
        ({"grammar": 'root ::= "a"'}, 0),
        ({"grammar": 'root ::= "a"', "temperature": 0.0}, 0),
    ],
)
def test_shortlist_k(changes: dict, k: int) -> None:
    assert shortlist_k(replace(Sampling(), **changes)) == k


def test_top_indices() -> None:
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(5)
    spread = rng.normal(0, 3, 49_152).astype(np.float32)
    clustered = np.sort(spread)  # every large value in the last stride: the whole vector
    ties = np.round(spread).astype(np.float32)  # many equal values
    for values in (spread, clustered, ties, spread[:300], spread[:1]):
        for k in (1, 40, 104, 250):
            if k > len(values):
                continue
            got = top_indices(values, k)
            want = np.flatnonzero(values >= np.sort(values)[-k])  # ties at the edge included
            assert got.tolist() == want.tolist()
            assert len(got) >= k


@pytest.mark.parametrize(
    "changes",
    [
        {},  # the runtime's defaults
        {"repeat_penalty": 1.5, "repeat_last_n": 16},
        {"repeat_penalty": 1.3, "repeat_last_n": -1},  # the whole context
        {"presence_penalty": 1.0, "frequency_penalty": 0.5},
        {"logit_bias": ((28, 5.0), (314, 3.0), (100, -2.0))},
        {"top_k": 5, "temperature": 1.5},
        {"samplers": ("temperature", "top_k", "min_p"), "min_p": 0.01, "temperature": 2.0},
        {"temperature": 0.0},  # greedy after the default repeat penalty
        {"temperature": 0.0, "repeat_penalty": 1.5, "repeat_last_n": 8},
        {"temperature": 0.0, "repeat_penalty": 1.0, "logit_bias": ((13, 4.0),)},
    ],
)
def test_shortlist_picks_what_the_chain_picks(
    engine: Engine, changes: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chain run on a shortlist picks the tokens the chain run on the whole vocabulary
    picks, seed for seed."""
    for prompt in PROMPTS[:3]:
        for seed in (1, 2):
            params = replace(Sampling(max_tokens=48, seed=seed, ignore_eos=True), **changes)
            assert shortlist_k(params) and not plain_greedy(params)
            short = _run(engine, prompt, params).text
            with monkeypatch.context() as m:
                m.setattr(sched, "shortlist_k", lambda p: 0)  # the whole vocabulary
                assert _run(engine, prompt, params).text == short


def test_a_slot_taken_by_another_conversation_keeps_a_copy() -> None:
    """One slot: conversation B takes the slot conversation A sat in; A's cells are copied
    to host memory first, so A's next turn gets them back instead of decoding them again."""
    one = Engine(smollm_gguf_path(), EngineOptions(n_ctx=1024, n_threads=2, n_parallel=1))
    try:
        sched = one.scheduler
        params = Sampling(**GREEDY)
        first = _run(one, PROMPTS[0], params)
        saved = sched.stats.parked
        _run(one, PROMPTS[1], params)  # another conversation in the same slot
        assert sched.stats.parked == saved + 1
        turn = gen.completion_tokens(one, PROMPTS[0]) + gen.tokenize(
            one, first.text + " And then", add_special=False
        )
        restored = sched.stats.restored
        again = _run(one, turn, params)
        assert sched.stats.restored == restored + 1
        assert again.n_cached > len(gen.completion_tokens(one, PROMPTS[0]))
        # a next turn of the conversation in the slot keeps its cells and saves no copy
        saved = sched.stats.parked
        _run(one, turn + gen.tokenize(one, again.text, add_special=False), params)
        assert sched.stats.parked == saved
    finally:
        one.close()


def test_seeds_per_request(engine: Engine) -> None:
    def sample(seed: int) -> str:
        s = Sampling(temperature=1.0, max_tokens=16, seed=seed, ignore_eos=True)
        return _run(engine, "Once upon a time", s).text

    assert sample(7) == sample(7)
    assert len({sample(-1) for _ in range(3)}) > 1


def test_threads_batch_gets_a_pool_of_its_own(engine: Engine) -> None:
    """-tb N: prompts are read by a second ggml threadpool of N threads, generation by -t's;
    the thread counts change how the work is split, not the answer."""
    other = Engine(smollm_gguf_path(), EngineOptions(n_ctx=2048, n_threads=2, n_threads_batch=1))
    try:
        pool = other.scheduler._threadpool
        assert pool is not None and len(pool._pools) == 2
        assert len(engine.scheduler._threadpool._pools) == 1  # -tb = -t: one pool
        params = Sampling(**GREEDY)
        prompt = "The capital of France is a city where"
        assert _run(other, prompt, params).text == _run(engine, prompt, params).text
    finally:
        other.close()


def test_preserved_tokens_show_their_text(engine: Engine) -> None:
    """A special token is shown only when the request preserves it (the markers of reasoning
    and tool calls, Sampling.preserved_tokens); texts of several tokens are ignored."""
    special = "<|im_start|>"  # a control token of SmolLM2's vocabulary, not an end of turn
    (token,) = gen.tokenize(engine, special, add_special=False)
    forced = Sampling(temperature=0.0, max_tokens=1, ignore_eos=True, logit_bias=((token, 100.0),))
    assert _run(engine, "Hello", forced).text == ""
    kept = replace(forced, preserved_tokens=(special, "not one token"))
    assert _run(engine, "Hello", kept).text == special
    assert engine.scheduler.preserved_ids(kept.preserved_tokens) == {token}


def test_idle_slots_move_to_host_memory_and_come_back(engine: Engine) -> None:
    """As a request starts, the other idle slots' cells leave the shared KV cache (a decode
    step attends over every cell up to the last one used: kept cells slowed one stream by
    15 %), and a prompt that starts like one of them gets its cells back from host memory."""
    sched = engine.scheduler
    ll, mem = sched._ll, sched._mem
    # four conversations in four slots, together
    done: dict[int, gen.GenResult] = {}
    start = threading.Barrier(len(PROMPTS))

    def go(i: int) -> None:
        start.wait()
        done[i] = _run(engine, PROMPTS[i], Sampling(**GREEDY))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(done) == len(PROMPTS) and _idle_within(engine, 30)
    parked, restored = sched.stats.parked, sched.stats.restored

    # one new request: every other slot's cells go to the prompt cache, only its own remain
    alone = _run(engine, "Water boils at", Sampling(**GREEDY))
    assert alone.n_predicted == GREEDY["max_tokens"]
    assert sched.stats.parked - parked >= len(PROMPTS) - 1
    holding = [s.id for s in sched._slots if ll.llama_memory_seq_pos_max(mem, s.id) >= 0]
    assert len(holding) == 1

    # the first conversation's next turn: its cells come back instead of being decoded again
    turn = gen.completion_tokens(engine, PROMPTS[0]) + gen.tokenize(
        engine, done[0].text + " And then", add_special=False
    )
    again = _run(engine, turn, Sampling(**GREEDY))
    assert sched.stats.restored == restored + 1
    assert again.n_cached >= len(gen.completion_tokens(engine, PROMPTS[0]))
    snap = sched.metrics_snapshot()  # what /metrics shows of it
    assert snap["prompt_cache_restored_total"] == sched.stats.restored
    assert snap["prompt_cache_saved_total"] == sched.stats.parked
    assert snap["prompt_cache_restored_tokens_total"] == sched.stats.restored_tokens > 0
    assert snap["prompt_cache_entries"] >= 1 and snap["prompt_cache_bytes"] > 0
    assert snap["prompt_cache_limit_bytes"] >= snap["prompt_cache_bytes"]
    # restored cells give what decoding the whole prompt gives
    sched._prompt_cache = type(sched._prompt_cache)(0)  # nothing kept from here on
    try:
        for s in sched._slots:  # no slot holds the conversation any more
            ll.llama_memory_seq_rm(mem, s.id, -1, -1)
            s.cache.clear()
        fresh = _run(engine, turn, Sampling(**GREEDY))
    finally:
        sched._prompt_cache = type(sched._prompt_cache)(1 << 30)
    assert fresh.n_cached == 0
    assert again.text[:8] == fresh.text[:8]
