"""The job store's side of batches handed to a vendor's own batch API: a claim on the
batch for one step at a time, the vendor batch's state, the lines leased to it.
Blocking; callers run it on a thread."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select, update

from tokenomy.store.batches import PENDING, dumps
from tokenomy.store.schema import batch_lines, batches


class VendorBatchStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def take_lease(self, batch_id: str, now_ms: int, lease_ms: int) -> bool:
        """Claim the batch for one step of its native vendor batch (one process at a
        time; a dead one's claim lapses)."""
        with self.engine.begin() as conn:
            n = conn.execute(
                update(batches)
                .where(
                    batches.c.id == batch_id,
                    batches.c.status.in_(["in_progress", "cancelling"]),
                    batches.c.lease_until < now_ms,
                )
                .values(lease_until=now_ms + lease_ms)
            ).rowcount
        return bool(n)

    def set_vendor_batch(self, batch_id: str, value: dict[str, Any], *, release: bool) -> None:
        """Record the vendor batch's state (and give up the claim on the batch)."""
        values: dict[str, Any] = {"vendor_batch": dumps(value)}
        if release:
            values["lease_until"] = 0
        with self.engine.begin() as conn:
            conn.execute(update(batches).where(batches.c.id == batch_id).values(**values))

    def lease_lines(self, batch_id: str, until_ms: int, *, first: bool) -> int:
        """Lease every unfinished line of the batch to its vendor batch until ``until_ms``
        (``first``: counted as a claim, so nothing takes them for unclaimed)."""
        values: dict[str, Any] = {"lease_until": until_ms}
        if first:
            values["attempts"] = batch_lines.c.attempts + 1
        with self.engine.begin() as conn:
            return int(
                conn.execute(
                    update(batch_lines)
                    .where(batch_lines.c.batch_id == batch_id, batch_lines.c.state == PENDING)
                    .values(**values)
                ).rowcount
            )

    def pending_page(self, batch_id: str, after_line: int, n: int = 1000) -> list[dict[str, Any]]:
        """Up to ``n`` unfinished lines after ``after_line``, in line order."""
        q = (
            select(batch_lines)
            .where(
                batch_lines.c.batch_id == batch_id,
                batch_lines.c.state == PENDING,
                batch_lines.c.line_no > after_line,
            )
            .order_by(batch_lines.c.line_no)
            .limit(n)
        )
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def line_by_request(self, request_id: str) -> dict[str, Any] | None:
        q = select(batch_lines).where(batch_lines.c.request_id == request_id)
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return dict(row._mapping) if row is not None else None
