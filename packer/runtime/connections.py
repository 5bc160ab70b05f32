"""Bounds on what clients can hold: connections, time to send a request, waiting model work.

* :class:`ConnectionLimit`: at most N connections are served at once (``--max-connections``);
  one more is answered ``503`` with ``Retry-After`` at once by the listening thread and closed
  by :class:`Lingerer` (which reads what the client still sends for a moment, so the kernel does
  not reset the connection before the client has read the answer).
* :class:`DeadlineReader`: the socket reader under a request's ``rfile``. A request line and its
  headers must arrive within a deadline (slowloris), its body within another; a stall of any
  single read is bounded too.
* :func:`client_gone`: ``poll()``, not ``select()`` (which fails for descriptors >= 1024).
* :class:`WorkLimit`: model work that does not go through the scheduler's queue (embeddings,
  tokenizing) waits in a bounded line too; beyond it, :class:`QueueFull` (503).
"""

from __future__ import annotations

import io
import logging
import math
import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from packer.runtime.scheduler import QueueFull

log = logging.getLogger("packer.runtime.server")

CONNECTIONS_MARGIN = 64  # --max-connections 0 = slots + max queue + this (keep-alive, /health)
LINGER_S = 2.0  # how long a refused connection is read from before it is closed
MAX_LINGERING = 256  # refused connections being closed at once; beyond, closed at once


class ConnectionLimit:
    """Counts open connections; :meth:`try_acquire` is False when ``limit`` are open."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._open = 0
        self._lock = threading.Lock()
        self._last_warning = 0.0

    @property
    def open(self) -> int:
        with self._lock:
            return self._open

    def try_acquire(self) -> bool:
        with self._lock:
            if self._open >= self.limit:
                return False
            self._open += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._open -= 1

    def warn_full(self, who: str) -> None:
        """One log line per 10 s at most while connections are refused."""
        now = time.monotonic()
        with self._lock:
            if now - self._last_warning < 10.0:
                return
            self._last_warning = now
        log.warning(
            "%d connections are open (--max-connections %d): refusing new ones with 503 "
            "(the latest from %s)",
            self.limit,
            self.limit,
            who,
        )


class Lingerer:
    """Closes refused connections gracefully: after our answer and a FIN, reads and drops
    what the client still sends, for up to :data:`LINGER_S`, in one thread for all of them
    (which ends when none is left)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socks: list[tuple[socket.socket, float]] = []
        self._running = False

    def refuse(self, sock: socket.socket, response: bytes) -> None:
        """Send ``response`` (small: it fits the socket's buffer) and close ``sock`` soon."""
        try:
            sock.setblocking(False)
            _drain(sock)
            sock.send(response)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        with self._lock:
            if len(self._socks) >= MAX_LINGERING:
                sock.close()
                return
            self._socks.append((sock, time.monotonic() + LINGER_S))
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="linger", daemon=True).start()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._socks:
                    self._running = False
                    return
                socks = list(self._socks)
            poller = select.poll()
            for sock, _ in socks:
                poller.register(sock, select.POLLIN)
            ready = {fd for fd, _ in poller.poll(100)}  # new sockets join within 0.1 s
            now = time.monotonic()
            done = [
                (sock, deadline)
                for sock, deadline in socks
                if (sock.fileno() in ready and not _drain(sock)) or now >= deadline
            ]
            with self._lock:
                for item in done:
                    self._socks.remove(item)
                    item[0].close()


def _drain(sock: socket.socket) -> bool:
    """Read what is there without blocking; False once the peer has closed (or failed)."""
    try:
        while True:
            if not sock.recv(65536):
                return False
    except BlockingIOError:
        return True
    except OSError:
        return False


class DeadlineReader(io.RawIOBase):
    """A socket as a raw reader whose reads fail with :class:`TimeoutError` past ``deadline``
    (a ``time.monotonic()`` value, or None) or when one read stalls over ``stall_s``; the
    socket's timeout is put back to ``write_timeout`` after each read (writes use it)."""

    def __init__(self, sock: socket.socket, *, stall_s: float, write_timeout: float) -> None:
        super().__init__()
        self._sock = sock
        self.stall_s = stall_s
        self.write_timeout = write_timeout
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def expect_within(self, seconds: float | None) -> None:
        """What is read next must arrive within ``seconds`` from now (None: no deadline)."""
        self.deadline = None if seconds is None else time.monotonic() + seconds

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        timeout = self.stall_s
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request did not arrive in time")
            timeout = min(timeout, left)
        self._sock.settimeout(timeout)
        try:
            return self._sock.recv_into(buf)
        finally:
            self._sock.settimeout(self.write_timeout)


def client_gone(sock: socket.socket) -> bool:
    """True once the client has closed its end or the connection failed (nothing is consumed:
    bytes of a next request stay in the socket). Works for any descriptor number."""
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLPRI)
        events = poller.poll(0)
    except (OSError, ValueError):  # the socket is closed
        return True
    if not events:
        return False
    if events[0][1] & (select.POLLERR | select.POLLNVAL):
        return True
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class WorkLimit:
    """At most ``running`` calls run at once and ``waiting`` more wait; one more raises
    :class:`QueueFull` (the server answers 503 with Retry-After)."""

    def __init__(self, running: int, waiting: int) -> None:
        self.running = max(1, running)
        self.waiting = max(0, waiting)
        self._active = 0
        self._queued = 0
        self._cond = threading.Condition()
        self._avg_s = 1.0  # running mean of a call's duration, for Retry-After

    @contextmanager
    def use(self) -> Iterator[None]:
        with self._cond:
            if self._active >= self.running and self._queued >= self.waiting:
                retry = self._avg_s * (self._queued + 1) / self.running
                raise QueueFull(self._queued, self.waiting, max(1, min(60, math.ceil(retry))))
            self._queued += 1
            try:
                self._cond.wait_for(lambda: self._active < self.running)
            finally:
                self._queued -= 1
            self._active += 1
        t0 = time.monotonic()
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._avg_s = 0.8 * self._avg_s + 0.2 * (time.monotonic() - t0)
                self._cond.notify()
