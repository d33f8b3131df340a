"""Prometheus metrics: a small registry the request path bumps, rendered as text.

No client library: the gateway needs a handful of counters and two histograms, and a
dict update per request is cheaper than a general-purpose registry. Names follow the
Prometheus conventions (``_total`` counters, base units, ``_seconds``). Under several
workers each one's values are shared at scrape time (``analytics.metrics_share``).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

#: Histogram upper bounds in seconds (Prometheus ``le``), +Inf implied.
SECONDS_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
TOKEN_TYPES: Final = (
    ("input", "input_tokens"),
    ("cached", "cached_tokens"),
    ("cache_write", "cache_write_tokens"),
    ("output", "output_tokens"),
    ("reasoning", "reasoning_tokens"),
)

Labels = tuple[str, ...]
#: Every value of a registry as plain data: see ``Metrics.snapshot``.
Snapshot = dict[str, Any]


class _Histogram:
    __slots__ = ("count", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(SECONDS_BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(SECONDS_BUCKETS, seconds)] += 1
        self.sum += seconds
        self.count += 1


def _histogram(hs: dict[Labels, _Histogram], labels: Labels) -> _Histogram:
    """The histogram of ``labels``, made on first use (not one per call, as setdefault's
    argument would be)."""
    h = hs.get(labels)
    if h is None:
        h = hs[labels] = _Histogram()
    return h


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: Labels, values: Labels, extra: str = "") -> str:
    parts = [f'{n}="{_esc(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


class Metrics:
    """Counters by model and vendor, latency and TTFT histograms, and callback gauges."""

    def __init__(self) -> None:
        self.requests: dict[Labels, int] = {}
        self.tokens: dict[Labels, int] = {}
        self.spend: dict[Labels, int] = {}
        self.upstream_errors: dict[Labels, int] = {}
        self.retries: dict[Labels, int] = {}
        #: Calls charged above their hold, and by how much (charged in full all the same).
        self.overruns: dict[Labels, int] = {}
        self.overrun_nanos: dict[Labels, int] = {}
        self.latency: dict[Labels, _Histogram] = {}
        self.ttft: dict[Labels, _Histogram] = {}
        self._gauges: dict[str, tuple[str, str, Callable[[], float]]] = {}
        #: Adds the other workers' values to this one's at scrape time (several workers).
        self.peers: Callable[[Snapshot], Snapshot] | None = None

    def observe(self, row: Mapping[str, Any]) -> None:
        """Count one finished request from its usage event row (``gateway.records``: every
        column is there, so each is read by subscript, once)."""
        model, vendor, status = row["model"] or "", row["vendor"] or "", row["status"]
        mv = (model, vendor)
        k = (model, vendor, status)
        requests = self.requests
        requests[k] = requests.get(k, 0) + 1
        tokens = self.tokens
        for name, col in TOKEN_TYPES:
            n = row[col]
            if n:
                tk = (model, vendor, name)
                tokens[tk] = tokens.get(tk, 0) + n
        cost = row["cost_nanos"]
        if cost:
            cur = row["currency"]
            if cur:
                ck = (model, vendor, cur)
                self.spend[ck] = self.spend.get(ck, 0) + cost
                held = row["held_nanos"]
                if held and cost > held:  # no hold (a house key) is no overrun
                    self.overruns[mv] = self.overruns.get(mv, 0) + 1
                    self.overrun_nanos[ck] = self.overrun_nanos.get(ck, 0) + cost - held
        if status != "ok" and status != "cancelled" and vendor:
            ek = (vendor, row["error_code"] or status)
            self.upstream_errors[ek] = self.upstream_errors.get(ek, 0) + 1
        attempts = row["attempts"]
        if attempts > 1:
            self.retries[(model,)] = self.retries.get((model,), 0) + attempts - 1
        _histogram(self.latency, mv).observe(row["latency_ms"] / 1000)
        ttft = row["ttft_ms"]
        if ttft is not None:
            _histogram(self.ttft, mv).observe(ttft / 1000)

    def gauge(self, name: str, help_: str, read: Callable[[], float], kind: str = "gauge") -> None:
        """Register a value read at scrape time (``kind`` counter for running totals)."""
        self._gauges[name] = (help_, kind, read)

    def snapshot(self) -> Snapshot:
        """Every value now, as plain data (JSON-ready): what ``render_snapshot`` draws and
        what workers of one server share (``analytics.metrics_share``)."""
        return {
            "counters": {
                name: [[*k, v] for k, v in getattr(self, attr).items()]
                for name, _, _, attr in COUNTERS
            },
            "histograms": {
                name: [[*k, h.counts, h.sum, h.count] for k, h in getattr(self, attr).items()]
                for name, _, attr in HISTOGRAMS
            },
            "gauges": {
                name: [help_, kind, float(read())]
                for name, (help_, kind, read) in self._gauges.items()
            },
        }

    def render(self) -> str:
        snap = self.snapshot()
        if self.peers is not None:
            snap = self.peers(snap)
        return render_snapshot(snap)


#: Counters: name, help, label names, the Metrics attribute holding them.
COUNTERS: Final = (
    ("tokenomy_requests_total", "Requests finished, by outcome.",
     ("model", "vendor", "status"), "requests"),
    ("tokenomy_tokens_total", "Tokens metered, by type.", ("model", "vendor", "type"), "tokens"),
    ("tokenomy_spend_nanos_total", "Amount charged, in nano-units (1e-9) of the currency.",
     ("model", "vendor", "currency"), "spend"),
    ("tokenomy_upstream_errors_total", "Requests that ended in an upstream or gateway error.",
     ("vendor", "code"), "upstream_errors"),
    ("tokenomy_retries_total", "Fallback attempts after a failed one.", ("model",), "retries"),
    ("tokenomy_ledger_overruns_total",
     "Calls whose cost came out above their hold (charged in full).",
     ("model", "vendor"), "overruns"),
    ("tokenomy_ledger_overrun_nanos_total",
     "Cost above holds, charged all the same, in nano-units of the currency.",
     ("model", "vendor", "currency"), "overrun_nanos"),
)  # fmt: skip
#: Histograms (labelled by model and vendor): name, help, the Metrics attribute.
HISTOGRAMS: Final = (
    ("tokenomy_request_duration_seconds", "Time from request to last byte.", "latency"),
    ("tokenomy_time_to_first_token_seconds", "Time from request to the first token.", "ttft"),
)


def merge_snapshots(snaps: Iterable[tuple[Snapshot, bool]]) -> Snapshot:
    """One snapshot of several processes' ``(snapshot, alive)``: counters and histograms
    add up (a dead process's counts still happened), and so do counter-kind gauges;
    gauge-kind values (queue depth, pending rows) only from processes still alive."""
    counters: dict[str, dict[Labels, int]] = {}
    hists: dict[str, dict[Labels, list[Any]]] = {}
    gauges: dict[str, list[Any]] = {}
    for snap, alive in snaps:
        for name, rows in snap["counters"].items():
            into = counters.setdefault(name, {})
            for *labels, v in rows:
                k = tuple(labels)
                into[k] = into.get(k, 0) + int(v)
        for name, rows in snap["histograms"].items():
            hinto = hists.setdefault(name, {})
            for row in rows:
                k, (counts, total, n) = tuple(row[:-3]), row[-3:]
                have = hinto.get(k)
                if have is None:
                    hinto[k] = [list(counts), float(total), int(n)]
                else:
                    have[0] = [a + b for a, b in zip(have[0], counts, strict=True)]
                    have[1] += float(total)
                    have[2] += int(n)
        for name, (help_, kind, value) in snap["gauges"].items():
            g = gauges.setdefault(name, [help_, kind, 0.0])
            if alive or kind == "counter":
                g[2] += float(value)
    return {
        "counters": {n: [[*k, v] for k, v in rows.items()] for n, rows in counters.items()},
        "histograms": {n: [[*k, *h] for k, h in rows.items()] for n, rows in hists.items()},
        "gauges": gauges,
    }


def render_snapshot(snap: Snapshot) -> str:
    """Prometheus text exposition of a snapshot."""
    out: list[str] = []
    for name, help_, names, _ in COUNTERS:
        out += [f"# HELP {name} {help_}", f"# TYPE {name} counter"]
        rows = sorted((tuple(r[:-1]), r[-1]) for r in snap["counters"].get(name, ()))
        out += [f"{name}{_labels(names, k)} {v}" for k, v in rows]
    for name, help_, _ in HISTOGRAMS:
        out += [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
        names = ("model", "vendor")
        for row in sorted(snap["histograms"].get(name, ()), key=lambda r: tuple(r[:-3])):
            k, (counts, total, n) = tuple(row[:-3]), row[-3:]
            cum = 0
            for le, c in zip((*map(_num, SECONDS_BUCKETS), "+Inf"), counts, strict=True):
                cum += c
                le_label = 'le="' + le + '"'
                out.append(f"{name}_bucket{_labels(names, k, le_label)} {cum}")
            out.append(f"{name}_sum{_labels(names, k)} {_num(total)}")
            out.append(f"{name}_count{_labels(names, k)} {n}")
    for name, (help_, kind, value) in sorted(snap["gauges"].items()):
        out += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {_num(value)}"]
    return "\n".join(out) + "\n"
