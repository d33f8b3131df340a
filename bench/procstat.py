"""CPU time and memory of a server process and all of its descendants, from /proc."""

from __future__ import annotations

import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def descendants(root: int) -> list[int]:
    """``root`` and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(root: int) -> float:
    """utime + stime of the tree, plus what its members collected from reaped children."""
    ticks = 0
    for pid in descendants(root):
        fields = _stat_fields(pid)
        if fields is None:
            continue
        # Fields 14-17 of stat (utime, stime, cutime, cstime); index 11 here after pid/comm.
        ticks += sum(int(x) for x in fields[11:15])
    return ticks / CLK_TCK


def sched_ns(root: int) -> tuple[int, int]:
    """(ns on a CPU, ns waiting for one) of every thread of the tree, from schedstat: the
    second is time a thread was ready to run while every core was busy with something
    else (the load client, the upstream, the database, its own other threads)."""
    run = wait = 0
    for pid in descendants(root):
        try:
            tasks = list((PROC / str(pid) / "task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                a, b, _ = (task / "schedstat").read_text().split()
            except (OSError, ValueError):
                continue
            run += int(a)
            wait += int(b)
    return run, wait


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mb(root: int) -> float:
    """Resident memory of the tree now (VmRSS summed), in MiB."""
    return sum(_status_kb(p, "VmRSS") for p in descendants(root)) / 1024


def largest_rss_mb(root: int) -> float:
    """Resident memory of the tree's largest process now (VmRSS), in MiB."""
    return max((_status_kb(p, "VmRSS") for p in descendants(root)), default=0) / 1024


def peak_rss_mb(root: int) -> float:
    """Peak resident memory (VmHWM summed over the tree's live members), in MiB."""
    return sum(_status_kb(p, "VmHWM") for p in descendants(root)) / 1024


def machine_ticks() -> tuple[int, int]:
    """(all CPU ticks so far, the ticks stolen by the hypervisor) from /proc/stat: on a
    shared VM the host runs other guests on "our" cores, and every figure taken while it
    does is slower and noisier."""
    fields = (PROC / "stat").read_text().split("\n", 1)[0].split()[1:]
    # user nice system idle iowait irq softirq steal (guest time is inside user already)
    ticks = [int(x) for x in fields[:8]]
    return sum(ticks), ticks[7] if len(ticks) > 7 else 0


def steal_pct(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of the machine's CPU time stolen between two ``machine_ticks()``."""
    total = after[0] - before[0]
    return round(100 * (after[1] - before[1]) / total, 1) if total > 0 else 0.0


def _ticks(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return sum(int(x) for x in fields[11:13]) if fields is not None else None


def pg_backends(database: str) -> dict[int, int]:
    """CPU ticks (utime + stime) of every PostgreSQL backend connected to ``database``,
    by pid: a backend's title (its cmdline) is ``postgres: USER DATABASE HOST(PORT) ...``.
    Backends of other databases (other users of a shared server) are left out."""
    out: dict[int, int] = {}
    want = f" {database} ".encode()
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if cmd.startswith(b"postgres: ") and want in cmd:
            t = _ticks(int(entry.name))
            if t is not None:
                out[int(entry.name)] = t
    return out


def pg_backends_delta_s(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU seconds the backends spent between two :func:`pg_backends` samples. A backend
    that exited in between is missed (the gateway keeps a pool, so few do); one that
    started counts whole."""
    return sum(t - before.get(pid, 0) for pid, t in after.items()) / CLK_TCK


class RssSampler:
    """The largest VmRSS of a process tree (summed, and of its largest process) seen while
    a load runs, sampled every ``every_s`` on a thread: memory under load, not at rest."""

    def __init__(self, root: int, every_s: float = 0.5) -> None:
        import threading

        self.root, self.every_s = root, every_s
        self.tree_mb = self.largest_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.tree_mb = max(self.tree_mb, rss_mb(self.root))
            self.largest_mb = max(self.largest_mb, largest_rss_mb(self.root))
