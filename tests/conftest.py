"""Fixtures: a real redis-server on a free port, a real PostgreSQL on a Unix socket, a real
gRPC server on port 0, real stubs."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import hypothesis
import psycopg
import pytest
import redis
import redis.asyncio as aioredis
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from charging import keys, migrations
from charging.clock import ManualClock
from charging.embedded_postgres import (
    SERVER_SETTINGS,
    UNDURABLE_SETTINGS,
    Layout,
    RunAs,
    as_user,
    find_bin_dir,
    open_log,
    postgres_command,
    prepare,
    private_dir,
    run_as,
)
from charging.embedded_redis import redis_command
from charging.server import App
from charging.settings import Settings
from charging.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    charging_pb2,
    charging_pb2_grpc,
    common_pb2,
    crm_pb2_grpc,
    topup_pb2,
    topup_pb2_grpc,
)
from postpaid import config as billing_config
from postpaid.billing import Billing
from provisioning.credit import CreditDecision
from provisioning.customers import Customer
from provisioning.lifecycle import LineState
from provisioning.lines import Line
from provisioning.orders import Order
from provisioning.sealing import Sealer, new_key_entry
from provisioning.simulator import NetworkSimulator
from tests.database_supply import DatabaseSupply

# No deadline per example: the property tests check results, not speed, and a loaded CI
# machine must not turn a slow example into a failure (Hypothesis' default is 200 ms).
hypothesis.settings.register_profile("suite", deadline=None)
hypothesis.settings.load_profile("suite")

MSISDN = "491700000001"  # the subscriber most tests create first
# The test servers' network and bureau timeout: the simulator and bureau answer in
# milliseconds, but a loaded machine can take longer than the default 2 s, and a retry is
# due on the tests' clock only (which does not move by itself).
NETWORK_TIMEOUT_S = 10.0
LIMIT = 50_000_000  # 50.00 EUR: the credit limit of postpaid test lines
DATA_KEY = new_key_entry("test")  # the test servers' key ring (no key file in the work tree)
SEALER = Sealer.from_text(DATA_KEY, "tests")  # for records written outside a server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (make test installs it)")
    directory: Path = tmp_path_factory.mktemp("redis")
    port = free_port()
    proc = subprocess.Popen(redis_command(binary, directory, "no", port=port), stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start")
    client.close()
    yield url
    proc.terminate()
    proc.wait(10)


# The modules that also run on a local Redis Cluster (3 primaries, 3 replicas).
CLUSTER_MODULES = frozenset(
    {
        "test_sessions",
        "test_tariff_changes",
        "test_events",
        "test_topups",
        "test_buckets",
        "test_pools",
        "test_renewals",
        "test_sweeper",
        "test_overrun",
        "test_ledger_invariants",
        "test_due_shards",
        "test_cdrs",
        "test_catalog_in_use",
        "test_changes",
        "test_caches_across_processes",
        "test_bill_run",
        "test_payments",
        "test_postpaid_e2e",
        "test_provisioning",
        "test_acquisition",
        "test_dunning",
        "test_receivables",
        "test_billing_shards",
        "test_credit_movements",
        "test_settled_invoices",
    }
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The tests of ``CLUSTER_MODULES`` that use Redis run twice: single server, cluster."""
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    if module in CLUSTER_MODULES and "redis_url" in metafunc.fixturenames:
        metafunc.parametrize("redis_backend", ["single", "cluster"], indirect=True)


