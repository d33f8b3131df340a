"""Placement of latency-tolerant work minimises what it costs: token price plus energy.

A deployment's token price is what its catalogue price charges for the call (at the batch
price for a batch call where there is one); a self-hosted deployment adds the energy the
call burns there (the region's kWh per million tokens x PUE x USD per kWh). A vendor's
power is in its price: cheaper power in its region saves nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import make_config
from tests.servers import ThreadServer
from tokenomy.app import app_for
from tokenomy.cli.main import main
from tokenomy.config import ConfigError, parse_config
from tokenomy.routing.power import Placement, Region, place
from tokenomy.services import build_services

MSG = [{"role": "user", "content": "hi"}]
# The test config's regions (tests/conftest.py): kWh per million tokens 0.4, PUE 1.2.
US_EAST = Region("us-east", Decimal("0.15"), Decimal("0.4"))
CN_WEST = Region("cn-west", Decimal("0.03"), Decimal("0.4"))

EXTRA = """
  - name: vendor-or-own-gpus
    deployments:
      # A vendor near by at sim-small's price (0.10 / 0.40 per million tokens) ...
      - {vendor: sim, model: vendor-near, region: us-east, price: sim/sim-small}
      # ... or our own GPUs on cheap power far away, billed at sim-large (2 / 8): 20x.
      - {vendor: sim-backup, model: gpu-far, region: cn-west, self_hosted: true,
         price: sim/sim-large}
  - name: own-gpus
    deployments:
      - {vendor: sim, model: gpu-east, region: us-east, self_hosted: true, price: house/gpu}
      - {vendor: sim-backup, model: gpu-west, region: cn-west, self_hosted: true,
         price: house/gpu-west}
  - name: batch-or-not
    deployments:
      # gpt-5-mini (0.25 / 2.00) has a batch price at half; MiniMax-M2.5 (0.30 / 1.20) none.
      - {vendor: sim, model: with-batch, price: openai/gpt-5-mini}
      - {vendor: sim-backup, model: no-batch, price: minimax/MiniMax-M2.5}
prices:
  - {vendor: house, model: gpu, currency: USD, status: confirmed, source: our own,
     as_of: "2026-12-01", versions: [{effective_from: "2026-01-01T00:00:00Z",
     prices: {input: "0.10", output: "0.40"}}]}
  # 0.02 per million dearer than gpu; its power is 0.0576 per million cheaper.
  - {vendor: house, model: gpu-west, currency: USD, status: confirmed, source: our own,
     as_of: "2026-12-01", versions: [{effective_from: "2026-01-01T00:00:00Z",
     prices: {input: "0.12", output: "0.42"}}]}
