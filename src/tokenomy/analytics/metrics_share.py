"""Metrics of every worker of ``tokenomy serve --workers N``, whichever one is scraped.

The request path keeps bumping its own in-memory registry (a dict update, as with one
worker). Every ``interval_s`` each worker writes a snapshot of it to ``<dir>/<pid>.json``
(written aside and renamed, so a reader never sees half a file); the worker a scrape
reaches adds its own current values to the others' files. A worker that died leaves its
file: its requests still happened, so the totals never go backwards when the parent
starts a new worker in its place. The other workers' values are at most ``interval_s``
old.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

import orjson

from tokenomy.analytics.metrics import Metrics, Snapshot, merge_snapshots

log = logging.getLogger(__name__)

#: The environment variable through which ``serve --workers`` hands its workers the
#: directory they share.
DIR_ENV = "TOKENOMY_METRICS_DIR"
INTERVAL_S = 0.25


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SharedMetrics:
    """Shares one worker's metrics through ``directory`` and merges everyone's."""

    def __init__(self, metrics: Metrics, directory: Path, interval_s: float = INTERVAL_S) -> None:
        self.metrics = metrics
        self.directory = directory
        self.interval_s = interval_s
        self.pid = os.getpid()
        metrics.peers = self.merged

    def write(self) -> None:
        path = self.directory / f"{self.pid}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(self.metrics.snapshot()))
        os.replace(tmp, path)

    def merged(self, own: Snapshot) -> Snapshot:
        """``own`` (this worker, now) plus every other worker's last snapshot."""
        snaps: list[tuple[Snapshot, bool]] = [(own, True)]
        for path in self.directory.glob("*.json"):
            if not path.stem.isdigit() or int(path.stem) == self.pid:
                continue
            try:
                snap = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue  # gone between the listing and the read
            snaps.append((snap, _alive(int(path.stem))))
        return merge_snapshots(snaps)

    async def run(self) -> None:
        """Write this worker's snapshot every ``interval_s`` until cancelled."""
        while True:
            try:
                self.write()
            except OSError as e:
                log.warning("could not share this worker's metrics (%s)", e)
            await asyncio.sleep(self.interval_s)

    def close(self) -> None:
        """A last snapshot on a clean stop: what this worker counted stays counted."""
        with contextlib.suppress(OSError):
            self.write()
