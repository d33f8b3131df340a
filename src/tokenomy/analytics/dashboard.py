"""The dashboard: gather every view for a date range, render one HTML page of SVG charts.

The page is self-contained (inline CSS, SVG drawn on the server, a few lines of script
for the live queue depth), so it works with no network and on any screen size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from importlib import resources
from typing import Any

from sqlalchemy import Engine

from tokenomy.analytics import agents_panel, batch_panel, charts, queries
from tokenomy.analytics.formatting import compact, money, money_compact, money_map, ms, pct
from tokenomy.analytics.insights import REFERENCE, growth, milestones, savings
from tokenomy.analytics.queries import EVERYONE, Scope
from tokenomy.analytics.rollup import DAY
from tokenomy.billing.catalog import PriceBook
from tokenomy.billing.fx import FxTable

#: Models drawn separately in the stacked chart; the rest are "other".
TOP_MODELS = 7


@dataclass
class View:
    """Everything the page shows, for one scope and date range."""

    start_ms: int
    end_ms: int
    scope: Scope
    hourly: bool
    buckets: list[int]
    totals: dict[str, Any]
    by_model: list[tuple[str, dict[int, float]]]
    errors: list[tuple[str, dict[int, float]]]
    savings: dict[str, Any]
    vendors: list[dict[str, Any]]
    countries: list[dict[str, Any]]
    orgs: list[dict[str, Any]]
    keys: list[dict[str, Any]]
    latency: list[dict[str, Any]]
    growth: dict[str, Any]
    ranking: list[dict[str, Any]]
    milestones: list[dict[str, Any]]
    names: Mapping[str, str] = field(default_factory=dict)
    batches: batch_panel.BatchPanel | None = None
    #: The agent-work panel's data (see ``agents_panel``).
    agents: dict[str, Any] = field(default_factory=dict)


def collect(
    engine: Engine,
    start_ms: int,
    end_ms: int,
    *,
    book: PriceBook,
    fx: FxTable,
    scope: Scope = EVERYONE,
    reference: tuple[str, str] = REFERENCE,
    names: Mapping[str, str] | None = None,
) -> View:
    hourly = end_ms - start_ms <= 3 * DAY
    gran = "hour" if hourly else "day"
    size = queries.GRANULARITIES[gran][1]
    buckets = list(range(queries.align(start_ms, size), end_ms, size))
    rows = queries.usage(
        engine, start_ms, end_ms, granularity=gran, group_by=["model"], scope=scope
    )
    per_model: dict[str, int] = {}
    for r in rows:
        per_model[r["model"]] = per_model.get(r["model"], 0) + r["total_tokens"]
    top = sorted(per_model, key=lambda m: -per_model[m])[:TOP_MODELS]
    series: dict[str, dict[int, float]] = {m: {} for m in top}
    for r in rows:
        s = series.setdefault(r["model"] if r["model"] in top else "other", {})
        s[r["bucket_ms"]] = s.get(r["bucket_ms"], 0) + r["total_tokens"]
    status_rows = queries.usage(
        engine, start_ms, end_ms, granularity=gran, group_by=["status"], scope=scope
    )
    errors: dict[str, dict[int, float]] = {}
    for r in status_rows:
        if r["status"] != "ok":
            errors.setdefault(r["status"], {})[r["bucket_ms"]] = r["requests"]
    admin = scope == EVERYONE
    return View(
        start_ms=start_ms,
        end_ms=end_ms,
        scope=scope,
        hourly=hourly,
        buckets=buckets,
        totals=queries.totals(engine, start_ms, end_ms, scope=scope),
        by_model=list(series.items()),
        errors=sorted(errors.items()),
        savings=savings(
            engine, start_ms, end_ms, book=book, fx=fx, reference=reference, scope=scope
        ),
        vendors=queries.market_share(engine, start_ms, end_ms, by="vendor", scope=scope),
        countries=queries.market_share(engine, start_ms, end_ms, by="country", scope=scope),
        orgs=queries.leaders(engine, start_ms, end_ms, "org_id", scope=scope) if admin else [],
        keys=queries.leaders(engine, start_ms, end_ms, "key_id", scope=scope),
        latency=queries.latency(engine, start_ms, end_ms, granularity=gran, scope=scope),
        growth=growth(engine, end_ms, scope=scope),
        ranking=queries.top_models(
            engine, end_ms - 7 * DAY, end_ms, period="week", limit=8, scope=scope
        ),
        milestones=milestones(engine, scope=scope, end_ms=end_ms)[:8] if admin else [],
        names=names or {},
        batches=batch_panel.collect(engine, start_ms, end_ms, buckets, scope),
        agents=agents_panel.collect(engine, start_ms, end_ms, book=book, scope=scope),
    )


def _date(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


def _card(title: str, body: str, chart: str = "", wide: bool = False, note: str = "") -> str:
    cls = "card wide" if wide else "card"
    data = f' data-chart="{chart}"' if chart else ""
    sub = f'<p class="note">{escape(note)}</p>' if note else ""
    return f'<section class="{cls}"{data}><h2>{escape(title)}</h2>{sub}{body}</section>'


def _kpi(label: str, value: str, sub: str = "", ident: str = "") -> str:
    i = f' id="{ident}"' if ident else ""
    return (
        f'<div class="kpi"><div class="kpi-label">{escape(label)}</div>'
        f'<div class="kpi-value"{i}>{escape(value)}</div>'
        f'<div class="kpi-sub">{escape(sub)}</div></div>'
    )


def _table(
    head: list[str],
    rows: list[list[str]],
    bars: list[float] | None = None,
    *,
    left: int = 1,
    marks: list[str] | None = None,
) -> str:
    """An HTML table; the first ``left`` columns are text, the rest numbers. ``marks`` are
    HTML put before each row's first cell (colour swatches)."""
    if not rows:
        return '<p class="empty-note">No data yet</p>'

    def cls(j: int) -> str:
        return "" if j < left else ' class="num"'

    th = "".join(f"<th{cls(j)}>{escape(h)}</th>" for j, h in enumerate(head))
    body = []
    for i, r in enumerate(rows):
        mark = marks[i] if marks else ""
        cells = "".join(
            f"<td{cls(j)}>{mark if j == 0 else ''}{escape(c)}</td>" for j, c in enumerate(r)
        )
        bar = ""
        if bars:
            bar = f' style="--w:{max(0.0, min(1.0, bars[i])) * 100:.1f}%"'
        body.append(f'<tr class="barrow"{bar}>{cells}</tr>')
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _share(items: list[dict[str, Any]], label: str) -> str:
    pairs = [(i["name"], float(i["tokens"])) for i in items[:8]]
    shares = [i["share"] for i in items[:8]]
    rest = items[8:]
    if rest:
        pairs.append(("other", float(sum(i["tokens"] for i in rest))))
        shares.append(sum(i["share"] for i in rest))
    chart = charts.donut(label, pairs, compact)
    rows = [[n, compact(v), pct(sh)] for (n, v), sh in zip(pairs, shares, strict=True)]
    marks = [charts.swatch(i, n) for i, (n, _) in enumerate(pairs)]
    table = _table(["", "tokens", "share"], rows, marks=marks)
    return f'<div class="split">{chart}<div>{table}</div></div>'


