"""What every vendor protocol shares: one pool of keep-alive connections per vendor."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from tokenomy import __version__
from tokenomy.core.errors import (
    GatewayError,
    Overloaded,
    RateLimited,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
)
from tokenomy.core.origin import Origin
from tokenomy.core.proxy_url import Proxy
from tokenomy.core.registry import Deployment, Vendor
from tokenomy.providers.proxy import ProxyError
from tokenomy.providers.response import Response, ResponseTooLarge, TransportError
from tokenomy.providers.sse import SSEEvent, iter_event_batches, iter_event_bytes
from tokenomy.providers.tls import client_context
from tokenomy.providers.transport import Pool, PoolExhausted, header_block

#: Request bodies at least this long are copied to their own size once serialised.
COMPACT_AT = 16 * 1024


def wire_body(body: Any) -> bytes:
    """``body`` as the JSON bytes a request carries, holding no more memory than its length.

    orjson reserves room for the worst case of every string (several times its length) and
    keeps it in the bytes it returns: a 400 KB prompt's body would hold about 3 MB until the
    vendor answers, and under load those blocks stay in the heap. A large body is copied to
    its own size (a few µs); a small one is left as it is.
    """
    data = orjson.dumps(body)
    return memoryview(data).tobytes() if len(data) >= COMPACT_AT else data


class HttpUpstreamResponse:
    """A 2xx answer whose body is still to be read, whole or as events."""

    __slots__ = ("_max_event", "_resp", "_who", "status")

    def __init__(self, resp: Response, who: str, max_event: int | None = None) -> None:
        self._resp = resp
        self._who = who
        self._max_event = max_event
        self.status = resp.status

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except ResponseTooLarge as e:
            raise UpstreamError(f"{self._who} sent {e}, past the gateway's cap.") from None
        except TimeoutError:
            raise UpstreamTimeout(f"{self._who} stopped sending its answer.") from None
        except TransportError as e:
            raise UpstreamError(f"{self._who} failed mid-answer: {e}.") from None
        finally:
            self._resp.release()

    def event_batches(self) -> AsyncIterator[list[SSEEvent]]:
        return iter_event_batches(self._resp.chunks(), self._max_event)

    def event_bytes(self) -> AsyncIterator[bytes]:
        return iter_event_bytes(self._resp.chunks(), self._max_event)

    def release(self) -> None:
        self._resp.release()


def request_headers(*layers: Mapping[str, str]) -> dict[str, str]:
    """Headers merged by name regardless of case, later layers winning (a vendor's own
    ``content-type`` replaces ours instead of going out twice)."""
    merged: dict[str, tuple[str, str]] = {}
    for layer in layers:
        for name, value in layer.items():
            merged[name.lower()] = (name, value)
    return dict(merged.values())


class HttpProvider:
    """Base of the vendor protocols; subclasses say paths, headers and body tweaks."""

    dialect = "openai"

    def __init__(
        self,
        vendor: Vendor,
        *,
        connect_timeout_s: float,
        first_byte_timeout_s: float,
        read_timeout_s: float,
        pool_wait_s: float | None = None,
        max_response_bytes: int | None = None,
    ) -> None:
        self.vendor = vendor
        self._first_byte = first_byte_timeout_s
        self._max_bytes = max_response_bytes
        origin = Origin.parse(vendor.base_url)
        tls = None
        if origin.scheme == "https":
            tls = client_context(vendor.ca_file, vendor.client_cert, vendor.client_key)
        self._pool = Pool(
            origin,
            limit=vendor.max_connections,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            ssl_context=tls,
            proxy=Proxy.parse(vendor.proxy) if vendor.proxy else None,
            max_response_bytes=max_response_bytes,
            pool_wait_s=pool_wait_s,
        )
        # Written out once: every request to this vendor carries the same lines.
        self._head = header_block(
            request_headers(
                {
                    "Content-Type": "application/json",
                    "Accept-Encoding": "gzip, deflate",
                    "User-Agent": f"tokenomy/{__version__}",
                },
                self.auth_headers(),
                vendor.headers,
            )
        )

    def auth_headers(self) -> dict[str, str]:
        key = self.vendor.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def path_for(self, endpoint: str) -> str:
        raise NotImplementedError

    def prepare(self, deployment: Deployment, body: dict[str, Any], stream: bool) -> dict[str, Any]:
        return {**body, "model": deployment.upstream_model}

    async def send(
        self, deployment: Deployment, endpoint: str, body: dict[str, Any], *, stream: bool
    ) -> HttpUpstreamResponse:
        payload = wire_body(self.prepare(deployment, body, stream))
        try:
            resp = await self._pool.post(
                self.path_for(endpoint), self._head, payload, first_byte_timeout_s=self._first_byte
            )
            if resp.status >= 300:
                raw = await resp.read()
                raise self.error_for(resp.status, resp.headers, raw)
        except PoolExhausted:
            # Our own limit (max_connections), not the vendor failing: a 503 to retry.
            raise Overloaded(
                f"Every connection to {self.vendor.name} is in use; retry shortly.",
                retry_after=1,
            ) from None
        except ResponseTooLarge as e:
            raise UpstreamError(f"{self.vendor.name} sent {e}, past the gateway's cap.") from None
        except TimeoutError:
            raise UpstreamTimeout(
                f"{self.vendor.name} did not answer within {self._first_byte:g} s."
            ) from None
        except TransportError as e:
            cause = e.__cause__
            # A proxy's refusal is worth reading (no credential in it); a socket's is its type.
            if isinstance(cause, ProxyError):
                why = str(cause)
            else:
                why = type(cause).__name__ if cause is not None else str(e)
            raise UpstreamError(f"{self.vendor.name} could not be reached: {why}.") from None
        return HttpUpstreamResponse(resp, self.vendor.name, self._max_bytes)

    def error_for(self, status: int, headers: Any, raw: bytes) -> GatewayError:
        """Map a vendor's error answer to ours, never echoing a credential."""
        message = self._scrub(_error_message(raw)) or f"HTTP {status}"
        who = self.vendor.name
        if status < 400:  # vendors do not redirect API calls: a wrong base_url
            where = headers.get("location", "")
            return UpstreamError(f"{who} answered with a redirect (HTTP {status}) to {where!r}.")
        if status == 429:
            return RateLimited(
                f"{who} is rate limiting requests: {message}", retry_after=_retry_after(headers)
            )
        if status in (401, 403):
            # The client's own key was fine; ours was refused. Say so without details.
            return UpstreamError(f"{who} refused the gateway's credentials (HTTP {status}).")
        if status in (408, 504):
            return UpstreamTimeout(f"{who} timed out: {message}")
        if status >= 500:
            return UpstreamError(f"{who} failed with HTTP {status}: {message}")
        return UpstreamRejected(f"{who} rejected the request: {message}", status=status)

    def _scrub(self, text: str) -> str:
        key = self.vendor.api_key
        if key and len(key) >= 8:
            text = text.replace(key, "[redacted]")
            text = text.replace(key[:8], "[redacted]")
        return re.sub(r"(sk|tk)-[A-Za-z0-9_\-*]{6,}", "[redacted]", text)

    async def close(self) -> None:
        await self._pool.close()


def _error_message(raw: bytes) -> str:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:300].decode(errors="replace").strip()
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, dict):
            return str(err.get("message") or err.get("msg") or "")[:500]
        if isinstance(err, str):
            return err[:500]
    return ""


def _retry_after(headers: Any) -> float | None:
    v = headers.get("Retry-After") or headers.get("retry-after")
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None
