"""Vendors' own batch APIs, behind one small interface: submit requests, follow the
batch, cancel it, read its results.

- OpenAI's shape (OpenAI, Qwen, GLM, Kimi): upload a JSONL file (``POST /files``,
  purpose ``batch``), create a batch on it (``POST /batches``), follow it
  (``GET /batches/{id}``), read its output and error files (``GET /files/{id}/content``).
- Anthropic's Message Batches: ``POST /messages/batches`` with the requests inline,
  ``GET /messages/batches/{id}`` until ``processing_status`` is ``ended``, then the
  JSONL at its ``results_url``.

Rare, large requests (one submission per batch, one poll every ``batches.native_poll_s``):
a client session per use, not the pooled relay of the chat path.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import aiohttp
import orjson

from tokenomy.core.errors import UpstreamError
from tokenomy.core.registry import Vendor
from tokenomy.providers.tls import client_context

#: OpenAI's statuses after which a vendor batch changes no more.
OVER = frozenset({"completed", "failed", "expired", "cancelled"})

#: Anthropic's version header (the Message Batches API is generally available in it).
ANTHROPIC_VERSION = "2023-06-01"

#: One result: (custom_id, HTTP status of the answer, its body); status None: never run
#: (cancelled or expired at the vendor).
Result = tuple[str, int | None, dict[str, Any]]


class VendorBatches(Protocol):
    async def submit(
        self, url: str, requests: Sequence[tuple[str, dict[str, Any]]], name: str
    ) -> dict[str, Any]:
        """Hand ``(custom_id, body)`` requests for ``url`` over; the vendor's batch."""
        ...

    async def retrieve(self, batch_id: str) -> tuple[str, bool, dict[str, Any]]:
        """(status, over, the vendor's batch object)."""
        ...

    async def cancel(self, batch_id: str) -> str:
        """Ask the vendor to cancel; its status after."""
        ...

    def results(self, batch: dict[str, Any]) -> AsyncIterator[Result]:
        """The results of an ended batch (its object from ``retrieve``)."""
        ...


def client_for(vendor: Vendor, shape: str) -> VendorBatches:
    if shape == "anthropic":
        return AnthropicBatches(vendor)
    return OpenAIBatches(vendor)


class _Http:
    def __init__(self, vendor: Vendor, *, timeout_s: float = 300.0) -> None:
        self.vendor = vendor
        self.base = vendor.base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=10)
        # The vendor's own proxy and TLS settings, as its chat connections have them.
        self.proxy = vendor.proxy
        self.ssl: ssl.SSLContext | bool = True
        if self.base.startswith("https://"):
            self.ssl = client_context(vendor.ca_file, vendor.client_cert, vendor.client_key)

    def session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(timeout=self.timeout)

    def _opts(self) -> dict[str, Any]:
        return {"headers": self.headers(), "proxy": self.proxy, "ssl": self.ssl}

    def headers(self) -> dict[str, str]:
        h = dict(self.vendor.headers)
        key = self.vendor.api_key
        if key and self.vendor.auth == "bearer":
            h["Authorization"] = f"Bearer {key}"
        elif key and self.vendor.auth == "x-api-key":
            h["x-api-key"] = key
        return h

    async def json(self, method: str, url: str, **kw: Any) -> dict[str, Any]:
        full = url if url.startswith("http") else self.base + url
        async with (
            self.session() as s,
            s.request(method, full, **self._opts(), **kw) as r,
        ):
            raw = await r.read()
            if r.status >= 300:
                raise UpstreamError(
                    f"{self.vendor.name} refused {method} {url}: {r.status} {raw[:300]!r}"
                )
        try:
            out = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"{self.vendor.name} answered {url} with invalid JSON.") from None
        if not isinstance(out, dict):
            raise UpstreamError(f"{self.vendor.name} answered {url} with an unexpected body.")
        return out

    async def jsonl(self, url: str) -> AsyncIterator[dict[str, Any]]:
        """A JSONL document's lines, parsed, read a chunk at a time."""
        full = url if url.startswith("http") else self.base + url
        async with (
            self.session() as s,
            s.get(full, **self._opts()) as r,
        ):
            if r.status >= 300:
                raise UpstreamError(f"{self.vendor.name} refused {url}: {r.status}")
            rest = b""
            async for chunk in r.content.iter_chunked(1 << 20):
                parts = (rest + chunk).split(b"\n")
                rest = parts.pop()
                for p in parts:
                    if p.strip():
                        yield _line(p)
            if rest.strip():
                yield _line(rest)


