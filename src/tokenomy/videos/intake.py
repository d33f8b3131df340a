"""Submitting a video job: validate, price it per second, hold the cost, queue it.

Bad input is refused before anything is held or written (400 in OpenAI's format); a
full queue is refused with 429 and a Retry-After; funds short of the job's cost, 402.
"""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tokenomy.batches.holds import LineHolds
from tokenomy.billing.call_pricing import units
from tokenomy.billing.catalog import PricingError
from tokenomy.billing.media_prices import MediaCost, media_cost
from tokenomy.core.errors import (
    InsufficientQuota,
    InvalidRequest,
    Overloaded,
    PermissionDenied,
    RateLimited,
)
from tokenomy.core.ids import stamped_id
from tokenomy.core.keys import ApiKey
from tokenomy.ledger.live import LiveStateUnavailable, Shortfall
from tokenomy.store.videos import QUEUED, VideoStore
from tokenomy.videos.models import VideoModel, VideoModels

if TYPE_CHECKING:
    from tokenomy.services import Services

MAX_PROMPT_CHARS = 32_000


def _seconds(raw: Any, m: VideoModel) -> int:
    """A whole number of seconds from 1 to the model's maximum (OpenAI sends a string)."""
    n: int | None = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        n = raw
    elif isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
        n = int(raw.strip())
    elif isinstance(raw, float) and raw.is_integer():
        n = int(raw)
    if n is None or not 1 <= n <= m.max_seconds:
        raise InvalidRequest(
            f"seconds must be a whole number from 1 to {m.max_seconds} for {m.name} (got {raw!r}).",
            param="seconds",
            code="invalid_value",
        )
    return n


class VideoIntake:
    def __init__(
        self, svc: Services, store: VideoStore, models: VideoModels, holds: LineHolds
    ) -> None:
        self.svc = svc
        self.store = store
        self.models = models
        self.holds = holds

    def model(self, body: dict[str, Any], key: ApiKey) -> VideoModel:
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("model is required (a video model's name).", param="model")
        m = self.models.by_name.get(name)
        if m is None:
            served = ", ".join(sorted(self.models.by_name)) or "none"
            raise InvalidRequest(
                f"The video model '{name}' does not exist or is not served here "
                f"(served: {served}).",
                param="model",
                code="model_not_found",
            )
        if not key.may_use(name):
            raise PermissionDenied(f"This API key is not allowed to use the model '{name}'.")
        return m

    def parse(
        self, body: dict[str, Any], key: ApiKey, now: datetime
    ) -> tuple[VideoModel, str, int, str]:
        """(model, prompt, seconds, size), or a 400 naming the bad field."""
        m = self.model(body, key)
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidRequest("prompt is required (a non-empty string).", param="prompt")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidRequest(
                f"prompt is longer than {MAX_PROMPT_CHARS} characters.", param="prompt"
            )
        seconds = _seconds(body.get("seconds", m.default_seconds), m)
        size = body.get("size", m.default_size)
        sizes = self.models.sizes(m, now)
        if not isinstance(size, str) or size not in sizes:
            raise InvalidRequest(
                f"size must be one of {', '.join(sorted(sizes))} for {m.name} (got {size!r}).",
                param="size",
                code="invalid_value",
            )
        return m, prompt, seconds, size

    def cost(
        self, key: ApiKey, m: VideoModel, size: str, seconds: int, at: datetime
    ) -> MediaCost | None:
        org = self.svc.accounts.org_of(key)
        if org is None and key.org_id is not None:
            raise PermissionDenied(
                "This API key's organisation does not exist (any more).", code="org_not_found"
            )
        try:
            price = self.models.prices.lookup(*m.price_ref, at)
            currency = org.currency if org is not None else price.currency
            return media_cost(price, size, seconds, currency, self.svc.pricer.fx, at)
        except (LookupError, PricingError) as e:  # no price, or no FX rate to convert it
            raise InvalidRequest(str(e), param="model", code="model_not_priced") from None

    async def submit(
        self, key: ApiKey, owner: str, body: dict[str, Any], retry_after: float
    ) -> dict[str, Any]:
        now_ms = int(time.time() * 1000)
        at = datetime.fromtimestamp(now_ms / 1000, UTC)
        m, prompt, seconds, size = self.parse(body, key, at)
        depth = await asyncio.to_thread(self.store.depth, m.id)
        if depth >= m.max_queue_depth:
            raise RateLimited(
                f"The queue of {m.name} is full ({depth} jobs waiting); retry later.",
                code="queue_full",
                retry_after=max(1.0, math.ceil(retry_after)),
            )
        cost = self.cost(key, m, size, seconds, at)
        job_id = stamped_id("video_")
        expires_s = now_ms // 1000 + self.svc.config.videos.hold_ttl_s
        hold = (
            self.holds.hold_for(key, job_id, cost.cost_nanos, 0, now_ms, expires_s)
            if cost is not None
            else None
        )
        if hold is not None:
            try:
                await self.holds.make(lambda: [hold])
            except Shortfall as s:
                raise InsufficientQuota(
                    f"Insufficient funds: {s.what} has {units(max(s.available, 0))} "
                    f"{cost.currency.value if cost else ''} available and this video costs "
                    f"{units(s.needed)}. Top up or ask for fewer seconds."
                ) from None
            except LiveStateUnavailable as e:
                raise Overloaded(
                    "Balances are unavailable for a moment; retry shortly.",
                    code="ledger_unavailable",
                    retry_after=1.0,
                ) from e
        row = {
            "id": job_id,
            "owner": owner,
            "key_id": key.id,
            "model": m.name,
            "deployment": m.id,
            "prompt": prompt,
            "seconds": seconds,
            "size": size,
            "status": QUEUED,
            "progress": 0,
            "created_ms": now_ms,
            "lease_until": 0,
            "attempts": 0,
            "held_nanos": cost.cost_nanos if cost else 0,
            "hold_open": 1 if hold is not None else 0,
            "cost_nanos": 0,
            "currency": cost.currency.value if cost else None,
        }
        try:
            await asyncio.to_thread(self.store.create, row)
        except BaseException:
            if hold is not None:
                await self.holds.release([hold])
            raise
        return {**row, "error": None, "started_ms": None, "completed_ms": None,
                "expires_at": None, "upstream_id": None, "render_ms": None}  # fmt: skip
