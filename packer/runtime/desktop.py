"""model.run on a desktop: started without a terminal, opening the browser, the session's end.

**A start without a terminal** (a double-click in a file manager): stdin and stdout are no
terminal, no mode flag is given (nor baked in), and nothing is piped in: stdin is ``/dev/null``,
another character device that is no terminal, or closed. (A pipe, a socket or a regular file on
stdin keeps the one-shot answer: ``echo question | ./model.run``.) Then model.run serves the
chat page as ``--server`` would, and:

* its log goes to ``<cache folder>/logs/<model>.log`` (appended; the previous one is kept as
  ``.log.1`` once it passes 1 MiB); the first line on stderr says where;
* one instance per model: a second double-click while the model is starting or served opens
  the browser on the running one (a lock file next to the log holds its URL) instead of loading
  the model a second time; a port taken by something else means the next free one;
* it stops cleanly (exit 0) on SIGTERM or SIGHUP, and when the desktop session ends without
  a signal (a logout where logind does not kill the session's processes): see
  :class:`SessionWatch`.

**The browser** opens on the chat page (``xdg-open URL``) for a start without a terminal and
for ``--server``, unless ``--nobrowser``, when a desktop session is present (``DISPLAY`` or
``WAYLAND_DISPLAY``). The sandbox (:mod:`packer.runtime.sandbox`) binds every process model.run
starts after it, so :class:`BrowserOpener` starts a small ``/bin/sh`` before it, which waits on
a pipe for the URL and then runs ``xdg-open``; the log file and the instance lock are opened
before it too (after it nothing can be opened for writing).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from packer.runtime.i18n import _

log = logging.getLogger("packer.runtime.desktop")

# flags that choose what model.run does (cli.py's "what to do" group): any of them, given or
# baked in, means the start is not a bare double-click
MODE_FLAGS = (
    "prompt",
    "server",
    "cli",
    "chat",
    "info",
    "extract",
    "embed",
    "version",
    "license",
    "verify",
    "uninstall",
)
LOG_ROTATE_BYTES = 1 << 20
PORT_TRIES = 20  # a taken port: the next ones up to this many, then any free port
WAIT_OTHER_S = 600.0  # how long a second start waits for the first one's URL
WATCH_INTERVAL_S = 2.0
X11_SOCKETS = Path("/tmp/.X11-unix")
LOGIND_SESSIONS = Path("/run/systemd/sessions")


# -- is this a start without a terminal? -------------------------------------------------------


def stdin_kind(fd: int = 0) -> str:
    """What ``fd`` is: ``tty``, ``chardev`` (``/dev/null`` and other devices), ``closed``,
    ``pipe``, ``file``, ``socket`` or ``other``."""
    try:
        st = os.fstat(fd)
    except OSError:
        return "closed"
    if stat.S_ISCHR(st.st_mode):
        return "tty" if os.isatty(fd) else "chardev"
    if stat.S_ISFIFO(st.st_mode):
        return "pipe"
    if stat.S_ISREG(st.st_mode):
        return "file"
    if stat.S_ISSOCK(st.st_mode):
        return "socket"
    return "other"


def is_desktop_start(args: argparse.Namespace, stdin_fd: int = 0, stdout_fd: int = 1) -> bool:
    """Started without a terminal and with nothing to do but serve (see the module's doc)."""
    for flag in MODE_FLAGS:
        value = getattr(args, flag, None)
        if value is not None and value is not False:
            return False
    if stdin_kind(stdout_fd) == "tty":
        return False
    return stdin_kind(stdin_fd) in ("chardev", "closed")


def has_desktop(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


# -- the log file ---------------------------------------------------------------------------


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


def start_log(cache_dir: Path, name: str, prog: str) -> Path:
    """Send everything written to stderr from now on (ours and llama.cpp's) to the model's log
    file in the cache folder, after one line on the real stderr saying where it is."""
    from packer.runtime.cache import private_subdir

    folder = private_subdir(cache_dir / "logs")
    path = folder / f"{_file_name(name)}.log"
    with contextlib.suppress(OSError):
        if path.stat().st_size > LOG_ROTATE_BYTES:
            os.replace(path, path.with_name(path.name + ".1"))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    print(
        _("{prog}: started without a terminal: serving the chat page; log in {path}").format(
            prog=prog, path=path
        ),
        file=sys.stderr,
        flush=True,
    )
    sys.stderr.flush()
    os.dup2(fd, 2)
    os.close(fd)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"--- {stamp} pid {os.getpid()} ---", file=sys.stderr, flush=True)
    return path


# -- one instance per model --------------------------------------------------------------------


class Instance:
    """This model's running desktop instance: ``<logs>/<key>.url``, locked while it runs; it
    holds the URL once the server listens. Opened before the sandbox (written after it)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def publish(self, url: str) -> None:
        with contextlib.suppress(OSError):  # an fd opened before the sandbox: still writable
            os.pwrite(self._fd, url.encode() + b"\n", 0)


def claim_instance(cache_dir: Path, key: str) -> Instance | str:
    """Become this model's desktop instance, or return the URL of the one already running
    (waiting while it starts: unpacking and loading take a while on the first start)."""
    from packer.runtime.cache import private_subdir

    path = private_subdir(cache_dir / "logs") / f"{_file_name(key)}.url"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + WAIT_OTHER_S
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
        else:
            os.ftruncate(fd, 0)
            return Instance(fd)
        url = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if url:
            os.close(fd)
            return url
        if not told:
            log.info(_("this model is already starting: waiting for it"))
            told = True
        if time.monotonic() > deadline:
            os.close(fd)
            raise OSError(
                _(
                    "this model has been starting for {minutes} minutes in another process: "
                    "see its log in {folder}"
                ).format(minutes=int(WAIT_OTHER_S // 60), folder=path.parent)
            )
        time.sleep(0.5)


def free_port(host: str, port: int) -> int:
    """``port`` if it is free on ``host``, else the next free one (up to :data:`PORT_TRIES`),
    else 0 (any free port). 0 stays 0."""
    if port == 0:
        return 0
    try:
        family = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0][0]
    except OSError:
        return port  # the server says what is wrong with the host
    for candidate in range(port, min(port + PORT_TRIES, 65536)):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, candidate))
            except OSError:
                continue
        if candidate != port:
            log.info(
                _("port {port} is in use: serving on port {other}").format(
                    port=port, other=candidate
                )
            )
        return candidate
    log.info(
        _("ports {first} to {last} are in use: serving on a free port").format(
            first=port, last=port + PORT_TRIES - 1
        )
    )
    return 0


def served_elsewhere(host: str, port: int, gguf: Path) -> str | None:
    """The chat page's URL when ``port`` is taken by a model.run serving this same model
    (started from a terminal with ``--server``, say): its ``/props`` names the same GGUF file.
    None otherwise (free, another program, or a server that wants a key)."""
    import json
    import urllib.request

    if port == 0:
        return None
    url_host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}.get(host, host)
    if ":" in url_host and not url_host.startswith("["):
        url_host = f"[{url_host}]"
    base = f"http://{url_host}:{port}/"
    try:
        with urllib.request.urlopen(base + "props", timeout=2) as r:
            props = json.loads(r.read(1 << 20))
    except (OSError, ValueError):
        return None
    if isinstance(props, dict) and props.get("model_path") == str(gguf):
        return base
    return None


# -- the browser ----------------------------------------------------------------------------

# reads one line (the URL) and opens it; EOF (model.run ended before listening) opens nothing
_OPENER_SCRIPT = 'IFS= read -r url || exit 0; exec "$0" "$url"'


class BrowserOpener:
    """A ``/bin/sh`` started before the sandbox that runs ``xdg-open URL`` once it is given the
    URL (:meth:`open`); in its own session, so the browser outlives model.run's signals."""

    def __init__(self, xdg_open: str, *, log_to_stderr: bool) -> None:
        out = None if log_to_stderr else subprocess.DEVNULL  # None: the log file (fd 2)
        self._proc = subprocess.Popen(
            ["/bin/sh", "-c", _OPENER_SCRIPT, xdg_open],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=out,
            start_new_session=True,
            close_fds=True,
        )

    def open(self, url: str) -> None:
        """Open ``url`` in the default browser (once); returns at once."""
        stdin = self._proc.stdin
        if stdin is None or stdin.closed:
            return
        with contextlib.suppress(OSError, ValueError):
            stdin.write(url.encode() + b"\n")
        self.close()

    def close(self) -> None:
        """Let the shell go without opening anything (if it has no URL yet); reap it later."""
        stdin = self._proc.stdin
        if stdin is not None and not stdin.closed:
            with contextlib.suppress(OSError, ValueError):
                stdin.close()
        threading.Thread(target=self._proc.wait, name="browser-opener", daemon=True).start()


def browser_opener(
    *, desktop_start: bool, server: bool, nobrowser: bool, environ: Mapping[str, str] | None = None
) -> BrowserOpener | None:
    """A :class:`BrowserOpener` when the chat page should open in a browser (see the module's
    doc), else None; one hint line where a desktop has no ``xdg-open``."""
    if nobrowser or not (desktop_start or server) or not has_desktop(environ):
        return None
    env = os.environ if environ is None else environ
    xdg_open = shutil.which("xdg-open", path=env.get("PATH") or os.defpath)
    if xdg_open is None:
        log.info(
            _("cannot open a web browser here (no xdg-open): open the address shown below in yours")
        )
        return None
    try:
        return BrowserOpener(xdg_open, log_to_stderr=desktop_start)
    except OSError as exc:
        log.info(
            _(
                "cannot open a web browser here ({reason}): open the address shown below in yours"
            ).format(reason=exc.strerror or exc)
        )
        return None


def open_running(url: str, environ: Mapping[str, str] | None = None) -> bool:
    """A second start found this model already served at ``url``: open it in a browser right
    away and say so; False when no browser could be opened."""
    opener = browser_opener(desktop_start=True, server=True, nobrowser=False, environ=environ)
    if opener is not None:
        opener.open(url)
        log.info(_("this model is already running: opened {url}").format(url=url))
        return True
    log.info(_("this model is already running: open {url}").format(url=url))
    return False


# -- the end of the session -----------------------------------------------------------------


def stop_on_hangup() -> None:
    """SIGHUP (the terminal closed, the session ended) stops a server like SIGTERM does:
    KeyboardInterrupt in the main thread. Left alone when ignored (``nohup``)."""
    if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
        return

    def on_hup(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGHUP, on_hup)


class SessionWatch(threading.Thread):
    """Stops model.run (SIGTERM to itself) when the desktop session it was started in ends.

    Most logouts send SIGTERM or SIGHUP. Where none comes (logind's ``KillUserProcesses=no``,
    the default on several distributions, leaves a session's processes running), the end of the
    session shows as:

    * the display's socket going away: ``$XDG_RUNTIME_DIR/$WAYLAND_DISPLAY`` (or that path when
      absolute), ``/tmp/.X11-unix/X<n>`` for ``DISPLAY=:<n>``: the compositor or X server
      removes it when it exits;
    * logind's record of the session (``/run/systemd/sessions/$XDG_SESSION_ID``) going away
      or turning to ``STATE=closing``.

    Each is watched only if it exists at start (every :data:`WATCH_INTERVAL_S` seconds, reading
    only: allowed in the sandbox). The parent process going away is not used: file managers and
    launchers often start a program through a helper that exits at once."""

    def __init__(self, watched: list[tuple[str, Callable[[], bool]]]) -> None:
        super().__init__(name="session-watch", daemon=True)
        self.watched = watched

    def run(self) -> None:
        while True:
            time.sleep(WATCH_INTERVAL_S)
            for what, alive in self.watched:
                if not alive():
                    log.info(
                        _("the desktop session has ended ({what}): stopping").format(what=what)
                    )
                    os.kill(os.getpid(), signal.SIGTERM)
                    return


def session_watch(environ: Mapping[str, str] | None = None) -> SessionWatch | None:
    """A :class:`SessionWatch` of what this session has (see there), or None."""
    env = os.environ if environ is None else environ
    watched: list[tuple[str, Callable[[], bool]]] = []
    for socket_path in display_sockets(env):
        if socket_path.exists():
            watched.append((str(socket_path), socket_path.exists))
    session = env.get("XDG_SESSION_ID", "")
    if session and re.fullmatch(r"[A-Za-z0-9_-]+", session):
        record = LOGIND_SESSIONS / session
        if record.exists():
            watched.append((str(record), lambda: _session_open(record)))
    return SessionWatch(watched) if watched else None


def display_sockets(env: Mapping[str, str]) -> list[Path]:
    out = []
    wayland = env.get("WAYLAND_DISPLAY", "")
    if wayland:
        if wayland.startswith("/"):
            out.append(Path(wayland))
        elif env.get("XDG_RUNTIME_DIR"):
            out.append(Path(env["XDG_RUNTIME_DIR"]) / wayland)
    x11 = re.fullmatch(r"(?:unix)?:(\d+)(?:\.\d+)?", env.get("DISPLAY", ""))
    if x11:
        out.append(X11_SOCKETS / f"X{x11.group(1)}")
    return out


def _session_open(record: Path) -> bool:
    try:
        text = record.read_text(errors="replace")
    except OSError:
        return False
    return "\nSTATE=closing" not in "\n" + text
