"""The dashboard's panel on agent work: tasks per band of tokens, the costliest tasks,
prompt-cache hit rates by model and vendor, and what prompt caching saved."""

from __future__ import annotations

from html import escape
from typing import Any

from sqlalchemy import Engine

from tokenomy.analytics import agents, charts
from tokenomy.analytics.formatting import compact, money_map, pct
from tokenomy.analytics.queries import EVERYONE, Scope
from tokenomy.billing.catalog import PriceBook

#: Rows shown in each of the panel's tables.
ROWS = 8


def collect(
    engine: Engine, start_ms: int, end_ms: int, *, book: PriceBook, scope: Scope = EVERYONE
) -> dict[str, Any]:
    """The panel's data: the ``tasks`` and ``cache`` views of ``/v1/usage``."""
    return {
        "tasks": agents.tasks_view(engine, start_ms, end_ms, limit=ROWS, scope=scope),
        "cache": agents.cache_view(engine, start_ms, end_ms, book=book, scope=scope),
    }


def _table(head: list[str], rows: list[list[str]], cls: str) -> str:
    if not rows:
        return f'<p class="empty-note {cls}">No data yet</p>'
    num = ' class="num"'
    th = "".join(f"<th{'' if j == 0 else num}>{escape(h)}</th>" for j, h in enumerate(head))
    body = "".join(
        "<tr>"
        + "".join(f"<td{'' if j == 0 else num}>{escape(c)}</td>" for j, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    # Scrolls inside the card rather than widening the page on a phone.
    return (
        f'<div style="overflow-x:auto"><table class="{cls}"><thead><tr>{th}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def render(data: dict[str, Any]) -> str:
    """The panel as one wide card (empty notes where there is nothing to show)."""
    tasks, cache = data["tasks"], data["cache"]
    bands = tasks["bands"]
    donut = charts.donut(
        "Tasks by tokens", [(b["band"], float(b["tasks"])) for b in bands], compact
    )
    band_rows = [
        [b["band"], str(b["tasks"]), compact(b["total_tokens"]), money_map(b["cost_nanos"])]
        for b in bands
    ]
    top_rows = [
        [t["task_id"], str(t["calls"]), compact(t["total_tokens"]), pct(t["cache_hit_rate"]),
         money_map(t["cost_nanos"])]
        for t in tasks["top_tasks"]
    ]  # fmt: skip
    hit_rows = [
        [f"{r['model']} · {r['vendor'] or '?'}", compact(r["input_tokens"]),
         compact(r["cached_tokens"]), pct(r["hit_rate"])]
        for r in cache["by_model"][:ROWS]
    ]  # fmt: skip
    saved = money_map(cache["saved_nanos"])
    big = (
        f'<p class="big" id="agents-saved">{escape(saved)} saved by prompt caching<span>'
        f"{escape(pct(cache['hit_rate']))} of input tokens read from cache · "
        f"{escape(money_map(cache['write_premium_nanos']))} paid above input price for "
        "cache writes</span></p>"
    )
    body = (
        big
        + '<div class="split">'
        + donut
        + "<div>"
        + _table(["tokens per task", "tasks", "tokens", "spend"], band_rows, "agents-bands")
        + "</div></div>"
        + "<h3>Costliest tasks</h3>"
        + _table(["task", "calls", "tokens", "cache hits", "spend"], top_rows, "agents-top")
        + "<h3>Cache hit rate by model and vendor</h3>"
        + _table(["model · vendor", "input", "cached", "hit rate"], hit_rows, "agents-hits")
    )
    note = "tasks are the calls naming one X-Tokenomy-Task (or metadata.task_id)"
    return (
        '<section class="card wide" data-panel="agents"><h2>Agent work</h2>'
        f'<p class="note">{escape(note)}</p>{body}</section>'
    )
