"""The terminal chat loop (``./model.run`` on a terminal)."""

from __future__ import annotations

import sys

from packer.runtime.engine import Engine, Sampling
from packer.runtime.generate import PromptError

HELP = "Type a message and press Enter. /reset forgets the conversation, /exit or Ctrl-D quits, Ctrl-C stops an answer."


def chat_loop(engine: Engine, sampling: Sampling, system: str | None = None) -> int:
    out = sys.stdout
    print(f"{engine.name} — {HELP}", file=sys.stderr)
    history: list[dict[str, str]] = []
    while True:
        try:
            line = input("\n> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit", "/bye"):
            return 0
        if text == "/reset":
            history.clear()
            print("(conversation forgotten)", file=sys.stderr)
            continue
        history.append({"role": "user", "content": text})
        messages = _fit(
            engine, ([{"role": "system", "content": system}] if system else []), history, sampling
        )
        answer: list[str] = []
        pieces = engine.chat(messages, sampling)
        try:
            for piece in pieces:
                answer.append(piece)
                out.write(piece)
                out.flush()
        except KeyboardInterrupt:
            out.write(" [stopped]")
        except PromptError as exc:  # one message too long for the context on its own
            print(f"({exc})", file=sys.stderr)
            history.pop()
            continue
        finally:
            pieces.close()  # an answer stopped with Ctrl-C frees its slot now
        out.write("\n")
        history.append({"role": "assistant", "content": "".join(answer)})


def _fit(
    engine: Engine, head: list[dict[str, str]], history: list[dict[str, str]], sampling: Sampling
) -> list[dict[str, str]]:
    """Drop the oldest turns until the conversation leaves room for an answer in the context."""
    reserve = sampling.max_tokens if sampling.max_tokens > 0 else min(512, engine.n_ctx // 4)
    while len(history) > 1:
        size = sum(engine.count_tokens(m["content"], add_special=False) + 8 for m in head + history)
        if size + reserve <= engine.n_ctx:
            break
        del history[:2]  # one user turn and its answer
    return head + history
