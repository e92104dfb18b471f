"""The start-time moves of an old installation (``charging/upgrade.py``: the CRM's keys
under their tag, billing's records, the shards, the CRM's records) on a real Redis and
PostgreSQL: movers running at once, with the ``upgrade-moves`` lease and without it (a
holder paused past its lease), and a mover killed half way (SIGKILL) then taken over,
leave exactly what one mover leaves: the same rows in every table and the same keys in
Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis.asyncio as aioredis
from psycopg import sql

from charging import upgrade
from charging.clock import ManualClock
from charging.database import open_pool
from charging.leases import holder_of
from postpaid import config as billing_config
from postpaid import keys as bill_keys
from postpaid import shards
from provisioning import keys as crm_keys
from provisioning.customer_care import Interaction
from provisioning.customers import Customer, Customers
from provisioning.lifecycle import LineState
from provisioning.lines import Line
from provisioning.orders import Order, Step
from provisioning.organisation import Organisation
from provisioning.screening import Screener
from tests.conftest import DATA_KEY, MIGRATED_TEMPLATE, SEALER, PostgresServer, async_redis_client
from tests.test_billing_shards import legacy_installation
from tests.test_collections_moved import seed_old_redis
from tests.test_invoices_moved import kept_in_redis

MOVERS = 3
# The movers' lease: the next mover takes over the killed one's once it expires, and the
# halted mover, renewing every third of it, must still hold it when the test looks
# (a loaded machine may delay a renewal by up to two thirds of it).
LEASE_S = 2.0


@pytest.fixture
def reference_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A second migrated database of this test's own: where one mover alone moves."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    postgres_server.create_database(name, MIGRATED_TEMPLATE)
    yield postgres_server.app_url(name)
    postgres_server.drop_database(name)


async def old_installation(client: aioredis.Redis) -> None:
    """Records of the older layouts the moves know: billing under the one {bill} tag
    (before the shards), invoices, bill runs, disputes, promises, dunning steps and audit
    entries in Redis only (before PostgreSQL), the CRM's interactions under untagged names,
    customers, units, orders and lines without their rows."""
    await legacy_installation(client)
    await client.delete(bill_keys.BILL_RUNS)  # its placeholder: the invoices' own are below
    await kept_in_redis(client, 3)
    await client.rpush(bill_keys.BILL_RUNS, await client.lindex(bill_keys.BILL_RUNS, 0) or "")  # a run listed twice
    await seed_old_redis(client)
    for i, text in ((5, "first call"), (6, "second call")):
        interaction = Interaction(str(i), "SHOP", text, ("file://x",), 1_700_000_000 + i)
        await client.rpush("crm:interactions:7", interaction.to_redis(SEALER))
    await client.set("crm:seq:interaction", 6)
    await client.zadd("prov:due", {"4917": 1})
    # customers, units, a decided order and a line of before their rows (under the tag)
    customers = Customers(client, Screener(client, "salt"), SEALER)
    await customers.create(Customer("8001", "CORPORATE", created=1_700_000_000, name="Anna GmbH", city="Berlin"))
    await customers.create(Customer("8002", "INDIVIDUAL", created=1_700_000_100, name="Ben"))
    await Organisation(client).add_unit("8001", "", "Anna GmbH", True, unit_id="7001")
    steps = (
        Step("order", "accepted", ("SUSPEND",), 1_700_000_000),
        Step("provisioning", "requested", (), 1_700_000_001),
    )
    order = Order("old-1", "COMPLETED", steps=steps, submitted_at=1_700_000_000, customer_id="8002", msisdn="4917099")
    await client.set(crm_keys.order("old-1"), order.to_redis())
    line = Line("4917099", "8002", "12", "mobile-prepaid", LineState.SUSPENDED, "old-1")
    await client.hset(crm_keys.line(line.msisdn), mapping=line.to_redis())  # type: ignore[arg-type]
    for marker in (
        bill_keys.BILL_INVOICES_MOVED,
        bill_keys.BILL_COLLECTIONS_MOVED,
        bill_keys.BILL_PAYMENTS_MOVED,
        bill_keys.BILL_CREDITS_OPENED,
        crm_keys.CARE_MOVED,
        crm_keys.ORDERS_MOVED,
        crm_keys.CUSTOMERS_MOVED,
        shards.MOVED,
    ):
        await client.delete(marker)


def tables(owner_url: str) -> dict[str, tuple[int, str]]:
    """Every table's row count and a digest of its rows, without what differs between two
    equal moves: identity columns, defaults of the time of the insert, sealed values
    (sealing draws a fresh nonce), invoice documents (sealed inside) and the audit rows'
    ids (the old stream's entry ids, new at each ``old_installation``)."""
    found: dict[str, tuple[int, str]] = {}
    with psycopg.connect(owner_url) as conn:
        names = [
            str(n)
            for (n,) in conn.execute(
                "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace "
                "AND relkind IN ('r', 'p') AND NOT relispartition ORDER BY 1"
            ).fetchall()
        ]
        for name in names:
            skipped = [
                str(c)
                for (c,) in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
                    "AND table_name = %s AND (is_identity = 'YES' OR column_name LIKE 'sealed%%' "
                    "OR column_name = 'document' OR column_default ~* 'now|clock|current_timestamp' "
                    "OR (table_name = 'audit' AND column_name = 'entry_id'))",
                    (name,),
                ).fetchall()
            ]
            row = sql.SQL("to_jsonb(t) - {}::text[]").format(sql.Literal(skipped))
            query = sql.SQL(
                "SELECT count(*), coalesce(md5(string_agg(({r})::text, ',' ORDER BY ({r})::text)), '') FROM {} t"
            )
            count, digest = conn.execute(query.format(sql.Identifier(name), r=row)).fetchone() or (0, "")
            found[name] = (int(count), str(digest))
    return found


