"""Generated token bytes to final text pieces: whole UTF-8 characters only, stop strings held
back until they can no longer match, and cut off where one does."""

from __future__ import annotations

import codecs


def held_back(text: str, start: int, stops: list[str]) -> int:
    """Length of the longest tail of ``text[start:]`` that could begin one of ``stops``."""
    tail = len(text) - start
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, tail), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


class TextStream:
    """Feed each generated token's bytes to :meth:`add`; it returns the text that became final.
    Once a stop string appears, ``stopped`` is set, the text ends before it, and nothing more
    should be added. :meth:`finish` returns what was held back at the end."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""
        self.sent = 0
        self.stopped = False
        self.stopping_word = ""

    def add(self, data: bytes) -> str:
        self.text += self._decoder.decode(data)
        text, sent = self.text, self.sent
        if self.stops:
            hit = min(((i, s) for s in self.stops if (i := text.find(s, sent)) >= 0), default=None)
            if hit is not None:
                pos, self.stopping_word = hit
                self.text = text[:pos]
                self.stopped = True
                return ""
            end = len(text) - held_back(text, sent, self.stops)
        else:
            end = len(text)
        if end > sent:
            self.sent = end
            return text[sent:end]
        return ""

    def finish(self) -> str:
        """The rest of the text (held-back characters, a trailing partial UTF-8 sequence)."""
        if not self.stopped:
            self.text += self._decoder.decode(b"", final=True)
        rest = self.text[self.sent :]
        self.sent = len(self.text)
        return rest
