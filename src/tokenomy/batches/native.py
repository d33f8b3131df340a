"""Batches handed to a vendor's own batch API: OpenAI's shape (OpenAI, Qwen, GLM, Kimi:
Files + Batches) or Anthropic's (Message Batches).

A batch qualifies when ``batches.native`` is on and all its lines are planned on one
deployment whose vendor sells a batch API of its dialect (``native_batch`` in the
catalogue's presets). Its lines are stored parked (never claimed one by one) and its
plan starts it at once (the vendor's own window starts at submission). One process
hands them over in one submission (each line's ``custom_id`` its request id, its body
translated as an interactive call's would be, its model the deployment's) and leases
the lines to the vendor batch; any process then polls it (a claim on the batch makes it
one at a time), cancels it when the batch is cancelled, and once it is over reads its
results: each answer is metered and billed through the ledger stage like an
interactive answer (batch prices, the line's hold, one usage record under the line's
request id), each error ends its line at no cost. Lines the vendor did not answer (or a
vendor that refused the batch) go back to the worker to run one by one.

Exactly once: a line's outcome is recorded under its request id, which the writer
writes once, so reading an output file again after a crash bills nothing twice. A
process killed between creating the vendor batch and recording its id leaves the lines'
lease to lapse; they then run one by one (the vendor's batch is left unread).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from tokenomy.batches.schedule import Groups
from tokenomy.core.errors import GatewayError
from tokenomy.core.keys import ApiKey
from tokenomy.core.registry import Deployment
from tokenomy.gateway.records import EXTRA_ROWS
from tokenomy.ledger.stage import LEDGER, CallLedger, LedgerStage
from tokenomy.providers.vendor_batches import client_for
from tokenomy.store.batches import PENDING, BatchStore, ClaimedLine
from tokenomy.store.native_batches import VendorBatchStore
from tokenomy.store.schema import batch_results

if TYPE_CHECKING:
    from tokenomy.batches.worker import BatchWorker
    from tokenomy.services import Services

log = logging.getLogger(__name__)

#: Our batch endpoints each shape of vendor batch takes (Anthropic's by translation
#: from OpenAI's chat, as an interactive call would be).
NATIVE_ENDPOINTS = {
    "openai": ("/v1/chat/completions", "/v1/embeddings"),
    "anthropic": ("/v1/messages", "/v1/chat/completions"),
}

#: The URL each vendor line is for, by the vendor-side endpoint.
_URLS = {"chat": "/v1/chat/completions", "embeddings": "/v1/embeddings", "messages": ""}

#: A parked line's lease: past any batch's window, so no worker claims it one by one.
PARKED_MS = 2**62

#: Vendor batch states, as kept in ``batches.vendor_batch``.
PLANNED, SUBMITTED, INGESTED, REFUSED = "planned", "submitted", "ingested", "refused"


def native_target(svc: Services, groups: Groups, endpoint: str) -> tuple[Deployment, str] | None:
    """The one deployment a batch's lines may all be handed to natively, and the shape
    of its vendor's batch API, if any."""
    if not svc.config.batches.native or len(groups.by_deps) != 1:
        return None
    (g,) = groups.by_deps.values()
    dep = g.deployments[0] if g.deployments else None
    if dep is None or not dep.vendor.has_credentials:
        return None
    api = dep.vendor.native_batch
    if api not in NATIVE_ENDPOINTS or endpoint not in NATIVE_ENDPOINTS[api]:
        return None
    if api != dep.vendor.dialect:  # Message Batches of an OpenAI-dialect vendor: no
        return None
    return dep, api


