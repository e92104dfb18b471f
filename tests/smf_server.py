"""An SMF's notification endpoint for tests: a real hypercorn server on 127.0.0.1 (h2c
with prior knowledge, or TLS with ALPN h2) that records every request it gets and answers
each with the status the test chooses (or holds it unanswered until the test lets go)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from hypercorn.asyncio import serve
from hypercorn.config import Config


@dataclass(frozen=True)
class Received:
    path: str
    http_version: str
    content_type: str
    body: dict[str, Any]


class Smf:
    def __init__(self) -> None:
        self.received: asyncio.Queue[Received] = asyncio.Queue()
        self.status = 204
        # While not set, requests are recorded but not answered.
        self.answering = asyncio.Event()
        self.answering.set()
        self.port = 0
        self.scheme = "http"

    def uri(self, path: str = "/nsmf-callback/notify_1", host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.received.put_nowait(
            Received(scope["path"], scope["http_version"], headers.get("content-type", ""), orjson.loads(body))
        )
        await self.answering.wait()
        await send({"type": "http.response.start", "status": self.status, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@contextlib.asynccontextmanager
async def smf_server(pki: Path | None = None) -> AsyncIterator[Smf]:
    """Serve an ``Smf`` until the block ends; with ``pki`` (a ``certs.write_dev_set``
    directory) over TLS with its server certificate."""
    smf = Smf()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)  # connections wait in the backlog until hypercorn accepts them
    smf.port = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns (and closes) the socket now
    config.graceful_timeout = 1.0
    if pki is not None:
        smf.scheme = "https"
        config.certfile = str(pki / "server.pem")
        config.keyfile = str(pki / "server.key")
    done = asyncio.Event()
    task = asyncio.create_task(serve(smf, config, shutdown_trigger=done.wait))  # type: ignore[arg-type]
    try:
        yield smf
    finally:
        smf.answering.set()
        done.set()
        await asyncio.wait_for(task, 10)
