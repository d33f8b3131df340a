"""Run aiohttp apps on real sockets in a background thread, for tests with real clients."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from aiohttp import web

from tokenomy.api.edge import INFERENCE_ROUTES
from tokenomy.api.lean_site import LeanSite

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThreadServer:
    """An app served on 127.0.0.1 by its own event loop in a daemon thread."""

    def __init__(
        self,
        make_app: Callable[[], web.Application],
        port: int | None = None,
        *,
        shutdown_timeout: float = 60.0,
    ) -> None:
        self._make_app = make_app
        self._shutdown_timeout = shutdown_timeout
        self.port = port or free_port()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.app: web.Application | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ThreadServer:
        self._thread.start()
        self.call(self._start())
        return self

    async def _start(self) -> None:
        self.app = self._make_app()
        self._runner = web.AppRunner(
            self.app, access_log=None, shutdown_timeout=self._shutdown_timeout
        )
        await self._runner.setup()
        # The gateway is served as `tokenomy serve` serves it: through the lean server.
        if INFERENCE_ROUTES in self.app:
            drain = self._shutdown_timeout
            await LeanSite(self._runner, "127.0.0.1", self.port, drain_timeout_s=drain).start()
        else:
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def stop(self) -> None:
        if self._runner is not None:
            self.call(self._runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
