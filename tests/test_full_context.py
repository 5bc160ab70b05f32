"""Full context per request (issue #16, item 2): one unified KV cache shared by every slot.

The default context is the model's trained one capped by memory; any single request may use all
of it while others wait or share; a request claims its KV cells when admitted, so none finds the
cache full in the middle of an answer. The model tests run the small real model
(SmolLM2-135M-Instruct Q4_1, trained on 8192 tokens).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from conftest import smollm_gguf_path

from packer.runtime import generate as gen
from packer.runtime.context_size import (
    MIN_AUTO,
    ContextSize,
    choose_context,
    for_gguf,
    kv_bytes_per_token,
)
from packer.runtime.engine import Engine, EngineOptions, Sampling

GiB = 2**30


# -- the default context size (no model) -------------------------------------------------------
def test_explicit_size_wins() -> None:
    c = choose_context(2048, 131072, 131072, 5 * GiB, 1 * GiB)
    assert c == ContextSize(2048, 131072, "flag") and c.describe() == "2048"


def test_trained_context_when_it_fits() -> None:
    c = choose_context(0, 8192, 23040, 100 * 2**20, 16 * GiB)
    assert (c.n_ctx, c.source) == (8192, "trained")
    assert c.describe() == "8192 (trained)"


def test_trained_context_when_memory_is_unknown() -> None:
    assert choose_context(0, 131072, 131072, 5 * GiB, None).n_ctx == 131072


def test_memory_caps_a_long_trained_context() -> None:
    # an 8B Llama 3.1: 32 layers x 8 KV heads x (128 + 128) x f16 = 128 KiB a token
    per_token = kv_bytes_per_token(32, 8 * 256 * 2)
    assert per_token == 128 * 1024
    c = choose_context(0, 131072, per_token, 5 * GiB, 9 * GiB)
    # half of the 4 GiB left after the model: 16384 tokens
    assert (c.n_ctx, c.n_ctx_train, c.source) == (16384, 131072, "memory")
    assert c.describe() == "16384 (memory cap; trained 131072)"
    assert c.n_ctx % 1024 == 0


def test_the_cap_has_a_floor() -> None:
    per_token = 128 * 1024
    assert choose_context(0, 131072, per_token, 5 * GiB, 5 * GiB).n_ctx == MIN_AUTO
    assert choose_context(0, 2048, per_token, 5 * GiB, 5 * GiB).n_ctx == 2048


def test_for_gguf_reads_the_header() -> None:
    c = for_gguf(smollm_gguf_path(), 0)
    assert c is not None and c.n_ctx_train == 8192
    assert for_gguf(smollm_gguf_path(), 1000) == ContextSize(1000, 0, "flag")


def test_for_gguf_of_something_else(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf at all")
    assert for_gguf(bad, 0) is None


# -- the real model ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    eng = Engine(smollm_gguf_path(), EngineOptions(n_threads=2, n_parallel=4))  # default -c
    yield eng
    eng.close()


def _long_prompt(engine: Engine, n: int, salt: str = "") -> list[int]:
    words = (
        f"{salt} Notes on the history of the bicycle, the steam engine, the telegraph, "
        "the printing press and the windmill, written for a quiz. "
    )
    tokens = gen.completion_tokens(engine, words * (n // 20 + 2))[:n]
    question = gen.tokenize(
        engine, "\nQuestion: what is this text about? Answer:", add_special=False
    )
    return tokens[: n - len(question)] + question


def _answer(engine: Engine, prompt: list[int], params: Sampling) -> gen.GenResult:
    result = gen.GenResult()
    text = "".join(gen.generate(engine, prompt, params, result))
    assert text == result.text
    return result


@pytest.mark.slow
def test_default_context_is_the_trained_one_for_every_request(engine: Engine) -> None:
    assert engine.context.source == "trained" and engine.context.n_ctx_train == 8192
    assert engine.n_ctx == engine.scheduler.n_ctx_total == 8192
    assert engine.scheduler.n_parallel == 4


@pytest.mark.slow
def test_a_3000_token_prompt_answers(engine: Engine) -> None:
    prompt = _long_prompt(engine, 3000)
    assert len(prompt) == 3000
    r = _answer(engine, prompt, Sampling(max_tokens=8, temperature=0.0, ignore_eos=True))
    assert r.n_prompt == 3000 and r.n_predicted == 8 and r.text
    assert r.finish_reason == "length" and not r.truncated


@pytest.mark.slow
def test_four_3000_token_prompts_at_once_all_answer(engine: Engine) -> None:
    # 4 x 3008 cells do not fit in 8192: two run, two wait for their cells, all answer
    prompts = [_long_prompt(engine, 3000, salt=f"Set {i}.") for i in range(4)]
    results: dict[int, gen.GenResult | BaseException] = {}
    start = threading.Barrier(4)

    def go(i: int) -> None:
        start.wait()
        try:
            results[i] = _answer(engine, prompts[i], Sampling(max_tokens=8, ignore_eos=True))
        except BaseException as exc:  # reported below
            results[i] = exc

    threads = [threading.Thread(target=go, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    for i in range(4):
        r = results.get(i)
        assert isinstance(r, gen.GenResult), r
        assert r.n_predicted == 8 and r.text and r.stop_type == "limit"
    snap = engine.scheduler.metrics_snapshot()
    assert snap["slots_busy"] == 0 and snap["queue_depth"] == 0
    assert snap["kv_cells_total"] == 8192 and 0 < snap["kv_cells_used"] <= 8192


@pytest.mark.slow
def test_a_prompt_larger_than_the_context_is_a_prompt_error(engine: Engine) -> None:
    prompt = _long_prompt(engine, 9000)
    with pytest.raises(gen.PromptError) as exc:
        gen.generate(engine, prompt, Sampling(max_tokens=4), gen.GenResult())
    assert exc.value.n_prompt == 9000 and exc.value.n_ctx == 8192
    assert "9000 tokens" in exc.value.message and "8192" in exc.value.message


@pytest.mark.slow
def test_metrics_snapshot_has_the_contract_keys(engine: Engine) -> None:
    snap = engine.scheduler.metrics_snapshot()
    for key in (
        "slots_busy",
        "slots_total",
        "queue_depth",
        "kv_cells_used",
        "kv_cells_total",
        "tokens_predicted_total",
        "tokens_prompt_total",
    ):
        assert isinstance(snap[key], float), key
    assert snap["slots_total"] == 4


@pytest.mark.slow
def test_requests_without_a_limit_share_and_end_cleanly_when_the_context_is_full() -> None:
    # 512 cells, 2 slots: each request without max_tokens claims its prompt + its share (256)
    # and grows while cells are free; the first to find none ends with "length" (the context
    # is full), never with a failed llama_decode; the other then grows into its cells
    eng = Engine(smollm_gguf_path(), EngineOptions(n_ctx=512, n_threads=2, n_parallel=2))
    try:
        assert eng.n_ctx == 512
        sched = eng.scheduler
        results: dict[int, gen.GenResult | BaseException] = {}
        start = threading.Barrier(2)

        def go(i: int) -> None:
            prompt = gen.completion_tokens(eng, f"Story number {i}:")
            start.wait()
            try:
                results[i] = _answer(eng, prompt, Sampling(ignore_eos=True, seed=i))
            except BaseException as exc:  # reported below
                results[i] = exc

        threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        done = [results.get(i) for i in range(2)]
        assert all(isinstance(r, gen.GenResult) for r in done), done
        ok: list[gen.GenResult] = done  # type: ignore[assignment]
        for r in ok:
            assert r.stop_type == "limit" and r.finish_reason == "length" and r.truncated
            assert r.n_prompt + r.n_predicted <= 512 + 1
        assert sched.stats.context_full >= 1 and sched.stats.max_seqs_in_step == 2
        assert max(r.n_prompt + r.n_predicted for r in ok) == 512  # the other grew to the end
        # alone, one request fills the whole context
        r = _answer(eng, gen.completion_tokens(eng, "Story number 9:"), Sampling(ignore_eos=True))
        assert r.n_prompt + r.n_predicted == 512 and r.truncated
    finally:
        eng.close()
