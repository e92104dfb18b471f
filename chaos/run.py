"""One chaos run: set up, load with faults, resolve, repeat, settle, check, report."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from chaos import checks, line_orders, machine_death, postpaid, postpaid_book, postpaid_checks, records, tariff
from chaos.clock import FakeClock, expired_left, expired_units
from chaos.history import Fault, History, Operation
from chaos.proxy import Proxy
from chaos.system import ExternalRedis, System
from chaos.workload import BUNDLES, NATIONAL, Client, Stubs, Subscriber, attempt, who
from charging.catalog import Usage
from charging.catalog_doc import catalog_from_doc
from charging.catalogs import read_catalog_file
from charging.v1 import admin_pb2, admin_pb2_grpc, topup_pb2
from tests.redis_cluster import local_cluster

INITIAL_MICROS = 20_000_000
# Short validity times so that abandoned sessions are swept within seconds
# (supervision = CHARGING_SUPERVISION_FACTOR x validity time).
VALIDITY_S = 2
# With the server's clock faked, the load starts this long before a tariff change
# (chaos/tariff.py: the band changes every minute), so that even a short run crosses one
# and its first grants announce it (validity times are VALIDITY_S).
CHANGE_LEAD_S = VALIDITY_S
FAULTS = ("kill_server", "pause_server", "kill_redis")
# These need Redis behind the suite's proxy (an external redis-server on loopback TCP).
NETWORK_FAULTS = ("net_delay", "net_stall", "net_reset")
# The server's wall clock, through libfaketime (chaos/clock.py).
CLOCK_FAULTS = ("clock_forward", "clock_back")
# On a local Redis Cluster (Config.cluster): kill -9 of a primary, its replica takes over.
CLUSTER_FAULTS = ("kill_primary",)
# After the load: each pass (resolving unknown outcomes, repeating what was acknowledged,
# the last bill run) gets this long, the repeat pass REPEAT_S more per request; a request
# still unanswered then is a violation, never skipped.
PASS_S = 120.0
REPEAT_S = 0.002
REPEATS_IN_FLIGHT = 16


@dataclass(frozen=True)
class Config:
    seed: int
    duration_s: float = 20.0
    clients: int = 4
    event_accounts: int = 6
    session_accounts: int = 3
    max_ops_per_client: int = 1_000_000
    faults: tuple[str, ...] = FAULTS
    fault_every_s: tuple[float, float] = (0.8, 2.5)
    # With Redis behind the proxy: end with a burst of load and a simulated machine death.
    machine_death: bool = True
    burst_s: float = 3.0
    # Postpaid lines (CRM applications): usage, bill runs and payments (chaos/postpaid.py).
    postpaid_lines: int = 2
    # Redis is a local 3+3 Redis Cluster (tests/redis_cluster.py); writes wait for a replica.
    cluster: bool = False
    # Session subscribers made through the CRM, their line orders through the provisioning
    # worker (chaos/line_orders.py; not on a cluster, where the CRM does not run yet).
    crm_lines: int = 2


@dataclass
class Report:
    config: Config
    history: History
    violations: list[checks.Violation] = field(default_factory=list)
    checks_run: list[str] = field(default_factory=list)
    server_starts: int = 0
    lost_after_cut: int | None = None  # acknowledged requests a machine death took
    recorded_but_lost: int | None = None  # of those, already relayed to PostgreSQL
    ledger: postpaid.Ledger = field(default_factory=postpaid.Ledger)  # bill runs and payments
    invoices: int = 0
    crossing: tariff.Tally = field(default_factory=tariff.Tally)  # how much crossed a tariff change

    @property
    def ok(self) -> bool:
        return not self.violations

    def text(self) -> str:
        lines = [f"chaos seed={self.config.seed} duration={self.config.duration_s:g}s clients={self.config.clients}"]
        for kind, row in sorted(self.history.counts().items()):
            lines.append(f"  {kind:8} " + ", ".join(f"{label} {n}" for label, n in sorted(row.items())))
        for kind, row in sorted(self.ledger.counts().items()):
            lines.append(f"  {kind:8} " + ", ".join(f"{label} {n}" for label, n in sorted(row.items())))
        if self.ledger.operations:
            lines.append(f"  invoices issued {self.invoices}")
        lines.append(f"  {self.crossing.text()}")
        faults: dict[str, int] = {}
        for fault in self.history.faults:
            faults[fault.kind] = faults.get(fault.kind, 0) + 1
        lines.append("  faults   " + (", ".join(f"{k} {n}" for k, n in sorted(faults.items())) or "none"))
        lines.append(f"  server starts {self.server_starts}")
        if self.lost_after_cut is not None:
            lines.append(
                f"  machine death: {self.lost_after_cut} acknowledged request(s) after the cut lost (everysec), "
                f"{self.recorded_but_lost} of them already in PostgreSQL's records"
            )
        for check in self.checks_run:
            failed = [v for v in self.violations if v.check == check]
            lines.append(f"  check {check}: " + ("ok" if not failed else f"{len(failed)} violation(s)"))
        for v in self.violations[:20]:
            lines.append(f"  VIOLATION {v.check} account {v.account}: {v.detail}")
        replay = f"python -m chaos --seed {self.config.seed} --duration {self.config.duration_s:g}"
        lines.append(f"replay: {replay}" + (" --cluster" if self.config.cluster else ""))
        return "\n".join(lines)


def chaos_catalog() -> dict[str, Any]:
    """The bundled catalog with short validity times and a tariff change every minute on
    the session accounts' plan (``chaos/tariff.py``)."""
    doc = copy.deepcopy(dict(read_catalog_file("")))
    doc["version"] = "chaos-1"
    for plan in doc["plans"]:
        for version in plan["versions"]:
            for rate in version["rates"]:
                # Every rate: supervision is sized by the longest validity time of the plan.
                rate["validity_time_s"] = VALIDITY_S
    return tariff.with_tariff_changes(doc, VALIDITY_S)