def _kpis(view: View, queue_depth: int) -> str:
    t, sv, g = view.totals, view.savings, view.growth
    cur = sv["currency"] or "USD"
    ref_model = sv["reference"].split("/", 1)[-1]
    err_rate = t["errors"] / t["requests"] if t["requests"] else None
    lat = t.get("latency_ms") or {}
    ratio = f"{sv['ratio']:.1f}× cheaper" if sv["ratio"] else "no priced usage"
    doubling = f"{g['doubling_days']:.0f} days" if g["doubling_days"] else "–"
    return "".join(
        [
            _kpi("Tokens", compact(t["total_tokens"]), f"{compact(t['requests'])} requests",
                 "kpi-tokens"),
            _kpi("Spend", money_map(t["cost_nanos"]), "in each billing currency", "kpi-spend"),
            _kpi(f"Saved vs {ref_model}", money(sv["saved_nanos"], cur), ratio, "kpi-saved"),
            _kpi("Growth", pct(g["week_over_week"], True),
                 f"week over week · day {pct(g['day_over_day'], True)}", "kpi-growth"),
            _kpi("Doubling time", doubling, "of daily tokens (last 28 days)"),
            _kpi("Errors", pct(err_rate), f"p50 {ms(lat.get('p50'))} · p99 {ms(lat.get('p99'))}",
                 "kpi-errors"),
            _kpi("Queue depth", str(queue_depth), "waiting now (live)", "kpi-queue"),
        ]
    )  # fmt: skip


