"""Vendor presets shipped as data: OpenAI-compatible vendors are entries here, not code."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import yaml


@dataclass(frozen=True, slots=True)
class CatalogModel:
    id: str
    context_length: int | None = None
    max_output: int | None = None
    capabilities: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class VendorPreset:
    key: str
    name: str
    country: str | None
    dialect: str
    base_url: str
    api_key_env: str | None
    auth: str
    stream_usage: bool
    source: str | None
    models: dict[str, CatalogModel] = field(default_factory=dict)
    #: The vendor's own batch API, by shape: "openai" (Files + Batches) or "anthropic"
    #: (Message Batches); None: it sells none.
    native_batch: str | None = None
    #: How long its prompt cache stays warm after a use, as its docs say (None: not said).
    prompt_cache_ttl_s: float | None = None


@cache
def load_presets() -> dict[str, VendorPreset]:
    """The packaged vendor presets, parsed once (the data never changes at run time)."""
    text = resources.files("tokenomy.catalog").joinpath("vendors.yaml").read_text()
    raw = yaml.safe_load(text) or {}
    return {key: _preset(key, v) for key, v in (raw.get("vendors") or {}).items()}


def _preset(key: str, v: dict[str, Any]) -> VendorPreset:
    models = {}
    for m in v.get("models") or []:
        models[m["id"]] = CatalogModel(
            id=m["id"],
            context_length=m.get("context_length"),
            max_output=m.get("max_output"),
            capabilities=frozenset(m.get("capabilities") or ()),
        )
    return VendorPreset(
        key=key,
        name=v.get("name", key),
        country=v.get("country"),
        dialect=v.get("dialect", "openai"),
        base_url=str(v["base_url"]).rstrip("/"),
        api_key_env=v.get("api_key_env"),
        auth=v.get("auth", "bearer"),
        stream_usage=bool(v.get("stream_usage", True)),
        source=v.get("source"),
        models=models,
        native_batch=v.get("native_batch"),
        prompt_cache_ttl_s=v.get("prompt_cache_ttl_s"),
    )
