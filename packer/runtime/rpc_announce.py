"""Finding RPC workers on the LAN: ``--rpc-server --announce`` and ``--rpc auto``.

A worker started with ``--announce`` sends a small JSON datagram every
:data:`INTERVAL` seconds to UDP port :data:`ANNOUNCE_PORT` on the broadcast address of each of
its network interfaces (loopback has none). The main process with ``--rpc auto`` listens on that
port for ``--rpc-wait`` seconds and uses every worker it heard that runs the same packer
runtime version; one of another version is refused in one line (ggml's RPC protocol changes
between llama.cpp versions, and the client aborts on a mismatch).

The datagram::

    {"packer": "rpc-worker", "host": "", "port": 50052, "version": "0.9.0", "free": 7812345856}

``host`` is empty when the worker listens on every address: the main process then uses the
address the datagram came from. Like the RPC protocol itself, this is for trusted networks: a
datagram names a worker, it proves nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass

from packer.runtime import __version__
from packer.runtime.context_size import available_memory
from packer.runtime.i18n import _
from packer.runtime.rpc import Endpoint, RpcError
from packer.runtime.sizes import format_size

__all__ = [
    "ANNOUNCE_PORT",
    "Announcement",
    "decode",
    "discover",
    "encode",
    "start_announcing",
]

ANNOUNCE_PORT = 50053  # UDP; next to ggml-rpc's 50052
INTERVAL = 2.0  # seconds between two datagrams of one worker
KIND = "rpc-worker"
MAX_DATAGRAM = 1024
_ANY = ("", "0.0.0.0", "::")


@dataclass(frozen=True)
class Announcement:
    host: str  # "" = every address of the sender
    port: int
    version: str
    free: int | None  # bytes of memory the worker may still use; None = unknown


def encode(announcement: Announcement) -> bytes:
    body = {
        "packer": KIND,
        "host": "" if announcement.host in _ANY else announcement.host,
        "port": announcement.port,
        "version": announcement.version,
        "free": announcement.free,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def decode(data: bytes, sender: str) -> Announcement:
    """A datagram from ``sender`` (an IP address). Raises ValueError for anything that is not
    a packer worker's announcement; an empty host becomes the sender's address."""
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"not JSON: {type(exc).__name__}") from None
    if not isinstance(body, dict) or body.get("packer") != KIND:
        raise ValueError("not a packer RPC worker's announcement")
    host, port, version, free = (body.get(k) for k in ("host", "port", "version", "free"))
    if not isinstance(host, str) or not isinstance(version, str) or not version:
        raise ValueError("host and version must be strings")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"bad port {port!r}")
    if free is not None and (isinstance(free, bool) or not isinstance(free, int) or free < 0):
        raise ValueError(f"bad free memory {free!r}")
    return Announcement(host or sender, port, version, free)


# -- the worker --------------------------------------------------------------------------------
def broadcast_addresses() -> list[str]:
    """The IPv4 broadcast address of each interface that is up and has one (Linux ioctls)."""
    siocgifflags, siocgifbrdaddr = 0x8913, 0x8919
    iff_up, iff_broadcast = 0x1, 0x2
    out: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _index, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                flags = struct.unpack("H", fcntl.ioctl(s, siocgifflags, request)[16:18])[0]
                if flags & iff_up and flags & iff_broadcast:
                    address = socket.inet_ntoa(fcntl.ioctl(s, siocgifbrdaddr, request)[20:24])
                    if address not in out and address != "0.0.0.0":
                        out.append(address)
            except OSError:  # no IPv4 address on it
                continue
    return out


def start_announcing(host: str, port: int, announce_port: int = ANNOUNCE_PORT) -> None:
    """Send this worker's datagram every :data:`INTERVAL` seconds, from a daemon thread, on
    every interface's broadcast address (looked up again each time: an interface may come up
    after the worker)."""

    def loop() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            while True:
                data = encode(Announcement(host, port, __version__, available_memory()))
                with contextlib.suppress(OSError):  # no interfaces to list: try again later
                    for address in broadcast_addresses():
                        with contextlib.suppress(OSError):  # an interface going down
                            s.sendto(data, (address, announce_port))
                time.sleep(INTERVAL)

    threading.Thread(target=loop, name="rpc-announce", daemon=True).start()


# -- the main process --------------------------------------------------------------------------
def discover(wait: float, announce_port: int = ANNOUNCE_PORT) -> list[Endpoint]:
    """``--rpc auto``: the workers heard within ``wait`` seconds, one line each on stderr, in
    address order. Raises RpcError when none of this version was heard."""
    heard: dict[Endpoint, Announcement] = {}
    refused: set[Endpoint] = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):  # two main processes on one machine
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            s.bind(("", announce_port))
        except OSError as exc:
            raise RpcError(
                _("--rpc auto cannot listen on UDP port {port}: {reason}").format(
                    port=announce_port, reason=exc.strerror or exc
                )
            ) from None
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                data, (sender, _sport) = s.recvfrom(MAX_DATAGRAM)
            except TimeoutError:
                break
            try:
                found = decode(data, sender)
            except ValueError:
                continue  # someone else's datagram on this port
            endpoint = Endpoint(found.host, found.port)
            if found.version != __version__:
                if endpoint not in refused:
                    refused.add(endpoint)
                    print(
                        _(
                            "RPC: refusing worker {endpoint}: it runs packer runtime {theirs}, "
                            "this file {ours}; use the same model.run version on every machine"
                        ).format(endpoint=endpoint, theirs=found.version, ours=__version__),
                        file=sys.stderr,
                        flush=True,
                    )
                continue
            heard[endpoint] = found
    if not heard:
        raise RpcError(
            _(
                "--rpc auto heard no RPC worker within {wait:g} s on UDP port {port}: start "
                "workers with `model.run --rpc-server --host 0.0.0.0 --announce` on this "
                "network, wait longer with --rpc-wait, or name them with --rpc HOST:PORT"
            ).format(wait=wait, port=announce_port)
        )
    endpoints = sorted(heard, key=lambda e: (_address_key(e.host), e.port))  # a stable order
    for endpoint in endpoints:
        free = heard[endpoint].free
        print(
            _("RPC: found worker {endpoint} ({free} free)").format(
                endpoint=endpoint, free=format_size(free) if free is not None else _("unknown")
            ),
            file=sys.stderr,
            flush=True,
        )
    return endpoints


def _address_key(host: str) -> bytes:
    try:
        return socket.inet_aton(host)
    except OSError:  # a name: after the addresses
        return b"\xff" * 4 + host.encode()
