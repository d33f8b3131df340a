"""The bench's idle cost is measured once a server has finished starting: a gateway
loading 10,000 tenants is busy for its first seconds, and that is not what it costs idle."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import measure

#: Busy for its first 1.5 s (as a gateway loading its tenants), then asleep.
_STARTING = "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass\ntime.sleep(60)"


def test_the_idle_measure_waits_out_a_busy_start() -> None:
    proc = subprocess.Popen([sys.executable, "-c", _STARTING])
    try:
        server = SimpleNamespace(pid=proc.pid, name="starting", attributed={})
        t0 = time.monotonic()
        idle = measure.measure_idle(server, 1.0)  # type: ignore[arg-type]
        waited = time.monotonic() - t0
        assert 2.0 <= waited < measure.SETTLE_MAX_S  # settled after the busy start
        assert idle["server"] < measure.SETTLED_MS_PER_S
    finally:
        proc.kill()
        proc.wait()


def test_a_server_busy_for_good_is_measured_after_the_longest_wait() -> None:
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        server = SimpleNamespace(pid=spin.pid, name="busy", attributed={})
        assert measure.settle(server, max_s=2.0) >= 2.0  # type: ignore[arg-type]
    finally:
        spin.kill()
        spin.wait()
