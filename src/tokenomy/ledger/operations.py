"""The ledger's operator interface, shared by the admin HTTP API and the CLI.

Parsing (amounts travel as decimal strings such as "12.50" and become integer nanos through
:func:`tokenomy.billing.money.parse_nanos`; every input is checked before anything is
written), presentation (JSON shapes, amounts, CSV statements) and posting entries with
idempotency keys: so both speak the same units and print the same statements.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import select

from tokenomy.billing.money import MAX_NANOS, NANOS_PER_UNIT, Currency, parse_nanos
from tokenomy.core.errors import GatewayError, InvalidRequest
from tokenomy.ledger.accounts import Budget, Org, Project, Scope
from tokenomy.ledger.periods import zone
from tokenomy.ledger.store import Entry, IdempotencyConflict, Kind, LedgerStore
from tokenomy.store.schema import ledger_txns

#: The path segment of each kind of admin entry.
KIND_PATHS = {
    Kind.TOPUP: "topups",
    Kind.CREDIT: "credits",
    Kind.REFUND: "refunds",
    Kind.ADJUSTMENT: "adjustments",
}

STATEMENT_HEADER = (
    "time",
    "txn_id",
    "kind",
    "amount",
    "currency",
    "request_id",
    "memo",
    "balance",
)


_IDEMPOTENCY_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}", re.ASCII)
_MAX_MEMO = 1000


class Conflict(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "idempotency_key_reused"


# ---- parsing (shared with the CLI) ------------------------------------------------------


def amount_field(value: Any, field: str, *, allow_negative: bool = False) -> int:
    """Nanos from a decimal string such as "12.50", or a 400 naming ``field``."""
    try:
        return parse_nanos(value, allow_negative=allow_negative)
    except ValueError as e:
        raise InvalidRequest(f"'{field}': {e}.", param=field) from None


def currency_field(value: Any, field: str = "currency") -> Currency:
    known = ", ".join(c.value for c in Currency)
    if not isinstance(value, str):
        raise InvalidRequest(f"'{field}' must be one of {known}.", param=field)
    try:
        return Currency(value.strip().upper())
    except ValueError:
        raise InvalidRequest(
            f"'{field}': unknown currency {value!r} (known: {known}).", param=field
        ) from None


def choice_field(value: Any, field: str, choices: Iterable[str]) -> str:
    allowed = list(choices)
    if not isinstance(value, str) or value not in allowed:
        raise InvalidRequest(
            f"'{field}' must be one of {', '.join(allowed)}, not {value!r}.", param=field
        )
    return value


def text_field(value: Any, field: str, *, max_len: int = 200) -> str:
    """A name: printable (PostgreSQL refuses a NUL in text; a line break has no place)."""
    if (
        not isinstance(value, str)
        or not value.strip()
        or len(value) > max_len
        or not value.isprintable()
    ):
        raise InvalidRequest(
            f"'{field}' must be a non-empty string of at most {max_len} printable characters.",
            param=field,
        )
    return value


def memo_field(value: Any, field: str = "memo") -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > _MAX_MEMO or "\x00" in value:
        raise InvalidRequest(
            f"'{field}' must be a string of at most {_MAX_MEMO} characters, without NUL.",
            param=field,
        )
    return value


def token_limit_field(value: Any, field: str = "token_limit") -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_NANOS:
        raise InvalidRequest(
            f"'{field}' must be a whole number of tokens from 0 to {MAX_NANOS}.", param=field
        )
    return value


def tz_field(value: Any, field: str = "tz") -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"'{field}' must be an IANA time zone such as UTC.", param=field)
    try:
        zone(value)
    except ValueError as e:
        raise InvalidRequest(
            f"'{field}': {e} (use an IANA name such as Asia/Shanghai).", param=field
        ) from None
    return value


def time_field(value: str | None, field: str) -> int | None:
    """Epoch ms from an ISO date or date-time (UTC unless it says otherwise) or epoch ms."""
    if value is None or value == "":
        return None
    s = value.strip()
    if s.isascii() and s.isdigit() and len(s) <= 15:
        return int(s)
    try:
        if len(s) == 10:
            d = date.fromisoformat(s)
            dt = datetime(d.year, d.month, d.day, tzinfo=UTC)
        else:
            dt = datetime.fromisoformat(s)
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
    except ValueError:
        raise InvalidRequest(
            f"'{field}' must be an ISO date or time such as 2025-01-31 or "
            f"2025-01-31T12:00:00Z, or epoch milliseconds; not {value!r}.",
            param=field,
        ) from None
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def idempotency_field(value: Any, field: str = "idempotency_key") -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _IDEMPOTENCY_RE.fullmatch(value):
        raise InvalidRequest(
            f"'{field}' must be 1 to 64 letters, digits or _ . : - characters.", param=field
        )
    return value


def idempotent_txn_id(org_id: str, key: str) -> str:
    """A stable transaction id for a client's idempotency key, scoped to the org."""
    digest = hashlib.sha256(f"{org_id}\n{key}".encode()).hexdigest()
    return f"idem_{digest[:40]}"


