"""A vendor's video jobs over OpenAI's Videos API: submit, poll, download.

Separate from the chat adapters: a render is a job polled for minutes, not a request.
One pooled aiohttp session per gateway process, with explicit timeouts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from tokenomy.core.registry import Vendor


class VideoUpstreamError(Exception):
    """The vendor refused or failed a job; ``retry`` says whether trying again may help."""

    def __init__(self, message: str, *, retry: bool, code: str = "upstream_error") -> None:
        super().__init__(message)
        self.retry = retry
        self.code = code


@dataclass(frozen=True, slots=True)
class UpstreamVideo:
    id: str
    status: str  # queued | in_progress | completed | failed
    progress: int
    error: dict[str, Any] | None


def _headers(v: Vendor) -> dict[str, str]:
    h = dict(v.headers)
    if v.api_key and v.auth == "bearer":
        h["Authorization"] = f"Bearer {v.api_key}"
    elif v.api_key and v.auth == "x-api-key":
        h["x-api-key"] = v.api_key
    return h


class VideoClient:
    def __init__(self, timeout_s: float = 30.0, max_bytes: int = 512 * 1024 * 1024) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_bytes = max_bytes
        self._session: aiohttp.ClientSession | None = None

    def _s(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, method: str, url: str, v: Vendor, body: Any = None) -> bytes:
        data = orjson.dumps(body) if body is not None else None
        headers = _headers(v)
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with self._s().request(method, url, data=data, headers=headers) as r:
                raw = await r.content.read(self._max_bytes + 1)
                if len(raw) > self._max_bytes:
                    raise VideoUpstreamError("The vendor's video is too large.", retry=False)
                if r.status >= 400:
                    retry = r.status in (408, 409, 425, 429) or r.status >= 500
                    code = "upstream_not_found" if r.status == 404 else "upstream_error"
                    msg = f"The vendor answered {r.status}: {raw[:300].decode(errors='replace')}"
                    raise VideoUpstreamError(msg, retry=retry, code=code)
                return raw
        except (aiohttp.ClientError, TimeoutError) as e:
            raise VideoUpstreamError(f"The vendor could not be reached: {e!r}", retry=True) from e

    async def create(
        self, v: Vendor, model: str, prompt: str, seconds: int, size: str
    ) -> UpstreamVideo:
        body = {"model": model, "prompt": prompt, "seconds": str(seconds), "size": size}
        return _video(await self._call("POST", f"{v.base_url}/videos", v, body))

    async def retrieve(self, v: Vendor, video_id: str) -> UpstreamVideo:
        return _video(await self._call("GET", f"{v.base_url}/videos/{video_id}", v))

    async def content(self, v: Vendor, video_id: str) -> tuple[str, bytes]:
        url = f"{v.base_url}/videos/{video_id}/content"
        headers = _headers(v)
        try:
            async with self._s().get(url, headers=headers) as r:
                raw = await r.content.read(self._max_bytes + 1)
                if r.status >= 400 or len(raw) > self._max_bytes:
                    raise VideoUpstreamError(
                        f"The vendor's content answered {r.status}.", retry=r.status >= 500
                    )
                return r.content_type or "application/octet-stream", raw
        except (aiohttp.ClientError, TimeoutError) as e:
            raise VideoUpstreamError(f"The vendor could not be reached: {e!r}", retry=True) from e


def _video(raw: bytes) -> UpstreamVideo:
    try:
        o = orjson.loads(raw)
        return UpstreamVideo(
            id=str(o["id"]),
            status=str(o.get("status", "queued")),
            progress=int(o.get("progress") or 0),
            error=o.get("error"),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise VideoUpstreamError("The vendor's video object is malformed.", retry=True) from e
