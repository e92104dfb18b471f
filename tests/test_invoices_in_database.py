"""A year of monthly bill runs: the invoices are in PostgreSQL, listed page by page through
the Billing API and summed by the analysts' views, and billing's Redis memory per postpaid line does not grow with them
(only each invoice's small state hash, ``{bill.<n>}:is:NUMBER``, stays: open amount, status,
delivery, which payments and dunning use in real time; moving the settled ones out is
left for when payments are rows too)."""

from __future__ import annotations

import grpc
import psycopg
import pytest
import redis

from charging import keys
from charging.clock import ManualClock
from charging.server import App
from charging.settings import Settings
from charging.v1 import billing_pb2, billing_pb2_grpc
from postpaid import keys as bill_keys
from postpaid.billing import Billing
from tests.conftest import LineBook, PostgresServer, Stubs, enrol
from tests.test_bill_run import call

DAY = 86_400
LINES = ("491700000951", "491700000952")


def billing_memory(r: redis.Redis, accounts: list[str]) -> tuple[int, int]:
    """Bytes billing keeps in Redis for these lines (their usage and account hashes and
    every billing key but the invoices' states), and the invoices' states' bytes (the
    state hashes and the lists of open invoices: nobody pays in this test)."""
    states, other = 0, 0
    for key in r.scan_iter(match="{bill*}:*", count=1000):
        size = int(r.memory_usage(key, samples=0) or 0)
        if ":is:" in str(key) or str(key).endswith(":open"):
            states += size
        else:
            other += size
    for acct in accounts:
        for key in (keys.account(acct), keys.usage(acct), keys.usage_records(acct)):
            other += int(r.memory_usage(key, samples=0) or 0)
    return other, states


async def test_a_year_of_invoices_is_paged_from_the_database_and_redis_does_not_grow(
    app: App,
    stubs: Stubs,
    postpaid_billing: tuple[Billing, LineBook],
    clock: ManualClock,
    r: redis.Redis,
    settings: Settings,
) -> None:
    b, _book = postpaid_billing
    accounts = [await enrol(stubs, b, "61", msisdn) for msisdn in LINES]
    sizes = []
    for month in range(12):
        for i, msisdn in enumerate(LINES):
            assert await call(stubs, msisdn, f"m{month}-{i}", 60 + month) == 2001
        clock.advance(seconds=31 * DAY)
        assert (await b.runs.run()).issued == 1
        await b.deliver_pending()
        sizes.append(billing_memory(r, accounts))
    # The invoice documents are not in Redis; what billing keeps there per line after
    # twelve runs is what it kept after one (a few bytes of counters' digits aside).
    assert not list(r.scan_iter(match=bill_keys.invoice("*")))
    (first, first_states), (last, last_states) = sizes[0], sizes[-1]
    assert abs(last - first) <= 64 * len(LINES), sizes
    assert last_states <= 12 * first_states + 64

    # What finance asks in SQL: per billing month, the invoices and the tax per code.
    with psycopg.connect(settings.database_url) as conn:
        months = conn.execute("SELECT month, invoices, total_minor, tax_minor FROM invoices_per_period").fetchall()
        taxed = conn.execute("SELECT sum(tax_minor), sum(base_minor) FROM taxes_per_period").fetchone()
        totals = conn.execute("SELECT sum(tax_minor), sum(total_minor - tax_minor) FROM invoices").fetchone()
    assert len(months) == 12 and all(m[1] == 1 for m in months)
    assert taxed == totals

    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        stub = billing_pb2_grpc.BillingStub(channel)
        pages, token = [], ""
        while True:
            page = await stub.ListInvoices(
                billing_pb2.BillingAccountId(billing_account="C61", page_size=5, page_token=token)
            )
            pages.append([inv.number for inv in page.invoices])
            token = page.next_page_token
            if not token:
                break
        assert [len(p) for p in pages] == [5, 5, 2]
        assert [n for p in pages for n in p] == [f"INV-{n:08d}" for n in range(1, 13)]
        with_usage = await stub.GetInvoice(billing_pb2.InvoiceId(number="INV-00000012"))
        assert with_usage.period_start.startswith("2026-12")
        try:
            await stub.ListInvoices(billing_pb2.BillingAccountId(billing_account="C61", page_size=1001))
            raise AssertionError("a page of 1001 was accepted")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_size" in (exc.details() or "")


def test_an_invoices_rows_cannot_be_changed_or_deleted(database_url: str, postgres_server: PostgresServer) -> None:
    rows = {
        "invoice_charges": (
            "INSERT INTO invoice_charges (invoice_id, position, line, kind, description, category, tax_code, "
            "quantity, unit, amount_minor) VALUES ('INV-00000001', 1, '4917', 'RENTAL', 'Plan', '', 'standard', "
            "0, '', 2500)",
            "amount_minor = 0",
        ),
        "invoice_taxes": (
            "INSERT INTO invoice_taxes VALUES ('INV-00000001', 'standard', 'VAT', 1900, 2500, 475)",
            "tax_minor = 0",
        ),
        "invoice_deliveries": (
            "INSERT INTO invoice_deliveries (invoice_id, attempted_at, channel, delivered) "
            "VALUES ('INV-00000001', now(), 'email', true)",
            "delivered = false",
        ),
        "bill_runs": (
            "INSERT INTO bill_runs (ran_at, accounts, issued, already, failed, seconds) "
            "VALUES (now(), 1, 1, 0, 0, 0.1)",
            "issued = 2",
        ),
    }
    # As the owner: the triggers stop even it (the server's role is refused by privilege
    # before them, tests/test_database_roles.py).
    with psycopg.connect(postgres_server.owner_of(database_url), autocommit=True) as conn:
        for table, (insert, change) in rows.items():
            conn.execute(insert)
            for statement in (f"UPDATE {table} SET {change}", f"DELETE FROM {table}", f"TRUNCATE {table}"):
                with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="immutable"):
                    conn.execute(statement)
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)
