"""Dead letters: records the database refused, kept whole for an operator.

A record is the rows one request queued together (its usage event and its ledger
transaction). When the database refuses a batch for what a row holds, not for being
out of reach, the writer splits the batch until the refused record stands alone and
stores it here, as JSON with the database's reason, so the rows behind it still land.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, Table, select

from tokenomy.store.schema import writer_dead_letters

#: The rows one request queued together: they commit together or not at all.
Record = Sequence[tuple[Table, dict[str, Any]]]

#: Characters of the reason kept (a driver's message can quote a whole row).
REASON_CHARS = 2000


def refused(error: BaseException, dbapi: Any) -> bool:
    """Whether the database (or its driver) refused the rows themselves: a value too
    long or out of range, a NUL byte, a missing NOT NULL value. Sending the same rows
    again cannot succeed. A lost connection, a lock or a missing table is not the rows'
    fault: those are retried, never quarantined."""
    if isinstance(error, dbapi.Error):
        return isinstance(error, (dbapi.DataError, dbapi.IntegrityError))
    # Raised while the driver encoded a row (an integer past 64 bits on SQLite).
    return isinstance(error, (ValueError, OverflowError))


def dead_letter_row(record: Record, error: BaseException) -> tuple[Table, dict[str, Any]]:
    """The dead letter of ``record``, keyed by a hash of its rows: the same record
    refused again (a replayed batch) is stored once."""
    rows = [{"table": table.name, "row": row} for table, row in record]
    # ASCII JSON: a NUL or any other control character is escaped, so the letter itself
    # is always storable.
    text = json.dumps(rows, default=str, sort_keys=True)
    request_id = next((r["request_id"] for _, r in record if r.get("request_id")), None)
    reason = f"{type(error).__name__}: {error}".replace("\x00", "\\x00")[:REASON_CHARS]
    return writer_dead_letters, {
        "id": hashlib.sha256(text.encode()).hexdigest(),
        "ts_ms": int(time.time() * 1000),
        "request_id": _printable(str(request_id))[:64] if request_id is not None else None,
        "reason": reason,
        "record": text,
    }


def _printable(s: str) -> str:
    return s if s.isprintable() else s.encode("unicode_escape").decode("ascii")


def list_dead_letters(engine: Engine, limit: int = 100) -> list[dict[str, Any]]:
    """The newest dead letters first, each with its record decoded."""
    t = writer_dead_letters
    with engine.connect() as conn:
        rows = conn.execute(select(t).order_by(t.c.ts_ms.desc(), t.c.id).limit(limit)).all()
    # Plain str keys: a column's name is a str subclass, which orjson refuses as a key.
    return [
        {str(k): v for k, v in r._mapping.items()} | {"record": json.loads(r.record)} for r in rows
    ]
