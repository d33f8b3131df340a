"""The registry built from config, catalogue presets and the environment (once, at start)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from tokenomy.catalog.vendors import VendorPreset, load_presets
from tokenomy.config import Config, DeploymentConfig, VendorConfig
from tokenomy.core.proxy_url import proxy_from_env
from tokenomy.core.registry import ALL_CAPABILITIES, Deployment, ModelRoute, Registry, Vendor

log = logging.getLogger(__name__)


def build_registry(cfg: Config, env: Mapping[str, str] | None = None) -> Registry:
    """Resolve every model's deployments; drop those whose vendor lacks credentials."""
    env = os.environ if env is None else env
    presets = load_presets()
    vendors: dict[str, Vendor] = {}
    routes: dict[str, ModelRoute] = {}
    aliases: dict[str, str] = {}
    for m in cfg.models:
        deps = []
        for d in m.deployments:
            vendor = vendors.get(d.vendor)
            if vendor is None:
                vendor = vendors[d.vendor] = vendor_from_config(
                    d.vendor, cfg.vendors.get(d.vendor), presets, env
                )
            deps.append(_deployment(d, vendor))
        active = [d for d in deps if d.vendor.has_credentials and not d.standby]
        if not active:
            active = [d for d in deps if d.vendor.has_credentials and d.standby]
        skipped = [d.id for d in deps if d not in active and not d.standby]
        if skipped:
            log.info("model %s: inactive deployments (no credentials): %s", m.name, skipped)
        if not active:
            log.warning("model %s has no active deployment and is not served", m.name)
            continue
        routes[m.name] = ModelRoute(m.name, m.description, tuple(active))
        aliases.update({a: m.name for a in m.aliases})
    return Registry(routes, aliases)


def vendor_from_config(
    key: str, vc: VendorConfig | None, presets: Mapping[str, VendorPreset], env: Mapping[str, str]
) -> Vendor:
    """The vendor ``key`` as configured (``vc``), over its catalogue preset, with its API
    key read from ``env``: the chat routes' and the video models' registries share it."""
    vc = vc or VendorConfig()
    p = presets.get(vc.preset or key)
    base_url = vc.base_url or (p.base_url if p else "")
    key_env = vc.api_key_env if vc.api_key_env is not None else (p.api_key_env if p else None)
    return Vendor(
        key=key,
        name=vc.name or (p.name if p else key),
        country=vc.country or (p.country if p else None),
        dialect=vc.dialect or (p.dialect if p else "openai"),
        base_url=base_url,
        auth=vc.auth or (p.auth if p else "bearer"),
        api_key=env.get(key_env) if key_env else None,
        api_key_env=key_env,
        stream_usage=vc.stream_usage
        if vc.stream_usage is not None
        else (p.stream_usage if p else True),
        headers=dict(vc.headers),
        max_connections=vc.max_connections,
        catalog=p.models if p else {},
        proxy=_proxy(vc.proxy, base_url, env),
        ca_file=vc.ca_file,
        client_cert=vc.client_cert,
        client_key=vc.client_key,
        max_response_bytes=vc.max_response_bytes,
        native_batch=vc.native_batch or (p.native_batch if p else None),
        prompt_cache_ttl_s=vc.prompt_cache_ttl_s
        if vc.prompt_cache_ttl_s is not None
        else (p.prompt_cache_ttl_s if p else None),
    )


def _proxy(configured: str | None, base_url: str, env: Mapping[str, str]) -> str | None:
    if configured == "direct":
        return None
    return configured or proxy_from_env(base_url, env)


def _deployment(d: DeploymentConfig, vendor: Vendor) -> Deployment:
    cm = vendor.catalog.get(d.model)
    caps = (
        frozenset(d.capabilities)
        if d.capabilities is not None
        else (cm.capabilities if cm and cm.capabilities else ALL_CAPABILITIES)
    )
    return Deployment(
        id=f"{vendor.key}/{d.model}",
        vendor=vendor,
        upstream_model=d.model,
        weight=d.weight,
        region=d.region,
        context_length=d.context_length or (cm.context_length if cm else None),
        max_output=d.max_output or (cm.max_output if cm else None),
        capabilities=caps,
        standby=d.standby,
        price_ref=_price_ref(d, vendor),
        max_concurrent=d.max_concurrent,
        self_hosted=d.self_hosted,
    )


def _price_ref(d: DeploymentConfig, vendor: Vendor) -> tuple[str, str]:
    if d.price:
        pv, pm = d.price.split("/", 1)
        return pv, pm
    return vendor.key, d.model
