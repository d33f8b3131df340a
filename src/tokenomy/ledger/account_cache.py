"""An in-memory copy of the account tree (orgs, projects, budgets) for the request path."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import NamedTuple

from tokenomy.core.keys import ApiKey
from tokenomy.ledger.accounts import Budget, BudgetMeter, Org, Project, Scope, user_scope_id
from tokenomy.ledger.store import Changes, LedgerStore, now_ms
from tokenomy.store.keys import REFRESH_LOOKBACK_MS

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
    """Orgs, projects and budgets by id, kept up to date by :meth:`refresh`."""

    store: LedgerStore
    orgs: dict[str, Org] = field(default_factory=dict)
    projects: dict[str, Project] = field(default_factory=dict)
    budgets: Budgets = field(default_factory=dict)
    #: Orgs with budgets on end users: only their calls look for one.
    user_orgs: frozenset[str] = frozenset()
    #: How far back a refresh looks past the newest change it has seen: a change stamped
    #: just before another but committed after it is still picked up.
    lookback_ms: int = REFRESH_LOOKBACK_MS
    _meters: dict[str, _KeyMeters] = field(default_factory=dict, repr=False)
    _user_meters: dict[str, _UserMeters] = field(default_factory=dict, repr=False)
    _by_id: dict[str, Budget] = field(default_factory=dict, repr=False)
    _by_scope: dict[tuple[Scope, str], dict[str, Budget]] = field(default_factory=dict, repr=False)
    #: When the last refresh began (ms of the wall clock; None before the first).
    _since: int | None = field(default=None, repr=False)

    def refresh(self) -> int:
        """Catch up with the database (blocking; run it in a worker thread): read the rows
        changed since the last refresh began (less the look-back), so a refresh costs what
        changed lately, not the number of tenants. Returns how many rows it applied that
        differ from what was held."""
        start = now_ms()
        if self._since is None:
            n = self._reload()
        else:
            n = self._apply(self.store.changed_since(max(0, self._since - self.lookback_ms)))
        self._since = start
        return n

    def _reload(self) -> int:
        """Load everything (the first refresh)."""
        orgs = {o.id: o for o in self.store.all_orgs()}
        projects = {p.id: p for p in self.store.all_projects()}
        by_scope: dict[tuple[Scope, str], list[Budget]] = defaultdict(list)
        self._by_id.clear()
        self._by_scope.clear()
        for b in self.store.all_budgets():
            by_scope[(b.scope, b.scope_id)].append(b)
            self._by_id[b.id] = b
            self._by_scope.setdefault((b.scope, b.scope_id), {})[b.id] = b
        # Swap whole dicts: readers on the event loop never see a half-built state, and
        # meters cached from the old budgets lapse with them.
        self.orgs = orgs
        self.projects = projects
        self.budgets = {k: tuple(v) for k, v in by_scope.items()}
        self._note_user_orgs()
        return len(orgs) + len(projects) + len(self._by_id)

    def _apply(self, changes: Changes) -> int:
        """Apply what differs; the dicts the event loop reads are replaced (copied with the
        changes), never changed in place, and left as they are when nothing differs."""
        orgs = [o for o in changes.orgs if self.orgs.get(o.id) != o]
        projects = [p for p in changes.projects if self.projects.get(p.id) != p]
        gone = [i for i in changes.deleted_budgets if i in self._by_id]
        budgets = [b for b in changes.budgets if self._by_id.get(b.id) != b]
        if orgs:
            self.orgs = {**self.orgs, **{o.id: o for o in orgs}}
        if projects:
            self.projects = {**self.projects, **{p.id: p for p in projects}}
        if gone or budgets:
            scopes: set[tuple[Scope, str]] = set()
            for b in [self._by_id.pop(i) for i in gone] + budgets:
                old = self._by_id.pop(b.id, b)
                for was in (old, b):  # a budget moved to another scope leaves the first
                    scopes.add((was.scope, was.scope_id))
                    self._by_scope.get((was.scope, was.scope_id), {}).pop(b.id, None)
            for b in budgets:
                self._by_id[b.id] = b
                self._by_scope.setdefault((b.scope, b.scope_id), {})[b.id] = b
            table = dict(self.budgets)
            for scope in scopes:
                live = self._by_scope.get(scope)
                if live:
                    table[scope] = tuple(sorted(live.values(), key=lambda b: b.id))
                else:
                    table.pop(scope, None)
                    self._by_scope.pop(scope, None)
            self.budgets = table
            self._note_user_orgs()
        return len(orgs) + len(projects) + len(gone) + len(budgets)

    def _note_user_orgs(self) -> None:
        """Which orgs have budgets on end users (only when the budgets changed)."""
        self.user_orgs = frozenset(
            sid.partition(":")[0] for scope, sid in self.budgets if scope is Scope.USER
        )

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

    def user_meters(self, org_id: str, user: str, at_ms: int) -> tuple[BudgetMeter, ...]:
        """The budget buckets of an org's end user for the instant (none: no budget);
        worked out once per user until a period ends or the budgets change."""
        sid = user_scope_id(org_id, user)
        hit = self._user_meters.get(sid)
        budgets = self.budgets
        if hit is not None and hit.budgets is budgets and hit.start_ms <= at_ms < hit.end_ms:
            return hit.meters
        out = tuple(b.meter(at_ms) for b in budgets.get((Scope.USER, sid), ()))
        start = max((m.start_ms for m in out), default=0)
        end = min((_FOREVER if m.end_ms is None else m.end_ms for m in out), default=_FOREVER)
        if len(self._user_meters) > 65_536:  # bounded: end users come and go
            self._user_meters.clear()
        self._user_meters[sid] = _UserMeters(budgets, start, end, out)
        return out


class _UserMeters(NamedTuple):
    budgets: Budgets
    start_ms: int
    end_ms: int
    meters: tuple[BudgetMeter, ...]


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
