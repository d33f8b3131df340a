"""API keys: created and revoked in the database, looked up from memory on the request path.

Only a SHA-256 of each key is stored. Keys are 192 random bits, so a fast hash is enough:
there is nothing to brute-force that a slow hash would protect.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, func, select, update

from tokenomy.core.keys import ApiKey
from tokenomy.store.db import LOAD_CHUNK
from tokenomy.store.key_events import PG_CHANNEL, Announce
from tokenomy.store.schema import api_keys

log = logging.getLogger(__name__)

KEY_PREFIX = "tk-"
#: How far back a periodic refresh looks past the start of the last one: a change stamped
#: before that but committed after it (or stamped by a clock a little behind) is still
#: picked up.
REFRESH_LOOKBACK_MS = 10_000


def hash_key(key: str) -> str:
    # surrogatepass: a header or form with bytes that are not UTF-8 arrives with surrogates;
    # such a key matches no key, and must not fail to hash.
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def now_ms() -> int:
    return int(time.time() * 1000)


class KeyStore:
    """Durable key operations (CLI, admin API) and the snapshot the gateway caches.

    Every change is announced (``store.key_events``) so that gateways apply it at once.
    """

    def __init__(self, engine: Engine, announce: Announce | None = None) -> None:
        self.engine = engine
        self._announce = announce
        self._notify = engine.dialect.name == "postgresql"

    def _changed(self, conn: Connection, key_id: str) -> None:
        """In the change's transaction: PostgreSQL's NOTIFY leaves when it commits."""
        if self._notify:
            conn.execute(select(func.pg_notify(PG_CHANNEL, key_id)))

    def _announced(self, key_id: str) -> None:
        """After the commit: tell every gateway (a lost message waits for the refresh)."""
        if self._announce is None:
            return
        try:
            self._announce(key_id)
        except Exception as e:
            log.warning("could not announce the change of key %s (%s); gateways will "
                        "pick it up at their next refresh", key_id, e)  # fmt: skip

    def create(
        self,
        name: str = "",
        *,
        allowed_models: list[str] | None = None,
        org_id: str | None = None,
        project_id: str | None = None,
    ) -> tuple[str, ApiKey]:
        """Create a key; returns the secret (shown once) and its record."""
        secret = KEY_PREFIX + secrets.token_urlsafe(24)
        ts = now_ms()
        row: dict[str, object] = {
            "id": "key_" + secrets.token_hex(8),
            "key_hash": hash_key(secret),
            "prefix": secret[:10],
            "name": name,
            "org_id": org_id,
            "project_id": project_id,
            "allowed_models": orjson.dumps(sorted(allowed_models)).decode()
            if allowed_models is not None
            else None,
            "created_ms": ts,
            "revoked_ms": None,
            "updated_ms": ts,
        }
        with self.engine.begin() as conn:
            conn.execute(api_keys.insert().values(**row))
            self._changed(conn, str(row["id"]))
        self._announced(str(row["id"]))
        return secret, _record(row)

    def revoke(self, key_id: str) -> bool:
        ts = now_ms()
        with self.engine.begin() as conn:
            res = conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_ms.is_(None))
                .values(revoked_ms=ts, updated_ms=ts)
            )
            if res.rowcount > 0:
                self._changed(conn, key_id)
        if res.rowcount > 0:
            self._announced(key_id)
        return res.rowcount > 0

    def is_active(self, key_id: str) -> bool:
        """Whether the key exists and is not revoked, as the database says now (a key
        cache may lag a revocation made elsewhere by a refresh interval)."""
        q = select(api_keys.c.revoked_ms).where(api_keys.c.id == key_id)
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return row is not None and row[0] is None

    def all(self, include_revoked: bool = False) -> list[ApiKey]:
        q = select(api_keys).order_by(api_keys.c.created_ms)
        if not include_revoked:
            q = q.where(api_keys.c.revoked_ms.is_(None))
        with self.engine.connect() as conn:
            return [_record(m) for m in conn.execute(q).mappings()]

    def get(self, key_id: str) -> tuple[str, ApiKey] | None:
        """(hash, record) of one key, revoked or not."""
        with self.engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).first()
        if row is None:
            return None
        return row._mapping["key_hash"], _record(row._mapping)

    def changed_since(self, updated_ms: int) -> list[tuple[str, ApiKey, int]]:
        """(hash, record, updated_ms) of keys changed at or after ``updated_ms``."""
        q = select(api_keys).where(api_keys.c.updated_ms >= updated_ms)
        with self.engine.connect() as conn:
            # In chunks (a server-side cursor on PostgreSQL): a start-up's 10,000 keys
            # read at once left their rows' space scattered among the records kept.
            res = conn.execution_options(yield_per=LOAD_CHUNK).execute(q)
            return [(m["key_hash"], _record(m), m["updated_ms"]) for m in res.mappings()]


def _record(r: Mapping[Any, Any]) -> ApiKey:
    allowed = r.get("allowed_models")
    return ApiKey(
        id=str(r["id"]),
        prefix=str(r["prefix"]),
        name=str(r.get("name") or ""),
        org_id=r.get("org_id") or None,
        project_id=r.get("project_id") or None,
        allowed_models=frozenset(orjson.loads(str(allowed))) if allowed else None,
        created_ms=int(r["created_ms"]),
        revoked_ms=int(r["revoked_ms"]) if r.get("revoked_ms") is not None else None,
    )


class KeyCache:
    """In-memory hash → key map, refreshed incrementally from the database in the background."""

    def __init__(self, store: KeyStore) -> None:
        self._store = store
        self._by_hash: dict[str, ApiKey] = {}
        self._hash_of: dict[str, str] = {}  # key id -> hash
        #: When the last refresh began (ms of the wall clock; None before the first).
        self._since: int | None = None

    def lookup(self, secret: str) -> ApiKey | None:
        rec = self._by_hash.get(hash_key(secret))
        return rec if rec is not None and rec.active else None

    def by_id(self, key_id: str) -> ApiKey | None:
        """The cached record of a key (revoked ones too, until dropped), by its id."""
        h = self._hash_of.get(key_id)
        return self._by_hash.get(h) if h is not None else None

    def put(self, secret: str, rec: ApiKey) -> None:
        """Make a key created in this process usable at once, before the next refresh."""
        self._set(hash_key(secret), rec)

    def _set(self, h: str, rec: ApiKey) -> None:
        self._by_hash[h] = rec
        self._hash_of[rec.id] = h

    def refresh(self) -> int:
        """Pull keys changed since the last refresh began, less the look-back (blocking;
        run it in a thread). Counted from the wall clock, not from the newest key: after
        10,000 keys made in one burst, every refresh re-read them all until another came."""
        start = now_ms()
        since = 0 if self._since is None else max(0, self._since - REFRESH_LOOKBACK_MS)
        changed = self._store.changed_since(since)
        for h, rec, _ in changed:
            self._set(h, rec)
        self._since = start
        return len(changed)

    def reload(self, key_id: str) -> None:
        """Apply one announced change from the database (blocking; run it in a thread)."""
        found = self._store.get(key_id)
        if found is not None:
            self._set(*found)

    def revoke_local(self, key_id: str) -> None:
        h = self._hash_of.pop(key_id, None)
        if h is not None:
            self._by_hash.pop(h, None)
