"""An in-memory copy of the account tree (orgs, projects, budgets) for the request path."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import NamedTuple

from tokenomy.core.keys import ApiKey
from tokenomy.ledger.accounts import Budget, BudgetMeter, Org, Project, Scope
from tokenomy.ledger.store import LedgerStore

Budgets = dict[tuple[Scope, str], tuple[Budget, ...]]
#: The end of a lifetime budget's bucket, for the cache of meters.
_FOREVER = 2**63


class _KeyMeters(NamedTuple):
    """A key's meters, valid from ``start_ms`` until ``end_ms`` for that key object and
    that budgets dict (both are replaced, not changed, when they change)."""

    key: ApiKey
    budgets: Budgets
    start_ms: int
    end_ms: int
    meters: tuple[BudgetMeter, ...]


@dataclass
class AccountCache:
    """Orgs, projects and budgets by id; replaced wholesale by :meth:`refresh`."""

    store: LedgerStore
    orgs: dict[str, Org] = field(default_factory=dict)
    projects: dict[str, Project] = field(default_factory=dict)
    budgets: Budgets = field(default_factory=dict)
    _meters: dict[str, _KeyMeters] = field(default_factory=dict, repr=False)

    def refresh(self) -> None:
        """Reload everything (blocking; run it in a worker thread)."""
        orgs = {o.id: o for o in self.store.all_orgs()}
        projects = {p.id: p for p in self.store.all_projects()}
        by_scope: dict[tuple[Scope, str], list[Budget]] = defaultdict(list)
        for b in self.store.all_budgets():
            by_scope[(b.scope, b.scope_id)].append(b)
        # Swap whole dicts: readers on the event loop never see a half-built state, and
        # meters cached from the old budgets lapse with them.
        self.orgs = orgs
        self.projects = projects
        self.budgets = {k: tuple(v) for k, v in by_scope.items()}

    def org_of(self, key: ApiKey) -> Org | None:
        if key.org_id is None:
            return None
        return self.orgs.get(key.org_id)

    def meters(self, key: ApiKey, at_ms: int) -> tuple[BudgetMeter, ...]:
        """The budget buckets on the key's path (org, project, key) for the instant.

        They stay the same until the first of their periods ends, or the key or the
        budgets change: worked out once for all the key's requests in that span."""
        hit = self._meters.get(key.id)
        budgets = self.budgets
        if (
            hit is not None
            and hit.key is key
            and hit.budgets is budgets
            and hit.start_ms <= at_ms < hit.end_ms
        ):
            return hit.meters
        out = _path_meters(key, budgets, at_ms)
        start = max((m.start_ms for m in out), default=0)
        end = min((_FOREVER if m.end_ms is None else m.end_ms for m in out), default=_FOREVER)
        if len(self._meters) > 65_536:  # bounded: many keys come and go
            self._meters.clear()
        self._meters[key.id] = _KeyMeters(key, budgets, start, end, out)
        return out


def _path_meters(key: ApiKey, budgets: Budgets, at_ms: int) -> tuple[BudgetMeter, ...]:
    out: list[BudgetMeter] = []
    path = [(Scope.KEY, key.id)]
    if key.project_id:
        path.append((Scope.PROJECT, key.project_id))
    if key.org_id:
        path.append((Scope.ORG, key.org_id))
    for scope in path:
        for b in budgets.get(scope, ()):
            out.append(b.meter(at_ms))
    return tuple(out)