def bundle_prices(doc: dict[str, Any]) -> dict[str, int]:
    return {b["id"]: int(b["price_micros"]) for b in doc["bundles"] if b["id"] in BUNDLES}


def bundle_units(doc: dict[str, Any]) -> dict[str, int]:
    return {b["id"]: sum(int(x["amount"]) for x in b["buckets"]) for b in doc["bundles"] if b["id"] in BUNDLES}


async def balance(stubs: Stubs, sub: Subscriber, timeout_s: float = 60.0) -> topup_pb2.Balance:
    """The balance, asked again while the server answers UNAVAILABLE (Redis restarting)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            answer: topup_pb2.Balance = await stubs.topup.GetBalance(
                topup_pb2.BalanceRequest(subscriber=who(sub.msisdn)), timeout=10
            )
            return answer
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def snapshot(stubs: Stubs, subscribers: list[Subscriber]) -> dict[str, checks.AccountState]:
    states: dict[str, checks.AccountState] = {}
    for sub in subscribers:
        b = await balance(stubs, sub)
        states[sub.account] = checks.AccountState(
            sub.account,
            b.balance_micros,
            b.reserved_micros,
            tuple(checks.Bucket(x.id, x.amount, x.reserved) for x in b.buckets),
        )
    return states


async def until_answered(stubs: Stubs, op: Operation, deadline: float) -> None:
    """Send ``op`` again until it gets a definite answer (or the deadline passes)."""
    delay = 0.05
    while time.monotonic() < deadline:
        await attempt(stubs, op, timeout_s=5.0)
        if op.outcome != "unknown":
            return
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


async def repeat_acknowledged(stubs: Stubs, history: History, budget_s: float = PASS_S) -> list[Operation]:
    """Send every acknowledged request once more (each must answer as it did, changing
    nothing: ``checks.answered_once``, ``checks.nothing_lost``), ``REPEATS_IN_FLIGHT`` at a
    time, within ``budget_s`` plus ``REPEAT_S`` per request; the repeats that got no answer."""
    seen: set[str] = set()
    repeats: list[tuple[Operation, Operation]] = []
    for op in history.operations:
        if op.outcome == "ok" and op.identity not in seen and op.kind != "status":
            seen.add(op.identity)
            repeats.append((op, Operation(op.seq, op.client, op.kind, op.account, op.identity, op.request, op.at_s)))
    deadline = time.monotonic() + budget_s + REPEAT_S * len(repeats)
    queue = iter(repeats)

    async def worker() -> None:
        for _op, repeat in queue:  # one shared iterator: a task per worker, not per repeat
            await until_answered(stubs, repeat, deadline)

    async with asyncio.TaskGroup() as workers:
        for _ in range(REPEATS_IN_FLIGHT):
            workers.create_task(worker())
    unanswered: list[Operation] = []
    for op, repeat in repeats:
        if repeat.answer is not None:
            op.replays.append(repeat.answer)
        else:
            unanswered.append(repeat)
    return unanswered


async def settle(stubs: Stubs, subscribers: list[Subscriber], timeout_s: float) -> dict[str, checks.AccountState]:
    """Wait until nothing is reserved (sessions ended or swept), or the timeout; the state."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = await snapshot(stubs, subscribers)
        idle = all(not s.reserved_micros and not any(b.reserved for b in s.buckets) for s in state.values())
        if idle or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.25)


