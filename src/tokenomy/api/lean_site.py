"""The aiohttp site that listens for the lean server (see ``api.lean_server``): it starts
every connection there, sweeps them for timeouts and idle keep-alives, and on stop lets
requests in progress finish, then cancels the rest."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from tokenomy.api.edge import INFERENCE_ROUTES, SERVICES
from tokenomy.api.http_errors import JsonErrorsHandler
from tokenomy.api.lean_server import _ClientConnection
from tokenomy.services import Services

log = logging.getLogger(__name__)

#: An idle connection (no request in progress) is closed after this long.
KEEPALIVE_S = 75.0
SWEEP_S = 5.0
#: At shutdown, how long cancelled requests get to record themselves.
CANCEL_GRACE_S = 5.0


class LeanSite(web.TCPSite):
    """An aiohttp site whose connections start on the lean server (see module doc).

    It keeps its own copy of where it listens and how long a stop waits for requests
    (``drain_timeout_s``: the runner's ``shutdown_timeout``, which aiohttp keeps private),
    so that it reads none of aiohttp's private attributes but two, each behind one
    method: ``_listen`` sets the listening server that ``BaseSite.stop`` closes, and
    ``fallback`` makes a request handler as ``web.Server`` makes them. Both are checked
    against the aiohttp range ``pyproject.toml`` pins.
    """

    def __init__(
        self,
        runner: web.AppRunner,
        host: str | None = None,
        port: int | None = None,
        *,
        backlog: int = 128,
        reuse_address: bool | None = None,
        reuse_port: bool | None = None,
        drain_timeout_s: float = 60.0,
    ) -> None:
        super().__init__(
            runner,
            host,
            port,
            backlog=backlog,
            reuse_address=reuse_address,
            reuse_port=reuse_port,
        )
        self.runner = runner
        self.host, self.requested_port = host, 8080 if port is None else port
        self.backlog, self.reuse_address, self.reuse_port = backlog, reuse_address, reuse_port
        self.drain_timeout_s = drain_timeout_s
        #: The port listened on, once started (the requested one may be 0).
        self.bound_port: int | None = None
        app = runner.app
        self.services: Services = app[SERVICES]
        self.routes = {r.path.encode(): r for r in app[INFERENCE_ROUTES]}
        self.connections: set[_ClientConnection] = set()
        #: Requests being served (also what keeps their tasks alive).
        self.tasks: set[asyncio.Task[None]] = set()
        self.closing = False
        self._sweeper: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop  # the loop it is started on
        server = self.services.config.server
        #: Bytes of requests not yet authenticated (heads arriving), over all connections.
        self.unauthenticated = 0
        self.unauthenticated_peak = 0
        self.max_unauthenticated = server.max_unauthenticated_bytes
        #: Refusals waiting for their org's turn (see lean_server.MAX_WAITING_REFUSALS).
        self.refusals_waiting = 0
        #: Timeouts are checked this often: a fraction of the shortest.
        self.sweep_s = min(SWEEP_S, server.header_timeout_s / 4, server.body_timeout_s / 4)

    def serving(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    @property
    def port(self) -> int:
        """The port listened on once started, else the one asked for (as TCPSite's)."""
        return self.bound_port if self.bound_port is not None else self.requested_port

    def fallback(self) -> asyncio.Protocol:
        """A fresh aiohttp protocol, to take a connection over (answering its own HTTP
        errors in JSON)."""
        server = self.runner.server
        assert server is not None
        # Seam: what web.Server() makes, with JSON errors: the same manager, loop and
        # settings, which aiohttp keeps in private attributes (no public factory).
        handler = JsonErrorsHandler(server, loop=self.loop, **server._kwargs)
        handler.header_timeout_s = self.services.config.server.header_timeout_s
        return handler

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        self.loop = asyncio.get_running_loop()
        server = await self.loop.create_server(
            lambda: _ClientConnection(self),
            self.host,
            self.requested_port,
            backlog=self.backlog,
            reuse_address=self.reuse_address,
            reuse_port=self.reuse_port,
        )
        self._listen(server)
        if server.sockets:
            self.bound_port = int(server.sockets[0].getsockname()[1])
        self._sweeper = self.loop.call_later(self.sweep_s, self._sweep)

    def _listen(self, server: asyncio.AbstractServer) -> None:
        # Seam: BaseSite.stop closes the server it finds here (set as TCPSite.start does).
        self._server = server

    def _sweep(self) -> None:
        now = self.loop.time()
        server = self.services.config.server
        head_before, body_before = now - server.header_timeout_s, now - server.body_timeout_s
        idle_before = now - KEEPALIVE_S
        for conn in list(self.connections):
            conn.check_time(head_before, body_before)
            if conn.head_since is None and not conn.need:
                conn.close_if_idle(idle_before)
        self._sweeper = self.loop.call_later(self.sweep_s, self._sweep)

    async def stop(self) -> None:
        """Stop listening and close idle connections; let requests in progress finish
        within ``drain_timeout_s``, then cancel the rest (each is recorded as
        cancelled) before the application's cleanup closes the usage writer."""
        self.closing = True
        await super().stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            conn.refuse_now()
            conn.close_if_idle(float("inf"))
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=self.drain_timeout_s)
        if self.tasks:
            log.warning("cancelling %d requests still running at shutdown", len(self.tasks))
            for task in self.tasks:
                task.cancel()
            await asyncio.wait(set(self.tasks), timeout=CANCEL_GRACE_S)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
