"""Usage records and money movements: written by the charging scripts into the account's
record outbox, relayed into PostgreSQL once, on a real Redis and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import json
import os
import sys
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import grpc
import psycopg
import pytest
import redis

from charging import keys, metrics
from charging.cdr_relay import CdrRelay, drain
from charging.cdr_store import CdrStore
from charging.cdrs import NOT_RATED, BadRecord, paid_by, rows
from charging.clock import ManualClock
from charging.server import App
from charging.settings import Settings
from charging.v1 import admin_pb2, charging_pb2, common_pb2, topup_pb2
from tests.conftest import INITIAL, MSISDN, TERMINATE, UPDATE, Stubs, async_redis_client, session_request, sms_request
from tests.test_refunds import REFUND, event
from tests.test_topups import recharge

START = 10_000_000


@pytest.fixture
async def app(settings: Settings, database_url: str, clock: ManualClock) -> AsyncIterator[App]:
    """A server with a database of this test's own (the records are looked at)."""
    application = App(dataclasses.replace(settings, database_url=database_url), clock=clock, run_background=False)
    await application.start()
    yield application
    await application.stop()


def relay_of(app: App) -> CdrRelay:
    assert app.cdr_relay is not None
    return app.cdr_relay


def without_the_job(app: App) -> None:
    """Requests stop waking the app's own relay (it then waits 60 s between passes), so a
    test's relays are alone on the outboxes."""
    assert app.events is not None
    app.events.ctx.ledger.on_records = None


