"""The HTTP transport shared by every vendor protocol: one pooled client per vendor."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from tokenomy.errors import (
    GatewayError,
    RateLimited,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
)
from tokenomy.gateway.registry import Deployment, Vendor
from tokenomy.providers.sse import SSEEvent, iter_event_batches, iter_event_bytes


class HttpUpstreamResponse:
    """A 2xx answer whose body is still to be read, whole or as events."""

    __slots__ = ("_resp", "status")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        finally:
            self._resp.release()

    def event_batches(self) -> AsyncIterator[list[SSEEvent]]:
        return iter_event_batches(self._resp.content.iter_any())

    def event_bytes(self) -> AsyncIterator[bytes]:
        return iter_event_bytes(self._resp.content.iter_any())

    def release(self) -> None:
        self._resp.release()


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
    ) -> None:
        self.vendor = vendor
        self._first_byte = first_byte_timeout_s
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._session: aiohttp.ClientSession | None = None
        self._headers = {
            "Content-Type": "application/json",
            **self.auth_headers(),
            **vendor.headers,
        }

    def _client(self) -> aiohttp.ClientSession:
        # Created lazily so it binds to the running loop, then reused for every request.
        if self._session is None:
            conn = aiohttp.TCPConnector(
                limit=self.vendor.max_connections, ttl_dns_cache=300, enable_cleanup_closed=True
            )
            self._session = aiohttp.ClientSession(
                connector=conn,
                timeout=self._timeout,
                json_serialize=lambda o: orjson.dumps(o).decode(),
                auto_decompress=True,
            )
        return self._session

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
        url = self.vendor.base_url + self.path_for(endpoint)
        payload = orjson.dumps(self.prepare(deployment, body, stream))
        try:
            async with asyncio.timeout(self._first_byte):
                resp = await self._client().post(url, data=payload, headers=self._headers)
                if resp.status >= 400:
                    raw = await resp.read()
                    resp.release()
                    raise self.error_for(resp.status, resp.headers, raw)
        except TimeoutError:
            raise UpstreamTimeout(
                f"{self.vendor.name} did not answer within {self._first_byte:g} s."
            ) from None
        except aiohttp.ClientError as e:
            raise UpstreamError(
                f"{self.vendor.name} could not be reached: {type(e).__name__}."
            ) from None
        return HttpUpstreamResponse(resp)

    def error_for(self, status: int, headers: Any, raw: bytes) -> GatewayError:
        """Map a vendor's error answer to ours, never echoing a credential."""
        message = self._scrub(_error_message(raw)) or f"HTTP {status}"
        who = self.vendor.name
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
        if self._session is not None:
            await self._session.close()
            self._session = None


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
