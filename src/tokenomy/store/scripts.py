"""Lua scripts called by SHA1 over any Redis connection: the one place that loads them.

Every script of the rate limiter, the live ledger and their leases is a :class:`Script`
registered on a :class:`Scripts` client: the lean pipelined client of
:mod:`tokenomy.store.redis_scripts` where it serves the URL, else :class:`RedisPyScripts`
over the process's redis-py client (Unix sockets). Both call ``EVALSHA`` and send the
source (``EVAL``) only when the server answers ``NOSCRIPT``; both can queue a call
without waiting (``submit``), so callers have one way to call a script, not two.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from redis import exceptions as rx

if TYPE_CHECKING:
    from redis.asyncio import Redis


class Executor(Protocol):
    """A Redis connection that runs one command: awaited, or queued now."""

    async def execute(self, *args: Any) -> Any: ...

    def submit(self, *args: Any) -> asyncio.Future[Any]: ...


class Scripts(Executor, Protocol):
    """A script client: what every user of Lua scripts is handed."""

    def register_script(self, source: str) -> Script: ...

    async def aclose(self) -> None: ...


class Script:
    """A Lua script called by its SHA1; sent whole only when the server answers NOSCRIPT."""

    def __init__(self, client: Executor, source: str) -> None:
        self._client = client
        self._source = source.encode()
        self.sha = hashlib.sha1(self._source).hexdigest()

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        try:
            return await self._client.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except rx.ResponseError as e:
            if not _noscript(e):
                raise
        # EVAL runs it and leaves it in the server's script cache for the next EVALSHA.
        return await self._client.execute("EVAL", self._source, len(keys), *keys, *args)

    def submit(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> asyncio.Future[Any]:
        """The call queued now, without waiting (see ``ScriptClient.submit``)."""
        client = self._client
        first = client.submit("EVALSHA", self.sha, len(keys), *keys, *args)
        out: asyncio.Future[Any] = first.get_loop().create_future()

        def done(f: asyncio.Future[Any]) -> None:
            if f.cancelled():
                out.cancel()
                return
            e = f.exception()
            if isinstance(e, rx.ResponseError) and _noscript(e):
                again = client.submit("EVAL", self._source, len(keys), *keys, *args)
                again.add_done_callback(lambda g: pass_on(g, out))
                return
            pass_on(f, out)

        first.add_done_callback(done)
        return out


class RedisPyScripts:
    """Scripts over a redis-py client (which its owner closes): for URLs the lean client
    does not serve, and for components built without one."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def execute(self, *args: Any) -> Any:
        return await self.redis.execute_command(*args)  # type: ignore[no-untyped-call]

    def submit(self, *args: Any) -> asyncio.Future[Any]:
        return asyncio.ensure_future(self.execute(*args))

    def register_script(self, source: str) -> Script:
        return Script(self, source)

    async def aclose(self) -> None:
        return None


def script_client(redis: Redis, scripts: Scripts | None = None) -> Scripts:
    """The script client to use: ``scripts`` when given, else one over ``redis``."""
    return scripts if scripts is not None else RedisPyScripts(redis)


def _noscript(e: BaseException) -> bool:
    # The lean client passes the server's reply on as it is; redis-py maps it to its own
    # class and drops the code from the message.
    return isinstance(e, rx.NoScriptError) or str(e).startswith("NOSCRIPT")


def pass_on(src: asyncio.Future[Any], dst: asyncio.Future[Any]) -> None:
    """Settle ``dst`` as ``src`` ended."""
    if dst.done():
        return
    if src.cancelled():
        dst.cancel()
    elif (e := src.exception()) is not None:
        dst.set_exception(e)
    else:
        dst.set_result(src.result())
