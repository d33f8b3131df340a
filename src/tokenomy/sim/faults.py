"""Which fault, if any, a request meets: scripted first, then the model's name, then chance.

Scripted faults (``POST /_sim/faults``) are queued per model name, or for every model under
``"*"``, and consumed one per request in order. Tokens: a status code ("429", "500", "503",
any 400-599), "timeout" (hold the request ``timeout_s`` before answering), "slow" (answer at
``slow_tokens_per_second``), "disconnect" or "disconnect:K" (close the connection after K
stream events; a non-streamed request is dropped unanswered), and "ok" (no fault).

Model names carry faults without any setup (anywhere in the name, e.g. "acme/sim-429"):

- ``sim-429``, ``sim-500``, ``sim-fail-503``, ...: always that status;
- ``sim-timeout``: hold the request ``timeout_s`` before answering;
- ``sim-slow``: answer at ``slow_tokens_per_second``;
- ``sim-disconnect`` or ``sim-disconnect-K``: cut the stream after K chunks
  (``disconnect_after_chunks`` by default); a non-streaming request is dropped unanswered.
"""

from __future__ import annotations

import random
import re
from collections import deque
from dataclasses import dataclass

from tokenomy.sim.settings import SimSettings

_NAMED = re.compile(r"sim-(?:fail-)?(\d{3})\b|sim-(slow|timeout)\b|sim-(disconnect)(?:-(\d+))?\b")


@dataclass(frozen=True, slots=True)
class Fault:
    """``kind`` is "ok", "status", "timeout", "slow" or "disconnect"."""

    kind: str
    status: int = 0
    after_chunks: int = 0


OK = Fault("ok")


def parse_fault(token: str, settings: SimSettings) -> Fault:
    """A fault from its script token; ValueError if it is not one."""
    token = token.strip().lower()
    if token == "ok":
        return OK
    if token in ("timeout", "slow"):
        return Fault(token)
    if token == "disconnect":
        return Fault("disconnect", after_chunks=settings.disconnect_after_chunks)
    if token.startswith("disconnect:") and token[11:].isdigit():
        return Fault("disconnect", after_chunks=int(token[11:]))
    if token.isdigit() and 400 <= int(token) <= 599:
        return Fault("status", status=int(token))
    raise ValueError(f"unknown fault {token!r}")


def named_fault(model: str, settings: SimSettings) -> Fault | None:
    """The fault a model's name asks for, if any."""
    m = _NAMED.search(model)
    if m is None:
        return None
    status, slow, disconnect, after = m.groups()
    if status is not None and 400 <= int(status) <= 599:
        return Fault("status", status=int(status))
    if slow is not None:
        return Fault(slow)
    if disconnect is not None:
        return Fault("disconnect", after_chunks=int(after or settings.disconnect_after_chunks))
    return None


def random_fault(rng: random.Random, settings: SimSettings) -> Fault | None:
    """A fault drawn with the configured rates (one draw per request keeps runs replayable)."""
    if not (
        settings.error_rate
        or settings.rate_limit_rate
        or settings.timeout_rate
        or settings.disconnect_rate
    ):
        return None
    r = rng.random()
    for rate, fault in (
        (settings.error_rate, Fault("status", status=500)),
        (settings.rate_limit_rate, Fault("status", status=429)),
        (settings.timeout_rate, Fault("timeout")),
        (
            settings.disconnect_rate,
            Fault("disconnect", after_chunks=settings.disconnect_after_chunks),
        ),
    ):
        if r < rate:
            return fault
        r -= rate
    return None


class FaultScript:
    """Queues of scripted faults per model name ("*" for any model)."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[Fault]] = {}

    def push(self, model: str, faults: list[Fault]) -> None:
        self._queues.setdefault(model, deque()).extend(faults)

    def pop(self, model: str) -> Fault | None:
        """The next fault for ``model``: its own queue first, then the "*" queue."""
        for key in (model, "*"):
            queue = self._queues.get(key)
            if queue:
                return queue.popleft()
        return None

    def clear(self) -> None:
        self._queues.clear()

    def pending(self) -> dict[str, int]:
        return {model: len(q) for model, q in self._queues.items() if q}


def next_fault(
    script: FaultScript, rng: random.Random, settings: SimSettings, model: str
) -> Fault | None:
    """The fault this request meets, or None."""
    fault = script.pop(model)
    if fault is not None:
        return None if fault.kind == "ok" else fault
    return named_fault(model, settings) or random_fault(rng, settings)
