"""Serving a class: the addresses students can type, and what the teacher sees at start.

With a non-loopback ``--host`` (``0.0.0.0``, ``::`` or one address), :func:`public_urls`
lists every address of this machine on its networks as a URL: IPv4 first (the one the default
route leaves from first of all), then stable global IPv6 addresses (``::`` only, and only where
it also accepts IPv4 unless ``bindv6only`` is set). Loopback and link-local addresses, and
interfaces that are down or have no carrier, are left out. The addresses come from the
kernel's routing netlink socket (``RTM_GETADDR``) and the interface flags from
``SIOCGIFFLAGS``: pure Python, no dependency. :func:`startup_lines` is what the server prints
on stderr: the URLs, a terminal QR code of the first (``packer.runtime.qr``), and one warning
when no API key is set.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from packer.runtime.browser_guard import listens_on_loopback
from packer.runtime.i18n import _

__all__ = ["Address", "interface_addresses", "public_urls", "startup_lines"]

log = logging.getLogger("packer.runtime.lan")

NETLINK_ROUTE = 0
RTM_NEWADDR, RTM_GETADDR = 20, 22
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
# address flags (linux/if_addr.h): a privacy (temporary) address changes every few hours; the
# others are not usable (yet)
IFA_F_TEMPORARY, IFA_F_DADFAILED, IFA_F_DEPRECATED, IFA_F_TENTATIVE = 0x01, 0x08, 0x20, 0x40
RT_SCOPE_UNIVERSE = 0
SIOCGIFFLAGS = 0x8913
IFF_UP, IFF_LOOPBACK, IFF_RUNNING = 0x1, 0x8, 0x40
_NLMSGHDR = struct.Struct("=IHHII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTATTR = struct.Struct("=HH")
# documentation addresses (RFC 5737, RFC 3849): connecting a UDP socket sends nothing, it only
# asks the routing table which local address would be used
_PROBE = {socket.AF_INET: "192.0.2.1", socket.AF_INET6: "2001:db8::1"}


@dataclass(frozen=True)
class Address:
    """One address of an interface, as the kernel lists it."""

    family: int  # socket.AF_INET or socket.AF_INET6
    address: str
    interface: str
    scope: int  # RT_SCOPE_UNIVERSE = 0 ... RT_SCOPE_HOST = 254
    flags: int  # IFA_F_*
    interface_flags: int  # IFF_*

    @property
    def usable(self) -> bool:
        """Another machine on the network can reach this address: not loopback, not
        link-local, not a temporary or unfinished address, its interface up with a carrier."""
        if self.interface_flags & IFF_LOOPBACK or not self.interface_flags & IFF_UP:
            return False
        if not self.interface_flags & IFF_RUNNING:
            return False
        if self.scope != RT_SCOPE_UNIVERSE:
            return False
        if self.flags & (IFA_F_TEMPORARY | IFA_F_DADFAILED | IFA_F_DEPRECATED | IFA_F_TENTATIVE):
            return False
        ip = ipaddress.ip_address(self.address)
        return not (ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified)


def interface_addresses() -> list[Address]:
    """Every address of every interface (RTM_GETADDR dump); [] where netlink is unavailable."""
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as nl:
            nl.settimeout(2.0)
            body = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
            nl.send(
                _NLMSGHDR.pack(
                    _NLMSGHDR.size + len(body), RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, 1, 0
                )
                + body
            )
            messages = []
            done = False
            while not done:
                data = nl.recv(65536)
                if not data:
                    break
                for kind, payload in _messages(data):
                    if kind == NLMSG_DONE:
                        done = True
                    elif kind == NLMSG_ERROR:
                        log.debug("lan: netlink error")
                        done = True
                    elif kind == RTM_NEWADDR:
                        messages.append(payload)
    except (OSError, AttributeError) as exc:  # not Linux (no AF_NETLINK), or refused
        log.debug("lan: cannot list addresses: %s", exc)
        return []
    flags_of: dict[int, tuple[str, int]] = {}
    out = []
    for payload in messages:
        parsed = _parse_addr(payload)
        if parsed is None:
            continue
        family, scope, index, address, addr_flags = parsed
        if index not in flags_of:
            flags_of[index] = _interface(index)
        name, if_flags = flags_of[index]
        out.append(Address(family, address, name, scope, addr_flags, if_flags))
    return out


def _messages(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            break
        out.append((kind, data[offset + _NLMSGHDR.size : offset + length]))
        offset += (length + 3) & ~3
    return out


def _parse_addr(payload: bytes) -> tuple[int, int, int, str, int] | None:
    if len(payload) < _IFADDRMSG.size:
        return None
    family, _prefix, flags, scope, index = _IFADDRMSG.unpack_from(payload)
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    attrs: dict[int, bytes] = {}
    offset = _IFADDRMSG.size
    while offset + _RTATTR.size <= len(payload):
        length, kind = _RTATTR.unpack_from(payload, offset)
        if length < _RTATTR.size:
            break
        attrs[kind] = payload[offset + _RTATTR.size : offset + length]
        offset += (length + 3) & ~3
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)  # IPv4: LOCAL; IFA_ADDRESS: the peer
    if raw is None or len(raw) not in (4, 16):
        return None
    if IFA_FLAGS in attrs and len(attrs[IFA_FLAGS]) >= 4:  # the full 32-bit flags (Linux 3.14)
        flags = struct.unpack_from("=I", attrs[IFA_FLAGS])[0]
    return family, scope, index, socket.inet_ntop(family, raw), flags


def _interface(index: int) -> tuple[str, int]:
    """The name and IFF_* flags of interface ``index`` (flags 0 when unknown: not usable)."""
    try:
        name = socket.if_indextoname(index)
    except OSError:
        return f"#{index}", 0
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            req = struct.pack("16sH14x", name.encode()[:15], 0)
            flags = struct.unpack_from("16sH", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
    except OSError:
        return name, 0
    return name, int(flags)


def _route_source(family: int) -> str | None:
    """The local address traffic to the wider network leaves from (no packet is sent)."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((_PROBE[family], 9))
            return str(s.getsockname()[0])
    except OSError:
        return None


