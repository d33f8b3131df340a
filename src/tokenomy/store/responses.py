"""Stored Responses-API answers: what ``previous_response_id`` chains and retrieval read.

A stored answer is written in the background once it is complete (the request never
waits for the database) and kept in a small per-process cache, so a chain that stays on
one replica never reads the database; another replica (or this one after a restart)
reads it from the table. Every read and delete is by owner: another organisation's id
is the same as an unknown one. Like OpenAI's, a stored answer is kept for 30 days: an older
one is unknown at once, and a background purge deletes its row.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Engine, delete, insert, select

from tokenomy.store.schema import responses

log = logging.getLogger(__name__)

#: How long a lookup of a just-made answer waits for another replica's write of it.
MISS_WAIT_S = 1.0
#: How long a stored answer is kept (OpenAI keeps them 30 days).
RETENTION_MS = 30 * 86_400_000
#: Rows deleted per statement by the purge (short transactions: writers never wait long).
PURGE_BATCH = 1000


@dataclass(slots=True)
class StoredResponse:
    id: str
    owner: str
    created_ms: int
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    #: The conversation up to and including this answer, as chat messages.
    context: list[dict[str, Any]]


class ResponseStore:
    """The ``responses`` table, behind a write-behind cache of the newest answers."""

    def __init__(
        self, engine: Engine, *, cache_size: int = 2048, retention_ms: int = RETENTION_MS
    ) -> None:
        self.engine = engine
        self.retention_ms = retention_ms
        self._cache: OrderedDict[str, StoredResponse] = OrderedDict()
        self._cache_size = cache_size
        self._writes: dict[str, asyncio.Task[None]] = {}

    def put(self, stored: StoredResponse) -> None:
        """Keep ``stored`` and start writing it; returns at once."""
        self._remember(stored)
        task = asyncio.create_task(self._write(stored), name="response-store")
        self._writes[stored.id] = task
        rid = stored.id
        task.add_done_callback(lambda _t: self._writes.pop(rid, None))

    def _remember(self, stored: StoredResponse) -> None:
        self._cache[stored.id] = stored
        self._cache.move_to_end(stored.id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def _write(self, stored: StoredResponse) -> None:
        row = {
            "id": stored.id,
            "owner": stored.owner,
            "created_ms": stored.created_ms,
            "response": orjson.dumps(stored.response).decode(),
            "input_items": orjson.dumps(stored.input_items).decode(),
            "context": orjson.dumps(stored.context).decode(),
        }
        for attempt in range(5):
            try:
                await asyncio.to_thread(self._insert, row)
                return
            except Exception:
                if attempt == 4:
                    log.exception("storing response %s failed; it stays in memory", stored.id)
                    return
                await asyncio.sleep(0.2 * 2**attempt)

    def _insert(self, row: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(responses).values(**row))

    async def get(
        self, owner: str, response_id: str, *, recent: bool = False
    ) -> StoredResponse | None:
        """The owner's stored answer, or None (unknown, deleted or another owner's).

        ``recent``: the answer was made moments ago, perhaps on another replica whose
        write is still in flight, so a miss is read again for up to ``MISS_WAIT_S``.
        """
        oldest = int(time.time() * 1000) - self.retention_ms
        hit = self._cache.get(response_id)
        if hit is not None:
            if hit.created_ms < oldest:
                self._cache.pop(response_id, None)
                return None
            return hit if hit.owner == owner else None
        row = await asyncio.to_thread(self._select, response_id)
        waited = 0.0
        while row is None and recent and waited < MISS_WAIT_S:
            await asyncio.sleep(0.025)
            waited += 0.025
            row = await asyncio.to_thread(self._select, response_id)
        if row is None or row.owner != owner or row.created_ms < oldest:
            return None
        stored = StoredResponse(
            id=row.id,
            owner=row.owner,
            created_ms=row.created_ms,
            response=orjson.loads(row.response),
            input_items=orjson.loads(row.input_items),
            context=orjson.loads(row.context),
        )
        self._remember(stored)
        return stored

    def _select(self, response_id: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(select(responses).where(responses.c.id == response_id)).first()

    async def delete(self, owner: str, response_id: str) -> bool:
        """Delete the owner's stored answer; False when there was none to delete."""
        if await self.get(owner, response_id) is None:
            return False
        write = self._writes.get(response_id)
        if write is not None:
            await asyncio.shield(write)  # the row must exist before it can go
        self._cache.pop(response_id, None)
        await asyncio.to_thread(self._delete, owner, response_id)
        return True

    def _delete(self, owner: str, response_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                delete(responses).where(responses.c.id == response_id, responses.c.owner == owner)
            )

    def purge(self, now_ms: int | None = None) -> int:
        """Delete the answers past their retention (blocking); how many went."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        cutoff = now - self.retention_ms
        gone = 0
        while True:
            old = select(responses.c.id).where(responses.c.created_ms < cutoff)
            with self.engine.begin() as conn:
                n = conn.execute(
                    delete(responses).where(responses.c.id.in_(old.limit(PURGE_BATCH)))
                ).rowcount
            gone += n
            if n < PURGE_BATCH:
                return gone

    async def purge_every(self, interval_s: float, *, first_after_s: float = 60.0) -> None:
        """Purge after ``first_after_s`` (the app migrates its database at start-up) and
        then every ``interval_s`` until cancelled; a failed purge is logged and tried
        again next time."""
        await asyncio.sleep(first_after_s)
        while True:
            try:
                n = await asyncio.to_thread(self.purge)
                if n:
                    log.info("purged %d stored responses past their retention", n)
            except Exception:
                log.exception("purging expired stored responses failed")
            await asyncio.sleep(interval_s)

    async def drain(self) -> None:
        """Wait for the writes in flight (on shutdown)."""
        if self._writes:
            await asyncio.gather(*list(self._writes.values()), return_exceptions=True)
