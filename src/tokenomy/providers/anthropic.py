"""Anthropic's native Messages protocol."""

from __future__ import annotations

from typing import Any

from tokenomy.core.registry import Deployment
from tokenomy.providers.http import HttpProvider

ANTHROPIC_VERSION = "2023-06-01"


class AnthropicProvider(HttpProvider):
    dialect = "anthropic"

    def auth_headers(self) -> dict[str, str]:
        h = {"anthropic-version": ANTHROPIC_VERSION}
        if self.vendor.api_key:
            if self.vendor.auth == "bearer":
                h["Authorization"] = f"Bearer {self.vendor.api_key}"
            else:
                h["x-api-key"] = self.vendor.api_key
        return h

    def path_for(self, endpoint: str) -> str:
        if endpoint != "messages":
            raise ValueError(f"the Anthropic protocol has no {endpoint} endpoint")
        return "/messages"

    def prepare(self, deployment: Deployment, body: dict[str, Any], stream: bool) -> dict[str, Any]:
        return {**body, "model": deployment.upstream_model}
