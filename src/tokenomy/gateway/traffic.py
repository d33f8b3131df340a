"""Interactive traffic: the calls the HTTP edge is serving, counted in and out.

Background work run in the same process (batch lines) reads it to yield to interactive
calls: two integer updates a call, nothing else on the request path.
"""

from __future__ import annotations


class Traffic:
    """Interactive calls started so far, and in flight now (the edge's; batch lines,
    which call the pipeline directly, are not counted)."""

    __slots__ = ("in_flight", "started")

    def __init__(self) -> None:
        self.started = 0
        self.in_flight = 0
