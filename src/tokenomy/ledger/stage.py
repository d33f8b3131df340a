"""The ledger's pipeline stage: hold the worst case before the call, settle after."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from tokenomy.billing.call_pricing import CallPricer, Charge, units
from tokenomy.core.call import Call, CallKey, named_task
from tokenomy.core.errors import InsufficientQuota, Overloaded, PermissionDenied
from tokenomy.core.keys import ApiKey
from tokenomy.core.metering import count_prompt
from tokenomy.core.registry import Deployment
from tokenomy.core.tokencount import TokenCounter
from tokenomy.ledger.account_cache import AccountCache
from tokenomy.ledger.accounts import BudgetMeter, Org, OrgMeter
from tokenomy.ledger.broke_orgs import HEAD_REFUSAL_MIN_BYTES, BrokeOrgs, Turn
from tokenomy.ledger.end_user import end_user
from tokenomy.ledger.live import Hold, LiveLedger, LiveStateUnavailable, Shortfall
from tokenomy.ledger.tasks import TaskFinder

#: Prompts whose byte bound is above this many tokens are counted off the event loop.
INLINE_COUNT_BOUND = 8192


@dataclass(slots=True)
class CallLedger:
    """The ledger's part of a call: the organisation it is charged to, its hold, and
    its charge once priced (the usage record and the response's cost read it)."""

    org: Org | None = None
    #: A batch line's is made when its batch is, and left here by the batch worker.
    hold: Hold | None = None
    charge: Charge | None = None


LEDGER = CallKey[CallLedger]("ledger")

#: Retry-After of a 503 while live balances are unreachable or being rebuilt.
RETRY_AFTER_S = 1.0


class LedgerStage:
    """Finds the call's task, holds its worst case before the vendor call and settles
    the actual cost after (see ``ledger.live``)."""

    span_name = "tokenomy.reserve"

    def __init__(
        self,
        pricer: CallPricer,
        live: LiveLedger,
        accounts: AccountCache,
        counter: TokenCounter,
        candidates: Callable[[Call], list[Deployment]],
        tasks: TaskFinder,
        *,
        hold_ttl_s: float,
        default_max_output: int,
        can_be_free: Callable[[datetime], bool] | None = None,
    ) -> None:
        self.pricer = pricer
        self.live = live
        self.accounts = accounts
        self.counter = counter
        self.candidates = candidates
        self.tasks = tasks
        self.hold_ttl_s = hold_ttl_s
        self.default_max_output = default_max_output
        self.holds = 0
        self.settles = 0
        self.refusals = 0
        self._org_meters: dict[str, OrgMeter] = {}
        self._counting = asyncio.Semaphore(1)
        #: Orgs that can pay for nothing, refused from the request head (see broke_orgs).
        self.broke = BrokeOrgs()
        #: Whether any deployment may cost nothing at a time (a broke org could call it).
        self._can_be_free = can_be_free or (lambda at: True)

    def head_refusal(
        self, key: ApiKey, body_bytes: int, *, wait: bool = True
    ) -> tuple[InsufficientQuota, Turn] | None:
        """The 402 for a request of ``key`` decided before its body is read, and when to
        answer it (the org's turn: see BrokeOrgs.turn; with ``wait`` False, at once and
        undrained, booking no turn). Only for a large body (a small one is read, refused
        and recorded as usual) of an org known to be unable to pay for anything (no body
        could change the answer). Not recorded as a usage event (its model is in the
        unread body): counted, see BrokeOrgs.refused."""
        if key.org_id is None or body_bytes < HEAD_REFUSAL_MIN_BYTES:
            return None
        err = self.broke.refusal(key.org_id)
        if err is None:
            return None
        return err, self.broke.turn(key.org_id) if wait else Turn(0.0, drain=False)

    async def before(self, call: Call) -> None:
        task = None
        if call.task_name is not None or "metadata" in call.body:
            name = named_task(call)
            if name is not None:
                task = await self.tasks.find(call, name)
        if LEDGER in call.state:
            return  # held already (a batch line, held when its batch was created)
        key = call.key
        if key.org_id is None:
            return  # a house key: usage is recorded and priced, not charged to anyone
        org = self.accounts.org_of(key)
        if org is None:
            raise PermissionDenied(
                "This API key's organisation does not exist (any more).", code="org_not_found"
            )
        ledger = CallLedger(org)
        call.put(LEDGER, ledger)
        at = datetime.fromtimestamp(call.ts_ms / 1000, UTC)
        deps = self.candidates(call)
        bound = self.pricer.prompt_bound(call)
        meters = self.accounts.meters(key, call.ts_ms)
        if task is not None:  # one level deeper: the task's own budget
            meters = (*meters, task)
        if org.id in self.accounts.user_orgs:  # and the end user's, if the org has any
            user = end_user(call)
            if user is not None:
                meters = (*meters, *self.accounts.user_meters(org.id, user, call.ts_ms))
        try:
            hold = await self._hold_or_refuse(call, org, deps, bound, meters, at)
        except LiveStateUnavailable as e:
            # Fail closed: money is never spent without a hold.
            raise Overloaded(
                "Balances are unavailable for a moment; retry shortly.",
                code="ledger_unavailable",
                retry_after=RETRY_AFTER_S,
            ) from e
        ledger.hold = hold
        self.holds += 1

    async def _hold_or_refuse(
        self,
        call: Call,
        org: Org,
        deps: list[Deployment],
        bound: int,
        meters: tuple[BudgetMeter, ...],
        at: datetime,
    ) -> Hold:
        try:
            return await self._hold(call, org, deps, bound, meters, at)
        except Shortfall as short:
            if not self._prompt_may_fit(call, org, deps, short, at):
                self.refusals += 1
                await self._note_if_broke(org, short, at)
                raise _refusal(short, org) from None
            # The byte bound is loose (about 4x for English): count the prompt for real,
            # with a margin for vendors whose tokenizer differs from ours, and try again.
            counted = await self._count(call, bound)
            tight = min(bound, counted * 5 // 4 + 16)
            try:
                if tight >= bound:
                    raise
                return await self._hold(call, org, deps, tight, meters, at)
            except Shortfall as s:
                self.refusals += 1
                raise _refusal(s, org) from None

    async def _note_if_broke(self, org: Org, short: Shortfall, at: datetime) -> None:
        """After a refusal on the org's balance with nothing available: if even with no
        hold in flight the org cannot pay (admin - used <= floor) and no deployment is
        free, its next requests are refused from their head. One more read of the live
        ledger, on this refusal only (not again while the org is noted)."""
        if short.budget or short.tokens or short.available > 0 or org.id in self.broke:
            return
        if self._can_be_free(at):
            return
        try:
            st = await self.live.org_state(self._org_meter(org))
        except LiveStateUnavailable:
            return
        self.broke.note(org, st.admin - st.used - org.floor_nanos)

    def _prompt_may_fit(
        self, call: Call, org: Org, deps: list[Deployment], short: Shortfall, at: datetime
    ) -> bool:
        """Whether counting the prompt could turn a refusal round: not when the output
        alone, with no prompt at all, is more than what ran out has left. A tenant with
        nothing left is refused for the price of a multiplication, whatever it sends."""
        amount, tokens = self.pricer.worst(call, deps, org.currency, 0, self.default_max_output, at)
        return (tokens if short.tokens else amount) <= short.available

    async def _count(self, call: Call, bound: int) -> int:
        """The prompt's token count; a large one on a worker thread, one at a time, so a
        near miss never stalls the event loop (the tokenizers run native code)."""
        if bound <= INLINE_COUNT_BOUND:
            return count_prompt(self.counter, call)
        async with self._counting:
            return await asyncio.to_thread(count_prompt, self.counter, call)

    async def _hold(
        self,
        call: Call,
        org: Org,
        deps: list[Deployment],
        prompt: int,
        meters: tuple[BudgetMeter, ...],
        at: datetime,
    ) -> Hold:
        amount, tokens = self.pricer.worst(
            call, deps, org.currency, prompt, self.default_max_output, at
        )
        hold = Hold(
            id=call.request_id,
            org=self._org_meter(org),
            budgets=meters,
            amount=amount,
            tokens=tokens,
            expires_at=time.time() + self.hold_ttl_s,
        )
        await self.live.hold(hold)
        return hold

    def _org_meter(self, org: Org) -> OrgMeter:
        """One meter per org, made again only when the account cache gives a new Org."""
        m = self._org_meters.get(org.id)
        if m is None or m.org is not org:
            m = self._org_meters[org.id] = OrgMeter(org)
        return m

    def quote(self, call: Call) -> Charge:
        """The call's charge from its usage so far (cached once computed at the end)."""
        ledger = call.get(LEDGER)
        if ledger is None:
            ledger = CallLedger()  # a house key's call: priced, charged to no one
            call.put(LEDGER, ledger)
        elif ledger.charge is not None:
            return ledger.charge
        org, hold = ledger.org, ledger.hold
        ch = self.pricer.charge(call, org.currency if org else None, hold.amount if hold else None)
        ledger.charge = ch
        return ch

    async def after(self, call: Call) -> None:
        ch = self.quote(call)
        ledger = call.get(LEDGER)
        hold = ledger.hold if ledger is not None else None
        if hold is not None:
            u = call.usage
            tokens = (u.input_tokens + u.output_tokens) if u else 0
            await self.live.settle_soon(hold, ch.cost_nanos, tokens)
            self.settles += 1


def _refusal(s: Shortfall, org: Org) -> InsufficientQuota:
    if s.tokens:
        msg = (
            f"Token budget exceeded: {s.what} has {max(s.available, 0)} tokens left and this "
            f"request may use up to {s.needed}."
        )
    else:
        cur = org.currency.value
        left = f"{units(max(s.available, 0))} {cur}"
        most = f"{units(s.needed)} {cur}"
        if s.budget:
            msg = (
                f"Budget exceeded: {s.what} has {left} left and this request may cost up to "
                f"{most}. Raise the budget, wait for its next period, or lower max_tokens."
            )
        else:
            msg = (
                f"Insufficient funds: {s.what} has {left} available and this request may "
                f"cost up to {most}. Top up or lower max_tokens."
            )
    return InsufficientQuota(msg)
