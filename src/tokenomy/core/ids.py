"""Ids unique across processes and restarts, cheap enough for every request."""

from __future__ import annotations

import itertools
import secrets
import time


class UniqueIds:
    """``prefix``, a random part drawn once, and a counter (``width`` hex digits at least).

    Cheaper than fresh random bytes per id (a system call each), and ids from one
    instance sort in the order they were made.
    """

    def __init__(self, prefix: str = "", *, width: int = 0) -> None:
        # One %-format made once: cheaper per id than an f-string with a nested width.
        self._format = (prefix + secrets.token_hex(6)).replace("%", "%%") + f"%0{width}x"
        self._n = itertools.count(1)

    def next(self) -> str:
        return self._format % next(self._n)


def stamped_id(prefix: str) -> str:
    """An id in OpenAI's shape (``resp_…``, ``msg_…``, ``task_…``), unique across
    replicas and telling its age: the time it was made (ms, 12 hex digits), then 18
    random bytes."""
    return f"{prefix}{int(time.time() * 1000):012x}{secrets.token_hex(18)}"


def stamped_id_age_s(value: str, prefix: str) -> float | None:
    """How long ago an id of :func:`stamped_id` was made; None for an id of another shape."""
    stamp = value[len(prefix) : len(prefix) + 12]
    if not value.startswith(prefix) or len(stamp) != 12:
        return None
    try:
        return time.time() - int(stamp, 16) / 1000
    except ValueError:
        return None
