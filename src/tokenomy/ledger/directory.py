"""An in-memory copy of the account tree (orgs, projects, budgets) for the request path."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from tokenomy.ledger.accounts import Budget, BudgetMeter, Org, Project, Scope
from tokenomy.ledger.store import AccountChanges, LedgerStore, now_ms
from tokenomy.store.keys import ApiKey

Budgets = dict[tuple[Scope, str], tuple[Budget, ...]]
#: Rows written this long before the last refresh started are read again: a row stamped
#: before its transaction committed, or by a host whose clock is a little behind, is
#: still seen.
OVERLAP_MS = 60_000
#: Every so many refreshes everything is read again (a bound on anything missed).
RELOAD_EVERY = 300
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
class Directory:
    """Orgs, projects and budgets by id; replaced wholesale by :meth:`refresh`."""

    store: LedgerStore
    orgs: dict[str, Org] = field(default_factory=dict)
    projects: dict[str, Project] = field(default_factory=dict)
    budgets: Budgets = field(default_factory=dict)
    _meters: dict[str, _KeyMeters] = field(default_factory=dict, repr=False)
    #: Budgets by id, as last read; when the last refresh started, and how many ran.
    _budget_rows: dict[str, Budget] = field(default_factory=dict, repr=False)
    _since: int | None = field(default=None, repr=False)
    _refreshes: int = field(default=0, repr=False)

    def refresh(self) -> None:
        """Pick up what changed (blocking; run it in a worker thread): the rows written
        since the last refresh, less :data:`OVERLAP_MS`, or everything on the first and
        every :data:`RELOAD_EVERY`-th refresh."""
        started = now_ms()
        if self._since is None or self._refreshes % RELOAD_EVERY == 0:
            self.reload()
        else:
            self._apply(self.store.accounts_changed_since(self._since - OVERLAP_MS))
        self._since = started
        self._refreshes += 1

    def reload(self) -> None:
        """Reload everything."""
        orgs = {o.id: o for o in self.store.all_orgs()}
        projects = {p.id: p for p in self.store.all_projects()}
        rows = {b.id: b for b in self.store.all_budgets()}
        # Swap whole dicts: readers on the event loop never see a half-built state, and
        # meters cached from the old budgets lapse with them.
        self.orgs = orgs
        self.projects = projects
        self._budget_rows = rows
        self.budgets = _by_scope(rows.values())

    def _apply(self, changes: AccountChanges) -> None:
        """Swap in new dicts for what really changed (rows read again are the same)."""
        orgs = {o.id: o for o in changes.orgs if self.orgs.get(o.id) != o}
        if orgs:
            self.orgs = {**self.orgs, **orgs}
        projects = {p.id: p for p in changes.projects if self.projects.get(p.id) != p}
        if projects:
            self.projects = {**self.projects, **projects}
        rows = dict(self._budget_rows)
        for b, deleted in changes.budgets:
            if deleted:
                rows.pop(b.id, None)
            else:
                rows[b.id] = b
        if rows != self._budget_rows:
            self._budget_rows = rows
            self.budgets = _by_scope(rows.values())

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


def _by_scope(rows: Iterable[Budget]) -> Budgets:
    by_scope: dict[tuple[Scope, str], list[Budget]] = defaultdict(list)
    for b in sorted(rows, key=lambda b: b.id):  # in id order, as the store lists them
        by_scope[(b.scope, b.scope_id)].append(b)
    return {k: tuple(v) for k, v in by_scope.items()}
