"""The console served by uvicorn inside the charging server's event loop, on its own
address, started after the domain services and stopped before them.

The socket is bound here (port 0 works: tests and parallel servers), then handed to
uvicorn; uvicorn's own signal handling is off, the server's ``serve`` owns the signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import socket
from collections.abc import Iterator

import redis.asyncio as aioredis
import uvicorn

from charging import listening
from charging.catalogs import CatalogBook
from charging.clock import Clock
from charging.database import Pool
from charging.errors import StartupError
from charging.jobs import Jobs
from charging.settings import Settings
from charging.topups import TopUps
from console import web
from console.access import STAFF_ROLES
from console.audit import AuditTrail
from console.desk import Desk
from console.sessions import SessionStore, load_secret
from console.staff import StaffBook
from postpaid.billing import Billing
from provisioning.acquisition import Acquisition
from provisioning.customer_care import CustomerCare

log = logging.getLogger("console.serving")

DEV_USER = "dev"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


async def development_user(desk: Desk) -> str | None:
    """On loopback with no staff at all: a ``dev`` member with every staff role and a
    random password, printed once on stdout (never logged). Returns the password."""
    if await desk.staff.any():
        return None
    password = secrets.token_urlsafe(12)
    await desk.staff.add(DEV_USER, password, STAFF_ROLES, desk.now_s())
    return password


class _Uvicorn(uvicorn.Server):
    """uvicorn without its signal handlers (the charging server's ``serve`` owns the
    signals), telling when it has started."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


class ConsoleServer:
    def __init__(self, desk: Desk, address: str, *, shared: bool = False) -> None:
        self.desk = desk
        self.address = address
        self.shared = shared  # a worker of several: the port is shared (charging/listening.py)
        self.port = 0
        self._socket: socket.socket | None = None
        self._server: _Uvicorn | None = None
        self._task: asyncio.Task[None] | None = None

    def listen(self) -> None:
        """Bind the address now (a taken address stops the server before it starts)."""
        self._socket = listening.listen(self.address, "console", shared=self.shared, backlog=128)
        self.port = self._socket.getsockname()[1]

    async def start(self) -> None:
        assert self._socket is not None
        # uvicorn's start and finish lines at INFO add nothing to the server's own
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        config = uvicorn.Config(
            web.build(self.desk),
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
        )
        self._server = server = _Uvicorn(config)
        self._task = asyncio.create_task(server.serve(sockets=[self._socket]), name="console")
        ready = asyncio.create_task(server.ready.wait())
        await asyncio.wait([ready, self._task], return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if not server.started:
            raise StartupError(f"the console did not start on {self.address}")
        host = self.address.rpartition(":")[0]
        if is_loopback(host.strip("[]")):
            password = await development_user(self.desk)
            if password is not None:
                print(f"console: http://{host}:{self.port}/  user {DEV_USER}  password {password}", flush=True)
        log.info("console serving", extra={"console_port": self.port})

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._socket is not None:
            self._socket.close()


def build_console(
    settings: Settings,
    redis: aioredis.Redis,
    database: Pool,
    clock: Clock,
    acquisition: Acquisition,
    care: CustomerCare,
    billing: Billing,
    topups: TopUps,
    catalogs: CatalogBook,
    jobs: Jobs,
) -> ConsoleServer:
    """The console's objects, wired, its address bound (not serving yet)."""
    desk = Desk(
        redis=redis,
        database=database,
        clock=clock,
        acquisition=acquisition,
        care=care,
        billing=billing,
        topups=topups,
        catalogs=catalogs,
        jobs=jobs,
        staff=StaffBook(redis),
        sessions=SessionStore(redis),
        audit=AuditTrail(database, clock),
        secret=load_secret(settings.console_secret, settings.console_secret_file, settings.redis_dir),
    )
    server = ConsoleServer(desk, settings.console_address, shared=bool(settings.worker_of))
    server.listen()
    return server
