"""Reaching a vendor through an HTTP proxy: which proxy (the config, else ``HTTPS_PROXY`` /
``HTTP_PROXY`` minus ``NO_PROXY``), and the CONNECT tunnel through it.

Every upstream, https or http, goes through a CONNECT tunnel: the proxy sees only where
the connection goes, never the vendor's key or the prompt, and one code path serves both.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

#: The longest CONNECT answer head accepted from a proxy.
_MAX_HEAD = 16 * 1024


class ProxyError(ConnectionError):
    """The proxy could not be reached or refused the tunnel."""


@dataclass(frozen=True, slots=True)
class Proxy:
    """An ``http://[user:password@]host:port`` proxy (credentials never shown)."""

    host: str
    port: int
    authorization: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str) -> Proxy:
        if "://" not in url:
            url = "http://" + url  # "host:port", as curl and requests take it
        u = urlsplit(url)
        if u.scheme != "http":
            raise ValueError(f"only http:// proxies are supported, not {u.scheme}://")
        if not u.hostname:
            raise ValueError("a proxy URL needs a host")
        auth = None
        if u.username is not None:
            pair = f"{unquote(u.username)}:{unquote(u.password or '')}"
            auth = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        return cls(u.hostname, u.port or 80, auth)

    def connect_request(self, host: str, port: int) -> bytes:
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        if self.authorization:
            lines.append(f"Proxy-Authorization: {self.authorization}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def proxy_from_env(base_url: str, env: Mapping[str, str]) -> str | None:
    """The proxy URL the environment names for ``base_url`` (curl's rules: the lower-case
    name first, ``NO_PROXY`` entries match a host, a domain suffix, an IP range or ``*``)."""
    u = urlsplit(base_url)
    scheme, host = u.scheme, (u.hostname or "").lower()
    proxy = env.get(f"{scheme}_proxy") or env.get(f"{scheme.upper()}_PROXY")
    if not proxy:
        return None
    no_proxy = env.get("no_proxy") or env.get("NO_PROXY") or ""
    return None if bypassed(host, u.port, no_proxy) else proxy


def bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` exempts ``host``."""
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        name, _, want_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if want_port and want_port.isdigit() and port is not None and int(want_port) != port:
            continue
        name = name or entry
        if _in_network(host, name):
            return True
        name = name.lstrip(".")
        if host == name or host.endswith("." + name):
            return True
    return False


def _in_network(host: str, entry: str) -> bool:
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False


async def open_tunnel(
    loop: asyncio.AbstractEventLoop, proxy: Proxy, host: str, port: int
) -> socket.socket:
    """A socket connected through ``proxy`` to ``host:port`` (CONNECT answered 2xx),
    ready for TLS or plain HTTP. The caller bounds the time it takes."""
    sock = await _connect(loop, proxy)
    try:
        await loop.sock_sendall(sock, proxy.connect_request(host, port))
        head = b""
        while b"\r\n\r\n" not in head:
            data = await loop.sock_recv(sock, 4096)
            if not data:
                raise ProxyError("the proxy closed the connection during CONNECT")
            head += data
            if len(head) > _MAX_HEAD:
                raise ProxyError("the proxy's answer to CONNECT is too long")
        head, _, extra = head.partition(b"\r\n\r\n")
        parts = head.partition(b"\r\n")[0].split(None, 2)
        status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0
        if status == 407:
            raise ProxyError("the proxy refused its credentials (HTTP 407)")
        if not 200 <= status < 300:
            raise ProxyError(f"the proxy refused the tunnel (HTTP {status or '?'})")
        if extra:
            # Neither TLS nor HTTP lets the server speak first: bytes here are out of step.
            raise ProxyError("the proxy sent data before the tunnel was used")
    except BaseException:
        sock.close()
        raise
    return sock


async def _connect(loop: asyncio.AbstractEventLoop, proxy: Proxy) -> socket.socket:
    infos = await loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, addr)
        except OSError as e:
            sock.close()
            last = e
            continue
        except BaseException:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise ProxyError(f"could not reach the proxy {proxy.host}:{proxy.port}: {last}")