async def expired_swept(
    system: System, accounts: list[str], clock: FakeClock, timeout_s: float = 10.0
) -> list[checks.Violation]:
    """Buckets past their expiry that the sweeper, running at the restored time, left."""
    deadline = time.monotonic() + timeout_s
    client = system.redis_client()
    try:
        while True:
            found = expired_left(client, accounts, clock.now_s())
            if not found or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.25)
    finally:
        client.close()


async def inject(
    system: System,
    proxy: Proxy | None,
    history: History,
    config: Config,
    rnd: random.Random,
    until: float,
    t0: float,
    clock: FakeClock | None = None,
) -> None:
    while True:
        await asyncio.sleep(rnd.uniform(*config.fault_every_s))
        if time.monotonic() >= until or not config.faults:
            return
        kind = rnd.choice(config.faults)
        at = time.monotonic() - t0
        if kind == "kill_server":
            detail = await asyncio.to_thread(system.kill_server)
        elif kind == "pause_server":
            detail = await asyncio.to_thread(system.pause_server, rnd.uniform(0.3, 2.5))
        elif kind == "kill_redis":
            detail = await asyncio.to_thread(system.kill_redis)
        elif kind == "kill_primary":
            detail = await asyncio.to_thread(system.kill_primary, rnd.random())
        elif kind in CLOCK_FAULTS:
            if clock is None:
                raise ValueError(f"{kind} needs the server started under libfaketime")
            detail = clock.forward(rnd) if kind == "clock_forward" else clock.back(rnd)
        elif proxy is None:
            raise ValueError(f"{kind} needs Redis behind the proxy (Config.network)")
        elif kind == "net_delay":
            detail = await proxy.delay(rnd.uniform(0.5, 2.0), rnd.uniform(0.02, 0.3))
        elif kind == "net_stall":
            detail = await proxy.stall(rnd.uniform(0.3, 3.0))
        else:
            detail = proxy.reset()
        history.faults.append(Fault(at, kind, detail))


def needs_network(config: Config) -> bool:
    return any(f in NETWORK_FAULTS for f in config.faults)


