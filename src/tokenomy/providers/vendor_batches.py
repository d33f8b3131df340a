"""A vendor's own batch API in OpenAI's shape (OpenAI, Qwen, GLM, Kimi): upload a JSONL
file (``POST /files``, purpose ``batch``), create a batch on it (``POST /batches``),
follow it (``GET /batches/{id}``), cancel it, and read its output and error files
(``GET /files/{id}/content``) a line at a time.

Rare, large requests (one upload per batch, one poll every ``batches.native_poll_s``):
a client session per use, not the pooled relay of the chat path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from tokenomy.errors import UpstreamError
from tokenomy.gateway.registry import Vendor

#: Statuses after which a vendor batch changes no more.
OVER = frozenset({"completed", "failed", "expired", "cancelled"})


class VendorBatchClient:
    def __init__(self, vendor: Vendor, *, timeout_s: float = 300.0) -> None:
        self.vendor = vendor
        self.base = vendor.base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=10)

    def _headers(self) -> dict[str, str]:
        h = dict(self.vendor.headers)
        key = self.vendor.api_key
        if key and self.vendor.auth == "bearer":
            h["Authorization"] = f"Bearer {key}"
        elif key and self.vendor.auth == "x-api-key":
            h["x-api-key"] = key
        return h

    async def _json(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession(timeout=self.timeout) as s,
            s.request(method, self.base + path, headers=self._headers(), **kw) as r,
        ):
            raw = await r.read()
            if r.status >= 300:
                raise UpstreamError(
                    f"{self.vendor.name} refused {method} {path}: {r.status} {raw[:300]!r}"
                )
        try:
            out = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"{self.vendor.name} answered {path} with invalid JSON.") from None
        if not isinstance(out, dict):
            raise UpstreamError(f"{self.vendor.name} answered {path} with an unexpected body.")
        return out

    async def upload(self, jsonl: bytes, filename: str) -> str:
        """Upload a batch input file; its id."""
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", jsonl, filename=filename, content_type="application/jsonl")
        f = await self._json("POST", "/files", data=form)
        fid = f.get("id")
        if not isinstance(fid, str):
            raise UpstreamError(f"{self.vendor.name} gave the uploaded file no id.")
        return fid

    async def create(self, file_id: str, endpoint: str, metadata: dict[str, str]) -> dict[str, Any]:
        body = {
            "input_file_id": file_id,
            "endpoint": endpoint,
            "completion_window": "24h",
            "metadata": metadata,
        }
        b = await self._json("POST", "/batches", json=body)
        if not isinstance(b.get("id"), str):
            raise UpstreamError(f"{self.vendor.name} gave the batch no id.")
        return b

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        return await self._json("GET", f"/batches/{batch_id}")

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        return await self._json("POST", f"/batches/{batch_id}/cancel")

    async def lines(self, file_id: str) -> AsyncIterator[dict[str, Any]]:
        """A result file's lines, parsed, read a chunk at a time."""
        async with (
            aiohttp.ClientSession(timeout=self.timeout) as s,
            s.get(f"{self.base}/files/{file_id}/content", headers=self._headers()) as r,
        ):
            if r.status >= 300:
                raise UpstreamError(f"{self.vendor.name} refused file {file_id}: {r.status}")
            rest = b""
            async for chunk in r.content.iter_chunked(1 << 20):
                parts = (rest + chunk).split(b"\n")
                rest = parts.pop()
                for p in parts:
                    if p.strip():
                        yield _line(p)
            if rest.strip():
                yield _line(rest)


def _line(raw: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return obj if isinstance(obj, dict) else {}
