"""A start without a terminal, the browser opener, one instance per model, the session's end
(packer.runtime.desktop), without a model; tests/test_desktop_start.py runs a real model.run."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import free_port

from packer.runtime import desktop
from packer.runtime.cli import parse

ROOT = Path(__file__).resolve().parents[1]


def args_of(*argv: str) -> argparse.Namespace:
    return parse(list(argv), [])


def kind_of(opener) -> str:  # type: ignore[no-untyped-def]
    """desktop.stdin_kind of the fd that ``opener`` returns, closed afterwards."""
    fd = opener()
    try:
        return desktop.stdin_kind(fd)
    finally:
        os.close(fd)


def test_stdin_kinds(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("question")
    r, w = os.pipe()
    os.close(w)
    assert kind_of(lambda: r) == "pipe"
    assert kind_of(lambda: os.open(os.devnull, os.O_RDONLY)) == "chardev"
    assert kind_of(lambda: os.open(tmp_path / "f", os.O_RDONLY)) == "file"
    master, slave = os.openpty()
    assert kind_of(lambda: slave) == "tty"
    os.close(master)
    a, b = socket.socketpair()
    b.close()
    assert kind_of(lambda: a.detach()) == "socket"
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    assert desktop.stdin_kind(fd) == "closed"


def _decide(args: argparse.Namespace, stdin: str, stdout: str, tmp_path: Path) -> bool:
    """is_desktop_start with stdin/stdout of the given kinds."""
    fds = []

    def make(kind: str, write: bool) -> int:
        if kind == "null":
            fd = os.open(os.devnull, os.O_RDWR)
        elif kind == "pipe":
            r, w = os.pipe()
            fd, other = (w, r) if write else (r, w)
            fds.append(other)
        elif kind == "file":
            (tmp_path / "f").write_text("q")
            fd = os.open(tmp_path / "f", os.O_RDWR)
        elif kind == "tty":
            master, fd = os.openpty()
            fds.append(master)
        elif kind == "closed":
            return 987  # an fd number nothing has open
        fds.append(fd)
        return fd

    try:
        return desktop.is_desktop_start(args, make(stdin, False), make(stdout, True))
    finally:
        for fd in fds:
            os.close(fd)


@pytest.mark.parametrize(
    "stdin,stdout,expected",
    [
        ("null", "null", True),  # a file manager: /dev/null in, /dev/null (or a log) out
        ("null", "file", True),  # ~/.xsession-errors
        ("null", "pipe", True),  # the systemd journal, a pipe to the launcher
        ("closed", "pipe", True),
        ("pipe", "null", False),  # `echo question | ./model.run > answer`: one-shot
        ("file", "pipe", False),  # `./model.run < question.txt | less`: one-shot
        ("tty", "pipe", False),  # `./model.run | tee`: the terminal chat
        ("null", "tty", False),  # `./model.run < /dev/null` in a terminal
        ("tty", "tty", False),
    ],
)
def test_desktop_start_decision(stdin: str, stdout: str, expected: bool, tmp_path: Path) -> None:
    assert _decide(args_of(), stdin, stdout, tmp_path) is expected


@pytest.mark.parametrize(
    "argv",
    [
        ["--server"],
        ["-p", ""],
        ["--info"],
        ["--version"],
        ["--extract", "x.gguf"],
        ["--license"],
        ["--verify"],
        ["--uninstall"],
    ],
)
def test_a_mode_flag_is_never_a_desktop_start(argv: list[str], tmp_path: Path) -> None:
    assert _decide(args_of(*argv), "null", "null", tmp_path) is False
    assert _decide(parse([], argv), "null", "null", tmp_path) is False  # baked in


def test_free_port_skips_taken_ports() -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        chosen = desktop.free_port("127.0.0.1", port)
        assert chosen != port and (chosen == 0 or port < chosen < port + desktop.PORT_TRIES)
    assert desktop.free_port("127.0.0.1", port) == port
    assert desktop.free_port("127.0.0.1", 0) == 0


def test_second_start_gets_the_running_instances_url(tmp_path: Path) -> None:
    first = desktop.claim_instance(tmp_path, "abc123")
    assert isinstance(first, desktop.Instance)
    url = "http://127.0.0.1:8081/"
    threading.Timer(0.8, first.publish, [url]).start()  # still loading when the second starts
    t0 = time.monotonic()
    assert desktop.claim_instance(tmp_path, "abc123") == url
    assert time.monotonic() - t0 >= 0.5
    assert isinstance(desktop.claim_instance(tmp_path, "other-model"), desktop.Instance)


def test_a_dead_instance_is_taken_over(tmp_path: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path; from packer.runtime import desktop\n"
        "desktop.claim_instance(Path(sys.argv[1]), 'k'); print('locked', flush=True); "
        "time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        proc.kill()  # died while loading: no URL, the lock goes with it
        proc.wait()
        assert isinstance(desktop.claim_instance(tmp_path, "k"), desktop.Instance)
    finally:
        proc.kill()
        proc.wait()


def fake_xdg_open(folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    script = folder / "xdg-open"
    script.write_text(f'#!/bin/sh\necho "$1" >> {folder / "opened.txt"}\n')
    script.chmod(0o755)
    return folder / "opened.txt"


def wait_for_file(path: Path, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text()
        time.sleep(0.05)
    return ""


def test_browser_opener_runs_xdg_open_with_the_url(tmp_path: Path) -> None:
    record = fake_xdg_open(tmp_path / "bin")
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "DISPLAY": ":99"}
    opener = desktop.browser_opener(desktop_start=False, server=True, nobrowser=False, environ=env)
    assert opener is not None
    time.sleep(0.3)
    assert not record.exists()  # nothing before the server listens
    opener.open("http://127.0.0.1:8080/")
    assert wait_for_file(record) == "http://127.0.0.1:8080/\n"


def test_browser_opener_given_no_url_opens_nothing(tmp_path: Path) -> None:
    record = fake_xdg_open(tmp_path / "bin")
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "WAYLAND_DISPLAY": "wayland-0"}
    opener = desktop.browser_opener(desktop_start=True, server=True, nobrowser=False, environ=env)
    assert opener is not None
    opener.close()  # model.run failed before listening
    opener._proc.wait(timeout=5)
    assert not record.exists()


def test_when_no_browser_is_opened(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(desktop.log, "handlers", [caplog.handler])
    monkeypatch.setattr(desktop.log, "propagate", False)
    caplog.set_level(logging.INFO, logger=desktop.log.name)
    fake_xdg_open(tmp_path / "bin")
    with_xdg = {"PATH": str(tmp_path / "bin"), "DISPLAY": ":0"}
    make = desktop.browser_opener
    assert make(desktop_start=False, server=True, nobrowser=True, environ=with_xdg) is None
    assert make(desktop_start=True, server=True, nobrowser=True, environ=with_xdg) is None
    assert make(desktop_start=False, server=False, nobrowser=False, environ=with_xdg) is None
    no_display = {"PATH": str(tmp_path / "bin")}
    assert make(desktop_start=True, server=True, nobrowser=False, environ=no_display) is None
    assert not caplog.records  # no desktop: not a word
    no_xdg = {"PATH": str(tmp_path / "empty"), "DISPLAY": ":0"}
    assert make(desktop_start=False, server=True, nobrowser=False, environ=no_xdg) is None
    assert len(caplog.records) == 1 and "xdg-open" in caplog.records[0].getMessage()


def test_log_file_gets_stderr_after_one_line(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from packer.runtime.desktop import start_log\n"
        "start_log(Path(sys.argv[1]), 'My model/v2', 'model.run')\n"
        "print('after', file=sys.stderr); import os; os.write(2, b'from C\\n')"
    )
    for _ in range(2):  # appended
        p = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=True,
        )
        log_file = tmp_path / "logs" / "My_model_v2.log"
        assert (
            p.stderr
            == f"model.run: started without a terminal: serving the chat page; log in {log_file}\n"
        )
    text = log_file.read_text()
    assert text.count("after\nfrom C\n") == 2 and text.startswith("--- ")
    assert (log_file.stat().st_mode & 0o777) == 0o600
    assert ((tmp_path / "logs").stat().st_mode & 0o777) == 0o700


def test_session_watch_stops_when_the_display_socket_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock_path = tmp_path / "wayland-1"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_path))
    monkeypatch.setattr(desktop, "WATCH_INTERVAL_S", 0.05)
    killed = threading.Event()
    monkeypatch.setattr(
        desktop.os,
        "kill",
        lambda pid, sig: killed.set() if (pid, sig) == (os.getpid(), signal.SIGTERM) else None,
    )
    assert desktop.session_watch({"DISPLAY": ":12345"}) is None  # nothing to watch
    watch = desktop.session_watch(
        {"WAYLAND_DISPLAY": "wayland-1", "XDG_RUNTIME_DIR": str(tmp_path)}
    )
    assert watch is not None and [w for w, _ in watch.watched] == [str(sock_path)]
    watch.start()
    time.sleep(0.3)
    assert not killed.is_set()
    server.close()
    sock_path.unlink()  # the compositor exits
    assert killed.wait(5)


def test_display_sockets_and_logind_state(tmp_path: Path) -> None:
    assert desktop.display_sockets({"DISPLAY": ":0"}) == [Path("/tmp/.X11-unix/X0")]
    assert desktop.display_sockets({"DISPLAY": "unix:3.0"}) == [Path("/tmp/.X11-unix/X3")]
    assert desktop.display_sockets({"DISPLAY": "remote:10.0"}) == []  # ssh -X: no local socket
    assert desktop.display_sockets({"WAYLAND_DISPLAY": "/run/w/sock"}) == [Path("/run/w/sock")]
    record = tmp_path / "3"
    record.write_text("UID=1000\nSTATE=active\n")
    assert desktop._session_open(record)
    record.write_text("UID=1000\nSTATE=closing\n")
    assert not desktop._session_open(record)
    record.unlink()
    assert not desktop._session_open(record)


def test_sighup_stops_like_sigterm_unless_ignored() -> None:
    code = (
        "import os, signal; from packer.runtime import desktop\n"
        "{ignore}desktop.stop_on_hangup()\n"
        "try:\n    os.kill(os.getpid(), signal.SIGHUP); import time; time.sleep(2)\n"
        "except KeyboardInterrupt:\n    print('interrupted')\nelse:\n    print('ignored')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for ignore, expected in (
        ("", "interrupted"),
        ("signal.signal(signal.SIGHUP, signal.SIG_IGN); ", "ignored"),
    ):
        p = subprocess.run(
            [sys.executable, "-c", code.format(ignore=ignore)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        assert p.stdout.strip() == expected


def test_same_model_served_from_a_terminal_is_reused(tmp_path: Path) -> None:
    """A double-click while `model.run --server` of the same model runs on the port: its page
    is opened; another model, or another program, on the port: not."""
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    served = {"model_path": str(tmp_path / "models" / "abc.gguf")}

    class Props(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = json.dumps(served).encode() if self.path == "/props" else b"{}"
            self.send_response(200 if self.path == "/props" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Props)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        same = tmp_path / "models" / "abc.gguf"
        assert desktop.served_elsewhere("127.0.0.1", port, same) == f"http://127.0.0.1:{port}/"
        assert desktop.served_elsewhere("0.0.0.0", port, same) == f"http://127.0.0.1:{port}/"
        assert desktop.served_elsewhere("127.0.0.1", port, tmp_path / "other.gguf") is None
        served.clear()  # another program that happens to answer
        assert desktop.served_elsewhere("127.0.0.1", port, same) is None
    finally:
        server.shutdown()
        server.server_close()
    assert desktop.served_elsewhere("127.0.0.1", port, same) is None  # nothing listens
