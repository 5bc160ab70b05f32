"""Idle slots' KV cells kept in host memory (llama-server's ``--cache-ram``).

With one KV cache shared by every slot, a decode step attends over every cell up to the last
one in use, masked or not: cells an idle slot keeps for its next turn make every running
request slower (on the demo model, one stream after four clients ran 15 % slower). So when a
request starts, the scheduler moves each other idle slot's cells here (llama.cpp's per-sequence
state, as bytes) and clears them from the KV cache; a later request whose prompt starts like a
kept one gets those cells back instead of decoding that part of its prompt again.

This module only keeps the entries: tokens and state bytes, the longest-prefix lookup, and a
byte budget, least recently used first out. No model, no llama.cpp: unit-tested on its own.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sized
from dataclasses import dataclass, field
from typing import Any

MIB = 1 << 20
DEFAULT_MIB = 8192  # llama-server's --cache-ram default


@dataclass(frozen=True)
class Entry:
    tokens: tuple[int, ...]
    # llama_state_seq_get_data of the sequence that held ``tokens``: bytes or the ctypes
    # buffer it was written into (len() = its size in bytes), kept as it is: no second copy
    state: Sized
    ids: Any = field(default=None, compare=False, repr=False)  # ``tokens`` as a numpy array


def _ids(tokens: tuple[int, ...] | list[int]) -> Any:
    # numpy only once a prompt is cached: imported at start-up, its OpenBLAS threads would
    # start before model.run's sandbox and stay outside it (packer/runtime/sandbox.py)
    import numpy as np

    return np.fromiter(tokens, dtype=np.int64, count=len(tokens))


def common_prefix(a: tuple[int, ...] | list[int], b: tuple[int, ...] | list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _common_prefix_ids(a: Any, b: Any) -> int:
    """:func:`common_prefix` of two numpy arrays: a conversation's thousands of tokens
    compared in microseconds, for every entry, under the scheduler's lock."""
    import numpy as np

    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


def default_limit(mem_available: int | None) -> int:
    """Bytes for the cache when ``--cache-ram`` is not given: llama-server's 8 GiB, but no more
    than a quarter of the memory available at start (a classroom laptop has 8 GiB in all)."""
    limit = DEFAULT_MIB * MIB
    if mem_available:
        limit = min(limit, mem_available // 4)
    return limit


class PromptCache:
    """Entries by their token sequence, at most ``limit`` bytes of state in all (0: keep
    nothing). An entry whose tokens begin another one's is dropped as the longer one is put:
    the longer one serves every prompt the shorter one would."""

    def __init__(self, limit: int) -> None:
        self.limit = max(0, limit)
        self._entries: OrderedDict[tuple[int, ...], Entry] = OrderedDict()  # oldest first
        self.size = 0  # bytes held

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, tokens: list[int] | tuple[int, ...], state: Sized) -> bool:
        """Keep ``state`` for ``tokens``; False when it alone is over the limit (or empty)."""
        key = tuple(tokens)
        if not key or not state or len(state) > self.limit:
            return False
        for other in [k for k in self._entries if common_prefix(k, key) == len(k)]:
            self._drop(other)  # a prefix of this one (or this one again)
        self._entries[key] = Entry(key, state, _ids(key))
        self.size += len(state)
        while self.size > self.limit:
            self._drop(next(iter(self._entries)))
        return True

    def best(self, prompt: list[int], better_than: int = 0) -> tuple[Entry, int] | None:
        """The entry sharing the longest prefix with ``prompt``, and that length, if longer
        than ``better_than`` tokens; it becomes the most recently used."""
        found: tuple[Entry, int] | None = None
        if not self._entries:
            return None
        ids = _ids(prompt)
        for entry in self._entries.values():
            n = _common_prefix_ids(entry.ids, ids)
            if n > better_than and (found is None or n > found[1]):
                found = (entry, n)
        if found is not None:
            self._entries.move_to_end(found[0].tokens)
        return found

    def remove(self, entry: Entry) -> None:
        """Forget ``entry`` (its cells went back into a slot, which keeps them now)."""
        if entry.tokens in self._entries:
            self._drop(entry.tokens)

    def _drop(self, key: tuple[int, ...]) -> None:
        self.size -= len(self._entries.pop(key).state)
