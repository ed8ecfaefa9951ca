"""A TCP proxy a test can cut and restore: stands between the gateway and a real store (PostgreSQL, Redis)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tools.triton_launcher import free_port


class CuttableProxy:
    """Forwards 127.0.0.1:port to an upstream address. cut() closes every open connection and refuses new
    ones (the listening socket is closed, so connecting fails at once like a stopped server); restore()
    listens on the same port again."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()
        self.connections = 0

    async def restore(self) -> None:
        """Accept and forward connections (again)."""
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Refuse new connections and close every open one, both ways."""
        pipes = self.cut_now()
        await asyncio.gather(*pipes, return_exceptions=True)

    def cut_now(self) -> list[asyncio.Task[None]]:
        """cut() from synchronous code running in the loop (a database event hook, say): the same cut, at once;
        returns the forwarding tasks it cancelled, still finishing."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        pipes = list(self._pipes)
        for pipe in pipes:
            pipe.cancel()
        return pipes

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while chunk := await source.read(65536):
                sink.write(chunk)
                await sink.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(sink)
            sink.transport.abort()

    async def close(self) -> None:
        await self.cut()


@asynccontextmanager
async def cuttable_proxy(upstream_host: str, upstream_port: int) -> AsyncIterator[CuttableProxy]:
    """A started proxy to upstream; cut and closed on the way out."""
    proxy = CuttableProxy(upstream_host, upstream_port)
    await proxy.restore()
    try:
        yield proxy
    finally:
        with contextlib.suppress(Exception):
            await proxy.close()
