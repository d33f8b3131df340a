"""Reaching a vendor through an HTTP proxy: the CONNECT tunnel through it (which proxy is
``core.proxy_url``'s).

Every upstream, https or http, goes through a CONNECT tunnel: the proxy sees only where
the connection goes, never the vendor's key or the prompt, and one code path serves both.
"""

from __future__ import annotations

import asyncio
import socket

from tokenomy.core.proxy_url import Proxy

#: The longest CONNECT answer head accepted from a proxy.
_MAX_HEAD = 16 * 1024


class ProxyError(ConnectionError):
    """The proxy could not be reached or refused the tunnel."""


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