def _v6_only() -> bool:
    with contextlib.suppress(OSError, ValueError):
        return Path("/proc/sys/net/ipv6/bindv6only").read_text().strip() == "1"
    return False


def _url(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}/"


def public_urls(host: str, port: int, addresses: list[Address] | None = None) -> list[str]:
    """The URLs students type to reach a server listening on ``host``:``port``; [] for a
    loopback host. ``addresses``: the machine's (default: :func:`interface_addresses`)."""
    if listens_on_loopback(host):
        return []
    if host not in ("", "0.0.0.0", "::"):
        return [_url(host, port)]  # one address (or a name) chosen by the teacher
    families = [socket.AF_INET] if host == "0.0.0.0" else [socket.AF_INET, socket.AF_INET6]
    if host == "::" and _v6_only():
        families = [socket.AF_INET6]
    if host == "":
        families = [socket.AF_INET]
    found = addresses if addresses is not None else interface_addresses()
    urls: list[str] = []
    for family in families:
        usable = [a for a in found if a.family == family and a.usable]
        preferred = _route_source(family) if addresses is None else None
        usable.sort(key=lambda a: a.address != preferred)  # stable: the kernel's order otherwise
        for a in usable:
            url = _url(a.address, port)
            if url not in urls:
                urls.append(url)
    return urls


def startup_lines(urls: list[str], *, has_key: bool, qr: bool = True) -> list[str]:
    """What the server prints on stderr when it listens beyond this machine: the addresses,
    a QR code of the first, and a warning when there is no API key."""
    from packer.runtime.qr import qr_terminal

    lines: list[str] = []
    if urls:
        lines.append(_("Students can open the chat at:"))
        lines += [f"  {url}" for url in urls]
        if qr:
            lines.append(qr_terminal(urls[0]))
    else:
        lines.append(
            _(
                "no network address found on this computer: connect it to the class network "
                "(students need its address to reach the chat)"
            )
        )
    if not has_key:
        lines.append(
            _(
                "warning: no API key: anyone on this network can use the model; set one with "
                "--api-key-file FILE or $PACKER_API_KEY"
            )
        )
    return lines
