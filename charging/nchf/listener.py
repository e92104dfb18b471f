"""The Nchf listener: hypercorn serving ``NchfApp`` over HTTP/2, and its lifecycle.

Transport and callers follow the gRPC API's model (``charging/security/mode.py``):

    TLS files set (CHARGING_TLS_CERT/KEY) -> TLS (ALPN h2, http/1.1); with
                                             CHARGING_TLS_CLIENT_CA a client certificate
                                             is required (mTLS), and its SAN names the
                                             caller in the policy file; else a bearer token.
                                             Renewed files are used from the next handshake.
    no TLS, loopback address              -> cleartext: HTTP/2 with prior knowledge (h2c),
                                             as an SMF speaks it, and HTTP/1.1; every
                                             caller is the development identity
    no TLS, another address               -> refused at start, unless CHARGING_INSECURE
    every request                         -> the caller must have the ``network`` role

Why our own accept loop around hypercorn's connection handler: hypercorn gives the
application no view of the client certificate, and the caller's identity is the
certificate's. So the loop accepts each connection (TLS handshake included), reads the
certificate, notes the identity under the peer address (the ASGI scope's ``client``),
and hands the connection to hypercorn's ``TCPServer``, which does all of HTTP/1.1 and
HTTP/2. This uses hypercorn below its documented ``serve``; the tests cover h2c, TLS
and mTLS, so an upgrade that changes it fails them.

Stop: stop accepting, tell open connections the worker is terminating (hypercorn
closes each once idle), wait up to the grace period for requests in flight, then cancel.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config

from charging.admission import Admission
from charging.clock import Clock
from charging.errors import StartupError
from charging.listening import listen
from charging.nchf import metrics
from charging.nchf.app import NchfApp, Scope
from charging.nchf.notify import ChargingNotifier
from charging.nchf.nrf import NrfClient, Registration
from charging.security.identity import LOCAL, Identity
from charging.security.mode import Mode, decide
from charging.security.policy import PolicyFile
from charging.security.server_tls import ServerTls, names
from charging.security.tokens import TokenStore
from charging.sessions import SessionCharging
from charging.settings import Settings

log = logging.getLogger("charging.nchf")
# HTTP/2 first, HTTP/1.1 for tools.
ALPN = ("h2", "http/1.1")


class NchfListener:
    """Bound at start-up (a taken address stops the server before Redis starts), serving
    once ``start`` has the charging core."""

    def __init__(self, settings: Settings, policy: PolicyFile | None) -> None:
        self.settings = settings
        self.policy = policy
        try:
            self.mode = decide([settings.nchf_address], bool(settings.tls_cert), bool(policy), settings.insecure)
        except StartupError as exc:
            raise StartupError(str(exc).replace("gRPC address", "Nchf address")) from None
        self.tls_files = ServerTls(settings, ALPN) if self.mode is Mode.SECURED else None
        self._tls = self.tls_files.context if self.tls_files is not None else None
        self._socket = listen(settings.nchf_address, "Nchf", shared=bool(settings.worker_of))
        self.port = int(self._socket.getsockname()[1])
        self._tokens: TokenStore | None = None
        # ChargingNotify to the consumers of the resources charged here (notify.py).
        self.notifier: ChargingNotifier | None = None
        # Set by ``start`` when CHARGING_NCHF_NRF_URL is: the server runs its ``nrf`` job.
        self.nrf: NrfClient | None = None
        # Peer address -> the identity of its client certificate (None: none known).
        self._peers: dict[tuple[str, int], Identity | None] = {}
        self._connections: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._context = WorkerContext(None)
        self._config = Config()
        self._config.errorlog = logging.getLogger("charging.nchf.http")
        self._config.keep_alive_timeout = 60.0
        # hypercorn closes a connection on its 1,001st request by default (0.17+), cutting
        # that request off: an SMF keeps one HTTP/2 connection for all its sessions, so
        # never (idle connections still go after keep_alive_timeout).
        self._config.keep_alive_max_requests = 2**62
        self._config.graceful_timeout = settings.grace_period_s

    async def start(
        self,
        sessions: SessionCharging,
        clock: Clock,
        tokens: TokenStore,
        admission: Admission | None = None,
        notifier: ChargingNotifier | None = None,
    ) -> None:
        self._tokens = tokens
        self.notifier = notifier
        if self.settings.nchf_nrf_url:
            scheme = "https" if self._tls else "http"
            host = self.settings.nchf_address.rpartition(":")[0]
            prefix = self.settings.nchf_api_prefix or f"{scheme}://{host}:{self.port}"
            self.nrf = NrfClient(Registration.of(self.settings.nchf_nrf_url, prefix, self.settings.nchf_instance_id))
        ceilings = sessions.limits.ceilings
        app = ASGIWrapper(NchfApp(sessions, clock, self.identify, ceilings, admission, notifier))  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()

        async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._connections.add(task)
            peer = writer.get_extra_info("peername")
            key = (str(peer[0]), int(peer[1]))
            cert = writer.get_extra_info("peercert")
            self._peers[key] = self._certified(cert) if cert else None
            metrics.CONNECTIONS.labels("tls" if self._tls else "h2c").inc()
            try:
                await TCPServer(app, loop, self._config, self._context, {}, reader, writer)
            finally:
                self._peers.pop(key, None)
                self._connections.discard(task)

        self._server = await asyncio.start_server(
            connected, sock=self._socket, ssl=self._tls, ssl_handshake_timeout=10.0 if self._tls else None
        )
        log.info("Nchf listening", extra={"nchf_port": self.port, "tls": self._tls is not None})

    @property
    def serving(self) -> bool:
        """Whether new connections are accepted."""
        return self._server is not None and self._server.is_serving()

    def _certified(self, cert: Mapping[str, Any]) -> Identity | None:
        if self.policy is None:
            return None
        uris, dns = names(cert)
        return self.policy.current().identify(uris, dns)

    async def identify(self, scope: Scope) -> Identity | None:
        """The caller: the development identity in cleartext; else the client
        certificate's identity, else a bearer token's, else None."""
        if self._tls is None:
            return LOCAL
        client = scope.get("client")
        found = self._peers.get((str(client[0]), int(client[1]))) if client else None
        if found is not None or self._tokens is None:
            return found
        for name, value in scope["headers"]:
            if name == b"authorization" and value.startswith(b"Bearer "):
                return await self._tokens.identify(value[len(b"Bearer ") :].decode("latin-1").strip())
        return None

    async def stop(self, grace_s: float) -> None:
        if self.nrf is not None:  # first: SMFs stop choosing this CHF while it drains
            await self.nrf.close()
        if self._server is None:
            self._socket.close()
            return
        self._server.close()
        await self._context.terminated.set()
        if self._connections:
            _, pending = await asyncio.wait(set(self._connections), timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        await self._server.wait_closed()
        self._server = None
        if self.notifier is not None:
            await self.notifier.close()
