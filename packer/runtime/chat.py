"""The terminal chat loop (``./model.run`` on a terminal).

Input comes from :mod:`packer.runtime.line_input` (line editing, history, multi-line), slash
commands from :mod:`packer.runtime.chat_commands`, and the answer goes through
:mod:`packer.runtime.think`: a reasoning model's thinking is hidden (or shown dimmed with
``--show-thinking``) and never sent back to the model with the conversation.
"""

from __future__ import annotations

import sys

from packer.runtime.chat_commands import help_text, message_text, parse_command
from packer.runtime.chat_history import ChatHistory
from packer.runtime.engine import Engine, Sampling
from packer.runtime.generate import TERMINAL_EVERY_S, PromptError
from packer.runtime.i18n import _
from packer.runtime.line_input import line_reader
from packer.runtime.think import ThinkView, prompt_opens_thinking, write_answer


def chat_loop(
    engine: Engine,
    sampling: Sampling,
    system: str | None = None,
    *,
    history: ChatHistory | None = None,
    show_thinking: bool = False,
) -> int:
    """Chat until /exit, Ctrl-D or two Ctrl-C on an empty line. ``history``: the input history,
    opened before the sandbox (:meth:`ChatHistory.open`)."""
    out, err = sys.stdout, sys.stderr
    history = history or ChatHistory()
    reader = line_reader(history)
    starts_inside = prompt_opens_thinking(engine)
    print(
        _("{name} — type a message, /help for help, Ctrl-D to quit.").format(name=engine.name),
        file=err,
    )
    turns: list[dict[str, str]] = []
    interrupted = False  # the last input was a Ctrl-C on an empty line
    try:
        while True:
            out.write("\n")
            out.flush()
            try:
                raw = reader.read()
            except EOFError:
                print(file=err)
                return 0
            except KeyboardInterrupt:
                if interrupted:
                    print(file=err)
                    return 0
                interrupted = True
                print("\n" + _("(Ctrl-C again or Ctrl-D to quit)"), file=err)
                continue
            interrupted = False
            text = message_text(raw)
            if not text:
                continue
            command = parse_command(text)
            if command is not None:
                if command.name == "exit":
                    return 0
                if command.name == "help":
                    path = str(history.path) if history.path else None
                    print(help_text(path), file=err)
                elif command.name == "reset":
                    turns.clear()
                    print(_("(conversation forgotten)"), file=err)
                elif command.name == "system":
                    if command.arg:
                        system = command.arg
                        print(_("(system prompt set)"), file=err)
                    else:
                        shown = system or _("(none: the model's default)")
                        print(_("System prompt: {text}").format(text=shown), file=err)
                else:
                    print(
                        _("unknown command {command}: /help lists the commands").format(
                            command=command.arg
                        ),
                        file=err,
                    )
                continue
            if text.startswith("//"):  # a message that starts with "/"
                text = text[1:]
            turns.append({"role": "user", "content": text})
            head = [{"role": "system", "content": system}] if system else []
            messages = _fit(engine, head, turns, sampling)
            view = ThinkView(out, err, show_thinking)
            pieces = engine.chat(messages, sampling, TERMINAL_EVERY_S)
            try:
                write_answer(pieces, view, starts_inside)
            except KeyboardInterrupt:
                view.close()
                out.write(" " + _("[stopped]"))
            except PromptError as exc:  # one message too long for the context on its own
                view.close()
                print("\n(" + str(exc) + ")", file=err)
                turns.pop()
                continue
            finally:
                view.close()
                pieces.close()  # an answer stopped with Ctrl-C frees its slot now
            out.write("\n")
            if view.only_thought():
                print(view.only_thought_hint(), file=err)
            # the thinking stays out of the conversation sent back to the model
            turns.append({"role": "assistant", "content": "".join(view.answer)})
    finally:
        history.close()


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
