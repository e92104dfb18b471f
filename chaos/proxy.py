"""A TCP proxy between the server and Redis that the suite controls: the network faults.

Everything runs in the suite's event loop. ``delay`` holds every chunk in both directions
for a while before passing it on (a congested or distant link); ``stall`` passes nothing
at all for a while, without closing anything (a partition that TCP does not see);
``reset`` closes every open connection at once (a middlebox dropping its state). New
connections are accepted throughout, and see the fault in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import time


class Proxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.delay_s = 0.0
        self.stalled_until = 0.0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        self.reset()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def delay(self, seconds: float, delay_s: float) -> str:
        self.delay_s = delay_s
        try:
            await asyncio.sleep(seconds)
        finally:
            self.delay_s = 0.0
        return f"{delay_s * 1000:.0f} ms for {seconds:.1f} s"

    async def stall(self, seconds: float) -> str:
        self.stalled_until = time.monotonic() + seconds
        await asyncio.sleep(seconds)
        return f"{seconds:.1f} s"

    def reset(self) -> str:
        count = len(self._writers)
        for writer in list(self._writers):
            transport = writer.transport
            with contextlib.suppress(Exception):
                transport.abort()  # RST rather than FIN: the peer's next read fails at once
        self._writers.clear()
        return f"{count} connection ends"

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers |= {client_writer, upstream_writer}
        await asyncio.gather(
            self._pipe(client_reader, upstream_writer, client_writer),
            self._pipe(upstream_reader, client_writer, upstream_writer),
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, other: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                wait = max(self.stalled_until - time.monotonic(), 0.0) + self.delay_s
                if wait:
                    await asyncio.sleep(wait)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            for w in (writer, other):
                self._writers.discard(w)
                with contextlib.suppress(Exception):
                    w.transport.abort()
