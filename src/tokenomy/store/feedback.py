"""Feedback on requests: a score (0–1) a client gives one of its own requests.

Kept in ``request_feedback`` beside the request's usage record; the latest score for a
request replaces an earlier one. Not on the request path: the feedback endpoint and the
export command call these from a thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, delete, insert, select
from sqlalchemy.exc import IntegrityError

from tokenomy.core.keys import ApiKey
from tokenomy.store.schema import request_feedback, usage_events


@dataclass(frozen=True, slots=True)
class Scored:
    request_id: str
    model: str
    score: float
    prompt: str | None
    cost_nanos: int
    currency: str | None
    ts_ms: int


def record(
    engine: Engine,
    key: ApiKey,
    request_id: str,
    score: float,
    comment: str | None = None,
    prompt: str | None = None,
) -> bool:
    """Store the score (the last of concurrent scores of one request wins); False when no
    request of the key's organisation (or, for a key without one, of the key itself) has
    that id."""
    try:
        return _record(engine, key, request_id, score, comment, prompt)
    except IntegrityError:
        # Another score of the same request landed between our delete and insert.
        return _record(engine, key, request_id, score, comment, prompt)


def _record(
    engine: Engine,
    key: ApiKey,
    request_id: str,
    score: float,
    comment: str | None = None,
    prompt: str | None = None,
) -> bool:
    with engine.begin() as conn:
        ev = conn.execute(
            select(usage_events.c.org_id, usage_events.c.key_id).where(
                usage_events.c.request_id == request_id
            )
        ).first()
        if ev is None:
            return False
        if key.org_id is not None and ev.org_id != key.org_id:
            return False
        if key.org_id is None and ev.key_id != key.id:
            return False
        old = conn.execute(
            select(request_feedback.c.prompt).where(request_feedback.c.request_id == request_id)
        ).first()
        if old is not None:
            prompt = prompt if prompt is not None else old.prompt
            conn.execute(
                delete(request_feedback).where(request_feedback.c.request_id == request_id)
            )
        conn.execute(
            insert(request_feedback).values(
                request_id=request_id,
                org_id=ev.org_id,
                key_id=key.id,
                score=score,
                comment=comment,
                prompt=prompt,
                ts_ms=int(time.time() * 1000),
            )
        )
    return True


def scored(engine: Engine, org_id: str) -> list[Scored]:
    """The organisation's scored requests with what served them, oldest first."""
    f, u = request_feedback, usage_events
    q = (
        select(
            f.c.request_id,
            u.c.model,
            f.c.score,
            f.c.prompt,
            u.c.cost_nanos,
            u.c.currency,
            u.c.ts_ms,
        )
        .join(u, u.c.request_id == f.c.request_id)
        .where(f.c.org_id == org_id)
        .order_by(u.c.ts_ms, f.c.request_id)
    )
    with engine.connect() as conn:
        rows: list[Any] = list(conn.execute(q))
    return [
        Scored(
            r.request_id,
            r.model,
            float(r.score),
            r.prompt,
            int(r.cost_nanos or 0),
            r.currency,
            int(r.ts_ms),
        )
        for r in rows
    ]
