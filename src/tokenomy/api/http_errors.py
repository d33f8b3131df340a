"""HTTP-level errors (a malformed head, a slow client, a head too large) in the client's
JSON dialect, from the lean server and from aiohttp alike: never a text/plain page."""

from __future__ import annotations

import asyncio
from http import HTTPStatus

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from tokenomy.core.errors import GatewayError, InvalidRequest, RequestTimeout


def http_error(status: int, detail: str | None = None) -> GatewayError:
    """An error with ``status`` (400, 404, 405, 408, 413, 431, 5xx) and a plain message."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    message = f"{phrase}: {detail}" if detail else f"{phrase}."
    err = InvalidRequest(message) if status < 500 else GatewayError(message)
    err.status = status
    err.code = phrase.lower().replace(" ", "_").replace("-", "_")
    return err


def error_response(err: GatewayError, path: str) -> web.Response:
    """``err`` as a JSON response, in Anthropic's shape on /v1/messages, OpenAI's elsewhere."""
    anthropic = path.startswith("/v1/messages")
    body = err.anthropic_body() if anthropic else err.openai_body()
    return web.Response(
        body=body,
        status=err.status,
        headers=err.response_headers(),
        content_type="application/json",
    )


class JsonErrorsHandler(RequestHandler):
    """aiohttp's connection handler, answering the errors it raises itself (bad heads,
    handler timeouts) in JSON; the application's own errors are JSON already."""

    _anthropic = False  # whether the latest request line named /v1/messages
    #: Seconds a head may take to arrive (aiohttp has no such limit); None: no limit.
    header_timeout_s: float | None = None
    _head_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        # A head aiohttp cannot parse has no path to pick the error's dialect by: remember
        # where the latest request line pointed (only routes other than the lean server's
        # hot path come here).
        if data[:1].isalpha():
            self._anthropic = b" /v1/messages" in data[: data.find(b"\n", 0, 2048)]
        super().data_received(data)
        if self.header_timeout_s is None:
            return
        # Bytes in, yet no request parsed or running: a head is arriving, on the clock.
        arriving = not self._messages and not self._request_in_progress
        if arriving and self._head_timer is None:
            self._head_timer = self._loop.call_later(self.header_timeout_s, self._head_late)
        elif not arriving and self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        transport = self.transport
        if self._messages or self._request_in_progress or transport is None:
            return
        err = RequestTimeout("The request head took too long to arrive.")
        body = err.anthropic_body() if self._anthropic else err.openai_body()
        head = (
            "HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        transport.write(head.encode() + body)
        self.force_close()
        transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # The base class logs the error and refuses if an answer has started.
        super().handle_error(request, status, exc, message)
        detail = None
        if status < 500 and message:
            detail = message.split("\n", 1)[0][:200]  # the parser's reason, not a traceback
        path = "/v1/messages" if self._anthropic else "/"
        resp = error_response(http_error(status, detail), path)
        resp.force_close()
        return resp
