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
        # One %-format made once: cheaper per id than an f-string with a nested width.
        self._format = (prefix + secrets.token_hex(6)).replace("%", "%%") + f"%0{width}x"
        self._n = itertools.count(1)

    def next(self) -> str:
        return self._format % next(self._n)
