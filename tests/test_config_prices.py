"""Every served deployment has a price: config check and serve refuse one without, by line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tokenomy.billing.catalog import PriceBook
from tokenomy.catalog.vendors import load_presets
from tokenomy.config import ConfigError, default_config_text, load_config, parse_config
from tokenomy.gateway.price_check import check_served_prices, served_price_problems
from tokenomy.gateway.registry import build_registry
from tokenomy.services import build_services


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tokenomy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
    )


UNPRICED = """\
database: {url: "sqlite:///%(db)s"}
vendors:
  sim: {dialect: openai, base_url: "http://127.0.0.1:9/v1", auth: none}
models:
  - name: sim-small
    deployments: [{vendor: sim, model: sim-small}]
  - name: typo
    deployments:
      - vendor: sim
        model: typo-a
        price: sim/sim-smal
"""
# Line 11 is the deployment's price: field.
UNPRICED_LINE = 11

FLOAT_PRICE = """\
database: {url: "sqlite:///%(db)s"}
vendors:
  sim: {dialect: openai, base_url: "http://127.0.0.1:9/v1", auth: none}
prices:
  - vendor: sim
    model: house
    currency: USD
    status: simulated
    source: our own
    as_of: "2026-12-01"
    versions:
      - effective_from: "2026-01-01T00:00:00Z"
        prices:
          input: 0.3
          output: "1.2"
models:
  - name: house
    deployments: [{vendor: sim, model: house}]
"""
FLOAT_LINE = 14


def write(tmp: Path, text: str) -> Path:
    p = tmp / "tokenomy.yaml"
    p.write_text(text % {"db": tmp / "t.db"})
    return p


def test_config_check_refuses_a_served_deployment_whose_price_names_no_catalogue_entry(
    tmp_path: Path,
) -> None:
    cfg = write(tmp_path, UNPRICED)
    r = run("config", "check", str(cfg))
    assert r.returncode == 1, r.stdout
    assert f"{cfg}:{UNPRICED_LINE}: models.1.deployments.0.price" in r.stderr
    assert "sim/sim-smal" in r.stderr and "Traceback" not in r.stderr


def test_a_deployment_billed_at_its_own_unknown_name_is_refused_at_its_line() -> None:
    text = (
        "vendors:\n  v: {dialect: openai, base_url: 'http://x/v1', auth: none}\n"
        "models:\n  - name: a\n    deployments:\n      - {vendor: v, model: m}\n"
    )
    cfg = parse_config(text, "f.yaml")
    with pytest.raises(ConfigError) as e:
        check_served_prices(cfg, build_registry(cfg, env={}), PriceBook.load(cfg.prices))
    assert "f.yaml:6: models.0.deployments.0" in str(e.value) and "v/m" in str(e.value)


def test_an_unpriced_deployment_that_cannot_serve_is_not_refused() -> None:
    # No credentials and not a standby: it serves nothing, so it costs nothing yet.
    text = (
        "vendors:\n  v: {dialect: openai, base_url: 'http://x/v1', api_key_env: NOPE_KEY_X}\n"
        "  sim: {dialect: openai, base_url: 'http://x/v1', auth: none}\n"
        "models:\n  - name: a\n    deployments:\n      - {vendor: v, model: m}\n"
        "      - {vendor: sim, model: m, standby: true, price: sim/sim-small}\n"
    )
    cfg = parse_config(text, "f.yaml")
    check_served_prices(cfg, build_registry(cfg, env={}), PriceBook.load(cfg.prices))
    reg = build_registry(cfg, env={"NOPE_KEY_X": "sk-1"})  # now it serves
    with pytest.raises(ConfigError, match=r"f\.yaml:7: models\.0\.deployments\.0\.price"):
        check_served_prices(cfg, reg, PriceBook.load(cfg.prices))


def test_building_the_services_refuses_an_unpriced_served_deployment(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, UNPRICED))
    with pytest.raises(ConfigError, match=f":{UNPRICED_LINE}: models.1.deployments.0.price"):
        build_services(cfg, env={})


def test_serve_refuses_an_unpriced_served_deployment_with_the_line(tmp_path: Path) -> None:
    cfg = write(tmp_path, UNPRICED)
    r = run("serve", "--config", str(cfg), "--port", "0", timeout=30)
    assert r.returncode != 0
    assert f"{cfg}:{UNPRICED_LINE}: models.1.deployments.0.price" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_float_price_in_the_config_is_a_line_numbered_error(tmp_path: Path) -> None:
    cfg = write(tmp_path, FLOAT_PRICE)
    r = run("config", "check", str(cfg))
    assert r.returncode == 1, r.stdout
    assert f"{cfg}:{FLOAT_LINE}: prices.0.versions.0.prices.input" in r.stderr
    assert "quote" in r.stderr and "Traceback" not in r.stderr
    r = run("serve", "--config", str(cfg), "--port", "0", timeout=30)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert f"{cfg}:{FLOAT_LINE}: prices.0.versions.0.prices.input" in r.stderr


def test_a_quoted_config_price_is_exact_and_serves(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, FLOAT_PRICE.replace("input: 0.3", 'input: "0.3"')))
    book = PriceBook.load(cfg.prices)
    check_served_prices(cfg, build_registry(cfg, env={}), book)
    from datetime import UTC, datetime
    from decimal import Decimal

    v = book.lookup("sim", "house", datetime(2026, 12, 1, tzinfo=UTC))
    assert v.tiers[0].prices.input == Decimal("0.3")


def test_packaged_default_config_is_priced_with_and_without_vendor_keys() -> None:
    cfg = load_config(None)
    book = PriceBook.load(cfg.prices)
    every_key = {p.api_key_env: "sk-test" for p in load_presets().values() if p.api_key_env}
    for env in ({}, every_key):
        reg = build_registry(cfg, env=env)
        assert served_price_problems(cfg, reg, book) == []
    assert default_config_text()  # the text the demo serves is the same packaged file
