"""Serving a class: the LAN addresses, the start-up block and its QR code (packer.runtime.lan)."""

from __future__ import annotations

import socket
import struct

import pytest
from terminal_qr import decode_terminal_qr, qr_lines

from packer.runtime import lan
from packer.runtime.lan import (
    IFA_F_TEMPORARY,
    IFA_F_TENTATIVE,
    IFF_LOOPBACK,
    IFF_RUNNING,
    IFF_UP,
    Address,
)

UP = IFF_UP | IFF_RUNNING
V4, V6 = socket.AF_INET, socket.AF_INET6


def addr(
    family: int,
    address: str,
    iface: str = "eth0",
    *,
    scope: int = 0,
    flags: int = 0,
    if_flags: int = UP,
) -> Address:
    return Address(family, address, iface, scope, flags, if_flags)


MACHINE = [
    addr(V4, "127.0.0.1", "lo", scope=254, if_flags=UP | IFF_LOOPBACK),
    addr(V6, "::1", "lo", scope=254, if_flags=UP | IFF_LOOPBACK),
    addr(V4, "192.168.1.23", "wlan0"),
    addr(V4, "10.0.0.7", "eth1", if_flags=IFF_UP),  # no carrier
    addr(V4, "172.16.5.1", "eth2", if_flags=0),  # down
    addr(V4, "169.254.3.3", "eth0", scope=253),  # link-local
    addr(V4, "10.77.0.2", "eth0"),
    addr(V6, "fe80::1", "wlan0", scope=253),
    addr(V6, "2001:db8::5", "wlan0"),
    addr(V6, "2001:db8::dead", "wlan0", flags=IFA_F_TEMPORARY),
    addr(V6, "2001:db8::beef", "wlan0", flags=IFA_F_TENTATIVE),
]


def test_all_ipv4_interfaces_listed_skipping_loopback_down_and_link_local() -> None:
    assert lan.public_urls("0.0.0.0", 8080, MACHINE) == [
        "http://192.168.1.23:8080/",
        "http://10.77.0.2:8080/",
    ]


def test_ipv6_wildcard_lists_ipv4_first_then_stable_global_ipv6(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lan, "_v6_only", lambda: False)
    assert lan.public_urls("::", 9000, MACHINE) == [
        "http://192.168.1.23:9000/",
        "http://10.77.0.2:9000/",
        "http://[2001:db8::5]:9000/",
    ]
    monkeypatch.setattr(lan, "_v6_only", lambda: True)
    assert lan.public_urls("::", 9000, MACHINE) == ["http://[2001:db8::5]:9000/"]


def test_one_address_and_loopback_hosts() -> None:
    assert lan.public_urls("192.168.1.23", 8080, MACHINE) == ["http://192.168.1.23:8080/"]
    assert lan.public_urls("fd00::2", 8080, MACHINE) == ["http://[fd00::2]:8080/"]
    for host in ("127.0.0.1", "::1", "localhost", "127.0.1.1"):
        assert lan.public_urls(host, 8080, MACHINE) == []


def test_netlink_messages_parsed() -> None:
    """An RTM_NEWADDR as the kernel sends it: IFA_ADDRESS (the peer) and IFA_LOCAL (ours)."""

    def rtattr(kind: int, data: bytes) -> bytes:
        raw = struct.pack("=HH", 4 + len(data), kind) + data
        return raw + b"\0" * (-len(raw) % 4)

    body = struct.pack("=BBBBI", V4, 24, 0x80, 0, 3)
    body += rtattr(lan.IFA_ADDRESS, socket.inet_aton("10.1.2.254"))
    body += rtattr(lan.IFA_LOCAL, socket.inet_aton("10.1.2.3"))
    body += rtattr(lan.IFA_FLAGS, struct.pack("=I", 0x280))
    msg = struct.pack("=IHHII", 16 + len(body), lan.RTM_NEWADDR, 2, 1, 0) + body
    done = struct.pack("=IHHII", 20, lan.NLMSG_DONE, 2, 1, 0) + b"\0" * 4
    parts = lan._messages(msg + done)
    assert [kind for kind, _ in parts] == [lan.RTM_NEWADDR, lan.NLMSG_DONE]
    assert lan._parse_addr(parts[0][1]) == (V4, 0, 3, "10.1.2.3", 0x280)


def test_this_machine_lists_its_loopback_as_unusable() -> None:
    found = lan.interface_addresses()
    loop = [a for a in found if a.address == "127.0.0.1"]
    assert loop and not loop[0].usable and loop[0].interface_flags & IFF_LOOPBACK
    assert "http://127.0.0.1:1/" not in lan.public_urls("0.0.0.0", 1)


def test_startup_block_urls_qr_and_key_warning() -> None:
    urls = ["http://192.168.1.23:8080/", "http://10.77.0.2:8080/"]
    lines = lan.startup_lines(urls, has_key=False)
    text = "\n".join(lines)
    assert "  http://192.168.1.23:8080/\n  http://10.77.0.2:8080/" in text
    assert decode_terminal_qr(qr_lines(text)) == [urls[0]]
    assert sum("no API key" in line for line in lines) == 1
    assert not any("no API key" in line for line in lan.startup_lines(urls, has_key=True))


def test_startup_block_without_any_address() -> None:
    lines = lan.startup_lines([], has_key=True)
    assert len(lines) == 1 and "no network address" in lines[0]
    assert qr_lines("\n".join(lines)) == []
