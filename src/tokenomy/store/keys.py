"""API keys: created and revoked in the database, looked up from memory on the request path.

Only a SHA-256 of each key is stored. Keys are 192 random bits, so a fast hash is enough:
there is nothing to brute-force that a slow hash would protect.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

import orjson
from sqlalchemy import Engine, select, update

from tokenomy.store.schema import api_keys

KEY_PREFIX = "tk-"


def hash_key(key: str) -> str:
    # surrogatepass: a header or form with bytes that are not UTF-8 arrives with surrogates;
    # such a key matches no key, and must not fail to hash.
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    prefix: str
    name: str
    org_id: str | None
    project_id: str | None
    allowed_models: frozenset[str] | None
    created_ms: int
    revoked_ms: int | None

    @property
    def active(self) -> bool:
        return self.revoked_ms is None

    def may_use(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models


def now_ms() -> int:
    return int(time.time() * 1000)


class KeyStore:
    """Durable key operations (CLI, admin API) and the snapshot the gateway caches."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

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
        return secret, _record(row)

    def revoke(self, key_id: str) -> bool:
        ts = now_ms()
        with self.engine.begin() as conn:
            res = conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_ms.is_(None))
                .values(revoked_ms=ts, updated_ms=ts)
            )
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
            return [_record(dict(r._mapping)) for r in conn.execute(q)]

    def changed_since(self, updated_ms: int) -> list[tuple[str, ApiKey, int]]:
        """(hash, record, updated_ms) of keys changed at or after ``updated_ms``."""
        q = select(api_keys).where(api_keys.c.updated_ms >= updated_ms)
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(q)]
        return [(r["key_hash"], _record(r), r["updated_ms"]) for r in rows]


def _record(r: dict[str, object]) -> ApiKey:
    allowed = r.get("allowed_models")
    return ApiKey(
        id=str(r["id"]),
        prefix=str(r["prefix"]),
        name=str(r.get("name") or ""),
        org_id=r.get("org_id") or None,  # type: ignore[arg-type]
        project_id=r.get("project_id") or None,  # type: ignore[arg-type]
        allowed_models=frozenset(orjson.loads(str(allowed))) if allowed else None,
        created_ms=int(r["created_ms"]),  # type: ignore[call-overload]
        revoked_ms=int(r["revoked_ms"]) if r.get("revoked_ms") is not None else None,  # type: ignore[call-overload]
    )


class KeyCache:
    """In-memory hash → key map, refreshed incrementally from the database in the background."""

    def __init__(self, store: KeyStore) -> None:
        self._store = store
        self._by_hash: dict[str, ApiKey] = {}
        self._watermark = 0

    def lookup(self, secret: str) -> ApiKey | None:
        rec = self._by_hash.get(hash_key(secret))
        return rec if rec is not None and rec.active else None

    def put(self, secret: str, rec: ApiKey) -> None:
        """Make a key created in this process usable at once, before the next refresh."""
        self._by_hash[hash_key(secret)] = rec

    def refresh(self) -> int:
        """Pull keys changed since the last refresh (blocking; run it in a thread)."""
        changed = self._store.changed_since(self._watermark)
        for h, rec, updated in changed:
            self._by_hash[h] = rec
            self._watermark = max(self._watermark, updated)
        return len(changed)

    def revoke_local(self, key_id: str) -> None:
        for h, rec in list(self._by_hash.items()):
            if rec.id == key_id:
                del self._by_hash[h]
