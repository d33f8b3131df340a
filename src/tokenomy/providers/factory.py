"""One provider (and so one pooled HTTP client) per vendor in use."""

from __future__ import annotations

from tokenomy.config import ServerConfig
from tokenomy.core.registry import Registry, Vendor
from tokenomy.providers.anthropic import AnthropicProvider
from tokenomy.providers.base import Provider
from tokenomy.providers.http import HttpProvider
from tokenomy.providers.openai_compat import OpenAICompatProvider


def make_provider(vendor: Vendor, server: ServerConfig) -> HttpProvider:
    cls = AnthropicProvider if vendor.dialect == "anthropic" else OpenAICompatProvider
    return cls(
        vendor,
        connect_timeout_s=server.connect_timeout_s,
        first_byte_timeout_s=server.first_byte_timeout_s,
        read_timeout_s=server.read_timeout_s,
        pool_wait_s=server.pool_wait_s,
        max_response_bytes=vendor.max_response_bytes or server.max_response_bytes,
    )


def build_providers(registry: Registry, server: ServerConfig) -> dict[str, Provider]:
    return {v.key: make_provider(v, server) for v in registry.vendors()}
