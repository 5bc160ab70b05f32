"""The terminal chat without a model: the <think> filter, commands, multi-line input, history."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from packer.runtime import i18n
from packer.runtime.chat_commands import (
    Command,
    continued,
    help_text,
    message_text,
    parse_command,
)
from packer.runtime.chat_history import KEEP, ChatHistory
from packer.runtime.think import (
    ANSWER,
    THINK,
    ThinkFilter,
    ThinkView,
    opens_thinking,
    write_answer,
)


def _split(pieces: list[str], starts_inside: bool = False) -> tuple[str, str]:
    f = ThinkFilter(starts_inside)
    parts = [p for piece in pieces for p in f.feed(piece)] + f.flush()
    think = "".join(t for k, t in parts if k == THINK)
    answer = "".join(t for k, t in parts if k == ANSWER)
    return think, answer


TEXT = "<think>\nLet me see: 2+2.\n</think>\n\nIt is 4."


def test_think_section_split_from_answer() -> None:
    assert _split([TEXT]) == ("\nLet me see: 2+2.\n", "It is 4.")


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7])
def test_tags_split_across_pieces(size: int) -> None:
    pieces = [TEXT[i : i + size] for i in range(0, len(TEXT), size)]
    assert _split(pieces) == ("\nLet me see: 2+2.\n", "It is 4.")


def test_prompt_opened_think() -> None:
    assert _split(["Hmm, two plus", " two.</thi", "nk>\n\nFour."], starts_inside=True) == (
        "Hmm, two plus two.",
        "Four.",
    )


def test_think_never_closed_is_all_thinking() -> None:
    assert _split(["<think>still ", "thinking </th"]) == ("still thinking </th", "")
    assert _split(["no end"], starts_inside=True) == ("no end", "")


def test_no_think_passes_through_untouched() -> None:
    assert _split(["  Hello", " world"]) == ("", "  Hello world")
    assert _split(["<thi", "s> is not a tag"]) == ("", "<this> is not a tag")
    assert _split(["<thi"]) == ("", "<thi")  # the stream ended on what looked like a tag
    # only a leading tag counts: an answer about the tag is shown as written
    assert _split(["Use <think> tags", " like </think>"]) == ("", "Use <think> tags like </think>")


def test_empty_think_section() -> None:
    f = ThinkFilter()
    parts = f.feed("<think>\n\n</think>\n\nHi")
    assert parts == [(THINK, "\n\n"), (ANSWER, "Hi")] and f.thought


def test_opens_thinking() -> None:
    assert opens_thinking("<|im_start|>assistant\n<think>\n")
    assert not opens_thinking("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # thinking off
    assert not opens_thinking("<|im_start|>assistant\n")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _view(pieces: list[str], show: bool, tty: bool) -> tuple[ThinkView, str, str]:
    out, err = (_Tty(), _Tty()) if tty else (io.StringIO(), io.StringIO())
    view = ThinkView(out, err, show)
    write_answer(pieces, view, starts_inside=False)
    view.close()
    return view, out.getvalue(), err.getvalue()


def test_view_hides_thinking_with_a_transient_indicator() -> None:
    view, out, err = _view([TEXT], show=False, tty=True)
    assert out == "It is 4."
    assert "thinking" in err and err.endswith("\r\x1b[K")  # shown, then erased
    assert "".join(view.answer) == "It is 4." and "2+2" in "".join(view.thinking)


def test_view_hidden_in_a_pipe_writes_only_the_answer() -> None:
    _view_, out, err = _view([TEXT], show=False, tty=False)
    assert (out, err) == ("It is 4.", "")


def test_view_shows_thinking_dimmed_on_a_terminal() -> None:
    _v, out, err = _view([TEXT], show=True, tty=True)
    assert out == "\x1b[2mLet me see: 2+2.\n\x1b[0m\nIt is 4." and err == ""


def test_view_shows_thinking_between_tags_without_ansi_in_a_pipe() -> None:
    _v, out, _err = _view([TEXT], show=True, tty=False)
    assert out == "<think>\nLet me see: 2+2.\n</think>\n\nIt is 4." and "\x1b" not in out


def test_view_closed_mid_thought_resets_the_terminal() -> None:
    _v, out, _err = _view(["<think>hmm"], show=True, tty=True)
    assert out.endswith("\x1b[0m")
    _v, _out, err = _view(["<think>hmm"], show=False, tty=True)
    assert err.endswith("\r\x1b[K")


@pytest.mark.parametrize(
    ("text", "command"),
    [
        ("/help", Command("help")),
        ("/?", Command("help")),
        ("/HELP", Command("help")),
        ("/reset", Command("reset")),
        ("/clear", Command("reset")),
        ("/exit", Command("exit")),
        ("/bye", Command("exit")),
        ("/quit", Command("exit")),
        ("/system Answer in Spanish.", Command("system", "Answer in Spanish.")),
        ("/system", Command("system", "")),
        ("/system\nTwo\nlines", Command("system", "Two\nlines")),
        ("/frobnicate now", Command("unknown", "/frobnicate")),
        ("What is /etc?", None),
        ("//etc/passwd is what?", None),
        ("hello", None),
    ],
)
def test_parse_command(text: str, command: Command | None) -> None:
    assert parse_command(text) == command


def test_continued_lines() -> None:
    assert continued("first line\\") == "first line\n"
    assert continued("a path C:\\\\") is None  # an escaped backslash ends the line
    assert continued('"""') == '"""\n'
    assert continued('"""\nline one') == '"""\nline one\n'
    assert continued('"""\nline one\n"""') is None
    assert continued("plain") is None


def test_message_text() -> None:
    assert message_text('"""\nline one\nline two\n"""') == "line one\nline two"
    assert message_text('"""one line"""') == "one line"
    assert message_text("  spaced \n") == "spaced"


def test_help_lists_commands_in_english_and_spanish() -> None:
    i18n.setup("en")
    try:
        text = help_text("/c/chat-history")
        for word in ("/help", "/reset", "/clear", "/exit", "/bye", "/system", "Alt-Enter", '"""'):
            assert word in text
        assert "/c/chat-history" in text
        i18n.setup("es")
        spanish = help_text(None)
        assert "/reset" in spanish and "Comandos:" in spanish and "conversación" in spanish
    finally:
        i18n.setup("en")


