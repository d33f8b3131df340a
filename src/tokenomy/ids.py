"""Ids unique across processes and restarts, cheap enough for every request."""

from __future__ import annotations

import itertools
import secrets


class UniqueIds:
    """``prefix``, a random part drawn once, and a counter (``width`` hex digits at least).

    Cheaper than fresh random bytes per id (a system call each), and ids from one
    instance sort in the order they were made.
    """

    def __init__(self, prefix: str = "", *, width: int = 0) -> None:
        self._prefix = prefix + secrets.token_hex(6)
        self._width = width
        self._n = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._n):0{self._width}x}"
