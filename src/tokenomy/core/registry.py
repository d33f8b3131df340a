"""Vendors, deployments and the routes that serve each public model name.

Built once at start (``gateway.registry.build_registry``); the request path only does
dictionary look-ups here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tokenomy.catalog.vendors import CatalogModel
from tokenomy.core.errors import NotFound

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