def test_history_kept_across_sessions(tmp_path: Path) -> None:
    h = ChatHistory.open(tmp_path)
    assert h.entries == [] and h.path == tmp_path / "chat-history"
    for text in ("first", "first", "two\nlines", "  "):
        h.add(text)
    h.close()
    assert (tmp_path / "chat-history").stat().st_mode & 0o777 == 0o600
    again = ChatHistory.open(tmp_path)
    assert again.entries == ["first", "two\nlines"]  # no repeat, no blank
    again.close()


def test_history_trimmed_and_damaged_lines_skipped(tmp_path: Path) -> None:
    path = tmp_path / "chat-history"
    lines = [f'"m{i}"' for i in range(2 * KEEP + 5)] + ['"cut sho']
    path.write_text("\n".join(lines) + "\n")
    h = ChatHistory.open(tmp_path)
    assert len(h.entries) == KEEP and h.entries[-1] == f"m{2 * KEEP + 4}"
    h.close()
    assert len(path.read_text().splitlines()) == KEEP


def test_history_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACKER_HISTORY", "0")
    h = ChatHistory.open(tmp_path)
    h.add("secret")
    assert h.path is None and not (tmp_path / "chat-history").exists()
    assert ChatHistory.open(None).path is None


def test_history_written_under_the_sandbox(tmp_path: Path) -> None:
    """Opened before the sandbox's last step, the history is still appended to after it (in a
    child: Landlock binds the process for good)."""
    import subprocess
    import sys

    from packer.runtime import sandbox

    abi, why = sandbox.landlock_abi()
    if not abi:
        pytest.skip(f"no Landlock on this machine: {why}")
    child = (
        "import sys\n"
        "from pathlib import Path\n"
        "from packer.runtime import sandbox\n"
        "from packer.runtime.chat_history import ChatHistory\n"
        "folder = Path(sys.argv[1])\n"
        "h = ChatHistory.open(folder)\n"
        "box = sandbox.restrict([])\n"
        "assert box.landlock_abi, box.describe()\n"
        "try:\n"
        "    open(folder / 'other', 'w')\n"
        "except PermissionError:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('the sandbox let a file be created')\n"
        "h.add('after the sandbox')\n"
        "h.close()\n"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", child, str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert ChatHistory.open(tmp_path).entries == ["after the sandbox"]


def test_view_says_when_the_model_only_thought() -> None:
    view, out, _err = _view(["<think>and thinking, until -n ended it"], show=False, tty=False)
    assert out == "" and view.only_thought() and "--show-thinking" in view.only_thought_hint()
    view, _out, _err = _view([TEXT], show=False, tty=False)
    assert not view.only_thought()
