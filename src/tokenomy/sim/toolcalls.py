"""When the simulator calls a tool, which one, and with what (schema-valid) arguments."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_WEATHER = re.compile(r"\bweather\b", re.IGNORECASE)
_MAX_DEPTH = 8


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool offered by the request, in either dialect: its name and JSON schema."""

    name: str
    schema: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """The request's tool choice: ``mode`` is "auto", "none" or "required"; ``name`` forces one."""

    mode: str = "auto"
    name: str | None = None


def choose_tool(
    tools: Sequence[ToolSpec], choice: ToolChoice, last_user_text: str
) -> ToolSpec | None:
    """The tool to call, or None to answer in text.

    A named choice or "required" always calls; "auto" calls only when the last user message
    mentions the weather, preferring a tool whose name says weather, so that demos and tests
    can ask for a call without forcing it.
    """
    if not tools or choice.mode == "none":
        return None
    if choice.name is not None:
        return next((t for t in tools if t.name == choice.name), None)
    if choice.mode == "required":
        return tools[0]
    if _WEATHER.search(last_user_text):
        return next((t for t in tools if "weather" in t.name.lower()), tools[0])
    return None


def sample_arguments(schema: dict[str, Any]) -> dict[str, Any]:
    """A small object valid for ``schema``: its required properties, or else its first one."""
    value = sample_value(schema if isinstance(schema, dict) else {}, 0)
    return value if isinstance(value, dict) else {}


def sample_value(schema: Any, depth: int) -> Any:
    """A deterministic value valid for a JSON schema: "example", 1, true, one-item arrays."""
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return "example"
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return sample_value(options[0], depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        return _sample_object(schema, depth)
    if kind == "array":
        return [sample_value(schema.get("items", {}), depth + 1)]
    return _SCALARS.get(str(kind), "example")


_SCALARS: dict[str, Any] = {
    "string": "example",
    "integer": 1,
    "number": 1,
    "boolean": True,
    "null": None,
}


def _sample_object(schema: dict[str, Any], depth: int) -> dict[str, Any]:
    props = schema.get("properties")
    props = props if isinstance(props, dict) else {}
    required = [k for k in schema.get("required") or () if isinstance(k, str)]
    # A model fills at least something in, even when nothing is required.
    names = required or list(props)[:1]
    return {name: sample_value(props.get(name, {}), depth + 1) for name in names}


def content_text(content: Any) -> str:
    """The plain text of a message content (string or list of text blocks)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str)
        )
    return ""
