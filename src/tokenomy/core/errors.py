"""The one error hierarchy, and the one place that turns errors into client-dialect bodies.

Every error a client can see is a :class:`GatewayError`; the HTTP layer renders it in the
dialect of the route (OpenAI's ``{"error": {...}}`` or Anthropic's ``{"type": "error", ...}``).
"""

from __future__ import annotations

from typing import Any

import orjson

# Anthropic names its error types by HTTP status.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "request_too_large",
    431: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


class GatewayError(Exception):
    """An error with an HTTP status and an OpenAI-style type and code."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after
        self.headers = dict(headers or {})

    def response_headers(self) -> dict[str, str]:
        h = dict(self.headers)
        if self.retry_after is not None:
            h["Retry-After"] = str(max(1, round(self.retry_after)))
        return h

    def openai_body(self) -> bytes:
        err: dict[str, Any] = {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
        }
        return orjson.dumps({"error": err})

    def anthropic_body(self) -> bytes:
        etype = _ANTHROPIC_TYPES.get(self.status, "api_error")
        return orjson.dumps({"type": "error", "error": {"type": etype, "message": self.message}})


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class InsufficientQuota(GatewayError):
    status = 402
    type = "insufficient_quota"
    code = "insufficient_quota"


class PermissionDenied(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "model_not_allowed"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RequestTimeout(GatewayError):
    """The client was too slow to send its request (its head or its body)."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_exceeded"
    code = "rate_limit_exceeded"


class UpstreamError(GatewayError):
    """The vendor failed (5xx, bad answer, refused connection): 502 to the client."""

    status = 502
    type = "upstream_error"
    code = "bad_gateway"


class UpstreamTimeout(GatewayError):
    status = 504
    type = "upstream_error"
    code = "gateway_timeout"


class Overloaded(GatewayError):
    status = 503
    type = "server_error"
    code = "overloaded"


class UpstreamRejected(GatewayError):
    """The vendor answered 4xx to a request we forwarded; its status is passed on."""

    type = "invalid_request_error"
    code = "upstream_rejected"

    def __init__(self, message: str, *, status: int, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.status = status