"""


class Own:
    def __init__(self, server: ThreadServer, key: str) -> None:
        self.server, self.key = server, key

    def chat(self, model: str, deadline: str | None = None, **body: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.key}"}
        if deadline is not None:
            headers["X-Tokenomy-Deadline"] = deadline
        r = httpx.post(
            self.server.url + "/v1/chat/completions",
            json={"model": model, "messages": MSG, "max_tokens": 64, **body},
            headers=headers,
            timeout=30,
        )
        assert r.status_code == 200, r.text
        return r


@pytest.fixture(scope="module")
def own(sim: ThreadServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Own]:
    cfg = make_config(sim.url, tmp_path_factory.mktemp("placement"), extra=EXTRA)
    svc = build_services(cfg, dict(os.environ))
    srv = ThreadServer(lambda: app_for(svc)).start()
    secret, rec = svc.keys.create("placement")
    svc.key_cache.put(secret, rec)
    yield Own(srv, secret)
    srv.stop()


def served(r: httpx.Response) -> str:
    return r.headers["x-tokenomy-deployment"]


def breakdown(r: httpx.Response) -> dict[str, str]:
    """The x-tokenomy-placement header as a dict."""
    parts = (p.strip().partition("=") for p in r.headers["x-tokenomy-placement"].split(";"))
    return {k: v for k, _, v in parts}


def test_flex_never_takes_a_20x_dearer_deployment_for_power_that_saves_less(own: Own) -> None:
    assert served(own.chat("vendor-or-own-gpus")) == "sim/vendor-near"
    for tier in ("flex", "batch"):
        r = own.chat("vendor-or-own-gpus", service_tier=tier)
        assert served(r) == "sim/vendor-near", tier
        b = breakdown(r)
        assert b["region"] == "us-east" and Decimal(b["energy_usd"]) == 0  # a vendor's power
        tokens_in, tokens_out = int(b["input_tokens"]), int(b["output_tokens"])
        m = Decimal("0.5") if tier == "batch" else Decimal(1)
        token = (tokens_in * Decimal("0.10") + tokens_out * Decimal("0.40")) * m / 10**6
        assert Decimal(b["token_usd"]) == token > 0
        assert Decimal(b["total_usd"]) == token


def test_flex_goes_to_the_cheaper_power_when_the_total_is_lower(own: Own) -> None:
    # Interactive work stays near.
    assert served(own.chat("own-gpus")) == "sim/gpu-east"
    r = own.chat("own-gpus", service_tier="flex")
    assert served(r) == "sim-backup/gpu-west"
    b = breakdown(r)
    tokens_in, tokens_out = int(b["input_tokens"]), int(b["output_tokens"])
    token = (tokens_in * Decimal("0.12") + tokens_out * Decimal("0.42")) / 10**6
    energy = (tokens_in + tokens_out) * Decimal("0.4") * Decimal("1.2") * Decimal("0.03") / 10**6
    assert b["region"] == "cn-west"
    assert Decimal(b["token_usd"]) == token and Decimal(b["energy_usd"]) == energy > 0
    assert Decimal(b["total_usd"]) == token + energy
    # cn-west is 180 ms away: a deadline of 0.1 s keeps the work near.
    assert served(own.chat("own-gpus", deadline="0.1", service_tier="flex")) == "sim/gpu-east"


def test_a_batch_call_is_placed_at_batch_prices(own: Own) -> None:
    # Standard: MiniMax is cheaper for an output-heavy call; at batch prices gpt-5-mini is.
    assert served(own.chat("batch-or-not", service_tier="flex")) == "sim-backup/no-batch"
    assert served(own.chat("batch-or-not", service_tier="batch")) == "sim/with-batch"


def test_place_orders_by_token_price_plus_energy() -> None:
    def cand(name: str, region: Region, token: str, energy: Decimal | None) -> Placement:
        rtt = 0.005 if region is US_EAST else 0.18
        return Placement(name, region, rtt, token_usd=Decimal(token), energy_usd=energy)

    tokens = 1000
    floor_us = US_EAST.cost_floor_usd_per_m
    floor_cn = CN_WEST.cost_floor_usd_per_m
    assert floor_us is not None and floor_cn is not None
    vendor = cand("vendor", US_EAST, "0.0001", Decimal(0))
    far = cand("far", CN_WEST, "0.0039", floor_cn * tokens / 10**6)  # 39x the tokens
    assert [p.deployment_id for p in place(True, None, [far, vendor])] == ["vendor", "far"]
    near_gpu = cand("near", US_EAST, "0.0001", floor_us * tokens / 10**6)
    far_gpu = cand("far", CN_WEST, "0.0001", floor_cn * tokens / 10**6)
    assert [p.deployment_id for p in place(True, None, [near_gpu, far_gpu])] == ["far", "near"]
    assert [p.deployment_id for p in place(True, 0.1, [near_gpu, far_gpu])] == ["near", "far"]


def test_a_self_hosted_deployment_needs_a_region_with_its_energy(tmp_path: Path) -> None:
    text = (
        "regions:\n  r: {usd_per_kwh: '0.1'}\n"
        "vendors:\n  v: {dialect: openai, base_url: 'http://x/v1', auth: none}\n"
        "models:\n  - name: a\n    deployments:\n"
        "      - {vendor: v, model: m, self_hosted: true, price: sim/sim-small}\n"
        "      - {vendor: v, model: n, self_hosted: true, region: r, price: sim/sim-small}\n"
    )
    with pytest.raises(ConfigError) as e:
        parse_config(text, "f.yaml")
    assert "f.yaml:8: models.0.deployments.0.self_hosted" in str(e.value)
    assert "f.yaml:9: models.0.deployments.1.region" in str(e.value)
    assert "kwh_per_m_tokens" in str(e.value)


def test_plan_shows_token_and_energy_cost_of_each_deployment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "placement.yaml"
    cfg.write_text(
        "regions:\n"
        "  us-east: {usd_per_kwh: '0.15', kwh_per_m_tokens: '0.4', rtt_ms: 5}\n"
        "  cn-west: {usd_per_kwh: '0.03', kwh_per_m_tokens: '0.4', rtt_ms: 180}\n"
        "vendors:\n  sim: {dialect: openai, base_url: 'http://127.0.0.1:9/v1', auth: none}\n"
        "models:\n  - name: own-gpus\n    deployments:\n"
        "      - {vendor: sim, model: gpu-east, region: us-east, self_hosted: true,"
        " price: sim/sim-small}\n"
        "      - {vendor: sim, model: gpu-west, region: cn-west, self_hosted: true,"
        " price: sim/sim-small}\n"
        "      - {vendor: sim, model: vendor, region: cn-west, price: sim/sim-large}\n"
    )
    # 1e9 tokens a day in calls of 1500 input + 500 output tokens: 500,000 calls.
    args = ["plan", "--tokens-per-day", "1e9", "-c", str(cfg), "--model", "own-gpus"]
    assert main([*args, "--tier", "batch"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {
        line[2:].split()[0]: (line[0], line[2:].split()[1:])
        for line in out
        if line.startswith(("* sim/", "  sim/"))
    }
    # Tokens at batch (half of 0.10 / 0.40): 500,000 x (1500 x 0.05 + 500 x 0.20) / 1e6.
    # Energy: 1e9 tokens x 0.4 kWh/M x 1.2 x USD/kWh (0.03 in cn-west, 0.15 in us-east).
    assert rows["sim/gpu-west"] == ("*", ["cn-west", "yes", "$87.50", "$14.40", "$101.90"])
    assert rows["sim/gpu-east"] == (" ", ["us-east", "yes", "$87.50", "$72.00", "$159.50"])
    assert rows["sim/vendor"][1][1:4] == ["no", "$1,800.00", "$0.00"]