def _chart_cards(view: View) -> list[str]:
    sv, b, hourly = view.savings, view.buckets, view.hourly
    cur = sv["currency"] or "USD"
    ref_model = sv["reference"].split("/", 1)[-1]
    tokens = charts.stacked_bars(
        "Tokens by model", b, view.by_model, compact, hourly=hourly, size=charts.WIDE
    )
    actual = {d["day_ms"]: float(d["actual_nanos"]) for d in sv["by_day"]}
    ref = {d["day_ms"]: float(d["reference_nanos"]) for d in sv["by_day"]}
    days = list(range(view.start_ms - view.start_ms % DAY, view.end_ms, DAY))
    ref_name = f"at {ref_model} prices"

    def money_axis(v: float) -> str:
        return money_compact(v, cur)

    spend = charts.stacked_bars(
        "Spend per day", days, [("spend", actual)], money_axis, line=(ref_name, ref)
    )
    lat: list[tuple[str, Mapping[int, float | None]]] = [
        (f"latency {q}", {r["bucket_ms"]: r["latency_ms"][q] for r in view.latency})
        for q in ("p50", "p90", "p99")
    ]
    lat.append(("TTFT p50", {r["bucket_ms"]: r["ttft_ms"]["p50"] for r in view.latency}))
    lat_chart = charts.lines("Latency percentiles", b, lat, ms, hourly=hourly, log=True)
    errors = '<p class="empty-note ok">No errors in this range</p>'
    if view.errors:
        errors = charts.stacked_bars("Errors", b, view.errors, compact, hourly=hourly)
        errors += charts.legend([n for n, _ in view.errors])
    pairs = [
        (m["model"], float(m["actual_nanos"]), float(m["reference_nanos"]))
        for m in sv["by_model"][:8]
    ]
    saved_chart = charts.paired_hbars("Paid against the reference, by model", pairs, money_axis)
    big = (
        f'<p class="big">{escape(money(sv["saved_nanos"], cur))} saved<span>'
        f"{escape(money(sv['actual_nanos'], cur))} paid · "
        f"{escape(money(sv['reference_nanos'], cur))} {escape(ref_name)}</span></p>"
    )
    per = "hour" if hourly else "day"
    spend_key = charts.legend(["paid", ref_name], [charts.PALETTE[0], "dash"])
    saved_key = charts.legend(["paid", ref_name], [charts.PALETTE[0], charts.OTHER_COLOR])
    return [
        _card(f"Tokens per {per}, by model",
              tokens + charts.legend([n for n, _ in view.by_model]), "tokens", wide=True),
        _card("Spend per day", spend + spend_key, "spend",
              note=f"in {cur}; other currencies converted at the day's rate"),
        _card(f"Savings vs {ref_model}", big + saved_chart + saved_key,
              "savings"),
        _card("Share by vendor", _share(view.vendors, "Share by vendor"), "vendors"),
        _card("Share by vendor country", _share(view.countries, "Share by country"),
              "countries"),
        _card("Latency percentiles", lat_chart + charts.legend([n for n, _ in lat]), "latency"),
        _card("Errors", errors, "errors"),
    ]  # fmt: skip


def _ranked(rows: list[dict[str, Any]], dim: str, names: Mapping[str, str]) -> str:
    top = max([r["total_tokens"] for r in rows] or [1]) or 1
    cells = [
        [names.get(r[dim], r[dim] or "(none)"), compact(r["total_tokens"]),
         money_map(r["cost_nanos"])]
        for r in rows
    ]  # fmt: skip
    label = "organisation" if dim == "org_id" else "key"
    bars = [r["total_tokens"] / top for r in rows]
    return _table([label, "tokens", "spend"], cells, bars)


