"""Which HTTP proxy reaches a vendor (the config's, else ``HTTPS_PROXY`` / ``HTTP_PROXY``
minus ``NO_PROXY``), parsed once; the tunnel through it is ``providers.proxy``'s."""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit


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
