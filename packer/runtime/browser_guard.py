"""What web pages may do with the server: the ``Host`` and ``Origin`` checks.

A browser lets any page send requests to ``http://127.0.0.1:8080``. Two defences:

* **DNS rebinding.** A page at ``http://evil.example:8080`` whose name is then re-pointed to
  127.0.0.1 is "same-origin" with the server as far as the browser knows, so it could read the
  answers (``/props`` holds paths). Its requests still say ``Host: evil.example:8080``. A server
  that listens on a loopback address only answers Host names that mean this machine's loopback:
  ``localhost`` and ``*.localhost`` (RFC 6761: browsers resolve them to loopback themselves),
  loopback IP addresses, a missing Host (HTTP/1.0 clients), and names given with
  ``--allowed-host`` (e.g. the public name a reverse proxy passes on). The machine's own host
  name is not allowed by default: a loopback-only server is not reachable at it anyway
  (Debian maps it to 127.0.1.1), and a name the local resolver answers can be the network's.
  A server listening on a network address (``--host 0.0.0.0``) does not check Host, as Ollama
  does not: anyone who can reach the port can use it, so use ``--api-key`` there.
* **Cross-site requests.** A request with an ``Origin`` header comes from a web page; it is
  served only when that origin is the server's own (the web chat page: the Origin names the
  Host the request was sent to) or is allowed with ``--cors`` (``*``: any). Clients that are not
  browsers (curl, the OpenAI SDK, LangChain, Ollama's library) send no Origin and pass.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


def listens_on_loopback(address: str) -> bool:
    """True for a listening address that only this machine can reach (127.0.0.0/8, ::1)."""
    if address.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    return _loopback(ip)


def _loopback(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def split_host(value: str) -> tuple[str, int | None] | None:
    """A Host header's name (lower case, IPv6 without brackets) and port; None if malformed."""
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_s = rest[1:] if rest else None
    elif value.count(":") == 1:
        name, port_s = value.split(":")
    elif ":" in value:  # a bare IPv6 address is not a valid Host
        return None
    else:
        name, port_s = value, None
    port = None
    if port_s is not None:
        if not port_s.isdigit() or len(port_s) > 5:
            return None
        port = int(port_s)
    return name.lower().rstrip("."), port


def host_refusal(host_header: str | None, allowed: tuple[str, ...]) -> str | None:
    """Why a loopback-only server refuses a request for ``host_header``, or None."""
    if host_header is None or host_header.strip() == "":
        return None
    parsed = split_host(host_header)
    if parsed is not None:
        name = parsed[0]
        names = {a.lower().rstrip(".") for a in allowed}
        if "*" in names or name in names:
            return None
        if name == "localhost" or name.endswith(".localhost"):
            return None
        try:
            if _loopback(ipaddress.ip_address(name)):
                return None
        except ValueError:
            pass
    return (
        f"this server listens on this machine only and answers requests for localhost, not "
        f"for '{host_header[:80]}': use http://127.0.0.1 or http://localhost, or start it with "
        "--allowed-host NAME (e.g. behind a reverse proxy)"
    )


def origin_refusal(
    origin: str | None, host_header: str | None, cors: tuple[str, ...]
) -> str | None:
    """Why a request from the web page at ``origin`` is refused, or None (no Origin: not a
    browser; the server's own page; an origin allowed with --cors)."""
    if origin is None or "*" in cors or origin in cors:
        return None
    if host_header and _same_origin(origin, host_header):
        return None
    return (
        f"requests from web pages at {origin[:80]} are not allowed: start the server with "
        f"--cors {origin[:80] if origin != 'null' else 'ORIGIN'} to allow them"
    )


def _same_origin(origin: str, host_header: str) -> bool:
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return False
    host = split_host(host_header)
    if host is None:
        return False
    name, host_port = host
    origin_port = port if port is not None else _DEFAULT_PORTS[parts.scheme]
    if name != parts.hostname.lower().rstrip("."):
        return False
    # a Host without a port: the default port of the scheme the client used (a TLS proxy may
    # have ended https in front of us, so either default)
    if host_port is None:
        return port is None
    return host_port == origin_port