async def run(config: Config, workdir: Path, database_url: str, port: int, redis_port: int = 0) -> Report:
    """One run; with network faults, Redis is an external redis-server on ``redis_port``
    behind the suite's proxy."""
    redis: ExternalRedis | None = None
    proxy: Proxy | None = None
    env: dict[str, str] = {}
    if needs_network(config):
        redis = ExternalRedis(workdir / "redis-ext", redis_port)
        await asyncio.to_thread(redis.start)
        proxy = Proxy(redis_port)
        env["CHARGING_REDIS_URL"] = f"redis://127.0.0.1:{await proxy.start()}/0"
    clock: FakeClock | None = None
    if any(f in CLOCK_FAULTS for f in config.faults):
        clock = FakeClock(workdir / "faketime.rc")
        env.update(clock.env())
        if redis is None and not config.cluster:
            # redis-server cannot run under libfaketime (its allocator reads the clock before
            # the library is ready): an external one, on its own true clock.
            redis = ExternalRedis(workdir / "redis-ext", redis_port)
            await asyncio.to_thread(redis.start)
            env["CHARGING_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    history = History()
    if config.cluster:
        with contextlib.ExitStack() as stack:
            cluster = await asyncio.to_thread(stack.enter_context, local_cluster(workdir / "cluster"))
            # WAIT for one replica before answering: a failover then loses nothing acknowledged.
            env["CHARGING_REDIS_URL"] = cluster.url + "?wait=1&wait_ms=500"
            system = System(workdir, database_url, port, env, None, cluster)
            try:
                await asyncio.to_thread(system.start)
                return await _run(config, system, proxy, history, clock)
            finally:
                await asyncio.to_thread(system.stop)
    system = System(workdir, database_url, port, env, redis)
    try:
        await asyncio.to_thread(system.start)
        return await _run(config, system, proxy, history, clock)
    finally:
        await asyncio.to_thread(system.stop)
        if proxy is not None:
            await proxy.stop()
        if redis is not None:
            await asyncio.to_thread(redis.stop)


async def _run(
    config: Config, system: System, proxy: Proxy | None, history: History, clock: FakeClock | None = None
) -> Report:
    rnd = random.Random(config.seed)
    doc = chaos_catalog()
    catalog = catalog_from_doc(doc)
    async with grpc.aio.insecure_channel(system.address) as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        stubs = Stubs(channel)
        await admin.LoadCatalog(admin_pb2.CatalogDocument(json=json.dumps(doc)), timeout=30)
        subscribers: list[Subscriber] = []
        initial: dict[str, int] = {}
        for n in range(config.event_accounts + config.session_accounts):
            msisdn = f"4917090{config.seed % 1000:03d}{n:03d}"
            created = await admin.CreateSubscriber(
                admin_pb2.CreateSubscriberRequest(
                    msisdn=msisdn, plan_id="default", initial_balance_micros=INITIAL_MICROS
                ),
                timeout=30,
            )
            subscribers.append(Subscriber(created.account_id, msisdn, sessions=n >= config.event_accounts))
            initial[created.account_id] = INITIAL_MICROS
        crm_lines = [] if config.cluster else await line_orders.open_lines(stubs.crm, config.seed, config.crm_lines)
        for line in crm_lines:
            subscribers.append(Subscriber(line.account, line.msisdn, sessions=True, crm=True))
            initial[line.account] = line_orders.INITIAL_MICROS

        lines = await postpaid.open_lines(channel, config.seed, config.postpaid_lines)

        if clock is not None:
            # A tariff change a moment after the load starts (a jump forward of under a minute).
            now = clock.now_s()
            change = catalog.plans[tariff.PLAN].next_change(now + CHANGE_LEAD_S, 120)
            if change is not None:
                clock.jump(change - CHANGE_LEAD_S - now)
        server_time = time.time if clock is None else clock.time
        t0 = time.monotonic()
        until = t0 + config.duration_s
        clients = [Client(n, config.seed, stubs, history, subscribers, t0, server_time) for n in range(config.clients)]
        billing = postpaid.Postpaid(config.seed, channel, history, lines, t0, server_time)
        await asyncio.gather(
            inject(system, proxy, history, config, rnd, until, t0, clock),
            *(c.run(until, config.max_ops_per_client) for c in clients),
            billing.run(until),
        )
        if clock is not None:
            history.faults.append(Fault(time.monotonic() - t0, "clock_restored", clock.restore()))
        await asyncio.to_thread(system.wait_serving)

        # Resolve every unknown outcome by sending the same request again (a budget of
        # its own, as each pass after the load: PASS_S).
        deadline = time.monotonic() + PASS_S
        for op in history.operations:
            if op.outcome == "unknown":
                op.resolved = True
                await until_answered(stubs, op, deadline)

        # Every line active again (a line order whose outcome was unknown may have barred
        # one after its "active" was answered).
        unrestored: list[Operation] = []
        for sub in subscribers:
            if sub.crm:
                continue  # through the CRM, below
            restore = Operation(
                -1, -1, "status", sub.account, f"restore-{sub.account}", {"msisdn": sub.msisdn, "status": "active"}, 0.0
            )
            await until_answered(stubs, restore, deadline)
            if restore.outcome != "ok":
                unrestored.append(restore)
        lines_found: list[checks.Violation] = []
        if crm_lines:
            client = system.redis_client()
            try:
                lines_found = await line_orders.settle(stubs.crm, client, history, crm_lines, config.seed, timeout_s=60)
            finally:
                client.close()
        before = await settle(stubs, subscribers, timeout_s=30)
        unrepeated = await repeat_acknowledged(stubs, history)
        after = await settle(stubs, subscribers, timeout_s=30)
        # Postpaid: unknown payments answered, then the last bill run invoices all usage.
        await billing.finish(time.monotonic() + PASS_S)
        postpaid_after = await settle(stubs, [line.subscriber for line in lines], timeout_s=30)

        # The system of record: every record relayed, then read.
        stale: list[checks.Violation] = []
        if clock is not None:
            stale = await expired_swept(system, list(initial), clock)
        client = system.redis_client()
        try:
            relayed = await records.drained(client, list(initial) + [line.subscriber.account for line in lines])
            expired = expired_units(client, list(initial))
        finally:
            client.close()
        book = await asyncio.to_thread(records.read, system.database_url)
        postpaid_records = await asyncio.to_thread(postpaid_book.read, system.database_url, lines)
        receivable = await postpaid_book.receivables(billing.billing, lines)

    report = Report(config, history, server_starts=system.starts, ledger=billing.ledger, crossing=tariff.tally(history))
    if lines:
        report.invoices = len(postpaid_records.invoices)
        report.checks_run += ["invoice_numbers", "one_invoice_per_period", "usage_invoiced"]
        report.checks_run += ["payments_kept", "payments_audited", "receivables", "postpaid_released", "bill_runs"]
        report.violations += postpaid_checks.numbers_gapless(postpaid_records.invoices)
        report.violations += postpaid_checks.one_per_period(postpaid_records.invoices)
        report.violations += postpaid_checks.runs_kept(billing.ledger.operations, postpaid_records.invoices)
        msisdns = [line.subscriber.msisdn for line in lines]
        report.violations += postpaid_checks.usage_invoiced(postpaid_records.invoices, postpaid_records.usage, msisdns)
        report.violations += postpaid_checks.payments_kept(billing.ledger.operations, postpaid_records.payments)
        report.violations += postpaid_checks.payments_audited(postpaid_records.payments, postpaid_records.audited)
        report.violations += postpaid_checks.receivables_balance(
            postpaid_records.invoices, postpaid_records.payments, receivable
        )
        report.violations += [
            checks.Violation("postpaid_released", v.account, v.detail) for v in checks.released(postpaid_after)
        ]
        report.violations += [
            checks.Violation(
                "resolved", op.billing_account or "-", f"{op.kind} {op.identity} never answered: {op.error}"
            )
            for op in billing.unanswered()
        ]
        report.violations += [
            checks.Violation("bill_runs", "-", f"bill run as of {op.identity}: {op.error}")
            for op in billing.failed_runs()
        ]

    report.checks_run += ["conservation", "answered_once", "nothing_lost", "released", "buckets", "resolved"]
    report.checks_run += ["records_explain_balances", "records_match", "bucket_units", "tariff_priced"]
    if not relayed:
        report.violations.append(checks.Violation("records_match", "-", "the relay did not empty the record outboxes"))
    report.violations += records.explain_balances(history, initial, after, book)
    report.violations += records.every_movement_recorded(history, book)
    report.violations += tariff.priced(history, catalog, book.sessions, Usage(NATIONAL))
    report.violations += records.buckets_conserved(history, after, book, bundle_units(doc), expired)
    if crm_lines:
        report.checks_run.append("line_orders")
        report.violations += lines_found
    if clock is not None:
        report.checks_run.append("buckets_expired")
        report.violations += stale
    report.violations += checks.conservation(history, initial, after, bundle_prices(doc))
    report.violations += checks.answered_once(history)
    report.violations += checks.nothing_lost(before, after)
    report.violations += checks.released(after)
    report.violations += checks.buckets_in_bounds(after)
    report.violations += [
        checks.Violation("resolved", op.account, f"{op.identity} never got an answer: {op.error}", (op.seq,))
        for op in history.operations
        if op.outcome == "unknown"
    ]
    report.violations += [
        checks.Violation(
            "answered_once",
            op.account,
            f"{op.identity} {'refused' if op.outcome == 'refused' else 'not answered'} when repeated: "
            f"{op.error or 'no time left'}",
            (op.seq,),
        )
        for op in unrepeated
    ]
    report.violations += [
        checks.Violation("resolved", op.account, f"line not active again: {op.error or 'no time left'}")
        for op in unrestored
    ]
    if system.redis is not None and config.machine_death:
        await machine_death_phase(config, system, system.redis, history, subscribers, initial, doc, report, clock)
    return report


async def machine_death_phase(
    config: Config,
    system: System,
    external: ExternalRedis,
    history: History,
    subscribers: list[Subscriber],
    initial: dict[str, int],
    doc: dict[str, Any],
    report: Report,
    clock: FakeClock | None = None,
) -> None:
    async with grpc.aio.insecure_channel(system.address) as channel:
        stubs = Stubs(channel)
        t0 = time.monotonic()
        server_time = time.time if clock is None else clock.time
        burst = [
            Client(100 + n, config.seed, stubs, history, subscribers, t0, server_time) for n in range(config.clients)
        ]
        await asyncio.gather(*(c.run(t0 + config.burst_s, config.max_ops_per_client) for c in burst))
        cut = await asyncio.to_thread(machine_death.die, system, external)
        history.faults.append(Fault(time.monotonic() - t0, "machine_death", f"AOF cut at {cut.cut_s}"))
        alive = await asyncio.to_thread(machine_death.survivors, history, external.port)
        final = await snapshot(stubs, subscribers)
    report.checks_run.append("machine_death")
    report.violations += machine_death.check_prefix(history, cut, alive, initial, final, bundle_prices(doc))
    report.lost_after_cut = machine_death.lost_after_cut(history, alive)
    book = await asyncio.to_thread(records.read, system.database_url)
    report.recorded_but_lost = machine_death.records_of_lost(history, alive, set(book.usage), book.audit)
    report.violations += machine_death.check_no_record_of_lost(history, alive, set(book.usage), book.audit)
    report.server_starts = system.starts