class NativeBatches:
    """Submits, follows and reads back the vendor batches of this gateway's batches."""

    def __init__(self, svc: Services, store: BatchStore, worker: BatchWorker) -> None:
        self.svc = svc
        self.batches = store
        self.store = VendorBatchStore(store.engine)
        self.worker = worker
        self.poll_s = svc.config.batches.native_poll_s
        self.ledger = next((s for s in svc.pipeline.stages if isinstance(s, LedgerStage)), None)

    def _deployment(self, dep_id: str) -> Deployment | None:
        for route in self.svc.registry.routes:
            for d in route.deployments:
                if d.id == dep_id:
                    return d
        return None

    async def tick(self) -> None:
        """One look at every running batch handed (or to be handed) to a vendor."""
        now = self.worker.clock()
        for b in await _thread(self.batches.active):
            if not b.get("vendor_batch"):
                continue
            vb = json.loads(b["vendor_batch"])
            state = vb.get("status")
            plan = json.loads(b["plan"]) if b.get("plan") else {}
            due = (
                state == PLANNED
                and b["status"] == "in_progress"
                and now >= plan.get("expected_start_at", 0)
            ) or (state == SUBMITTED and now >= vb.get("next_poll_at", 0))
            if not due:
                continue
            lease_ms = int(self.worker.s.lease_s * 1000)
            if not await _thread(self.store.take_lease, b["id"], int(now * 1000), lease_ms):
                continue
            try:
                if state == PLANNED:
                    await self._submit(b, vb)
                else:
                    await self._poll(b, vb)
            except Exception:
                log.exception("vendor batch of %s failed", b["id"])
                with contextlib.suppress(Exception):
                    await _thread(self.store.set_vendor_batch, b["id"], vb, release=True)

    def _line_lease_ms(self) -> int:
        """How long lines stay the vendor batch's between two polls (a dead poller's
        lines lapse to the worker after it)."""
        return int((self.worker.clock() + max(self.worker.s.lease_s, 3 * self.poll_s)) * 1000)

    async def _submit(self, b: dict[str, Any], vb: dict[str, Any]) -> None:
        dep = self._deployment(vb["deployment"])
        key = await self.worker.key_of(b["key_id"])
        if dep is None or key is None:
            await self._refused(b, vb, "the deployment or the key is gone")
            return
        url, requests = await self._requests(b, key, dep)
        await _thread(self.store.lease_lines, b["id"], self._line_lease_ms(), first=True)
        client = client_for(dep.vendor, vb.get("api", "openai"))
        try:
            got = await client.submit(url, requests, b["id"])
        except GatewayError as e:
            await self._refused(b, vb, e.message)
            return
        except (aiohttp.ClientError, TimeoutError) as e:
            await self._refused(b, vb, f"{dep.vendor.name} could not be reached: {e!r}")
            return
        vb.update(
            status=SUBMITTED,
            id=got["id"],
            vendor_status=got.get("status") or got.get("processing_status"),
            next_poll_at=self.worker.clock() + self.poll_s,
        )
        await _thread(self.store.set_vendor_batch, b["id"], vb, release=True)

    async def _requests(
        self, b: dict[str, Any], key: ApiKey, dep: Deployment
    ) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
        """Every unfinished line as the vendor takes it (translated as an interactive
        call would be, its model the deployment's), under its request id."""
        build, pipeline = self.worker.builders[b["endpoint"]], self.svc.pipeline
        out: list[tuple[str, dict[str, Any]]] = []
        url, last = "", 0
        while page := await _thread(self.store.pending_page, b["id"], last):
            for ln in page:
                call = build(orjson.loads(ln["body"]), key, self.svc)
                endpoint, body = pipeline.upstream_request(call, dep.vendor.dialect)
                url = _URLS.get(endpoint, "")
                out.append((ln["request_id"], {**body, "model": dep.upstream_model}))
            last = page[-1]["line_no"]
        return url, out

    async def _refused(self, b: dict[str, Any], vb: dict[str, Any], why: str) -> None:
        """The vendor would not take the batch: its lines run one by one."""
        log.warning("vendor batch for %s refused: %s; running its lines here", b["id"], why)
        vb.update(status=REFUSED, error=why[:500])
        await _thread(self.store.lease_lines, b["id"], 0, first=False)
        await _thread(self.store.set_vendor_batch, b["id"], vb, release=True)
        self.worker.wake()

    async def _poll(self, b: dict[str, Any], vb: dict[str, Any]) -> None:
        dep = self._deployment(vb["deployment"])
        if dep is None:
            await self._refused(b, vb, "the deployment is no longer configured")
            return
        client = client_for(dep.vendor, vb.get("api", "openai"))
        status, over, got = await client.retrieve(vb["id"])
        vb["vendor_status"] = status
        if b["status"] == "cancelling" and not vb.get("cancel_sent") and not over:
            vb["vendor_status"] = await client.cancel(vb["id"])
            vb["cancel_sent"] = True
        if not over:
            await _thread(self.store.lease_lines, b["id"], self._line_lease_ms(), first=False)
            vb["next_poll_at"] = self.worker.clock() + self.poll_s
            await _thread(self.store.set_vendor_batch, b["id"], vb, release=True)
            return
        key = await self.worker.key_of(b["key_id"])
        if key is not None:
            async for cid, code, body in client.results(got):
                if code is not None:  # None: never ran there; it goes back to the worker
                    await self._settle(b, key, dep, cid, code, body)
        # Recorded lines are marked done before the rest go back to the worker.
        await self.worker.mark_recorded()
        await _thread(self.store.lease_lines, b["id"], 0, first=False)
        vb["status"] = INGESTED
        await _thread(self.store.set_vendor_batch, b["id"], vb, release=True)
        self.worker.wake()

    async def _settle(
        self, b: dict[str, Any], key: ApiKey, dep: Deployment, rid: str, code: int, body: Any
    ) -> None:
        """Bill and record one of the vendor's results."""
        ours = await _thread(self.store.line_by_request, rid)
        if ours is None or ours["batch_id"] != b["id"] or ours["state"] != PENDING:
            return
        claimed = ClaimedLine(
            ours["batch_id"],
            ours["line_no"],
            ours["request_id"],
            ours["custom_id"],
            ours["body"],
            ours["attempts"],
            ours["held_nanos"],
            ours["held_tokens"],
        )
        hold = self.worker.hold_of(b, key, rid, ours["held_nanos"], ours["held_tokens"])
        if code != 200 or not isinstance(body, dict) or self.ledger is None:
            await self.worker.unrun(claimed, hold, code, body)
            return
        w, pipeline = self.worker, self.svc.pipeline
        call = w.builders[b["endpoint"]](orjson.loads(ours["body"]), key, self.svc)
        call.request_id = rid
        pipeline.route(call)
        call.deployment, call.attempts = dep, 1
        out = pipeline.meter_answer(call, dep.vendor.dialect, body)
        call.status, call.http_status = "ok", 200
        if hold is not None:
            call.put(LEDGER, CallLedger(w.holds.accounts.org_of(key), hold))
        call.stages_passed = [self.ledger]  # settle the line's hold; nothing else ran
        cost = self.ledger.quote(call).cost_nanos
        call.put(EXTRA_ROWS, [(batch_results, w.result_row(claimed, 200, out, cost))])
        await pipeline.finish(call)
        w.lines_run += 1
        w.recorded(claimed)


async def _thread(fn: Any, *args: Any, **kw: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kw)