class OpenAIBatches(_Http):
    async def submit(
        self, url: str, requests: Sequence[tuple[str, dict[str, Any]]], name: str
    ) -> dict[str, Any]:
        buf = bytearray()
        for cid, body in requests:
            buf += orjson.dumps({"custom_id": cid, "method": "POST", "url": url, "body": body})
            buf += b"\n"
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field(
            "file", bytes(buf), filename=f"{name}.jsonl", content_type="application/jsonl"
        )
        f = await self.json("POST", "/files", data=form)
        if not isinstance(f.get("id"), str):
            raise UpstreamError(f"{self.vendor.name} gave the uploaded file no id.")
        body = {
            "input_file_id": f["id"],
            "endpoint": url,
            "completion_window": "24h",
            "metadata": {"tokenomy_batch": name},
        }
        b = await self.json("POST", "/batches", json=body)
        if not isinstance(b.get("id"), str):
            raise UpstreamError(f"{self.vendor.name} gave the batch no id.")
        return b

    async def retrieve(self, batch_id: str) -> tuple[str, bool, dict[str, Any]]:
        b = await self.json("GET", f"/batches/{batch_id}")
        status = str(b.get("status"))
        return status, status in OVER, b

    async def cancel(self, batch_id: str) -> str:
        return str((await self.json("POST", f"/batches/{batch_id}/cancel")).get("status"))

    async def results(self, batch: dict[str, Any]) -> AsyncIterator[Result]:
        for kind in ("output_file_id", "error_file_id"):
            fid = batch.get(kind)
            if not isinstance(fid, str):
                continue
            async for line in self.jsonl(f"/files/{fid}/content"):
                cid = line.get("custom_id")
                resp = line.get("response")
                if not isinstance(cid, str):
                    continue
                if isinstance(resp, dict) and isinstance(resp.get("status_code"), int):
                    body = resp.get("body")
                    yield cid, resp["status_code"], body if isinstance(body, dict) else {}
                else:  # an error line with no response: the request never ran
                    yield cid, None, {"error": line.get("error")}


class AnthropicBatches(_Http):
    def headers(self) -> dict[str, str]:
        return {"anthropic-version": ANTHROPIC_VERSION, **super().headers()}

    async def submit(
        self, url: str, requests: Sequence[tuple[str, dict[str, Any]]], name: str
    ) -> dict[str, Any]:
        body = {"requests": [{"custom_id": cid, "params": p} for cid, p in requests]}
        b = await self.json("POST", "/messages/batches", json=body)
        if not isinstance(b.get("id"), str):
            raise UpstreamError(f"{self.vendor.name} gave the message batch no id.")
        return b

    async def retrieve(self, batch_id: str) -> tuple[str, bool, dict[str, Any]]:
        b = await self.json("GET", f"/messages/batches/{batch_id}")
        status = str(b.get("processing_status"))
        return status, status == "ended", b

    async def cancel(self, batch_id: str) -> str:
        b = await self.json("POST", f"/messages/batches/{batch_id}/cancel")
        return str(b.get("processing_status"))

    async def results(self, batch: dict[str, Any]) -> AsyncIterator[Result]:
        url = batch.get("results_url") or f"/messages/batches/{batch.get('id')}/results"
        async for line in self.jsonl(str(url)):
            cid, result = line.get("custom_id"), line.get("result")
            if not isinstance(cid, str) or not isinstance(result, dict):
                continue
            kind = result.get("type")
            if kind == "succeeded" and isinstance(result.get("message"), dict):
                yield cid, 200, result["message"]
            elif kind == "errored":
                got = result.get("error")
                err: dict[str, Any] = got if isinstance(got, dict) else {}
                nested = err.get("error")
                inner: dict[str, Any] = nested if isinstance(nested, dict) else err
                status = 500 if inner.get("type") in ("api_error", "overloaded_error") else 400
                yield cid, status, err
            else:  # canceled, expired: never ran
                yield cid, None, {}


def _line(raw: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return obj if isinstance(obj, dict) else {}
