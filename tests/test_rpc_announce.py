"""--rpc-server --announce and --rpc auto (packer/runtime/rpc_announce.py): the datagram, and
discovery over loopback unicast (the broadcast itself is tested in network namespaces the slow
test in tests/test_rpc.py creates, never on a real network)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from packer.runtime import __version__, rpc_announce
from packer.runtime.cli import UsageError, parse
from packer.runtime.rpc import Endpoint, RpcError
from packer.runtime.rpc_announce import Announcement, decode, discover, encode


def test_encode_decode() -> None:
    a = Announcement("10.0.0.5", 50052, "1.2.3", 8_000_000_000)
    assert decode(encode(a), "10.0.0.9") == a
    data = encode(Announcement("0.0.0.0", 6000, "1.2.3", None))  # every address: the sender's
    assert b'"host":""' in data and len(data) < rpc_announce.MAX_DATAGRAM
    assert decode(data, "10.0.0.9") == Announcement("10.0.0.9", 6000, "1.2.3", None)


@pytest.mark.parametrize(
    "data",
    [
        b"\xff",
        b"[" * 1000 + b"]" * 1000,  # deeper than json's recursion limit
        b"not json",
        b"[]",
        b'{"packer": "other", "host": "", "port": 1, "version": "1"}',
        b'{"packer": "rpc-worker", "host": "", "port": 0, "version": "1"}',
        b'{"packer": "rpc-worker", "host": "", "port": true, "version": "1"}',
        b'{"packer": "rpc-worker", "host": "", "port": 1, "version": ""}',
        b'{"packer": "rpc-worker", "host": 5, "port": 1, "version": "1"}',
        b'{"packer": "rpc-worker", "host": "", "port": 1, "version": "1", "free": -1}',
    ],
)
def test_decode_refuses(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode(data, "10.0.0.9")


def test_broadcast_addresses_skip_loopback() -> None:
    assert all(a != "127.255.255.255" for a in rpc_announce.broadcast_addresses())


def _udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _sending(port: int, datagrams: list[bytes]) -> Iterator[None]:
    """Send the datagrams to 127.0.0.1:port every 0.1 s, as workers would, until the end."""
    done = threading.Event()

    def loop() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            while not done.is_set():
                for data in datagrams:
                    s.sendto(data, ("127.0.0.1", port))
                time.sleep(0.1)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def test_discover(capsys: pytest.CaptureFixture[str]) -> None:
    port = _udp_port()
    datagrams = [
        encode(Announcement("", 7001, __version__, 2_000_000_000)),
        encode(Announcement("", 7000, __version__, None)),
        encode(Announcement("", 7002, "0.0.1-old", None)),
        b"someone else's datagram",
    ]
    with _sending(port, datagrams):
        found = discover(1.0, announce_port=port)
    assert found == [Endpoint("127.0.0.1", 7000), Endpoint("127.0.0.1", 7001)]
    lines = capsys.readouterr().err.splitlines()
    assert lines.count("RPC: found worker 127.0.0.1:7001 (2.0 GB free)") == 1
    assert lines.count("RPC: found worker 127.0.0.1:7000 (unknown free)") == 1
    refused = [line for line in lines if "refusing worker 127.0.0.1:7002" in line]
    assert len(refused) == 1 and "0.0.1-old" in refused[0] and len(lines) == 3


def test_discover_none() -> None:
    with pytest.raises(RpcError, match="heard no RPC worker within 0.3 s"):
        discover(0.3, announce_port=_udp_port())


def test_flags() -> None:
    args = parse(["--rpc", "auto", "--rpc-wait", "5", "-p", "hi"], [])
    assert args.rpc == "auto" and args.rpc_wait == 5.0
    assert parse(["--rpc", "AUTO", "-p", "hi"], []).rpc_wait == 3.0
    assert parse(["--rpc-server", "--host", "0.0.0.0", "--announce"], []).announce
    with pytest.raises(UsageError, match="--host 0.0.0.0"):
        parse(["--rpc-server", "--announce"], [])
    with pytest.raises(UsageError, match="goes with --rpc-server"):
        parse(["--announce", "-p", "hi"], [])
    with pytest.raises(SystemExit):
        parse(["--rpc", "auto", "--rpc-wait", "-1", "-p", "hi"], [])
