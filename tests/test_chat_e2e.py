"""The terminal chat of a real model.run on a pseudo-terminal (pexpect), as a student types.

Slow: needs the demo model.run (conftest.demo_run). What the model received is checked two
ways: the history file in the cache folder holds each message as sent, and the chat's answer
equals the one-shot answer (`-p`) to the text the chat should have sent (greedy, same machine:
the same tokens).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from answers import DEMO_QUESTION

pytestmark = pytest.mark.slow

READY = "\x1b[?2004h"  # the line editor switches bracketed paste on: it waits for input
LEFT, UP, BACKSPACE, CTRL_E, CTRL_C, CTRL_D = "\x1b[D", "\x1b[A", "\x7f", "\x05", "\x03", "\x04"
PASTE_START, PASTE_END = "\x1b[200~", "\x1b[201~"
GEN = ("--temp", "0", "-n", "24", "-t", "2")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _env(cache: Path, **extra: str) -> list[str]:
    env = {"TERM": "xterm-256color", "PACKER_CACHE": str(cache), **extra}
    return [f"{k}={v}" for k, v in env.items()]


def _spawn(exe: Path, cache: Path, cwd: Path, **extra: str):  # type: ignore[no-untyped-def]
    import pexpect

    return pexpect.spawn(
        "env",
        ["-i", *_env(cache, **extra), str(exe), *GEN],
        cwd=str(cwd),
        encoding="utf-8",
        timeout=180,
        dimensions=(24, 200),
    )


def _one_shot(exe: Path, cache: Path, cwd: Path, prompt: str) -> str:
    """The first line of the answer to ``prompt`` as a single message (no terminal)."""
    proc = subprocess.run(
        ["env", "-i", *_env(cache), str(exe), *GEN, "-p", prompt],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.strip().splitlines()[0]
    assert first
    return first


def _answer(child) -> str:  # type: ignore[no-untyped-def]
    """The text written since the input was accepted, up to the next prompt."""
    child.expect_exact(READY)
    return ANSI.sub("", child.before).replace("\r\n", "\n")


def _history(cache: Path) -> list[str]:
    return [json.loads(line) for line in (cache / "chat-history").read_text().splitlines()]


def test_editing_history_and_restart(demo_run: Path, tmp_path: Path) -> None:
    import pexpect

    cache = tmp_path / "cache"
    assert DEMO_QUESTION.startswith("What ")
    expected = _one_shot(demo_run, cache, tmp_path, DEMO_QUESTION)

    child = _spawn(demo_run, cache, tmp_path)
    try:
        child.expect("/help")
        child.expect_exact(READY)
        # "Whta": Left, Backspace (deletes the t), Ctrl-E (end of line), then the rest
        child.send("Whta" + LEFT + BACKSPACE + CTRL_E + "t" + DEMO_QUESTION[4:] + "\r")
        assert expected in _answer(child)
        child.send("/help\r")
        helped = _answer(child)
        for command in ("/help", "/reset", "/clear", "/exit", "/bye", "/system", "Alt-Enter"):
            assert command in helped, helped
        child.send("/reset\r")
        assert "conversation forgotten" in _answer(child)
        child.send(UP + UP + UP + "\r")  # /reset, /help, then the question
        assert expected in _answer(child)  # a new conversation: the same answer
        child.send("/exit\r")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before
    assert _history(cache) == [DEMO_QUESTION, "/help", "/reset", DEMO_QUESTION, "/exit"]

    # a new start in the same cache folder recalls the last session's messages
    child = _spawn(demo_run, cache, tmp_path)
    try:
        child.expect_exact(READY)
        child.send(UP + UP + "\r")  # /exit, then the question
        assert expected in _answer(child)
        child.send(CTRL_D)
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before
    assert _history(cache)[-1] == DEMO_QUESTION


def test_paste_spanish_help_and_ctrl_c(demo_run: Path, tmp_path: Path) -> None:
    import pexpect

    cache = tmp_path / "cache"
    lines = ["Answer in one word.", "Japan is a country.", DEMO_QUESTION]
    pasted = "\n".join(lines)
    expected = _one_shot(demo_run, cache, tmp_path, pasted)

    child = _spawn(demo_run, cache, tmp_path, LANG="es_ES.UTF-8")
    try:
        child.expect("escribe un mensaje, /help para ver la ayuda")
        child.expect_exact(READY)
        child.send("/help\r")
        helped = _answer(child)
        assert "Comandos:" in helped and "olvida la conversación" in helped, helped
        assert "/reset" in helped and "/bye" in helped
        # a paste of three lines is one message, sent when Enter is pressed
        child.send(PASTE_START + pasted + "\n" + PASTE_END + "\r")
        assert expected in _answer(child)
        child.send("/nada\r")
        assert "no existe el comando /nada" in _answer(child)
        child.send(CTRL_C)  # on an empty line: a hint; a second one quits
        child.expect("Ctrl-C otra vez")
        child.expect_exact(READY)
        child.send(CTRL_C)
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before
    assert _history(cache) == ["/help", pasted, "/nada"]
