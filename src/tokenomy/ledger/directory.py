"""An in-memory copy of the account tree (orgs, projects, budgets) for the request path."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from tokenomy.ledger.accounts import Budget, BudgetMeter, Org, Project, Scope
from tokenomy.ledger.store import LedgerStore
from tokenomy.store.keys import ApiKey


@dataclass
class Directory:
    """Orgs, projects and budgets by id; replaced wholesale by :meth:`refresh`."""

    store: LedgerStore
    orgs: dict[str, Org] = field(default_factory=dict)
    projects: dict[str, Project] = field(default_factory=dict)
    budgets: dict[tuple[Scope, str], tuple[Budget, ...]] = field(default_factory=dict)

    def refresh(self) -> None:
        """Reload everything (blocking; run it in a worker thread)."""
        orgs = {o.id: o for o in self.store.all_orgs()}
        projects = {p.id: p for p in self.store.all_projects()}
        by_scope: dict[tuple[Scope, str], list[Budget]] = defaultdict(list)
        for b in self.store.all_budgets():
            by_scope[(b.scope, b.scope_id)].append(b)
        # Swap whole dicts: readers on the event loop never see a half-built state.
        self.orgs = orgs
        self.projects = projects
        self.budgets = {k: tuple(v) for k, v in by_scope.items()}

    def org_of(self, key: ApiKey) -> Org | None:
        if key.org_id is None:
            return None
        return self.orgs.get(key.org_id)

    def meters(self, key: ApiKey, at_ms: int) -> tuple[BudgetMeter, ...]:
        """The budget buckets on the key's path (org, project, key) for the instant."""
        out: list[BudgetMeter] = []
        path = [(Scope.KEY, key.id)]
        if key.project_id:
            path.append((Scope.PROJECT, key.project_id))
        if key.org_id:
            path.append((Scope.ORG, key.org_id))
        for scope in path:
            for b in self.budgets.get(scope, ()):
                out.append(b.meter(at_ms))
        return tuple(out)
