"""Error responses in each vendor dialect's wire format."""

from __future__ import annotations

from enum import StrEnum

import orjson
from aiohttp import web


class Dialect(StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"


# OpenAI's (type, code) per status, as its API returns them.
_OPENAI: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
}
# Anthropic names its error types by status.
_ANTHROPIC: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
_FAULT_MESSAGES = {
    429: "Rate limit reached (simulated). Please retry after the Retry-After interval.",
    500: "The server had an error while processing your request (simulated).",
    503: "The server is overloaded (simulated). Please retry later.",
    529: "Overloaded (simulated).",
}


def error_response(
    dialect: Dialect,
    status: int,
    message: str | None = None,
    *,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A JSON error response of ``status`` in ``dialect``'s format."""
    text = message or _FAULT_MESSAGES.get(status) or f"Simulated error {status}."
    if dialect is Dialect.ANTHROPIC:
        etype = _ANTHROPIC.get(status, "api_error" if status >= 500 else "invalid_request_error")
        body = {"type": "error", "error": {"type": etype, "message": text}}
    else:
        default = "server_error" if status >= 500 else "invalid_request_error"
        etype, code = _OPENAI.get(status, (default, None))
        body = {"error": {"message": text, "type": etype, "param": param, "code": code}}
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers=headers,
    )
