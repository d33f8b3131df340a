"""Organisations, projects and budgets: the account tree a key bills against."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from tokenomy.billing.money import Currency
from tokenomy.ledger.periods import Period, period_bounds


class Mode(StrEnum):
    PREPAID = "prepaid"  # hard floor at zero
    POSTPAID = "postpaid"  # may go down to minus the credit line


class Scope(StrEnum):
    ORG = "org"
    PROJECT = "project"
    KEY = "key"
    #: One agent run's calls (see ``ledger.tasks``): a lifetime budget of its own.
    TASK = "task"
    #: An end user of an organisation (OpenAI's ``user`` / ``safety_identifier``,
    #: Anthropic's ``metadata.user_id``); its scope id is ``<org id>:<user>``.
    USER = "user"


#: The longest end-user name recorded and budgeted (OpenAI documents 64 for
#: ``safety_identifier``); a longer one is passed on but neither recorded nor budgeted.
MAX_END_USER = 128


def user_scope_id(org_id: str, user: str) -> str:
    """The scope id of an end user's budgets: org ids hold no colon, so the first one splits."""
    return f"{org_id}:{user}"


@dataclass(frozen=True, slots=True)
class Org:
    id: str
    name: str
    currency: Currency
    mode: Mode
    credit_limit_nanos: int = 0

    @property
    def floor_nanos(self) -> int:
        """The lowest balance allowed: 0 when prepaid, minus the credit line when postpaid."""
        return 0 if self.mode is Mode.PREPAID else -self.credit_limit_nanos

    @property
    def account(self) -> str:
        return f"org:{self.id}"


@dataclass(frozen=True, slots=True)
class Project:
    id: str
    org_id: str
    name: str


@dataclass(frozen=True, slots=True)
class Budget:
    """A cap on spend and/or tokens of one org, project or key per calendar period."""

    id: str
    scope: Scope
    scope_id: str
    period: Period
    amount_nanos: int | None
    token_limit: int | None
    tz: str = "UTC"

    def meter(self, at_ms: int) -> BudgetMeter:
        start, end = period_bounds(self.period, self.tz, at_ms)
        return BudgetMeter(self, start, end)


@dataclass(frozen=True, slots=True)
class BudgetMeter:
    """One budget's bucket for the period containing the request."""

    budget: Budget
    start_ms: int
    end_ms: int | None
    #: Names the bucket in live state (worked out once: a hold and its settlement ask).
    key: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"bud:{self.budget.id}:{self.start_ms}")

    def describe(self) -> str:
        b = self.budget
        if b.scope is Scope.TASK:
            return f"the budget of task {b.scope_id}"
        what = "lifetime" if b.period is Period.LIFETIME else f"{b.period.value}ly"
        if b.period is Period.DAY:
            what = "daily"
        if b.scope is Scope.USER:
            user = b.scope_id.partition(":")[2]
            return f"the {what} budget {b.id} of end user '{user}'"
        return f"the {what} budget {b.id} of {b.scope.value} {b.scope_id}"


@dataclass(frozen=True, slots=True)
class OrgMeter:
    org: Org

    @property
    def key(self) -> str:
        return f"org:{self.org.id}"
