"""A postpaid customer's personal data is on no disk in clear: after an application,
its activation and a bill run (the invoice issued into PostgreSQL, rendered and mailed),
neither Redis's AOF (the incremental part as written, and after a rewrite), an RDB
snapshot, nor PostgreSQL's files (its data directory after a CHECKPOINT, its WAL and
log) hold the applicant's name, document number, street or email.

Neither side may compress what the test greps: the redis-server is the test's own, with
``rdbcompression no`` (LZF would hide a name in a snapshot), and the invoice documents are
stored uncompressed (pglz would hide it in PostgreSQL's pages). A mutation check: with
sealing turned off, every one of these greps finds the name."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
import redis

from charging.clock import ManualClock
from charging.embedded_redis import redis_command
from charging.server import App
from charging.settings import Settings
from charging.v1 import billing_pb2, billing_pb2_grpc, crm_pb2, crm_pb2_grpc
from postpaid import keys as bill_keys
from postpaid.invoices import Invoice
from provisioning.rotation import rewrite_aof
from tests.conftest import DATA_KEY, NETWORK_TIMEOUT_S, PostgresServer, Stubs, free_port
from tests.test_acquisition import application
from tests.test_data_at_rest import found, on_disk
from tests.test_delivery import Mailbox
from tests.test_postpaid_e2e import DAY, GOOD, NOV_18, mailbox, voice

__all__ = ["mailbox"]  # fixture

# Nobody else in the test suite is called this: any hit is this test's applicant.
GIVEN, FAMILY, DOCUMENT = "Quirinus", "Zwackelhuber", "QZ44719026"
STREET, EMAIL = "Wendelsteinweg 93", "quirinus.zwackelhuber@example.net"
PERSONAL = [x.encode() for x in (FAMILY, DOCUMENT, STREET, EMAIL)]
MSISDN = "491709990017"


def applicant() -> crm_pb2.Application:
    doc = application("pii-1", contract="POSTPAID", plan="mobile-postpaid", history=GOOD, msisdn=MSISDN)
    doc.imsi = "262019990017000"
    doc.applicant.CopyFrom(crm_pb2.Person(given_name=GIVEN, family_name=FAMILY, date_of_birth="1984-02-29"))
    doc.address.street = STREET
    doc.contact.email = EMAIL
    doc.identity_document.number = DOCUMENT
    return doc


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A redis-server of this test's own (AOF on, fsync always, snapshots uncompressed):
    its URL and data directory."""
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is not installed (make test installs it)"
    directory = tmp_path / "redis"
    directory.mkdir()
    port = free_port()
    command = [*redis_command(binary, directory, "always", port=port), "--rdbcompression", "no"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        for _ in range(400):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None:
                    pytest.fail(f"redis-server exited with {proc.returncode}")
                proc_wait(proc)
        yield url, directory
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


def proc_wait(proc: subprocess.Popen[bytes]) -> None:
    """Wait a little for the starting redis-server (no clock involved: a process start)."""
    try:
        proc.wait(0.05)
    except subprocess.TimeoutExpired:
        pass


def files_under(directory: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


async def test_a_billed_postpaid_customer_is_on_no_disk_in_clear(
    own_redis: tuple[str, Path],
    postgres_server: PostgresServer,
    database_url: str,
    clock: ManualClock,
    mailbox: tuple[Mailbox, int],
) -> None:
    clock.advance(ms=NOV_18 * 1000 - clock.now_ms())
    with psycopg.connect(postgres_server.owner_of(database_url), autocommit=True) as conn:  # the owner alters
        # Documents out of line and uncompressed, as they come: compressed (pglz), a name in
        # clear would be split by control bytes and no grep would find it.
        conn.execute("ALTER TABLE invoices ALTER COLUMN document SET STORAGE EXTERNAL")
    redis_url, redis_dir = own_redis
    settings = Settings(
        grpc_address="127.0.0.1:0",
        metrics_address="",
        nchf_address="",
        redis_url=redis_url,
        database_url=database_url,
        data_key=DATA_KEY,
        smtp_host="127.0.0.1",
        smtp_port=mailbox[1],
        smtp_sender="billing@operator.example",
        shutdown_delay_s=0.0,
        network_timeout_s=NETWORK_TIMEOUT_S,
    )
    app = App(settings, clock=clock, run_background=False)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            crm, billing = crm_pb2_grpc.CrmStub(channel), billing_pb2_grpc.BillingStub(channel)
            order = await crm.SubmitApplication(applicant())
            assert order.status == crm_pb2.ORDER_STATUS_IN_PROGRESS, list(order.steps)
            assert app.worker is not None and await app.worker.reconcile_once() == 1  # activated
            assert await voice(Stubs.on(channel), MSISDN, "v1", 185) == 2001
            clock.advance(seconds=31 * DAY)
            assert (await billing.RunBilling(billing_pb2.RunBillingRequest())).issued == 1
            ba = billing_pb2.BillingAccountId(billing_account="C" + order.customer_id)
            (listed,) = (await billing.ListInvoices(ba)).invoices
            invoice = Invoice.from_json(listed.document_json)
            # Read through the API, all of it is there in clear...
            assert (invoice.customer_name, invoice.customer_address[0]) == (f"{GIVEN} {FAMILY}", STREET)
            html = await billing.RenderInvoice(
                billing_pb2.RenderRequest(number=invoice.number, format=billing_pb2.RENDER_FORMAT_HTML)
            )
            assert f"{GIVEN} {FAMILY}<br>{STREET}<br>".encode() in html.content
        assert app.billing is not None and await app.billing.deliver_pending() == 1
        (envelope, message) = mailbox[0].messages[-1]
        assert envelope.rcpt_tos == [EMAIL]  # delivered to the opened address
        assert FAMILY in str(message.get_body(("plain",)).get_content())  # type: ignore[union-attr]

        # ...while what is stored is sealed: the invoice's document...
        with psycopg.connect(postgres_server.owner_of(database_url), autocommit=True) as conn:  # CHECKPOINT below
            row = conn.execute(
                "SELECT document->>'customer_name', document->'customer_address'->>0, total_minor "
                "FROM invoices WHERE invoice_id = %s",
                (invoice.number,),
            ).fetchone()
            assert row is not None and row[0].startswith("enc:test:") and row[1].startswith("enc:test:")
            assert row[2] == invoice.total  # the amounts stay in clear, for SQL
            conn.execute("CHECKPOINT")  # every page of the database written to its files
        # ...and the billing account in Redis.
        assert app.redis is not None
        stored = await app.redis.hgetall(bill_keys.billing_account(ba.billing_account))
        assert all(stored[k].startswith("enc:test:") for k in ("name", "address", "email"))

        assert found(on_disk(redis_dir), PERSONAL) == []  # the AOF as written (incremental part)
        await rewrite_aof(app.redis, 30)
        await app.redis.save()
        redis_files = on_disk(redis_dir)
        assert any(name.endswith(".rdb") for name in redis_files)
        assert any(name.endswith(".incr.aof") for name in redis_files)
        assert found(redis_files, PERSONAL) == []
        pg_files = files_under(postgres_server.layout.directory)  # data, WAL, log
        assert any("base" in name for name in pg_files)
        assert found(pg_files, PERSONAL) == []
    finally:
        await app.stop()
