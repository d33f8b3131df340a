"""The one seam for the pricing path's memos keyed by object identity.

Pricing a call resolves the same catalogue objects (a price version, its windows and
promotions) for every request; hashing those frozen dataclasses field by field costs more
than the work saved, so the memos key on ``id()`` instead. An id is only unique while its
object lives, so each entry keeps its owner and a hit must be that very object (``is``):
an id recycled after a catalogue reload never returns another object's value. Reloads
leave dead owners behind, so a memo empties itself past ``limit`` entries.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class IdentityMemo(Generic[V]):
    """Values worked out from ``owner`` (and plain parts of ``key``), found again only
    for that same owner object. ``key`` should start with ``id(owner)``."""

    __slots__ = ("_entries", "limit")

    def __init__(self, limit: int = 4096) -> None:
        self._entries: dict[Hashable, tuple[object, V]] = {}
        self.limit = limit

    def get(self, owner: object, key: Hashable) -> V | None:
        hit = self._entries.get(key)
        if hit is not None and hit[0] is owner:
            return hit[1]
        return None

    def put(self, owner: object, key: Hashable, value: V) -> None:
        """Remember ``value``; the owner is kept alive with it, so ids it holds stay its."""
        if len(self._entries) >= self.limit:
            self._entries.clear()
        self._entries[key] = (owner, value)

    def __len__(self) -> int:
        return len(self._entries)