def _table_cards(view: View, admin: bool) -> list[str]:
    names = view.names
    last_week = max((r["bucket_ms"] for r in view.ranking), default=None)
    rank_rows = [
        [str(r["rank"] or "–"), r["model"], compact(r["tokens"]), pct(r["share"])]
        for r in view.ranking
        if r["bucket_ms"] == last_week
    ]
    ms_rows = [
        [names.get(o["org_id"], o["org_id"] or "(none)"), compact(o["total_tokens"]),
         *(_date(d) if d else "–" for d in o["crossed"].values())]
        for o in view.milestones
    ]  # fmt: skip
    cards = []
    if admin:
        cards.append(_card("Top organisations", _ranked(view.orgs, "org_id", names)))
    cards.append(_card("Top keys", _ranked(view.keys, "key_id", names)))
    cards.append(
        _card(
            "Model ranking, last 7 days",
            _table(["#", "model", "tokens", "share"], rank_rows, left=2),
        )
    )
    if admin:
        head = ["organisation", "tokens", "1 billion", "1 trillion"]
        cards.append(_card("Milestones", _table(head, ms_rows), note="cumulative tokens"))
    return cards


def render(
    view: View,
    *,
    queue_depth: int = 0,
    admin: bool = True,
    extra: Sequence[tuple[str, str, str]] = (),
) -> str:
    """The whole page for ``view``; ``extra`` cards (title, body, chart id) follow the
    charts."""
    key = view.scope.key_id or ""
    scope = "all organisations" if admin else f"key {view.names.get(key, key)}"
    return _PAGE.format(
        css=_css(),
        scope=escape(scope),
        start=_date(view.start_ms),
        end=_date(view.end_ms - 1),
        kpis=_kpis(view, queue_depth),
        cards="".join(
            _chart_cards(view)
            + _batch_cards(view)
            + [_card(t, b, c, wide=True) for t, b, c in extra]
            + _table_cards(view, admin)
        )
        + (agents_panel.render(view.agents) if view.agents else ""),
        script=_SCRIPT,
    )


def _batch_cards(view: View) -> list[str]:
    if view.batches is None:
        return []
    return [batch_panel.render(view.batches, view.buckets, view.hourly)]


def _css() -> str:
    return resources.files("tokenomy.analytics").joinpath("static/dashboard.css").read_text()


def login_page(error: str = "", after: str = "") -> str:
    """The sign-in form; ``after`` is the dashboard query to return to once signed in."""
    err = f'<p class="error">{escape(error)}</p>' if error else ""
    return _LOGIN.format(css=_css(), error=err, after=escape(after))


_SCRIPT = """
(function () {
  var el = document.getElementById("kpi-queue");
  function tick() {
    fetch("/dashboard/live", {credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (d) { if (d && el) { el.textContent = String(d.queue_depth); } })
      .catch(function () {});
  }
  setInterval(tick, 5000);
})();
"""

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>tokenomy · usage</title><style>{css}</style></head>
<body>
<header>
  <div class="brand"><span class="logo">◆</span> tokenomy <span class="scope">{scope}</span></div>
  <form class="range" method="get" action="/dashboard">
    <label>From <input type="date" name="start" id="start" value="{start}"></label>
    <label>To <input type="date" name="end" id="end" value="{end}"></label>
    <button type="submit" id="apply">Apply</button>
    <span class="presets"><a href="?days=7">7d</a><a href="?days=30">30d</a>
      <a href="?days=90">90d</a></span>
  </form>
</header>
<main>
<div class="kpis">{kpis}</div>
<div class="grid">{cards}</div>
</main>
<footer>Tokens are input + output (input includes cached, output includes reasoning).
Times in UTC. <a href="/dashboard/logout">Sign out</a></footer>
<script>{script}</script>
</body></html>
"""

_LOGIN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>tokenomy · sign in</title><style>{css}</style></head>
<body class="login">
<form class="login-box" method="post" action="/dashboard/login">
  <div class="brand"><span class="logo">◆</span> tokenomy</div>
  <p>Sign in with the admin key to see everyone's usage, or an API key to see its own.</p>
  {error}
  <input type="hidden" name="next" value="{after}">
  <input type="password" name="key" placeholder="tk-…" autocomplete="current-password" required>
  <button type="submit">Open dashboard</button>
</form>
</body></html>
"""

QueueDepth = Callable[[], int]