async def redis_keys(client: aioredis.Redis) -> dict[str, tuple[str, int]]:
    """Every key with its type and size (sealed values differ, their number does not)."""
    sizes = {"string": "strlen", "list": "llen", "hash": "hlen", "set": "scard", "zset": "zcard", "stream": "xlen"}
    found: dict[str, tuple[str, int]] = {}
    async for key in client.scan_iter(count=1000):
        kind = str(await client.type(key))
        size = 0 if kind == "string" else int(await getattr(client, sizes[kind])(key))
        found[str(key)] = (kind, size)
    return found


async def mover(redis_url: str, database_url: str, *, leased: bool, holder: str = "") -> None:
    client = await async_redis_client(redis_url)
    pool = await open_pool(database_url, 2)
    billing, clock = billing_config.default(), ManualClock()
    try:
        if leased:
            await upgrade.move_all(client, pool, billing, SEALER, clock, LEASE_S, holder or None)
        else:
            await upgrade.move_sequence(client, pool, billing, SEALER, clock)
    finally:
        await pool.close()
        await client.aclose()


_MOVED_BY_ONE: list[Any] = []  # computed once per process: the old installation is the same each time


async def moved_by_one(client: aioredis.Redis, redis_url: str, reference_url: str, owner: str) -> Any:
    """What one mover alone leaves of ``old_installation``, then the old installation again."""
    if not _MOVED_BY_ONE:
        await old_installation(client)
        await mover(redis_url, reference_url, leased=True)
        _MOVED_BY_ONE.append((tables(owner), await redis_keys(client)))
        await client.flushall()
    await old_installation(client)
    return _MOVED_BY_ONE[0]


def assert_same(rows: dict[str, Any], keys: dict[str, Any], expected: Any) -> None:
    expected_rows, expected_keys = expected
    assert {t: v for t, v in rows.items() if v != expected_rows[t]} == {}, expected_rows
    assert {k: v for k, v in keys.items() if v != expected_keys.get(k)} == {}
    assert set(keys) == set(expected_keys)


@pytest.mark.parametrize("leased", [True, False], ids=["under-the-lease", "without-it"])
async def test_movers_at_once_leave_what_one_mover_leaves(
    leased: bool, redis_url: str, database_url: str, reference_url: str, postgres_server: PostgresServer
) -> None:
    client = await async_redis_client(redis_url)
    try:
        expected = await moved_by_one(client, redis_url, reference_url, postgres_server.owner_of(reference_url))
        rows, _ = expected
        assert rows["invoices"][0] == 3 and rows["bill_runs"][0] == 2 and rows["interactions"][0] == 2
        assert rows["dispute_events"][0] == 3 and rows["promises_to_pay"][0] == 1
        assert rows["customers"][0] == 2 and rows["org_units"][0] == 1 and rows["line_changes"][0] == 1
        assert rows["orders"][0] == 1
        await asyncio.gather(*(mover(redis_url, database_url, leased=leased) for _ in range(MOVERS)))
        assert_same(tables(postgres_server.owner_of(database_url)), await redis_keys(client), expected)
        assert await holder_of(client, upgrade.LEASE_JOB) is None  # given back
    finally:
        await client.aclose()


async def test_a_mover_killed_half_way_is_taken_over_and_finished_nothing_twice(
    redis_url: str, database_url: str, reference_url: str, postgres_server: PostgresServer
) -> None:
    client = await async_redis_client(redis_url)
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "tests.upgrade_mover", redis_url, database_url, str(LEASE_S)),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "CHARGING_DATA_KEY": DATA_KEY},
    )
    try:
        expected = await moved_by_one(client, redis_url, reference_url, postgres_server.owner_of(reference_url))
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"go\n")  # (it started meanwhile) the old installation is back: move
        await proc.stdin.drain()
        assert await proc.stdout.readline() == b"halted\n"
        assert await holder_of(client, upgrade.LEASE_JOB) == "dead-mover"  # held by the halted mover
        assert await client.exists(bill_keys.BILL_RUNS)  # its runs' rows committed, the list not deleted
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        # Two movers start: they wait for the dead one's lease to expire, then one finishes.
        await asyncio.gather(*(mover(redis_url, database_url, leased=True) for _ in range(2)))
        assert_same(tables(postgres_server.owner_of(database_url)), await redis_keys(client), expected)
        assert await holder_of(client, upgrade.LEASE_JOB) is None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await client.aclose()