@pytest.fixture
def redis_backend(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "single"))


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real Redis Cluster, started for the first test that asks for it."""
    from tests.redis_cluster import local_cluster

    with local_cluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture
def redis_url(redis_backend: str, request: pytest.FixtureRequest) -> str:
    if redis_backend == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        cluster.wait_ok()
        cluster.flush()
        return str(cluster.url)
    redis_server: str = request.getfixturevalue("redis_server")
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    return redis_server


def redis_client(url: str) -> redis.Redis:
    """A plain, decoding client on ``url``: a ``RedisCluster`` for a cluster URL (typed
    as ``Redis``: it answers the same commands for keys of one slot)."""
    from charging.cluster_link import ClusterUrl

    cluster = ClusterUrl.parse(url)
    if cluster is None:
        return redis.Redis.from_url(url, decode_responses=True)
    nodes = [redis.cluster.ClusterNode(host, port) for host, port in cluster.seeds]
    client: Any = redis.RedisCluster(startup_nodes=nodes, decode_responses=True)
    return client  # type: ignore[no-any-return]


async def async_redis_client(url: str, client_name: str | None = None) -> aioredis.Redis:
    """``redis_client`` for asyncio: a ``RedisCluster`` for a cluster URL, initialised
    here: redis-py runs each command queued in a cluster transaction in a thread with an
    event loop of its own, and a client whose first command is one of those would open
    its connections on that loop (RuntimeError: attached to a different loop)."""
    from charging.cluster_link import ClusterUrl

    cluster = ClusterUrl.parse(url)
    if cluster is None:
        return aioredis.Redis.from_url(url, decode_responses=True, client_name=client_name)
    nodes = [aioredis.cluster.ClusterNode(host, port) for host, port in cluster.seeds]
    client: Any = aioredis.RedisCluster(startup_nodes=nodes, decode_responses=True, client_name=client_name)
    await client.initialize()
    return client  # type: ignore[no-any-return]


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client on the test Redis, to look at what the server stored."""
    client = redis_client(redis_url)
    yield client
    client.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def set_time(clock: ManualClock, text: str) -> int:
    """Move the clock to an ISO 8601 instant; returns it in seconds."""
    target = int(datetime.fromisoformat(text).timestamp())
    clock.advance(ms=target * 1000 - clock.now_ms())
    return target


@pytest.fixture
def settings(redis_url: str, database_url: str) -> Settings:
    # A database of the test's own: invoices are kept there (numbers start at 1 per test).
    return Settings(
        grpc_address="127.0.0.1:0",
        metrics_address="",
        nchf_address="",
        redis_url=redis_url,
        database_url=database_url,
        sweep_interval_s=0.05,
        census_interval_s=0.05,
        grace_period_s=1.0,
        data_key=DATA_KEY,
        shutdown_delay_s=0.0,
        job_retry_s=0.01,
        job_retry_max_s=0.05,
        # No record hold: the tests' clock does not move while a relay drains, and the
        # test cluster's nodes fsync every second (a hold of 2.5 s); the hold has its own
        # tests (test_cdr_hold.py) and the chaos suite's machine death checks it.
        cdr_hold_ms=0,
        network_timeout_s=NETWORK_TIMEOUT_S,
    )


@pytest.fixture
async def app(settings: Settings, clock: ManualClock) -> AsyncIterator[App]:
    application = App(settings, clock=clock, run_background=False)
    await application.start()
    yield application
    await application.stop()


def quiet(app: App) -> tuple[str, ...]:
    """The app's own record relay leaves the outboxes of documents and orders to the
    test's relays: requests stop waking it for them, and its passes stop looking for the
    outboxes known by name (it still scans for accounts' record outboxes, once the tests'
    clock has jumped: right after a fixture moved it, 0.25 s into the test). Returns those
    names: ``app.cdr_relay.documents = names`` hands them back. (Without it the app's relay
    found an order outbox a test had broken on purpose, backed off, and emptied it on its
    retry before the test looked: seen in CI under load.)"""
    assert app.catalogs is not None and app.acquisition is not None and app.cdr_relay is not None
    app.catalogs.on_records = None
    app.acquisition.coverage.on_records = None
    app.acquisition.orders.on_records = None
    named, app.cdr_relay.documents = app.cdr_relay.documents, ()
    return named


