"""An API key as the request path sees it (the key store, its database side, is ``store.keys``)."""

from __future__ import annotations

from dataclasses import dataclass


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
