"""The terminal chat's input history, kept across sessions in the cache folder.

One JSON string per line (a message may have several lines), newest last, readable only by
its owner. model.run writes nothing once the sandbox's second step is in force
(:mod:`packer.runtime.sandbox`), so :meth:`ChatHistory.open` reads the file and opens it for
appending before that step; later messages are appended through that open descriptor, one
``write`` each (``O_APPEND``: two chats at once do not mix their lines). ``PACKER_HISTORY=0``
keeps no history (a shared lab account).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from packer.runtime.atomic_write import atomic_write

log = logging.getLogger("packer.runtime.chat")

FILE_NAME = "chat-history"
KEEP = 1000  # entries kept; the file is trimmed when it holds twice as many
MAX_ENTRY = 64 << 10  # characters: a longer message is not kept


class ChatHistory:
    """Earlier inputs (oldest first) and, when the file could be opened, where new ones go."""

    def __init__(
        self, entries: list[str] | None = None, fd: int | None = None, path: Path | None = None
    ) -> None:
        self.entries = entries or []
        self.path = path if fd is not None else None
        self._fd = fd

    @classmethod
    def open(cls, cache_dir: Path | None) -> ChatHistory:
        """Load ``cache_dir``'s history and open it for appending; an empty, in-memory history
        when there is no cache folder, ``PACKER_HISTORY=0``, or the file cannot be used."""
        if cache_dir is None or os.environ.get("PACKER_HISTORY", "1") == "0":
            return cls()
        path = cache_dir / FILE_NAME
        try:
            entries = _load(path)
            if len(entries) > 2 * KEEP:
                entries = entries[-KEEP:]
                with atomic_write(path) as f:
                    f.write(b"".join(_line(e) for e in entries))
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            log.debug("chat history: not kept (%s: %s)", path, exc.strerror)
            return cls()
        return cls(entries, fd, path)

    def add(self, text: str) -> None:
        """Keep ``text`` (a typed input, not a repeat of the last one)."""
        if not text.strip() or (self.entries and self.entries[-1] == text):
            return
        self.entries.append(text)
        if self._fd is None or len(text) > MAX_ENTRY:
            return
        try:
            os.write(self._fd, _line(text))
        except OSError as exc:
            log.debug("chat history: cannot append (%s)", exc.strerror)
            self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _line(text: str) -> bytes:
    return (json.dumps(text, ensure_ascii=False) + "\n").encode("utf-8")


def _load(path: Path) -> list[str]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    entries = []
    for raw in data.splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:  # a line cut short (a full disk): skipped
            continue
        if isinstance(entry, str) and entry:
            entries.append(entry)
    return entries
