"""Invoices an installation kept in Redis before PostgreSQL did are moved there once, on
upgrade, and the move can be resumed (postpaid/legacy.py)."""

from __future__ import annotations

import dataclasses
import json

import psycopg
import pytest
import redis.asyncio as aioredis

from charging.errors import StartupError
from charging.server import App
from postpaid import keys as bill_keys
from postpaid import legacy
from postpaid.billing import Billing
from postpaid.invoice_book import INVOICE_COLUMNS
from tests.conftest import LineBook
from tests.samples import sample_invoice


async def kept_in_redis(client: aioredis.Redis, count: int) -> list[str]:
    """``count`` invoices of account C1 as the bill run before issue 11 left them."""
    numbers = []
    for n in range(1, count + 1):
        number = f"INV-{n:08d}"
        inv = dataclasses.replace(sample_invoice(usage_rows=5), number=number, billing_account="C1")
        await client.set(bill_keys.invoice(number), inv.to_json())
        await client.hset(
            bill_keys.legacy_invoice_state(number), mapping={"ba": "C1", "issued": 1_767_225_600, "open": 0}
        )
        await client.rpush(bill_keys.legacy_account("C1") + ":inv", number)
        await client.set(bill_keys.bill_run("C1", f"2025-{n:02d}"), number)
        numbers.append(number)
    await client.set(bill_keys.invoice_seq("operator"), count)
    await client.rpush(
        bill_keys.BILL_RUNS,
        json.dumps({"at": 1_767_225_600, "accounts": 1, "issued": 1, "already": 0, "failed": 0, "seconds": 0.1}),
    )
    return numbers


async def test_invoices_kept_in_redis_are_moved_once_and_the_series_continues(
    app: App, postpaid_billing: tuple[Billing, LineBook], database_url: str
) -> None:
    b, _book = postpaid_billing
    assert app.redis is not None
    client = app.redis
    numbers = await kept_in_redis(client, 3)
    # A move that stopped after committing its first batch, before deleting it from Redis.
    first = await client.get(bill_keys.invoice(numbers[0]))
    with psycopg.connect(database_url) as conn:
        conn.execute(
            f"INSERT INTO invoices ({INVOICE_COLUMNS}) VALUES "
            "('operator', 'INV', 1, %s, 'C1', 'REGULAR', '2025-12-01', '2025-12-31', to_timestamp(1767225600), "
            "'2026-01-14', 'EUR', 0, 0, %s, NULL, NULL, NULL)",
            (numbers[0], first),
        )
    await client.delete(bill_keys.BILL_INVOICES_MOVED)  # as on a Redis written before the move existed
    moved = await legacy.move_once(client, b.book.pool, "operator", "INV", b.book.sealer)
    assert moved is not None and (moved.invoices, moved.runs) == (3, 1)
    assert await legacy.move_once(client, b.book.pool, "operator", "INV", b.book.sealer) is None  # once
    assert await b.invoices_of("C1") == numbers
    assert (await b.invoice(numbers[2])).number == numbers[2]
    assert not await client.exists(
        bill_keys.invoice(numbers[2]), bill_keys.legacy_account("C1") + ":inv", bill_keys.bill_run("C1", "2025-01")
    )
    assert (await client.hgetall(bill_keys.legacy_invoice_state(numbers[2])))["ba"] == "C1"  # the state stays
    assert (await b.run_history(5))[0]["issued"] == 1
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM invoices").fetchone() == (3,)
        assert conn.execute("SELECT last_number FROM invoice_numbers WHERE series = 'INV'").fetchone() == (3,)
        taxes = conn.execute("SELECT count(*) FROM invoice_taxes WHERE invoice_id = %s", (numbers[2],)).fetchone()
    assert taxes is not None and taxes[0] >= 1


async def test_an_invoice_kept_in_redis_that_clashes_with_one_issued_since_stops_the_move(
    app: App, postpaid_billing: tuple[Billing, LineBook], database_url: str
) -> None:
    """Another invoice under its series and number is not taken for a repeat (the move
    writes with no conflict target, for movers at once): the move fails naming it, and
    its document stays in Redis."""
    b, _book = postpaid_billing
    assert app.redis is not None
    client = app.redis
    (number,) = await kept_in_redis(client, 1)
    with psycopg.connect(database_url) as conn:  # issued since under the same series and number
        conn.execute(
            f"INSERT INTO invoices ({INVOICE_COLUMNS}) VALUES ('operator', 'INV', 1, 'INV-1-since', 'C2', "
            "'REGULAR', '2025-12-01', '2025-12-31', to_timestamp(1767225600), '2026-01-14', 'EUR', 0, 0, '{}', "
            "NULL, NULL, NULL)"
        )
    with pytest.raises(StartupError, match=number):
        await legacy.move(client, b.book.pool, "operator", "INV", b.book.sealer)
    assert await client.exists(bill_keys.invoice(number))
