"""The dashboard in headless Chromium: offline, every chart drawn, the date picker works,
no console errors, readable on a laptop and a phone. Screenshots go to test-artifacts/."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import ADMIN_KEY
from tests.servers import ThreadServer
from tests.test_batches_openai import chat_line, jsonl, upload, wait_ended
from tests.test_usage_api import NOW_MS, AnalyticsGateway, start_analytics_gateway
from tokenomy.analytics.rollup import DAY
from tokenomy.api import usage_routes

CHROMIUM = "/usr/lib/chromium/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
MARKS = "rect.bar, path.slice, circle.slice, polyline.line, circle.dot"


def _need(what: str) -> None:
    reason = f"{what} is not installed (make browser-deps; pip install playwright)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need("playwright")
    if not os.path.exists(CHROMIUM):
        _need("chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def dash(sim: ThreadServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnalyticsGateway]:
    gw = start_analytics_gateway(sim.url, tmp_path_factory.mktemp("dash"), days=45)
    run_batch(gw)
    yield gw
    gw.server.stop()


def run_batch(gw: AnalyticsGateway) -> None:
    """A real batch through the gateway, for the batch panel (a house key: priced, not
    charged)."""
    secret, rec = gw.services.keys.create("batch")
    gw.services.key_cache.put(secret, rec)
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key=secret, max_retries=0)
    lines = [chat_line(i, model="gpt-5.4-mini") for i in range(12)]
    b = c.batches.create(
        input_file_id=upload(c, jsonl(lines)),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    assert wait_ended(c, b.id).status == "completed"


class Page:
    """A page whose every request outside the gateway is refused and remembered."""

    def __init__(self, browser: Any, base: str, **ctx: Any) -> None:
        self.context = browser.new_context(**ctx)
        self.outside: list[str] = []
        self.console: list[str] = []

        def route(r: Any) -> None:
            if r.request.url.startswith(base) or r.request.url.startswith("data:"):
                r.continue_()
            else:
                self.outside.append(r.request.url)
                r.abort()

        self.context.route("**/*", route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.console.append(m.text))
        self.page.on("pageerror", lambda e: self.console.append(str(e)))

    def close(self) -> None:
        self.context.close()


def _ymd(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


def _sign_in(page: Any, url: str, key: str) -> None:
    """Open ``url``, get the sign-in form, and post ``key`` through it."""
    resp = page.goto(url)
    assert resp is not None and resp.ok
    page.fill("input[name=key]", key)
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert page.locator("input[name=key]").count() == 0, "not signed in"


def test_a_login_link_does_not_sign_the_browser_in(browser: Any, dash: AnalyticsGateway) -> None:
    p = Page(browser, dash.url, viewport={"width": 1280, "height": 800})
    page = p.page
    resp = page.goto(f"{dash.url}/dashboard?key={ADMIN_KEY}&days=45")
    assert resp is not None and resp.status == 200
    assert page.locator("input[name=key]").count() == 1
    assert page.get_by_text("Top organisations").count() == 0
    assert p.context.cookies() == []
    p.close()


def test_dashboard_renders_offline_and_the_picker_changes_it(
    browser: Any, dash: AnalyticsGateway
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    p = Page(browser, dash.url, viewport={"width": 1440, "height": 900})
    page = p.page
    _sign_in(page, f"{dash.url}/dashboard?days=45", ADMIN_KEY)
    assert page.url == f"{dash.url}/dashboard?days=45"  # back to the view asked for
    page.wait_for_load_state("networkidle")
    cards = page.locator("section[data-chart]")
    assert cards.count() == 8
    for i in range(cards.count()):
        card = cards.nth(i)
        name = card.get_attribute("data-chart")
        assert card.locator("svg.chart").count() >= 1, name
        assert card.locator(MARKS).count() > 0, f"{name} has no data drawn"
        assert card.locator("text.empty").count() == 0, name
        box = card.locator("svg.chart").first.bounding_box()
        assert box is not None and box["width"] > 150 and box["height"] > 80, name
    batches = page.locator("section[data-chart=batches]")
    assert "saved" in batches.locator("p.big").inner_text()
    assert batches.locator("tbody tr").count() == 1
    assert "12/12" in batches.locator("tbody").inner_text()
    assert batches.locator("svg.chart").count() == 2
    bars_before = page.locator("section[data-chart=tokens] rect.bar").count()
    tokens_before = page.locator("#kpi-tokens").inner_text()
    page.screenshot(path=str(ARTIFACTS / "dashboard-desktop.png"), full_page=True)

    # The date picker: the last two days only (hourly buckets, fewer tokens).
    last = NOW_MS - NOW_MS % DAY
    page.fill("#start", _ymd(last - DAY))
    page.fill("#end", _ymd(last))
    with page.expect_navigation():
        page.click("#apply")
    page.wait_for_load_state("networkidle")
    assert f"start={_ymd(last - DAY)}" in page.url
    assert page.input_value("#start") == _ymd(last - DAY)
    assert page.locator("#kpi-tokens").inner_text() != tokens_before
    assert "per hour" in page.locator("section[data-chart=tokens] h2").inner_text()
    assert page.locator("section[data-chart=tokens] rect.bar").count() != bars_before
    assert page.locator("section[data-chart=tokens] " + MARKS).count() > 0
    page.screenshot(path=str(ARTIFACTS / "dashboard-two-days.png"), full_page=True)
    assert p.outside == [] and p.console == []
    p.close()


def test_dashboard_on_a_phone(browser: Any, dash: AnalyticsGateway) -> None:
    p = Page(
        browser,
        dash.url,
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    page = p.page
    _sign_in(page, f"{dash.url}/dashboard?days=30", ADMIN_KEY)
    page.wait_for_load_state("networkidle")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, "the page scrolls sideways on a phone"
    widths = page.eval_on_selector_all(
        "section.card", "els => els.map(e => e.getBoundingClientRect().width)"
    )
    assert widths and all(330 <= w <= 390 for w in widths)  # one column, full width
    assert page.locator("section[data-chart] " + MARKS).count() > 50
    page.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
    assert p.outside == [] and p.console == []
    p.close()


def test_login_form_and_a_keys_own_view(browser: Any, dash: AnalyticsGateway) -> None:
    secret, rec = dash.services.keys.create("browser", org_id="org_hist_acme")
    dash.services.key_cache.put(secret, rec)
    p = Page(browser, dash.url, viewport={"width": 1280, "height": 800})
    page = p.page
    page.goto(f"{dash.url}/dashboard")
    assert page.locator("input[name=key]").count() == 1
    page.fill("input[name=key]", "wrong")
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert "not accepted" in page.content()
    assert all("401" in m for m in p.console)  # the refused sign-in, and nothing else
    p.console.clear()
    page.fill("input[name=key]", secret)
    with page.expect_navigation():
        page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")
    assert f"key {rec.id}" in page.locator("header").inner_text()
    assert page.get_by_text("Top organisations").count() == 0
    # The browser holds a signed session, never the key, and scripts cannot read it.
    (cookie,) = p.context.cookies()
    assert cookie["name"] == usage_routes.COOKIE and secret not in cookie["value"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/dashboard"
    assert page.evaluate("document.cookie") == ""
    page.screenshot(path=str(ARTIFACTS / "dashboard-key-view.png"), full_page=True)
    # The live tile polls the gateway without errors.
    page.wait_for_timeout(5500)
    assert page.locator("#kpi-queue").inner_text() == "0"
    assert p.outside == [] and p.console == [], p.console
    # Revoking the key ends the session on the next page load.
    assert dash.services.keys.revoke(rec.id)
    page.reload()
    assert "session has ended" in page.content()
    assert page.locator("input[name=key]").count() == 1
    assert p.context.cookies() == []
    p.close()


def test_agent_work_panel(browser: Any, dash: AnalyticsGateway) -> None:
    """Tasks run through the gateway show in the agent panel: their band, the costliest
    task, the cache hit rate of the model they re-read their context on, the money saved."""
    import openai

    from tokenomy.analytics.formatting import money_map

    secret, rec = dash.services.keys.create("agents", org_id="org_hist_globex")
    dash.services.key_cache.put(secret, rec)
    c = openai.OpenAI(base_url=dash.url + "/v1", api_key=secret, max_retries=0)
    context = " ".join(f"ctx{i % 89}" for i in range(1800))
    for _ in range(6):  # one task re-reading a long context: cached from the second call
        c.chat.completions.create(
            model="deepseek-chat",
            messages=[{"role": "user", "content": context}],
            max_tokens=16,
            extra_headers={"X-Tokenomy-Task": "browser-agent"},
        )
    c.chat.completions.create(
        model="gpt-5.4-mini",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=8,
        extra_headers={"X-Tokenomy-Task": "browser-quick"},
    )
    dash.server.call(dash.services.usage_writer.flush())
    p = Page(browser, dash.url, viewport={"width": 1440, "height": 900})
    page = p.page
    _sign_in(page, f"{dash.url}/dashboard?days=30", ADMIN_KEY)
    page.wait_for_load_state("networkidle")
    panel = page.locator("section[data-panel=agents]")
    assert panel.count() == 1 and "Agent work" in panel.locator("h2").inner_text()
    assert panel.locator("svg.chart " + MARKS).count() == 2  # two bands hold tasks
    bands = panel.locator("table.agents-bands tbody tr")
    cells = [bands.nth(i).locator("td").all_inner_texts() for i in range(bands.count())]
    assert [r[:2] for r in cells] == [["<10K", "1"], ["10K-100K", "1"], ["100K-1M", "0"],
                                      [">1M", "0"]]  # fmt: skip
    top = panel.locator("table.agents-top tbody tr").first.locator("td").all_inner_texts()
    assert top[0] == "browser-agent" and top[1] == "6" and top[3] != "0.0%"
    hits = panel.locator("table.agents-hits").inner_text()
    assert "deepseek-chat · deepseek" in hits
    saved = panel.locator("#agents-saved").inner_text()
    api = dash.get("/v1/usage", view="cache", days=30).json()["data"]
    assert api["saved_nanos"]["USD"] > 0
    assert saved.startswith(money_map(api["saved_nanos"]) + " saved by prompt caching")
    panel.screenshot(path=str(ARTIFACTS / "dashboard-agents.png"))
    assert p.outside == [] and p.console == []
    p.close()
    # On a phone the panel scrolls inside itself: the page never scrolls sideways.
    p = Page(browser, dash.url, viewport={"width": 390, "height": 844}, is_mobile=True)
    _sign_in(p.page, f"{dash.url}/dashboard?days=30", ADMIN_KEY)
    overflow = p.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1
    p.close()
