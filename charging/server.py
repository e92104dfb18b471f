"""Wiring and lifecycle: build every object once, start, and stop in order.

Start order: a server whose gRPC or metrics address is taken stops at once, before
touching Redis (``StartupError``, printed by ``serve`` as one line); then Redis, waited
for while it loads its dataset; then the database (the embedded one started and
migrated; a configured one checked to be at the schema of this code); then everything
else, and gRPC listens last.

Stop order: health goes NOT_SERVING while calls are still served for the shutdown delay
(load balancers polling health move traffic away), the gRPC server drains in-flight calls
within the grace period, the background jobs (``charging/jobs.py``) and the Redis
and PostgreSQL supervision are cancelled and awaited, the Redis pool is closed, the
embedded redis-server is shut down, the database pool is closed, the embedded
PostgreSQL is shut down (fast).

Health: SERVING once started; NOT_SERVING for good when a background job dies (a bug: a
restart mends it). A job that keeps failing (Redis or a mail server down) shows in its
metrics instead: every process would fail alike, and none should leave the balancer.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import secrets
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from charging import database_roles, heap, history_store, keys, metrics, migrations, retention, store, upgrade
from charging.admin_api import AdminServicer
from charging.admission import Admission, server_options
from charging.api import ChargingServicer, TopUpServicer
from charging.audit_trail import AuditTrail
from charging.catalogs import CatalogBook
from charging.cdr_hold import probe_hold
from charging.cdr_relay import CdrRelay
from charging.cdr_store import CdrStore
from charging.census import record_census
from charging.changes import ChangeFeed
from charging.clock import Clock, SystemClock
from charging.cluster_link import ClusterLink
from charging.context import Context
from charging.database import Pool, open_pool, plaintext_problem
from charging.diameter.config import DiameterConfig
from charging.diameter.listener import DiameterDoor
from charging.documents import Author, records_key
from charging.embedded_postgres import EmbeddedPostgres
from charging.embedded_redis import EmbeddedRedis, with_password
from charging.errors import StartupError
from charging.events import EventCharging
from charging.history_store import HistoryStore
from charging.jobs import ALWAYS, Backoff, Job, Jobs
from charging.leases import Leases
from charging.ledger import Ledger
from charging.nchf.listener import NchfListener
from charging.nchf.notify import ChargingNotifier
from charging.nchf.nrf import HEARTBEAT_S
from charging.notifications import Notifier
from charging.rating import UnitKind
from charging.redis_link import RedisLink
from charging.redis_ready import wait_until_ready
from charging.renewals import Renewer
from charging.security.guard import Guard
from charging.security.mode import Mode, decide
from charging.security.policy import PolicyFile
from charging.security.server_tls import ServerTls
from charging.security.tls import CertificateFiles, TlsFilesInvalid
from charging.security.tokens import TokenStore
from charging.sessions import SessionCharging, UsageLimits
from charging.settings import Settings, redact_url
from charging.signals import SignalHub, SignallingDirectory, SignallingTopUps
from charging.status import add_servicer
from charging.subscribers import Directory
from charging.sweeper import Sweeper
from charging.topups import TopUps
from charging.v1 import (
    admin_pb2,
    billing_pb2,
    charging_pb2,
    crm_pb2,
    topup_pb2,
)
from charging.watch import SessionWatch
from console.serving import ConsoleServer
from postpaid.billing import Billing, build_billing
from postpaid.billing_api import BillingServicer
from postpaid.credit_movements import credit_rows
from provisioning import keys as provisioning_keys
from provisioning.acquisition import Acquisition
from provisioning.base import CustomerBase
from provisioning.bureau import HttpCreditBureau
from provisioning.coverage import STORE as COVERAGE_STORE
from provisioning.coverage import CoverageBook
from provisioning.crm_api import CrmServicer
from provisioning.customer_care import CustomerCare
from provisioning.network import HttpNetworkAdapter
from provisioning.order_store import OrderStore
from provisioning.screening import Screener
from provisioning.sealing import load_sealer
from provisioning.simulator import NetworkSimulator
from provisioning.untagged import adopt_untagged
from provisioning.worker import ProvisioningWorker

log = logging.getLogger("charging.server")

SERVICE_NAMES = (
    charging_pb2.DESCRIPTOR.services_by_name["Charging"].full_name,
    crm_pb2.DESCRIPTOR.services_by_name["Crm"].full_name,
    topup_pb2.DESCRIPTOR.services_by_name["TopUp"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
    billing_pb2.DESCRIPTOR.services_by_name["Billing"].full_name,
)


@dataclass
class App:
    settings: Settings
    clock: Clock = field(default_factory=SystemClock)
    run_background: bool = True
    grpc_port: int = 0
    token_port: int = 0
    metrics_port: int = 0
    redis: aioredis.Redis | None = None
    link: RedisLink | ClusterLink | None = None
    sweeper: Sweeper | None = None
    renewer: Renewer | None = None
    sessions: SessionCharging | None = None
    events: EventCharging | None = None
    catalogs: CatalogBook | None = None
    notifier: Notifier | None = None
    cdr_relay: CdrRelay | None = None
    _embedded: EmbeddedRedis | None = None
    _server: grpc.aio.Server | None = None
    _health: health.aio.HealthServicer | None = None
    _metrics_httpd: Any = None
    worker: ProvisioningWorker | None = None
    acquisition: Acquisition | None = None
    billing: Billing | None = None
    admission: Admission | None = None
    _simulator: NetworkSimulator | None = None
    jobs: Jobs = field(default_factory=Jobs)
    _serving: bool = False
    _hurry: asyncio.Event = field(default_factory=asyncio.Event)
    database: Pool | None = None
    _embedded_postgres: EmbeddedPostgres | None = None
    mode: Mode = Mode.LOCAL
    _policy: PolicyFile | None = None
    _tls: CertificateFiles | None = None
    console: ConsoleServer | None = None
    nchf: NchfListener | None = None
    leases: Leases | None = None
    diameter: DiameterDoor | None = None
    signal_hub: SignalHub | None = None
    watch: SessionWatch | None = None

    async def start(self) -> None:
        s = self.settings
        self._secure()
        self._listen()
        url = with_password(s.redis_url)
        if not url:
            self._embedded = EmbeddedRedis(
                s.redis_server_bin, s.redis_dir, s.redis_appendfsync, ready_timeout_s=s.redis_ready_timeout_s
            )
            url = await self._embedded.start()
        self.redis = store.connect(url, max_connections=s.redis_max_connections, tls=s.redis_tls())
        await wait_until_ready(self.redis, f"redis at {redact_url(url)}", s.redis_ready_timeout_s)
        self.link = store.link(url, tls=s.redis_tls())
        self.leases = Leases(self.redis, s.lease_s)
        await self._start_database()

        assert self.database is not None
        hold_ms = s.cdr_hold_ms if s.cdr_hold_ms >= 0 else await probe_hold(self.redis, s.redis_appendfsync)
        # Besides the accounts' outboxes, the audit entries of catalog and coverage loads.
        coverage_records = records_key(COVERAGE_STORE)
        self.cdr_relay = CdrRelay(
            self.redis,
            CdrStore(self.database),
            self.clock,
            hold_ms=hold_ms,
            documents=(keys.CATALOG_RECORDS, coverage_records, provisioning_keys.ORDER_RECORDS),
            history=HistoryStore(self.database, history_store.SOURCES),  # catalog and coverage versions
            # orders' and lines' rows (provisioning/order_store.py: a rejected order's document
            # goes once they are in); billing's credit movements (postpaid/credit_movements.py)
            kept=(OrderStore(self.database, self.redis), *credit_rows()),
        )
        ledger = Ledger(self.link, on_records=self.cdr_relay.wake)
        self.catalogs = CatalogBook(self.redis)
        self.catalogs.on_records = self.cdr_relay.wake_outbox
        # The operator's CHARGING_CATALOG_FILE, when it changes the catalog in force, is
        # audited like a LoadCatalog with the server as its actor (the bundled sample that
        # a new installation starts with is not a change anyone made).
        author = Author("server:" + s.catalog_file, self.clock.now_ms()) if s.catalog_file else None
        await self.catalogs.start(s.catalog_file, prefer_file=bool(s.catalog_file), author=author)
        await follow_changes(self.redis, self.catalogs, self.jobs, s)
        # Line state changes and top-ups signal the sessions' clients (charging/signals.py):
        # Diameter RAR/ASR, and Charging.WatchSessions for gRPC gateways (charging/watch.py).
        directory = SignallingDirectory(
            self.redis, s.subscriber_cache_size, clock=self.clock, on_records=self.cdr_relay.wake
        )
        self.signal_hub = hub = SignalHub(self.redis)
        self.watch = SessionWatch(directory, hub)
        self.notifier = Notifier(self.redis)
        ctx = Context(
            ledger, directory, self.catalogs, self.clock, self.notifier, s.low_balance_micros, s.usage_records
        )
        limits = UsageLimits(
            {
                UnitKind.TIME: s.max_used_time_s,
                UnitKind.VOLUME: s.max_used_octets,
                UnitKind.SERVICE_SPECIFIC: s.max_used_units,
                UnitKind.MONEY: s.max_used_money_micros,
            },
            s.overrun_floor_micros,
        )
        self.sessions = sessions = SessionCharging(
            ctx,
            supervision_factor=s.supervision_factor,
            answer_ttl_s=s.answer_ttl_s,
            refund_ttl_s=s.idempotency_ttl_s,
            limits=limits,
        )
        self.events = events = EventCharging(ctx, idempotency_ttl_s=s.idempotency_ttl_s)
        topups = SignallingTopUps(ctx, idempotency_ttl_s=s.idempotency_ttl_s, signals=self.redis)
        self.sweeper = Sweeper(
            ledger,
            self.clock,
            interval_s=s.sweep_interval_s,
            batch=s.sweep_batch,
            notifier=self.notifier,
            records=s.usage_records,
        )
        self.renewer = Renewer(topups, interval_s=s.renew_interval_s)

        await self._start_provisioning(directory)
        assert self.acquisition is not None
        if self.acquisition.base is not None:
            await self.acquisition.base.record_gauges()  # the customer base from Redis, not from zero
        assert self.database is not None
        self.billing = build_billing(
            s, self.redis, self.catalogs, self.clock, self.notifier, self.link, database=self.database
        )
        # What Redis kept before PostgreSQL did (and other old layouts): moved once, one
        # process at a time under the ``upgrade-moves`` lease, before billing and the CRM
        # start (``upgrade.py``, as ``charging migrate`` does).
        await upgrade.move_all_of(s, self.redis, self.database, self.clock, self.leases.holder)
        self.billing.on_records = self.cdr_relay.wake if self.cdr_relay is not None else None
        if self.cdr_relay is not None:  # credit movements are relayed soon, not at the next scan
            self.billing.payments.on_credit = self.billing.runs.on_credit = self.cdr_relay.wake_outbox
        self.acquisition.billing = self.billing
        self.billing.attach_lines(self.acquisition)
        care = CustomerCare(self.redis, self.database, self.acquisition.sealer, self.billing.payments)
        # Orders and lines' history are rows (``keep_records``; a decision's rows after the
        # relay's hold).
        hold = self.cdr_relay.hold_ms if self.cdr_relay is not None else 0
        self.acquisition.keep_records(OrderStore(self.database), hold)

        local = self.mode is not Mode.SECURED
        guard = Guard(self._policy, TokenStore(self.redis), local=local, door=bool(s.behind_door))
        options = server_options(s)
        if s.behind_door:
            # One connection from the door carries every caller's calls: the bounds per
            # connection are the door's listeners' (supervisor.door_argv), not this socket's.
            per_connection = {
                "grpc.max_concurrent_streams",
                "grpc.max_connection_idle_ms",
                "grpc.max_connection_age_ms",
            }
            options = [(k, v) for k, v in options if k not in per_connection]
            options.append(("grpc.max_concurrent_streams", 2**31 - 1))
        self._server = grpc.aio.server(interceptors=[guard], options=options)
        self.admission = admission = Admission(s.max_in_flight)
        assert self.database is not None
        trail = AuditTrail(self.database)
        for servicer, service in (
            (
                ChargingServicer(sessions, events, admission, self.watch),
                charging_pb2.DESCRIPTOR.services_by_name["Charging"],
            ),
            (TopUpServicer(topups), topup_pb2.DESCRIPTOR.services_by_name["TopUp"]),
            # A CRM dispute is billing's dispute (one store): customer care delegates to it.
            (
                CrmServicer(self.acquisition, care),
                crm_pb2.DESCRIPTOR.services_by_name["Crm"],
            ),
            (BillingServicer(self.billing), billing_pb2.DESCRIPTOR.services_by_name["Billing"]),
            (
                AdminServicer(directory, self.catalogs, self.renewer, self.clock, trail, HistoryStore(self.database)),
                admin_pb2.DESCRIPTOR.services_by_name["Admin"],
            ),
        ):
            add_servicer(self._server, servicer, service, admission)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        if s.reflection:
            reflection.enable_server_reflection(
                (*SERVICE_NAMES, reflection.SERVICE_NAME, health.SERVICE_NAME), self._server
            )
        try:
            if self._tls is None or s.behind_door:  # behind the door: its Unix socket
                self.grpc_port = self._server.add_insecure_port(s.grpc_address)
            else:
                creds = self._tls.credentials(require_client_cert=bool(s.tls_client_ca))
                self.grpc_port = self._server.add_secure_port(s.grpc_address, creds)
        except RuntimeError:
            raise StartupError(f"cannot listen on gRPC address {s.grpc_address}") from None
        if s.grpc_token_address and self._tls is not None and not s.behind_door:
            try:
                self.token_port = self._server.add_secure_port(s.grpc_token_address, self._tls.credentials(False))
            except RuntimeError:
                raise StartupError(f"cannot listen on gRPC address {s.grpc_token_address}") from None
        await self._server.start()
        if s.console_address:
            self.console = await start_console(self, topups, care)
        if self.nchf is not None:  # the 5G CHF door (charging/nchf/)
            notifier = ChargingNotifier.of(s, directory, hub)  # ChargingNotify on the signals
            await self.nchf.start(sessions, self.clock, TokenStore(self.redis), admission, notifier)
            if self.nchf.nrf is not None:
                keep = self.nchf.nrf.keep_registered
                self.jobs.start(Job("nrf", keep, interval_s=HEARTBEAT_S, clock=self.clock, backoff=job_backoff(s)))
        diameter = DiameterConfig.of(s)
        if diameter is not None:  # the Diameter Gy/Ro door, on the same core (charging/diameter/)
            self.diameter = DiameterDoor(
                diameter,
                sessions,
                events,
                directory,
                self.catalogs,
                self.clock,
                admission=admission,  # the slots gRPC and Nchf draw on
                signals_from=hub,
                tls=ServerTls(s, what="Diameter") if diameter.needs_tls else None,
            )
            try:
                await self.diameter.start()
            except OSError as exc:
                raise StartupError(f"cannot listen on Diameter address {s.diameter_address}: {exc.strerror}") from None
        await hub.start()  # every listener (gRPC watch, Nchf notifier, Diameter door) is in place
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._serving = True

        self.jobs.on_death = self._not_serving
        for job in self._background_jobs():
            self.jobs.start(job)
        if self._embedded is not None:
            self.jobs.watch("redis_supervisor", self._embedded.supervise())
        self.jobs.watch("loop_lag", heap.watch_loop_lag())
        self._start_database_tasks()
        if self.mode is Mode.INSECURE:
            log.warning("CHARGING_INSECURE=true: plaintext, and every caller has every role")
        elif self.mode is Mode.LOCAL:
            log.info("local development policy: plaintext on loopback, every caller has every role")
        log.info(
            "serving",
            extra={
                "grpc_port": self.grpc_port,
                "token_port": self.token_port,
                "metrics_port": self.metrics_port,
                "security": self.mode.value,
            },
        )

    def _secure(self) -> None:
        """Before anything else: the security mode, the policy and the TLS files, or
        ``StartupError`` naming what is missing or wrong."""
        s = self.settings
        if s.behind_door:  # the supervisor decided it for the door's addresses
            self.mode = Mode(s.behind_door)
        else:
            self.mode = decide(
                [s.grpc_address, s.grpc_token_address], bool(s.tls_cert), bool(s.policy_file), s.insecure
            )
        if s.policy_file:
            self._policy = PolicyFile(s.policy_file)
        if self.mode is Mode.SECURED:
            try:
                self._tls = CertificateFiles(s.tls_cert, s.tls_key, s.tls_client_ca)
            except TlsFilesInvalid as exc:
                raise StartupError(f"TLS: {exc}") from None

    def _background_jobs(self) -> list[Job]:
        """Every periodic loop of the server. The notification relay runs also without
        ``run_background``: requests wake it and wait for nothing else."""
        s = self.settings
        assert self.redis is not None and self.notifier is not None and self.catalogs is not None
        assert self.sweeper is not None and self.renewer is not None and self.billing is not None
        assert self.worker is not None and self.acquisition is not None and self.leases is not None
        leases = self.leases

        def job(name: str, pass_: Callable[[], Awaitable[Any]], interval_s: float, **kw: Any) -> Job:
            # One holder among all processes (leases.py), unless every process runs its own.
            kw.setdefault("gate", leases.lease(name))
            return Job(name, pass_, interval_s=interval_s, clock=self.clock, backoff=job_backoff(s), **kw)

        # Per process: each relays the outboxes its own requests woke, and follows the catalog.
        jobs = [job("notifications", self.notifier.relay_woken, 60.0, wake=self.notifier.wakeup, gate=ALWAYS)]
        # Usage records to PostgreSQL, per process too: woken by this process's requests like
        # the notifications; records no reply announced (a crashed process, a lost reply)
        # are found by the relay's scan, on start and every 10 minutes (cdr_relay.py).
        assert self.cdr_relay is not None
        jobs.append(job("cdr_relay", self.cdr_relay.relay_waiting, 60.0, wake=self.cdr_relay.wakeup, gate=ALWAYS))
        relay = self.cdr_relay

        async def relay_lag() -> None:  # a function gauge is not exported under workers
            metrics.CDR_RELAY_LAG.set(relay.lag_s())

        jobs.append(job("cdr_relay_lag", relay_lag, 1.0, gate=ALWAYS))
        if not self.run_background:
            return jobs
        redis, base = self.redis, self.acquisition.base
        jobs += [
            job("sweeper", self.sweeper.sweep_due, self.sweeper.interval_s),
            job("renewer", self.renewer.renew_once, self.renewer.interval_s),
            job("census", lambda: census(redis, base, self.clock.now_ms()), s.census_interval_s),
            job("catalog", self.catalogs.follow, s.catalog_refresh_s, gate=ALWAYS),
        ]
        if s.provisioning_in_server:
            jobs += provisioning_jobs(s, self.acquisition, self.clock, leases)
        if s.billing_interval_s > 0:
            jobs += [job(name, pass_, s.billing_interval_s) for name, pass_ in self.billing.passes().items()]
        return jobs

    async def _not_serving(self, job: str) -> None:
        """A background job died: out of the load balancer until a restart."""
        if self._health is not None:
            for name in ("", *SERVICE_NAMES):
                await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    def hurry(self) -> None:
        """Skip what is left of the shutdown delay (a second SIGTERM or SIGINT)."""
        self._hurry.set()

    def _listen(self) -> None:
        """Before anything else: ``StartupError`` when the gRPC address is in use, and
        listen on the metrics address."""
        s = self.settings
        # Asked here, not only when gRPC binds it: that comes after Redis has started, and
        # gRPC says only "failed to bind", after a log line of its own.
        for address in (s.grpc_address, s.grpc_token_address):
            if address and not s.worker_of and in_use(address):  # a worker shares its supervisor's
                raise StartupError(f"gRPC address {address} is in use")
        if s.metrics_address:
            host, _, port = s.metrics_address.rpartition(":")
            try:
                self._metrics_httpd, _ = start_http_server(int(port), addr=host)
            except OSError as exc:
                raise StartupError(f"cannot listen on metrics address {s.metrics_address}: {exc.strerror}") from None
            self.metrics_port = self._metrics_httpd.server_port
        if s.nchf_address:  # bound now: a taken address stops the server before Redis starts
            self.nchf = NchfListener(s, self._policy)

    async def _start_database(self) -> None:
        """The system of record: the configured PostgreSQL, or an embedded one (development),
        migrated at start when it is the embedded one or when told to."""
        s = self.settings
        url = s.database_url
        owner_url = s.database_migrate_url or s.database_url  # migrations run as the schema's owner
        if not url:
            self._embedded_postgres = EmbeddedPostgres(s.database_dir, s.postgres_bin_dir)
            url = owner_url = await self._embedded_postgres.start()
        problem = plaintext_problem(s.database_url) if s.database_url else None
        if s.database_url and s.database_migrate_url and not problem:
            problem = plaintext_problem(s.database_migrate_url)
        if problem and not s.insecure:
            raise StartupError(problem + "; or set CHARGING_INSECURE=true")
        if problem:
            log.warning("the system of record is reached in clear", extra={"problem": problem})
        if not s.database_url or s.database_migrate:
            await asyncio.to_thread(migrations.upgrade, owner_url)
        if self._embedded_postgres is not None:  # the server's own login role, not the owner
            url = await asyncio.to_thread(self._embedded_postgres.layout.ensure_server_login)
        self.database = await open_pool(url, s.database_pool_size)
        await migrations.check_current(self.database, migrations.head())
        async with self.database.connection() as conn:
            owner = await database_roles.owner_problem(conn)
        if owner:
            log.warning("the server's database role owns the schema", extra={"problem": owner})

    def _start_database_tasks(self) -> None:
        """Partition maintenance (the ``retention`` job) and the embedded PostgreSQL's supervision."""
        assert self.database is not None and self.leases is not None
        if self.run_background:
            policies = [
                retention.Policy("usage_records", self.settings.usage_retention_months),
                retention.Policy("audit", self.settings.audit_retention_months),
            ]
            database, clock = self.database, self.clock

            async def maintain() -> None:
                await retention.maintain(database, policies, retention.utc_day(clock))

            self.jobs.start(
                Job(
                    "retention",
                    maintain,
                    interval_s=3600.0,
                    clock=clock,
                    backoff=job_backoff(self.settings),
                    gate=self.leases.lease("retention"),
                )
            )
        if self._embedded_postgres is not None:
            self.jobs.watch("postgres_supervisor", self._embedded_postgres.supervise())

    async def _start_provisioning(self, directory: Directory) -> None:
        """The CRM's acquisition flow and the provisioning worker, on the configured
        network gateway or on the bundled simulator."""
        assert self.redis is not None and self.catalogs is not None
        url = self.settings.network_url
        if not url:
            self._simulator = NetworkSimulator("127.0.0.1:0").start()
            url = self._simulator.url
        self.acquisition = await build_acquisition(
            self.settings, url, self.redis, directory, self.catalogs, self.clock, database=self.database
        )
        if self.cdr_relay is not None:
            self.acquisition.coverage.on_records = self.cdr_relay.wake_outbox
            self.acquisition.orders.on_records = self.cdr_relay.wake_outbox
        self.worker = self.acquisition.worker

    async def stop(self) -> None:
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._serving and self.settings.shutdown_delay_s > 0:
            # Calls are still served while load balancers polling health see NOT_SERVING
            # and move traffic away; stopping at once took the server from SERVING
            # straight to unreachable.
            log.info("not serving; draining after the delay", extra={"delay_s": self.settings.shutdown_delay_s})
            try:
                async with asyncio.timeout(self.settings.shutdown_delay_s):
                    await self._hurry.wait()
            except TimeoutError:
                pass
        if self.console is not None:
            await self.console.stop()
        if self.nchf is not None:
            await self.nchf.stop(self.settings.grace_period_s)
        if self.diameter is not None:
            await self.diameter.stop()
        if self.signal_hub is not None:
            await self.signal_hub.stop()
        if self.watch is not None:
            self.watch.close()  # open WatchSessions streams end now, not after the grace
        if self._server is not None:
            await self._server.stop(self.settings.grace_period_s)
        await self.jobs.stop()
        if self.acquisition is not None:
            await self.acquisition.aclose()
        if self._simulator is not None:
            self._simulator.stop()
        if self.link is not None:
            await self.link.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        if self._embedded is not None:
            await self._embedded.stop()
        if self.database is not None:
            await self.database.close()
        if self._embedded_postgres is not None:
            await self._embedded_postgres.stop()
        if self._metrics_httpd is not None:
            self._metrics_httpd.shutdown()
            self._metrics_httpd.server_close()
        if self.redis is not None:  # it started; a server that could not listen says only why
            log.info("stopped")


