"""Config loading: defaults, env expansion, and errors that name the line and field."""

from __future__ import annotations

import pytest

from tokenomy.config import ConfigError, load_config, parse_config
from tokenomy.gateway.registry import build_registry


def test_packaged_default_loads_and_serves_sim_models_without_keys() -> None:
    cfg = load_config(None)
    reg = build_registry(cfg, env={})
    names = {r.name for r in reg.routes}
    assert {"sim-small", "deepseek-chat", "claude-opus-4-6"} <= names
    # Without a vendor key the simulator stands in...
    assert [d.id for d in reg.resolve("deepseek-chat").deployments] == ["sim/deepseek-chat"]


def test_vendor_key_in_env_switches_to_the_real_vendor() -> None:
    reg = build_registry(load_config(None), env={"DEEPSEEK_API_KEY": "sk-test"})
    (dep,) = reg.resolve("deepseek-chat").deployments
    assert dep.id == "deepseek/deepseek-chat"
    assert dep.vendor.base_url.startswith("https://") and dep.vendor.api_key == "sk-test"


def test_error_names_line_and_field() -> None:
    text = "server:\n  port: 8000\nmodels:\n  - name: a\n    deployments:\n      - vendor: sim\n        model: m\n        weight: -3\n"
    with pytest.raises(ConfigError) as e:
        parse_config(text, "f.yaml")
    assert "f.yaml:8" in str(e.value) and "models.0.deployments.0.weight" in str(e.value)


def test_unknown_field_and_vendor() -> None:
    with pytest.raises(ConfigError, match=r"f.yaml:2: server.prot"):
        parse_config("server:\n  prot: 1\n", "f.yaml")
    text = "models:\n  - name: a\n    deployments:\n      - {vendor: nowhere, model: m}\n"
    with pytest.raises(ConfigError, match=r"f.yaml:4: .*unknown vendor 'nowhere'"):
        parse_config(text, "f.yaml")


def test_duplicate_model_names() -> None:
    text = (
        "vendors:\n  v: {dialect: openai, base_url: 'http://x/v1'}\n"
        "models:\n  - {name: a, deployments: [{vendor: v, model: m}]}\n"
        "  - {name: b, aliases: [a], deployments: [{vendor: v, model: m}]}\n"
    )
    with pytest.raises(ConfigError, match="defined twice"):
        parse_config(text, "f.yaml")


def test_env_expansion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_URL", "http://10.0.0.1:9/v1")
    text = "vendors:\n  v: {dialect: openai, base_url: '${MY_URL}'}\n  w: {dialect: openai, base_url: '${NOPE_X:-http://d/v1}'}\n"
    cfg = parse_config(text)
    assert cfg.vendors["v"].base_url == "http://10.0.0.1:9/v1"
    assert cfg.vendors["w"].base_url == "http://d/v1"
    with pytest.raises(ConfigError, match="NOPE_Y"):
        parse_config("database: {url: '${NOPE_Y}'}\n")


def test_invalid_yaml_and_missing_file(tmp_path: object) -> None:
    with pytest.raises(ConfigError, match="invalid YAML"):
        parse_config("a: [1, 2\n", "f.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config("/nonexistent/tokenomy.yaml")


def test_database_url_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENOMY_DATABASE_URL", "postgresql://postgres@127.0.0.1/x")
    assert load_config(None).database.url == "postgresql://postgres@127.0.0.1/x"


def test_a_base_url_may_carry_a_query_but_not_credentials() -> None:
    ok = "vendors:\n  v: {dialect: openai, base_url: 'https://x.example/v1?api-version=2024-10-21'}\n"
    assert parse_config(ok, "f.yaml").vendors["v"].base_url.endswith("?api-version=2024-10-21")
    bad = "vendors:\n  v: {dialect: openai, base_url: 'https://u:secret@x.example/v1'}\n"
    with pytest.raises(ConfigError, match="credentials in a base URL"):
        parse_config(bad, "f.yaml")


def test_lease_flush_stays_well_within_the_rebuild_grace() -> None:
    """Usage a lease waits to post reaches a rebuild only if the lease syncs within the
    grace a rebuild gives every process (0.5 s): a sync interval of a quarter of it or
    more let another replica's rebuild count that usage twice."""
    assert parse_config("ledger:\n  lease_flush_ms: 100\n", "f.yaml").ledger.lease_flush_ms == 100
    with pytest.raises(ConfigError, match=r"f.yaml:2: ledger.lease_flush_ms"):
        parse_config("ledger:\n  lease_flush_ms: 500\n", "f.yaml")