# ---- presentation (shared with the CLI) -------------------------------------------------


def amount_str(nanos: int) -> str:
    """Nanos as units with 2 to 9 decimals: 10**10 -> "10.00", 123000 -> "0.000123"."""
    sign = "-" if nanos < 0 else ""
    whole, frac = divmod(abs(nanos), NANOS_PER_UNIT)
    digits = f"{frac:09d}".rstrip("0").ljust(2, "0")
    return f"{sign}{whole}.{digits}"


def iso_ms(ms: int) -> str:
    dt = datetime.fromtimestamp(ms // 1000, UTC) + timedelta(milliseconds=ms % 1000)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def org_json(org: Org) -> dict[str, Any]:
    return {
        "object": "organization",
        "id": org.id,
        "name": org.name,
        "currency": org.currency.value,
        "mode": org.mode.value,
        "credit_limit": amount_str(org.credit_limit_nanos),
        "credit_limit_nanos": org.credit_limit_nanos,
    }


def project_json(p: Project) -> dict[str, Any]:
    return {"object": "project", "id": p.id, "org_id": p.org_id, "name": p.name}


def budget_json(b: Budget) -> dict[str, Any]:
    return {
        "object": "budget",
        "id": b.id,
        "scope": b.scope.value,
        "scope_id": b.scope_id,
        "period": b.period.value,
        "amount": amount_str(b.amount_nanos) if b.amount_nanos is not None else None,
        "amount_nanos": b.amount_nanos,
        "token_limit": b.token_limit,
        "tz": b.tz,
        **_end_user_fields(b),
    }


def _end_user_fields(b: Budget) -> dict[str, Any]:
    if b.scope is not Scope.USER:
        return {}
    org_id, _, user = b.scope_id.partition(":")
    return {"org_id": org_id, "user": user}


def entry_json(e: Entry) -> dict[str, Any]:
    return {
        "object": "ledger_entry",
        "id": e.txn_id,
        "time": iso_ms(e.ts_ms),
        "ts_ms": e.ts_ms,
        "kind": e.kind,
        "amount": amount_str(e.amount_nanos),
        "amount_nanos": e.amount_nanos,
        "currency": e.currency,
        "request_id": e.request_id,
        "memo": e.memo,
    }


@dataclass(frozen=True, slots=True)
class Statement:
    org: Org
    opening_nanos: int
    entries: list[Entry]

    def rows(self) -> list[tuple[Entry, int]]:
        """Each entry with the balance right after it."""
        out, running = [], self.opening_nanos
        for e in self.entries:
            running += e.amount_nanos
            out.append((e, running))
        return out

    @property
    def closing_nanos(self) -> int:
        return self.opening_nanos + sum(e.amount_nanos for e in self.entries)

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(STATEMENT_HEADER)
        for e, bal in self.rows():
            w.writerow(
                [
                    iso_ms(e.ts_ms),
                    e.txn_id,
                    e.kind,
                    amount_str(e.amount_nanos),
                    e.currency,
                    e.request_id or "",
                    e.memo or "",
                    amount_str(bal),
                ]
            )
        return buf.getvalue()

    def to_json(self) -> dict[str, Any]:
        return {
            "object": "statement",
            "org_id": self.org.id,
            "currency": self.org.currency.value,
            "opening_balance": amount_str(self.opening_nanos),
            "closing_balance": amount_str(self.closing_nanos),
            "data": [{**entry_json(e), "balance": amount_str(b)} for e, b in self.rows()],
        }


def load_statement(
    store: LedgerStore, org_id: str, since_ms: int | None, until_ms: int | None
) -> Statement:
    """The org's entries in [since, until) with the balance carried in from before."""
    org = store.org(org_id)
    if since_ms is not None and until_ms is not None and until_ms < since_ms:
        raise InvalidRequest("'until' is before 'since'.", param="until")
    opening = 0
    if since_ms is not None:
        opening = sum(e.amount_nanos for e in store.statement(org_id, None, since_ms))
    return Statement(org, opening, store.statement(org_id, since_ms, until_ms))


def request_json(row: dict[str, Any]) -> dict[str, Any]:
    """A usage record as the admin API and CLI show it."""
    tokens = {
        "input": row["input_tokens"],
        "cached": row["cached_tokens"],
        "cache_write": row["cache_write_tokens"],
        "output": row["output_tokens"],
        "reasoning": row["reasoning_tokens"],
        "total": row["input_tokens"] + row["output_tokens"],
    }
    return {
        "object": "request",
        "id": row["request_id"],
        "time": iso_ms(row["ts_ms"]),
        "ts_ms": row["ts_ms"],
        "key_id": row["key_id"],
        "org_id": row["org_id"],
        "project_id": row["project_id"],
        "endpoint": row["endpoint"],
        "dialect": row["dialect"],
        "model": row["model"],
        "deployment": row["deployment"],
        "vendor": row["vendor"],
        "stream": bool(row["stream"]),
        "status": row["status"],
        "http_status": row["http_status"],
        "error_code": row["error_code"],
        "tokens": tokens,
        "usage_source": row["usage_source"],
        "price_version": row["price_version"],
        "price_tier": row["price_tier"],
        "cost": amount_str(row["cost_nanos"]),
        "cost_nanos": row["cost_nanos"],
        "currency": row["currency"],
        "list_cost": amount_str(row["list_cost_nanos"]),
        "list_cost_nanos": row["list_cost_nanos"],
        "list_currency": row["list_currency"],
        "fx_rate": row["fx_rate"],
        "held": amount_str(row["held_nanos"]),
        "held_nanos": row["held_nanos"],
        "latency_ms": row["latency_ms"],
        "ttft_ms": row["ttft_ms"],
        "attempts": row["attempts"],
    }


def check_balance_room(store: LedgerStore, org_id: str, amount_nanos: int) -> None:
    """Refuse an entry that would take a balance above the largest amount we store."""
    if amount_nanos > 0 and store.balance(org_id) + amount_nanos > MAX_NANOS:
        raise InvalidRequest(
            f"'amount': the balance would exceed the maximum of {MAX_NANOS // NANOS_PER_UNIT}.",
            param="amount",
        )


def txn_exists(store: LedgerStore, txn_id: str) -> bool:
    with store.engine.connect() as conn:
        return (
            conn.execute(select(ledger_txns.c.id).where(ledger_txns.c.id == txn_id)).first()
            is not None
        )


def post_entry(
    store: LedgerStore,
    kind: str,
    org_id: str,
    amount_nanos: int,
    memo: str | None,
    idempotency_key: str | None,
) -> tuple[Entry, bool]:
    """Post an admin entry; returns it and whether it was a replay of an earlier one.

    A replayed idempotency key with a different kind or amount is refused (409).
    """
    store.org(org_id)
    txn_id = idempotent_txn_id(org_id, idempotency_key) if idempotency_key else None
    replay = txn_id is not None and txn_exists(store, txn_id)
    if not replay:
        check_balance_room(store, org_id, amount_nanos)
    try:
        # A concurrent twin with the same key is resolved inside post(): a replay.
        entry = store.post(kind, org_id, amount_nanos, memo=memo, txn_id=txn_id)
    except IdempotencyConflict as e:
        entry, replay = e.entry, True
    if replay and (entry.kind != kind or entry.amount_nanos != amount_nanos):
        raise Conflict(
            f"The idempotency key {idempotency_key!r} was already used for a {entry.kind} "
            f"of {amount_str(entry.amount_nanos)} {entry.currency}.",
            param="idempotency_key",
        )
    return entry, replay