@dataclass
class Stubs:
    channel: grpc.aio.Channel
    charging: charging_pb2_grpc.ChargingStub
    topup: topup_pb2_grpc.TopUpStub
    admin: admin_pb2_grpc.AdminStub

    @staticmethod
    def on(channel: grpc.aio.Channel) -> Stubs:
        return Stubs(
            channel,
            charging_pb2_grpc.ChargingStub(channel),
            topup_pb2_grpc.TopUpStub(channel),
            admin_pb2_grpc.AdminStub(channel),
        )

    async def subscriber(
        self, msisdn: str = "491700000001", balance: int = 1_000_000, plan: str = "default", imsi: str = ""
    ) -> admin_pb2.Subscriber:
        return await self.admin.CreateSubscriber(
            admin_pb2.CreateSubscriberRequest(msisdn=msisdn, imsi=imsi, plan_id=plan, initial_balance_micros=balance)
        )

    async def balance(self, msisdn: str = "491700000001") -> admin_pb2.Subscriber:
        return await self.admin.GetSubscriber(common_pb2.SubscriberId(msisdn=msisdn))


async def balance(stubs: Stubs, msisdn: str = MSISDN) -> topup_pb2.Balance:
    """The balance as the TopUp service shows it, buckets included."""
    return await stubs.topup.GetBalance(topup_pb2.BalanceRequest(subscriber=common_pb2.SubscriberId(msisdn=msisdn)))


@pytest.fixture
async def crm(stubs: Stubs, clock: ManualClock) -> AsyncIterator[crm_pb2_grpc.CrmStub]:
    """The CRM service of the app, on 2026-11-18 (a Wednesday)."""
    clock.advance(ms=1_795_000_000_000 - clock.now_ms())
    yield crm_pb2_grpc.CrmStub(stubs.channel)


@pytest.fixture
def network() -> Iterator[NetworkSimulator]:
    """The network element simulator, a real HTTP server on a free port."""
    simulator = NetworkSimulator().start()
    yield simulator
    simulator.stop()


async def notifications(app: App, r: redis.Redis) -> list[dict[str, str]]:
    """The notification stream once every relay the app has woken so far is done. A
    request wakes its relay before it answers, so this holds all it notified."""
    assert app.notifier is not None
    await app.notifier.idle()
    entries: Any = r.xrange(keys.NOTIFICATIONS)
    return [fields for _id, fields in entries]


@pytest.fixture
async def stubs(app: App) -> AsyncIterator[Stubs]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    yield Stubs.on(channel)
    await channel.close()


INITIAL = charging_pb2.REQUEST_TYPE_INITIAL
UPDATE = charging_pb2.REQUEST_TYPE_UPDATE
TERMINATE = charging_pb2.REQUEST_TYPE_TERMINATE


def session_request(
    session_id: str,
    kind: int,
    number: int,
    groups: list[dict[str, object]],
    msisdn: str = "491700000001",
    called_party: str = "",
    visited_network: str = "",
) -> charging_pb2.SessionRequest:
    """groups: dicts with rating_group and optional requested/used (dicts of unit fields) and final."""
    req = charging_pb2.SessionRequest(
        session_id=session_id,
        request_type=kind,  # type: ignore[arg-type]
        request_number=number,
        subscriber=common_pb2.SubscriberId(msisdn=msisdn),
        called_party=called_party,
        visited_network=visited_network,
    )
    for g in groups:
        rg = req.rating_groups.add(rating_group=int(g["rating_group"]))  # type: ignore[call-overload]
        if "requested" in g:
            rg.requested.SetInParent()
            for k, v in dict(g["requested"]).items():  # type: ignore[call-overload]
                setattr(rg.requested, k, v)
        if "used" in g:
            rg.used.SetInParent()
            for k, v in dict(g["used"]).items():  # type: ignore[call-overload]
                setattr(rg.used, k, v)
        if "used_after" in g:
            rg.used_after_tariff_change.SetInParent()
            for k, v in dict(g["used_after"]).items():  # type: ignore[call-overload]
                setattr(rg.used_after_tariff_change, k, v)
        if g.get("final"):
            rg.reporting_reason = charging_pb2.REPORTING_REASON_FINAL
    return req