def usage_rows(database_url: str, account: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute("SELECT * FROM usage_records WHERE account = %s ORDER BY occurred_at, record_id", (account,))
        return cur.fetchall()


def audit_rows(database_url: str, account: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute("SELECT * FROM audit WHERE subject = %s ORDER BY occurred_at, entry_id", ("account:" + account,))
        return cur.fetchall()


async def buy(stubs: Stubs, bundle: str, key: str) -> topup_pb2.BuyBundleAnswer:
    return await stubs.topup.BuyBundle(
        topup_pb2.BuyBundleRequest(
            subscriber=common_pb2.SubscriberId(msisdn=MSISDN),
            bundle_id=bundle,
            channel=topup_pb2.CHANNEL_APP,
            idempotency_key=key,
        )
    )


async def call(stubs: Stubs, sid: str, used: list[int], visited: str = "") -> None:
    """A voice call: INITIAL, an UPDATE per used amount but the last, TERMINATE with it."""
    kinds = [INITIAL] + [UPDATE] * (len(used) - 1) + [TERMINATE]
    for n, kind in enumerate(kinds):
        group: dict[str, object] = {"rating_group": 10}
        if kind != TERMINATE:
            group["requested"] = {"time_s": 60}
        if n:
            group["used"] = {"time_s": used[n - 1]}
        a = await stubs.charging.ChargeSession(
            session_request(sid, kind, n, [group], called_party="491711234567", visited_network=visited)
        )
        assert a.result_code == 2001


async def test_every_rated_use_and_money_movement_reaches_the_database_once(
    app: App, stubs: Stubs, r: redis.Redis, database_url: str
) -> None:
    account = (await stubs.subscriber(balance=START)).account_id
    assert (await buy(stubs, "voice-100", "b1")).result == topup_pb2.PURCHASE_RESULT_PURCHASED
    await call(stubs, "call-1", [60, 30], visited="26201")
    debit = await stubs.charging.ChargeEvent(sms_request("sms-1"))
    assert debit.result_code == 2001
    refund = await stubs.charging.ChargeEvent(event("ref-1", REFUND, debit.refund_information))
    assert refund.result_code == 2001
    await stubs.topup.Recharge(recharge(5_000_000, "t1"))

    await drain(relay_of(app))

    assert not r.exists(keys.cdr_outbox(account))
    usage = usage_rows(database_url, account)
    by_kind = {(u["service"], u["session_id"] != "", u["cost_micros"] < 0): u for u in usage}
    assert len(usage) == 5
    sale = by_kind[("bundle", False, False)]
    assert (sale["record_id"], sale["zone"], sale["cost_micros"]) == (f"{account}:b:b1", "voice-100", 3_000_000)
    reports = [u for u in usage if u["session_id"] == "call-1"]
    assert [(u["request_number"], u["units"], u["unit"]) for u in reports] == [(1, 60, "time"), (2, 30, "time")]
    assert all(u["msisdn"] == MSISDN and u["rating_group"] == 10 for u in reports)
    assert all(u["called_party"] == "491711234567" for u in reports)
    assert all(u["visited_network"] == "26201" and u["service"] == "voice" for u in reports)
    assert reports[0]["record_id"] == f"{account}:s:call-1:1:10"
    # The bundle's minutes paid for the call: units from its bucket (whole minutes: the
    # rate's increment), no money.
    assert [(u["bucket_units"], u["cost_micros"]) for u in reports] == [({"voice-100.1": 60}, 0)] * 2
    sms = by_kind[("sms", False, False)]
    back = by_kind[("sms", False, True)]
    assert (sms["event_id"], sms["units"], sms["cost_micros"]) == ("sms-1", 1, debit.cost_micros)
    assert (back["event_id"], back["cost_micros"]) == ("ref-1", -refund.cost_micros)
    # What the records say was paid in money is exactly what left the balance.
    final = (await stubs.balance()).balance_micros
    assert START + 5_000_000 - sum(u["money_micros"] for u in usage) == final

    audit = audit_rows(database_url, account)
    assert [(a["action"], a["actor"]) for a in audit] == [
        ("bundle_sale", "local"),
        ("refund", "local"),
        ("topup", "local"),
    ]
    assert audit[2]["details"] == {
        "amount_micros": 5_000_000,
        "balance_micros": final,
        "channel": "retail",
        "idempotency_key": "t1",
    }
    assert audit[1]["details"]["refund_of"] == "e:sms-1"

    # A retransmission changes nothing and records nothing.
    await stubs.topup.Recharge(recharge(5_000_000, "t1"))
    assert not r.exists(keys.cdr_outbox(account))


async def test_two_relays_writing_the_same_records_at_once_do_not_deadlock(
    app: App, stubs: Stubs, r: redis.Redis, database_url: str
) -> None:
    """Two relays (two processes, or a pass and a drain) may write the same records at
    once, here in opposite orders: each goes in in the order of the table's key, so one
    waits for the other and then skips what is there, instead of PostgreSQL aborting one
    of them as a deadlock (seen in CI: DeadlockDetected in usage_records' key index)."""
    without_the_job(app)
    account = (await stubs.subscriber(balance=START)).account_id
    await stubs.charging.ChargeEvent(sms_request("sms-0"))
    template, _ = rows(account, str(r.lindex(keys.cdr_outbox(account), 0)))
    assert template is not None
    batch = [dataclasses.replace(template, record_id=f"{template.record_id}-{n:05d}") for n in range(4000)]
    store = CdrStore(app.database)  # type: ignore[arg-type]
    for _ in range(3):
        fresh = [dataclasses.replace(u, record_id=u.record_id + f"-{_}") for u in batch]
        written = await asyncio.gather(store.write(fresh, ()), store.write(list(reversed(fresh)), ()))
        assert sum(w.usage_inserted for w in written) == 4000
    assert len(usage_rows(database_url, account)) == 3 * 4000


async def test_a_relay_that_stops_after_the_commit_repeats_nothing(
    app: App, stubs: Stubs, r: redis.Redis, database_url: str
) -> None:
    without_the_job(app)
    account = (await stubs.subscriber(balance=START)).account_id
    for i in range(5):
        await stubs.charging.ChargeEvent(sms_request(f"sms-{i}"))
    store = CdrStore(app.database)  # type: ignore[arg-type]
    client = await async_redis_client(app.settings.redis_url)

    async def crash() -> None:
        raise RuntimeError("stopped between the commit and the trim")

    crashing = CdrRelay(client, store, app.clock, after_commit=crash)
    crashing.wake(account)
    with pytest.raises(RuntimeError):
        await crashing.relay_waiting()
    assert len(usage_rows(database_url, account)) == 5
    assert r.llen(keys.cdr_outbox(account)) == 5  # committed, not trimmed

    repeated = metrics.CDRS_REPEATED.labels("usage_records")._value.get()
    r.script_flush()  # and Redis restarted meanwhile: the trim script must be loaded again
    fresh = CdrRelay(client, store, app.clock)
    assert await fresh.relay_waiting() == 5  # found by its scan: no wake needed
    assert len(usage_rows(database_url, account)) == 5
    assert metrics.CDRS_REPEATED.labels("usage_records")._value.get() == repeated + 5
    assert not r.exists(keys.cdr_outbox(account))
    await client.aclose()


async def test_the_trim_removes_only_what_was_relayed(
    app: App, stubs: Stubs, r: redis.Redis, database_url: str
) -> None:
    without_the_job(app)
    account = (await stubs.subscriber(balance=START)).account_id
    await stubs.charging.ChargeEvent(sms_request("sms-0"))
    store = CdrStore(app.database)  # type: ignore[arg-type]
    client = await async_redis_client(app.settings.redis_url)

    async def meanwhile() -> None:
        # A request between the relay's read and its trim: its record is behind the head.
        await stubs.charging.ChargeEvent(sms_request("sms-1"))

    relay = CdrRelay(client, store, app.clock, after_commit=meanwhile)
    relay.wake(account)
    assert await relay.relay_accounts([account]) == 1
    assert [json.loads(e)[5] for e in r.lrange(keys.cdr_outbox(account), 0, -1)] == ["sms-1"]

    # Two relays read the same head; the one that trims second removes nothing.
    async def first_trims() -> None:
        await drain(CdrRelay(client, store, app.clock))

    slow = CdrRelay(client, store, app.clock, after_commit=first_trims)
    await stubs.charging.ChargeEvent(sms_request("sms-2"))
    assert await slow.relay_accounts([account]) == 0  # the other relay's trim took them
    assert slow.waiting() == 1  # and it looks again: what it read may not all be gone
    await stubs.charging.ChargeEvent(sms_request("sms-3"))
    assert [json.loads(e)[5] for e in r.lrange(keys.cdr_outbox(account), 0, -1)] == ["sms-3"]
    await drain(relay)
    assert [u["event_id"] for u in usage_rows(database_url, account)] == ["sms-0", "sms-1", "sms-2", "sms-3"]
    await client.aclose()


async def test_the_lag_is_the_age_of_the_oldest_waiting_record(
    app: App, stubs: Stubs, clock: ManualClock, database_url: str
) -> None:
    assert app.events is not None and app.database is not None
    client = await async_redis_client(app.settings.redis_url)
    relay = CdrRelay(client, CdrStore(app.database), clock)
    app.events.ctx.ledger.on_records = relay.wake  # instead of the app's relay
    assert relay.lag_s() == 0
    await stubs.subscriber(balance=START)
    await stubs.charging.ChargeEvent(sms_request("sms-0"))
    clock.advance(seconds=5)
    await stubs.charging.ChargeEvent(sms_request("sms-1"))
    clock.advance(seconds=2)
    assert relay.lag_s() == 7
    await drain(relay)
    assert relay.lag_s() == 0
    await client.aclose()


async def test_records_can_be_turned_off(
    settings: Settings, database_url: str, clock: ManualClock, r: redis.Redis
) -> None:
    off = dataclasses.replace(settings, database_url=database_url, usage_records=False)
    application = App(off, clock=clock, run_background=False)
    await application.start()
    try:
        import grpc

        async with grpc.aio.insecure_channel(f"127.0.0.1:{application.grpc_port}") as channel:
            stubs = Stubs.on(channel)
            account = (await stubs.subscriber(balance=START)).account_id
            await stubs.charging.ChargeEvent(sms_request("sms-0"))
            await stubs.topup.Recharge(recharge(1_000_000, "t1"))
        assert not r.exists(keys.cdr_outbox(account))
    finally:
        await application.stop()


async def test_records_of_a_month_without_a_partition_are_kept(
    app: App, stubs: Stubs, clock: ManualClock, r: redis.Redis, database_url: str
) -> None:
    clock.advance(ms=int(datetime(2031, 5, 17, tzinfo=UTC).timestamp() * 1000) - clock.now_ms())
    account = (await stubs.subscriber(balance=START)).account_id
    await stubs.charging.ChargeEvent(sms_request("sms-0"))
    await drain(relay_of(app))
    [row] = usage_rows(database_url, account)
    assert row["occurred_at"] == datetime.fromtimestamp(clock.now_ms() / 1000, UTC)


def catalog_with_free_sms(version: str) -> str:
    """The sample catalog with every SMS rate free (answered 4011, as toll-free numbers)."""
    doc = json.loads(resources.files("charging").joinpath("catalog.json").read_text())
    doc["version"] = version
    for plan in doc["plans"]:
        for plan_version in plan["versions"]:
            for rate in plan_version["rates"]:
                if rate.get("service") == "sms":
                    rate["free"] = True
    return json.dumps(doc)


async def test_a_free_event_is_recorded_once_at_no_cost(
    app: App, stubs: Stubs, r: redis.Redis, database_url: str
) -> None:
    without_the_job(app)  # the record stays in the outbox until the test relays it
    account = (await stubs.subscriber(balance=START)).account_id
    await stubs.admin.LoadCatalog(admin_pb2.CatalogDocument(json=catalog_with_free_sms("2099-01-01.1")))
    first = await stubs.charging.ChargeEvent(sms_request("free-1"))
    assert (first.result_code, first.cost_micros, first.refund_information) == (4011, 0, b"")
    again = await stubs.charging.ChargeEvent(sms_request("free-1"))  # a retransmission
    assert again.SerializeToString() == first.SerializeToString()
    assert r.llen(keys.cdr_outbox(account)) == 1
    other = sms_request("free-1")
    other.requested.service_specific_units = 2
    with pytest.raises(grpc.aio.AioRpcError) as err:  # the event id with another payload
        await stubs.charging.ChargeEvent(other)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert (await stubs.balance()).balance_micros == START

    relay_of(app).wake(account)
    await drain(relay_of(app))
    [row] = usage_rows(database_url, account)
    assert (row["record_id"], row["event_id"], row["cause"]) == (f"{account}:e:free-1", "free-1", NOT_RATED)
    assert (row["cost_micros"], row["money_micros"], row["bucket_units"]) == (0, 0, {})
    assert (row["service"], row["unit"], row["units"], row["rating_group"]) == ("sms", "service_specific", 1, 20)
    assert (row["msisdn"], row["called_party"], row["catalog_version"]) == (MSISDN, "491711234567", "2099-01-01.1")
    assert not r.exists(keys.cdr_outbox(account))

    # Still nothing twice once relayed; a balance check or price enquiry of it records nothing.
    await stubs.charging.ChargeEvent(sms_request("free-1"))
    check = sms_request("")
    check.action = charging_pb2.REQUESTED_ACTION_CHECK_BALANCE
    assert (await stubs.charging.ChargeEvent(check)).result_code == 4011
    assert not r.exists(keys.cdr_outbox(account))


async def cdrs_cli(database_url: str, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "CHARGING_DATABASE_URL": database_url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "charging.cli", "cdrs", *args, env=env, stdout=PIPE, stderr=PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_cli_lists_a_lines_records_and_exports_a_period(
    app: App, stubs: Stubs, database_url: str, clock: ManualClock
) -> None:
    await stubs.subscriber(balance=START)
    await stubs.subscriber(msisdn="491700000002", balance=START)
    await call(stubs, "call-1", [60, 60])
    await stubs.charging.ChargeEvent(sms_request("sms-1", msisdn="491700000002"))
    clock.advance(seconds=86_400)
    await stubs.charging.ChargeEvent(sms_request("sms-2"))
    await drain(relay_of(app))

    code, out, err = await cdrs_cli(database_url, "--msisdn", MSISDN, "--from", "2026-01-01", "--to", "2026-01-02")
    assert code == 0, err
    listed = [json.loads(line) for line in out.splitlines()]
    assert [(r["chargingSessionId"], r["cCRequestNumber"], r["usedUnits"]) for r in listed] == [
        ("call-1", 1, 60),
        ("call-1", 2, 60),
    ]
    assert listed[0]["recordOpeningTime"] == "2026-01-01T00:00:00Z"
    assert listed[0]["bucketUnits"] == {}

    code, out, err = await cdrs_cli(database_url, "--export", "--from", "2026-01-01", "--to", "2026-02-01")
    assert code == 0, err
    exported = list(csv.DictReader(io.StringIO(out)))
    assert [(r["servedMSISDN"], r["ratingGroup"], r["eventId"]) for r in exported] == [
        (MSISDN, "10", ""),
        (MSISDN, "10", ""),
        ("491700000002", "20", "sms-1"),
        (MSISDN, "20", "sms-2"),
    ]

    code, _out, err = await cdrs_cli(database_url, "--msisdn", MSISDN, "--from", "2026-02-01", "--to", "2026-01-01")
    assert (code, err.strip()) == (1, "error: --to: must be after --from")
    code, _out, err = await cdrs_cli(database_url, "--from", "2026-01-01", "--to", "yesterday")
    assert (code, err.strip()) == (1, "error: --to: 'yesterday' is not an ISO 8601 date or time")


# --------------------------------------------------------------------------- pure


SESSION_ENTRY = [
    "s", "1767225600000", "4917", "26201x", "default", "7", "sid;1", "3", "10", "voice", "4930", "national", "peak",
    "26202", "R", "1", "90", "150000", "b:1:60|^p.1:30|b:1:5",
]  # fmt: skip


@pytest.mark.parametrize(
    ("entry", "usage_id", "audit_action"),
    [
        (SESSION_ENTRY, "7:s:sid;1:3:10", None),
        (["d", "1", "", "", "p", "ev", "20", "sms", *[""] * 5, "3", "1", "50000", "", "", ""], "7:e:ev", None),
        (["r", "1", "", "", "p", "rf", "20", "sms", *[""] * 5, "3", "1", "-9", "", "op", "e:ev"], "7:e:rf", "refund"),
        (["n", "1", "", "", "p", "fr", "20", "sms", *[""] * 5, "3", "1", "v1"], "7:e:fr", None),
        (["t", "1", "shop", "bank", "k", "100", "200"], None, "topup"),
        (["b", "1", "", "", "p", "app", "app", "k", "pack", "300", "0", "pack.1"], "7:b:k", "bundle_sale"),
        (["b", "1", "", "", "p", "internal", "operator", "k", "pack", "0", "0", "pack.1"], None, "bundle_sale"),
    ],
)  # fmt: skip
def test_each_layout_becomes_its_rows(entry: list[str], usage_id: str | None, audit_action: str | None) -> None:
    usage, audit = rows("7", json.dumps(entry))
    assert (usage.record_id if usage else None) == usage_id
    assert (audit.action if audit else None) == audit_action
    if audit is not None:
        assert audit.subject == "account:7" and audit.entry_id.startswith("7:")


def test_a_session_entry_keeps_every_field() -> None:
    usage, _ = rows("7", json.dumps(SESSION_ENTRY))
    assert usage is not None
    assert (usage.msisdn, usage.imsi, usage.catalog_version, usage.request_number) == ("4917", "26201x", "7", 3)
    assert (usage.visited_network, usage.roaming, usage.unit, usage.units) == ("26202", True, "time", 90)
    assert (usage.cost_micros, usage.money_micros) == (150_000, 150_000)
    assert usage.bucket_units == {"b:1": 65, "^p.1": 30}
    assert usage.occurred_at == datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "entry", ["{}", "not json", '["s", "1"]', '["x", "1"]', json.dumps(["t", "x", "a", "b", "k", "1", "2"])]
)
def test_unreadable_entries_are_refused(entry: str) -> None:
    with pytest.raises(BadRecord):
        rows("7", entry)


def test_paid_by_splits_bucket_ids_at_their_last_colon() -> None:
    assert paid_by("") == {}
    assert paid_by("a:b:3|a:b:4|c:1") == {"a:b": 7, "c": 1}


@pytest.mark.parametrize(
    ("key", "account"),
    [
        ("{a:5}:cdr", "5"),
        ("{a:5}:2:cdr", "5.2"),
        ("{a:5}:s:x:cdr", None),  # a session whose id ends in ":cdr"
        ("{a:5}:r:3:cdr", None),
        ("{a:5}:out", None),
    ],
)
def test_the_outbox_key_names_its_account(key: str, account: str | None) -> None:
    assert keys.cdr_outbox_account(key) == account
    if account is not None:
        assert keys.cdr_outbox(account) == key
