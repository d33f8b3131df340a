"""Where a vendor's requests go, parsed once from its base URL (also the config's check of
that URL, so both refuse the same things)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a base URL's requests go: scheme, host and port, the path they share, and a
    query every request carries (``?api-version=...`` for some vendors)."""

    scheme: str
    host: str
    port: int
    path: str
    query: str = ""

    @classmethod
    def parse(cls, base_url: str) -> Origin:
        u = urlsplit(base_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        if u.username is not None or u.password is not None:
            # Never sent by this client, and a URL ends up in logs: refuse, don't drop.
            raise ValueError("credentials in a base URL are not sent; use api_key_env or headers")
        port = u.port or (443 if u.scheme == "https" else 80)
        return cls(u.scheme, u.hostname, port, u.path.rstrip("/"), u.query)

    def target(self, path: str) -> str:
        """The request target for an endpoint ``path`` (which may have a query of its own)."""
        if not self.query:
            return self.path + path
        return f"{self.path}{path}{'&' if '?' in path else '?'}{self.query}"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"
