"""How many batch lines a process runs per second, measured while lines were waiting.

Sampled every couple of seconds by the worker's housekeeping. Only a stretch during
which lines were waiting to be claimed is a measure of capacity (an idle worker runs
as many lines as it is given); samples are smoothed so one slow vendor minute moves the
figure without throwing it.
"""

from __future__ import annotations

#: Weight of the newest sample.
ALPHA = 0.3


class Throughput:
    def __init__(self, default: float) -> None:
        self.default = default
        #: None until a first sample.
        self.measured: float | None = None
        self._last: tuple[int, float] | None = None

    def sample(self, done: int, now: float, saturated: bool) -> None:
        """``done`` lines ended so far at monotonic ``now``; ``saturated``: lines were
        waiting to be claimed."""
        last, self._last = self._last, (done, now)
        if last is None or not saturated or now <= last[1] or done <= last[0]:
            return
        rate = (done - last[0]) / (now - last[1])
        m = self.measured
        self.measured = rate if m is None else (1 - ALPHA) * m + ALPHA * rate

    def lines_per_s(self) -> float:
        return self.measured if self.measured is not None else self.default
