"""Models and deployments resolved from config, catalogue presets and the environment.

Built once at start; the request path only does dictionary look-ups here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from tokenomy.catalog.vendors import CatalogModel, VendorPreset, load_presets
from tokenomy.config import Config, DeploymentConfig, VendorConfig
from tokenomy.errors import NotFound
from tokenomy.providers.proxy import proxy_from_env

log = logging.getLogger(__name__)

ALL_CAPABILITIES = frozenset({"tools", "vision", "json", "stream", "reasoning"})


@dataclass(frozen=True, slots=True)
class Vendor:
    key: str
    name: str
    country: str | None
    dialect: str
    base_url: str
    auth: str
    api_key: str | None = field(repr=False)
    api_key_env: str | None
    stream_usage: bool
    headers: Mapping[str, str]
    max_connections: int
    catalog: Mapping[str, CatalogModel] = field(default_factory=dict, repr=False)
    #: The proxy its connections go through (the config's, else the environment's).
    proxy: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    #: Its own cap on an answer's size (None: the server's).
    max_response_bytes: int | None = None
    #: The shape of the native batch API it sells ("openai": Files + Batches), if any.
    native_batch: str | None = None
    #: How long its prompt cache stays warm after a use (None: routing's default).
    prompt_cache_ttl_s: float | None = None

    @property
    def has_credentials(self) -> bool:
        return self.auth == "none" or self.api_key_env is None or bool(self.api_key)


@dataclass(frozen=True, slots=True)
class Deployment:
    id: str
    vendor: Vendor
    upstream_model: str
    weight: int
    region: str | None
    context_length: int | None
    max_output: int | None
    capabilities: frozenset[str]
    standby: bool
    #: (vendor, model) of the catalogue price it is billed at.
    price_ref: tuple[str, str] = ("", "")
    max_concurrent: int | None = None
    #: Runs on our own hardware: its energy is a cost of its own (see routing.power).
    self_hosted: bool = False


@dataclass(frozen=True, slots=True)
class ModelRoute:
    name: str
    description: str | None
    deployments: tuple[Deployment, ...]
    #: The smallest context window and output cap of the deployments (None: none says).
    #: Worked out once: every request's output cap asks.
    context_length: int | None = field(init=False)
    max_output: int | None = field(init=False)

    def __post_init__(self) -> None:
        lengths = [d.context_length for d in self.deployments if d.context_length]
        outs = [d.max_output for d in self.deployments if d.max_output]
        object.__setattr__(self, "context_length", min(lengths) if lengths else None)
        object.__setattr__(self, "max_output", min(outs) if outs else None)


class Registry:
    """Public model names (and aliases) to their active deployments."""

    def __init__(self, routes: dict[str, ModelRoute], aliases: dict[str, str]) -> None:
        self._routes = routes
        self._by_name = {
            **{n: routes[n] for n in routes},
            **{a: routes[t] for a, t in aliases.items()},
        }

    def resolve(self, model: str) -> ModelRoute:
        route = self._by_name.get(model)
        if route is None:
            raise NotFound(
                f"The model '{model}' does not exist or is not served here.", param="model"
            )
        return route

    def get(self, model: str) -> ModelRoute | None:
        return self._by_name.get(model)

    @property
    def routes(self) -> list[ModelRoute]:
        return list(self._routes.values())

    def vendors(self) -> list[Vendor]:
        seen: dict[str, Vendor] = {}
        for r in self._routes.values():
            for d in r.deployments:
                seen.setdefault(d.vendor.key, d.vendor)
        return list(seen.values())


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
                vendor = vendors[d.vendor] = _vendor(
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


def _vendor(
    key: str, vc: VendorConfig | None, presets: Mapping[str, VendorPreset], env: Mapping[str, str]
) -> Vendor:
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
