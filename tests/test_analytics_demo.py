"""The demo's seeded history: a simulated standby's usage counts under the vendor it
stands in for (and that vendor's country), while its deployment still names the simulator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from tests.conftest import ADMIN_KEY
from tests.servers import ThreadServer
from tokenomy.app import app_for
from tokenomy.cli.demo_history import seed_history
from tokenomy.config import DatabaseConfig, default_config_text, parse_config
from tokenomy.services import build_services
from tokenomy.store.schema import usage_events

SIM_URL_REF = "${TOKENOMY_SIM_URL:-http://127.0.0.1:8001/v1}"
#: Home countries of the vendors the default config's standbys stand in for.
COUNTRY = {
    "deepseek": "CN",
    "qwen": "CN",
    "zhipu": "CN",
    "minimax": "CN",
    "moonshot": "CN",
    "volcengine": "CN",
    "openai": "US",
    "anthropic": "US",
}


def test_seeded_standby_usage_counts_under_the_stood_in_vendor(
    sim: ThreadServer, tmp_path: Path
) -> None:
    assert SIM_URL_REF in default_config_text()
    text = default_config_text().replace(SIM_URL_REF, f"{sim.url}/v1")
    cfg = parse_config(text, "<default config>")
    db = DatabaseConfig(url=f"sqlite:///{tmp_path / 'demo.db'}")
    cfg = cfg.model_copy(update={"database": db})
    # No vendor keys: every real vendor's model is served by its simulated standby.
    svc = build_services(cfg, {"TOKENOMY_ADMIN_KEY": ADMIN_KEY})
    stood_in = {
        f"{d.vendor}/{d.model}": (d.price or "").split("/")[0]
        for m in cfg.models
        for d in m.deployments
        if d.standby
    }
    srv = ThreadServer(lambda: app_for(svc, rollup_interval_s=0.2)).start()
    try:
        srv.call(seed_history(3, svc, calls_per_day=60, seed=2), timeout=300)
        with svc.engine.connect() as conn:
            events = [dict(r._mapping) for r in conn.execute(select(usage_events))]
        served = [e for e in events if e["deployment"] in stood_in]
        assert len({e["vendor"] for e in served}) >= 4
        for e in served:  # the vendor stood in for; the deployment still says simulator
            assert e["vendor"] == stood_in[e["deployment"]], e
            assert e["deployment"].split("/")[0] in ("sim", "sim-anthropic")
        simulator = [e for e in events if e["vendor"] in ("sim", "sim-anthropic")]
        assert all(e["model"].startswith("sim-") for e in simulator)  # its own models only

        def share(by: str) -> dict[str, int]:
            r = httpx.get(
                f"{srv.url}/v1/usage",
                params={"view": "share", "by": by, "days": "4"},
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                timeout=30,
            )
            assert r.status_code == 200, r.text
            return {s["name"]: s["tokens"] for s in r.json()["data"]}

        def tokens(rows: list[dict[str, Any]]) -> int:
            return sum(e["input_tokens"] + e["output_tokens"] for e in rows)

        vendors = share("vendor")
        for vendor in {e["vendor"] for e in served}:
            assert vendors[vendor] == tokens([e for e in served if e["vendor"] == vendor])
        countries = share("country")
        for country in ("CN", "US"):
            assert countries[country] == tokens(
                [e for e in served if COUNTRY[e["vendor"]] == country]
            )
        assert countries.get("XX", 0) == tokens(simulator)  # only the simulator's own models
    finally:
        srv.stop()