def sms_request(event_id: str, msisdn: str = MSISDN, direction: int = 0) -> charging_pb2.EventRequest:
    """One SMS (rating group 20) to a national mobile number, debited directly."""
    req = charging_pb2.EventRequest(
        event_id=event_id,
        action=charging_pb2.REQUESTED_ACTION_DIRECT_DEBITING,
        subscriber=common_pb2.SubscriberId(msisdn=msisdn),
        rating_group=20,
        called_party="491711234567",
        direction=direction,  # type: ignore[arg-type]
    )
    req.requested.service_specific_units = 1
    return req


class LineBook:
    """The line lifecycle as collection sees it: orders are applied at once (the network
    simulator and the provisioning worker are exercised end to end in test_postpaid_e2e)."""

    def __init__(self) -> None:
        self.lines: dict[str, dict[str, str]] = {}
        self.orders: list[tuple[str, str, str]] = []

    async def get_line(self, msisdn: str) -> Line | None:
        found = self.lines.get(msisdn)
        return None if found is None else Line(msisdn, "", "", "", LineState(found["state"]), found["order_id"])

    async def order(self, order_id: str, msisdn: str, kind: str, plan_id: str = "", reason: str = "") -> Order:
        if any(o[0] == order_id for o in self.orders):
            return Order(order_id, "COMPLETED")
        self.orders.append((order_id, msisdn, kind))
        state = {"BAR_OUTGOING": "barred_outgoing", "SUSPEND": "suspended", "RESUME": "active"}.get(kind, "terminated")
        self.lines[msisdn] = {"state": state, "order_id": order_id}
        return Order(order_id, "COMPLETED")

    async def get_order(self, order_id: str) -> Order | None:
        return Order(order_id, "COMPLETED") if any(o[0] == order_id for o in self.orders) else None


@pytest.fixture
async def postpaid_billing(app: App, clock: ManualClock) -> AsyncIterator[tuple[Billing, LineBook]]:
    """Billing on the app's Redis and catalog, on 2026-01-10, ordering lines through a
    ``LineBook``."""
    clock.advance(ms=1_768_046_400_000 - clock.now_ms())  # 2026-01-10 12:00 UTC
    assert app.redis is not None and app.catalogs is not None
    assert app.database is not None
    b = Billing(app.redis, billing_config.default(), app.catalogs, clock, database=app.database, sealer=SEALER)
    book = LineBook()
    b.attach_lines(book)
    yield b, book


def postpaid_line(msisdn: str, account_id: str, customer_id: str, customer_type: str = "MOBILE_POSTPAID") -> Line:
    """A line as acquisition tells billing of it."""
    plan = "mobile-postpaid" if customer_type == "MOBILE_POSTPAID" else "mobile-prepaid"
    return Line(msisdn, customer_id, account_id, plan, LineState.ACTIVE, customer_type=customer_type)


def payer(credit_limit: int = 0, deposit: int = 0) -> Customer:
    """The customer paying for a line, with the credit terms billing reads."""
    return Customer("1", "INDIVIDUAL", 0, credit=CreditDecision(0, "C", credit_limit, deposit, True, 3, ()))


async def enrol(stubs: Stubs, b: Billing, customer: str, msisdn: str, deposit: int = 0) -> str:
    """A new line on "mobile-postpaid" for ``customer``, acknowledged active by the network
    and enrolled in billing with credit limit ``LIMIT``; returns its charging account."""
    sub = await stubs.subscriber(msisdn=msisdn, balance=0, plan="mobile-postpaid")
    await b.line_changed(
        line=postpaid_line(msisdn, sub.account_id, customer),
        state="active",
        plan_id="mobile-postpaid",
        customer=payer(LIMIT, deposit),
        paying_unit="",
        unit_path=(),
        label="Customer",
    )
    return sub.account_id


# PostgreSQL: one real server for the session (as the postgres user when root, on a Unix
# socket in a directory under /tmp that user can reach), a migrated template database,
# and a database per test copied from it.


