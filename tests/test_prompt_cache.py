"""packer.runtime.prompt_cache: the host-memory cache of idle slots' cells (no model)."""

from __future__ import annotations

from packer.runtime.prompt_cache import MIB, PromptCache, common_prefix, default_limit


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], (1, 2, 4)) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([5, 6], [5, 6, 7]) == 2


def test_longest_prefix_wins_and_must_beat_the_slot() -> None:
    cache = PromptCache(1000)
    assert cache.put([1, 2, 3], b"a" * 10)
    assert cache.put([1, 2, 9, 9], b"b" * 10)
    entry, n = cache.best([1, 2, 9, 9, 5])  # type: ignore[misc]
    assert entry.tokens == (1, 2, 9, 9) and entry.state == b"b" * 10 and n == 4
    assert cache.best([1, 2, 3, 4], better_than=3) is None  # the slot already holds as much
    assert cache.best([7]) is None


def test_a_prefix_is_replaced_by_its_continuation() -> None:
    cache = PromptCache(1000)
    cache.put([1, 2], b"x" * 10)
    cache.put([1, 2, 3, 4], b"y" * 20)  # the next turn of the same conversation
    assert len(cache) == 1 and cache.size == 20
    cache.put([1, 2, 3, 4], b"z" * 30)  # the same tokens again: replaced, not doubled
    assert len(cache) == 1 and cache.size == 30


def test_the_budget_drops_least_recently_used_first() -> None:
    cache = PromptCache(100)
    cache.put([1], b"a" * 40)
    cache.put([2], b"b" * 40)
    assert cache.best([1, 5]) is not None  # [1] is now the most recently used
    cache.put([3], b"c" * 40)  # over 100: [2] goes
    assert cache.size == 80 and cache.best([2]) is None and cache.best([1]) is not None
    assert not cache.put([4], b"d" * 101)  # alone over the limit: not kept, nothing dropped
    assert cache.size == 80
    assert not PromptCache(0).put([1], b"a")  # 0: keeps nothing


def test_remove() -> None:
    cache = PromptCache(100)
    cache.put([1, 2], b"a" * 10)
    found = cache.best([1, 2, 3])
    assert found is not None
    cache.remove(found[0])
    cache.remove(found[0])  # twice is harmless
    assert len(cache) == 0 and cache.size == 0


def test_default_limit() -> None:
    assert default_limit(None) == 8192 * MIB  # llama-server's
    assert default_limit(64 * 1024 * MIB) == 8192 * MIB
    assert default_limit(8 * 1024 * MIB) == 2048 * MIB  # a quarter of an 8 GiB laptop's


def test_long_conversations_compare_by_array() -> None:
    """Thousands of shared tokens (a system prompt and a conversation) are found exactly."""
    cache = PromptCache(1 << 20)
    shared = list(range(5000))
    cache.put(shared + [1, 2, 3], bytearray(100))
    cache.put(shared + [9], b"x" * 100)
    found = cache.best(shared + [1, 2, 7])
    assert found is not None and found[1] == 5002 and found[0].tokens[-1] == 3
    assert cache.best(shared[:10] + [-1])[1] == 10  # type: ignore[index]
    assert PromptCache(10).best([1]) is None  # empty