def in_use(address: str) -> bool:
    """Whether another socket listens on ``address`` (host:port), binding it as gRPC does
    without SO_REUSEPORT. Other bind errors are left for gRPC to report."""
    host, _, port = address.rpartition(":")
    try:
        infos = socket.getaddrinfo(
            host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (OSError, ValueError):
        return False
    for family, kind, proto, _, where in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(where)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
    return False


async def start_console(app: App, topups: TopUps, care: CustomerCare) -> ConsoleServer:
    """The customer-service console (console/) on its own address, calling the same
    domain objects as the servicers."""
    from console.serving import build_console

    assert app.redis is not None and app.database is not None and app.acquisition is not None
    assert app.billing is not None and app.catalogs is not None
    s = app.settings
    server = build_console(
        s, app.redis, app.database, app.clock, app.acquisition, care, app.billing, topups, app.catalogs, app.jobs
    )
    await server.start()
    return server


async def follow_changes(client: aioredis.Redis, catalogs: CatalogBook, jobs: Jobs, settings: Settings) -> None:
    """Catalogs loaded through other processes apply in this one before their load is
    answered (changes.py): subscribed before this process serves."""
    feed = ChangeFeed(client, settings.change_ack_timeout_s)
    feed.on("catalog", catalogs.refresh)
    catalogs.feed = feed
    jobs.watch("changes", feed.run())
    try:
        async with asyncio.timeout(settings.redis_ready_timeout_s):
            await feed.wait_live()
    except TimeoutError:
        raise StartupError("could not subscribe to the change channel of Redis") from None


async def census(client: aioredis.Redis, base: CustomerBase | None, now_ms: int) -> None:
    """One pass of the ``census`` job: sessions, reserved money, what the sweeper has not
    released, and the customer base."""
    await record_census(client, now_ms)
    if base is not None:
        await base.record_gauges()


def job_backoff(settings: Settings) -> Backoff:
    return Backoff(settings.job_retry_s, settings.job_retry_max_s)


def provisioning_jobs(settings: Settings, acquisition: Acquisition, clock: Clock, leases: Leases) -> list[Job]:
    """The provisioning worker, woken early by its change stream, and the order resumer:
    in the server, or in ``charging worker``, each under its lease."""
    backoff = job_backoff(settings)
    worker = acquisition.worker
    return [
        Job(
            "provisioning",
            worker.reconcile_once,
            interval_s=settings.provisioning_interval_s,
            clock=clock,
            backoff=backoff,
            wake=worker.changes(),
            gate=leases.lease("provisioning"),
        ),
        Job(
            "order_resumer",
            acquisition.resume_stalled,
            interval_s=settings.order_resume_interval_s,
            clock=clock,
            backoff=backoff,
            gate=leases.lease("order_resumer"),
        ),
    ]


async def build_acquisition(
    settings: Settings,
    network_url: str,
    client: aioredis.Redis,
    directory: Directory,
    catalogs: CatalogBook,
    clock: Clock,
    *,
    database: Pool | None = None,
) -> Acquisition:
    """Acquisition, screening, credit and the provisioning worker, wired together (with
    ``database``, customers and their units recorded in PostgreSQL)."""
    await adopt_untagged(client)  # keys of before the {crm} hash tag
    salt = settings.crm_salt
    if not salt:
        await client.set(provisioning_keys.SALT, secrets.token_hex(16), nx=True)
        salt = str(await client.get(provisioning_keys.SALT))
    worker = ProvisioningWorker(client, HttpNetworkAdapter(network_url, timeout_s=settings.network_timeout_s), clock)
    acquisition = Acquisition(
        client,
        directory,
        catalogs,
        Screener(client, salt),
        CoverageBook(client),
        worker,
        clock,
        CustomerBase(client),
        HttpCreditBureau(settings.bureau_url, timeout_s=settings.network_timeout_s) if settings.bureau_url else None,
        lease_ms=int(settings.order_lease_s * 1000),
        sealer=load_sealer(settings),
        database=database,
    )
    worker.on_ack = acquisition.acknowledged
    return acquisition


async def provision(settings: Settings) -> None:
    """The provisioning worker as its own process (``charging worker``), next to servers
    started with ``CHARGING_PROVISIONING_IN_SERVER=false``. Runs until SIGTERM or SIGINT."""
    if not settings.redis_url or not settings.network_url:
        raise SystemExit("charging worker needs CHARGING_REDIS_URL and CHARGING_NETWORK_URL")
    client = store.connect(with_password(settings.redis_url), max_connections=8, tls=settings.redis_tls())
    try:
        await wait_until_ready(client, f"redis at {redact_url(settings.redis_url)}", settings.redis_ready_timeout_s)
    except StartupError as exc:
        await client.aclose()
        raise SystemExit(f"error: {exc}") from None
    if not settings.database_url:
        # A terminated postpaid line's final invoice is issued from here too.
        await client.aclose()
        raise SystemExit("charging worker needs CHARGING_DATABASE_URL")
    catalogs = CatalogBook(client)
    if not await catalogs.refresh():
        raise SystemExit("no catalog is stored yet: start a charging server first")
    clock = SystemClock()
    try:
        database = await open_pool(settings.database_url, settings.database_pool_size)
    except StartupError as exc:
        await client.aclose()
        raise SystemExit(f"error: {exc}") from None
    # An old installation's records are moved (or being moved by a server) before the jobs run.
    await upgrade.move_all_of(settings, client, database, clock)
    # Orders resumed here record the customers they make in PostgreSQL too.
    acquisition = await build_acquisition(
        settings, settings.network_url, client, SignallingDirectory(client, 10_000), catalogs, clock, database=database
    )
    # Acknowledged postpaid lines are enrolled in billing from this process too.
    billing = build_billing(settings, client, catalogs, clock, None, database=database)
    acquisition.billing = billing
    billing.attach_lines(acquisition)
    # acknowledged orders and line changes are rows; decisions' rows at once only with no hold
    hold = settings.cdr_hold_ms if settings.cdr_hold_ms >= 0 else await probe_hold(client, settings.redis_appendfsync)
    acquisition.keep_records(OrderStore(database), hold)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    died: list[str] = []

    async def job_died(name: str) -> None:
        # No health service here: exit with an error, for the supervisor to restart us.
        died.append(name)
        stop.set()

    jobs = Jobs(on_death=job_died)
    await follow_changes(client, catalogs, jobs, settings)
    for job in provisioning_jobs(settings, acquisition, clock, Leases(client, settings.lease_s)):
        jobs.start(job)
    jobs.start(
        Job(
            "catalog",
            catalogs.follow,
            interval_s=settings.catalog_refresh_s,
            clock=clock,
            backoff=job_backoff(settings),
        )
    )
    log.info("provisioning worker running")
    try:
        await stop.wait()
    finally:
        await jobs.stop()
        await acquisition.aclose()
        await client.aclose()
        await database.close()
        log.info("provisioning worker stopped")
    if died:
        raise SystemExit(f"error: background job {died[0]} died")


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully. A server that cannot start
    exits with status 1 and one line on stderr saying why."""
    app = App(settings)
    stop = asyncio.Event()

    def signalled() -> None:
        if stop.is_set():
            app.hurry()  # a second signal: drain now
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signalled)
    failure: StartupError | None = None
    pauses = heap.PAUSES
    pauses.install()
    try:
        await app.start()
        # What the process holds from its start is out of the collector's sight (heap.py).
        frozen = heap.freeze_startup_heap()
        log.info("start-up heap frozen", extra={"objects": frozen.frozen, "collected": frozen.collected})
        if settings.ready_fd >= 0:  # a worker: tell the supervisor (supervisor.py)
            os.write(settings.ready_fd, b"serving")
            os.close(settings.ready_fd)
        await stop.wait()
        log.info("shutting down")
    except StartupError as exc:
        failure = exc
    finally:
        await app.stop()
        pauses.remove()
    if failure is not None:
        raise SystemExit(f"error: {failure}")