@dataclass(frozen=True)
class PostgresServer:
    layout: Layout

    def url(self, database: str) -> str:
        """The owner's URL (a superuser here): migrations, roles, what a test sets up."""
        return self.layout.url(database)

    def app_url(self, database: str) -> str:
        """The server's URL: its login role, a member of charging_app (not the owner)."""
        return self.layout.server_url(database)

    def owner_of(self, url: str) -> str:
        """The owner's URL of the database ``url`` names."""
        return self.url(str(conninfo_to_dict(url)["dbname"]))

    def create_database(self, name: str, template: str) -> str:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


MIGRATED_TEMPLATE = "charging_template"


@contextmanager
def postgres_cluster(
    prefix: str,
    configure: Callable[[Layout, RunAs | None], Mapping[str, str]] = lambda _layout, _user: {},
    ready_url: Callable[[Layout], str] = lambda layout: layout.url("postgres"),
) -> Iterator[Layout]:
    """A PostgreSQL cluster of its own under a fresh directory (as the postgres user when
    root), undurable, started with the settings ``configure`` adds (it may also write files
    there), running until the block ends; ready once ``ready_url`` connects."""
    bin_dir = find_bin_dir(os.environ.get("CHARGING_POSTGRES_BIN_DIR", ""))
    user = run_as()
    directory = private_dir(prefix)
    layout = Layout(directory)
    try:
        prepare(bin_dir, layout, user, durable=False)
        settings = {**SERVER_SETTINGS, **UNDURABLE_SETTINGS, **configure(layout, user)}
        with open_log(layout) as out:
            proc = subprocess.Popen(
                as_user(postgres_command(bin_dir, layout, settings), user),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        for _ in range(600):
            if proc.poll() is not None:
                pytest.fail(f"postgres exited with {proc.returncode}: {layout.log_file.read_text()[-2000:]}")
            try:
                psycopg.connect(ready_url(layout), connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                time.sleep(0.05)
        else:
            proc.kill()
            pytest.fail("postgres did not start")
        yield layout
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with postgres_cluster("charging-test-pg-") as layout:
        server = PostgresServer(layout)
        server.create_database(MIGRATED_TEMPLATE, "template0")
        migrations.upgrade(server.url(MIGRATED_TEMPLATE))
        layout.ensure_server_login(MIGRATED_TEMPLATE)  # the server's role, as make run makes it
        yield server


@pytest.fixture(scope="session")
def app_database_url(postgres_server: PostgresServer) -> str:
    """One migrated database for every ``App`` of the session, reached as the server's
    role (a member of charging_app, not the owner): the server keeps nothing in it yet.
    Once it does, ``settings`` should take ``database_url`` (50 ms a test)."""
    postgres_server.create_database("charging_app", MIGRATED_TEMPLATE)
    return postgres_server.app_url("charging_app")


@pytest.fixture(scope="session")
def database_supply(postgres_server: PostgresServer) -> Iterator[DatabaseSupply]:
    """Copies of the migrated template made ahead and dropped after, off the tests' path."""
    supply = DatabaseSupply(postgres_server.url("postgres"), MIGRATED_TEMPLATE)
    yield supply
    supply.close()


# The modules whose tests read every file of the session's PostgreSQL: no database is
# copied or dropped while one of them runs.
STILL_POSTGRES_MODULES = frozenset({"test_postpaid_at_rest"})


@pytest.fixture
def database_url(
    postgres_server: PostgresServer, database_supply: DatabaseSupply, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A migrated database of this test's own (copied from the template for it, dropped
    after it), reached as the server's role (not the owner;
    ``postgres_server.owner_of(database_url)`` for that)."""
    name = database_supply.take()
    if request.module.__name__.rsplit(".", 1)[-1] in STILL_POSTGRES_MODULES:
        with database_supply.paused():
            yield postgres_server.app_url(name)
    else:
        yield postgres_server.app_url(name)
    database_supply.give_back(name)


@pytest.fixture
def empty_database_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A database of this test's own with no migration applied."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    url = postgres_server.create_database(name, "template0")
    yield url
    postgres_server.drop_database(name)


@pytest.fixture
def postgres_dir() -> Iterator[Path]:
    """A directory for an embedded PostgreSQL that its user can reach."""
    directory = private_dir("charging-embedded-pg-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)
