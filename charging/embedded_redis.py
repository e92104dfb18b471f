"""An embedded redis-server child for when no Redis URL is configured.

It listens on a Unix socket in its data directory only (no TCP port), keeps an
append-only file so balances survive restarts, is restarted if it dies, and is shut
down (which flushes the AOF) when the server stops.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import redis.asyncio as aioredis

log = logging.getLogger("charging.redis")

INSTALL_HINT = (
    "redis-server was not found. Install it (Debian: apt-get install redis-server) "
    "or point CHARGING_REDIS_URL at a running Redis 7."
)


def redis_command(binary: str, directory: Path, appendfsync: str, *, port: int = 0) -> list[str]:
    """The redis-server command line. ``port`` 0 means Unix socket only."""
    socket = directory / "redis.sock"
    return [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--unixsocket", str(socket),
        "--unixsocketperm", "700",
        "--dir", str(directory),
        "--appendonly", "yes",
        "--appendfsync", appendfsync,
        "--save", "",
        "--daemonize", "no",
        "--logfile", "redis.log",
        "--protected-mode", "yes",
    ]  # fmt: skip


class EmbeddedRedis:
    def __init__(self, binary: str, directory: Path, appendfsync: str = "everysec") -> None:
        self.binary = binary
        self.directory = directory.resolve()
        self.appendfsync = appendfsync
        self._proc: asyncio.subprocess.Process | None = None
        self._stopping = False

    @property
    def url(self) -> str:
        return f"unix://{self.directory / 'redis.sock'}"

    async def start(self, timeout_s: float = 10.0) -> str:
        path = shutil.which(self.binary)
        if path is None:
            raise RuntimeError(INSTALL_HINT)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._proc = await asyncio.create_subprocess_exec(
            *redis_command(path, self.directory, self.appendfsync),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await self._wait_ready(timeout_s)
        log.info("embedded redis started", extra={"pid": self._proc.pid, "dir": str(self.directory)})
        return self.url

    async def _wait_ready(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            assert self._proc is not None
            if self._proc.returncode is not None:
                raise RuntimeError(
                    f"redis-server exited with {self._proc.returncode}; see {self.directory / 'redis.log'}"
                )
            client = aioredis.Redis.from_url(self.url)
            try:
                if await client.ping():
                    return
            except (OSError, aioredis.ConnectionError):
                if loop.time() > deadline:
                    raise RuntimeError(f"redis-server did not start; see {self.directory / 'redis.log'}") from None
            finally:
                await client.aclose()
            await asyncio.sleep(0.05)

    async def supervise(self) -> None:
        """Restart the child if it dies while the server runs (the AOF restores state)."""
        while not self._stopping:
            assert self._proc is not None
            code = await self._proc.wait()
            if self._stopping:
                return
            log.error("embedded redis exited; restarting", extra={"code": code})
            await asyncio.sleep(0.5)
            await self.start()

    async def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping = True
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()  # redis-server flushes the AOF and exits on SIGTERM
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        log.info("embedded redis stopped")
