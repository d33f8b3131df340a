"""The provider interface: a few methods every vendor protocol implements."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from tokenomy.core.registry import Deployment
from tokenomy.providers.sse import SSEEvent


class UpstreamResponse(Protocol):
    """A vendor's successful answer, status and headers already received."""

    status: int

    async def read(self) -> bytes: ...

    def event_batches(self) -> AsyncIterator[list[SSEEvent]]:
        """The stream's events, a list per network chunk as it arrives."""
        ...

    def event_bytes(self) -> AsyncIterator[bytes]:
        """The same events unparsed, a chunk of whole events at a time, for relays that
        pass most of them through."""
        ...

    def release(self) -> None: ...


class Provider(Protocol):
    """One vendor protocol (dialect) behind one pooled HTTP client.

    ``send`` returns once the upstream has answered 2xx with its headers, and raises a
    :class:`tokenomy.core.errors.GatewayError` otherwise, so the caller can fall back to another
    deployment before any byte reaches the client.
    """

    dialect: str

    async def send(
        self, deployment: Deployment, endpoint: str, body: dict[str, Any], *, stream: bool
    ) -> UpstreamResponse: ...

    async def close(self) -> None: ...
