"""Personal data is sealed before it reaches Redis: neither the AOF (before and after a
rewrite) nor an RDB snapshot holds an applicant's name, document number, address or
email after a full application; rotating the key re-seals everything and rewrites the
AOF so the old ciphertext leaves it (billing accounts included)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, redirect_stdout
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis

from charging import cli
from charging.clock import ManualClock
from charging.database import Pool
from charging.server import App
from charging.settings import Settings
from charging.v1 import crm_pb2, crm_pb2_grpc
from postpaid import accounts
from postpaid import keys as bill_keys
from provisioning import keys
from provisioning.rotation import rewrite_aof
from provisioning.sealing import DEV_KEY_FILE, Sealer, Unreadable, new_key_entry
from tests.conftest import NETWORK_TIMEOUT_S
from tests.test_acquisition import application

# What the application of tests.test_acquisition holds about Anna: none of it may be on disk.
PERSONAL = [b"Muster", b"L898902C36", b"Hauptstr", b"anna@example.org", b"1990-05-17", b"roaming abroad"]
K1, K2 = new_key_entry("k1"), new_key_entry("k2")
BEFORE_SEALING = {"name": "Anna Muster", "address": "Hauptstr. 5\n10115 Berlin", "email": "anna@example.org"}


def on_disk(directory: Path) -> dict[str, bytes]:
    """Every file redis-server wrote: the AOF's parts and any RDB snapshot."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in [*directory.glob("*.rdb"), *directory.glob("appendonlydir/*")]
    }


def found(files: dict[str, bytes], needles: list[bytes]) -> list[tuple[str, bytes]]:
    return [(name, n) for name, data in files.items() for n in needles if n in data]


@asynccontextmanager
async def server(directory: Path, clock: ManualClock, database_url: str, data_key: str = "") -> AsyncIterator[App]:
    """A server with its embedded redis-server (AOF on disk, fsync always) in ``directory``."""
    settings = Settings(
        grpc_address="127.0.0.1:0",
        metrics_address="",
        nchf_address="",
        redis_dir=directory,
        redis_appendfsync="always",
        database_url=database_url,
        data_key=data_key,
        network_timeout_s=NETWORK_TIMEOUT_S,
    )
    app = App(settings, clock=clock, run_background=False)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def apply(app: App) -> str:
    """A full application: decided, activated on the network, with customer care records."""
    clock = app.clock
    assert isinstance(clock, ManualClock)
    clock.advance(ms=1_795_000_000_000 - clock.now_ms())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        crm = crm_pb2_grpc.CrmStub(channel)
        order = await crm.SubmitApplication(application("o-1"))
        assert order.status == crm_pb2.ORDER_STATUS_IN_PROGRESS
        assert app.worker is not None
        assert await app.worker.reconcile_once() == 1
        assert (await crm.GetOrder(crm_pb2.OrderRef(crm_order_id="o-1"))).status == crm_pb2.ORDER_STATUS_COMPLETED
        who = order.customer_id
        await crm.AddInteraction(
            crm_pb2.Interaction(customer_id=who, channel="PHONE", note="Anna Muster asked about roaming abroad")
        )
        await crm.OpenTicket(crm_pb2.Ticket(customer_id=who, topic="OTHER", summary="Muster: roaming abroad"))
        return who


async def read_back(app: App, who: str) -> tuple[str, str, list[str]]:
    """What the CRM reads: the customer's email and masked document, the interaction notes."""
    assert app.acquisition is not None
    customer = await app.acquisition.customers.get(who)
    assert customer is not None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        records = await crm_pb2_grpc.CrmStub(channel).GetCustomerRecords(crm_pb2.CustomerRef(customer_id=who))
    return customer.email, customer.document_number, [i.note for i in records.interactions]


async def test_no_personal_data_in_the_aof_or_a_snapshot(
    tmp_path: Path, database_url: str, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "redis"
    with caplog.at_level(logging.WARNING, logger="provisioning.sealing"):
        async with server(directory, clock, database_url) as app:
            who = await apply(app)
            assert await read_back(app, who) == (
                "anna@example.org",
                "***36",
                ["Anna Muster asked about roaming abroad"],
            )
            assert found(on_disk(directory), PERSONAL) == []  # the AOF as written, request included
            assert app.redis is not None
            await rewrite_aof(app.redis, 30)
            await app.redis.save()
            files = on_disk(directory)
            assert any(name.endswith(".rdb") and "/" not in name for name in files)  # the snapshot is there
            assert found(files, PERSONAL) == []
    # No key configured: a development key was generated, said so once, kept private.
    generated = [r for r in caplog.records if "development key" in r.getMessage()]
    assert len(generated) == 1
    assert (directory / DEV_KEY_FILE).stat().st_mode & 0o777 == 0o600
    async with server(directory, clock, database_url) as app:  # the same key file after a restart
        assert (await read_back(app, who))[0] == "anna@example.org"
    assert len([r for r in caplog.records if "development key" in r.getMessage()]) == 1


async def test_rotating_the_key_reseals_everything_and_rewrites_the_aof(
    tmp_path: Path, database_url: str, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "redis"
    async with server(directory, clock, database_url, data_key=K1) as app:
        who = await apply(app)
        assert app.redis is not None and app.acquisition is not None
        # An order still SUBMITTED keeps its request, and a value written before sealing
        # existed (in clear): both are sealed again too.
        await app.acquisition.orders.claim("o-2", {"applicant": {"family_name": "Muster"}}, clock.now_ms())
        legacy = {"id": "0", "channel": "SHOP", "note": "Anna Muster, before sealing", "references": [], "at": 1}
        await app.redis.lpush(keys.interactions(who), json.dumps(legacy))
        await app.redis.delete(keys.CARE_MOVED)  # as on a server from before: the next start moves it
        # Billing accounts: one sealed with k1, one written in clear before sealing existed.
        old = accounts.sealed({"name": "Anna Muster", "email": "anna@example.org"}, Sealer.from_text(K1, "k1"))
        await app.redis.hset(bill_keys.billing_account("C1"), mapping=old)
        await app.redis.hset(bill_keys.billing_account("C2"), mapping=BEFORE_SEALING)
    assert b"enc:k1:" in b"".join(on_disk(directory).values())
    # Every process gets the new key, last in its ring; then the rotation runs.
    async with server(directory, clock, database_url, data_key=f"{K1},{K2}") as app:
        assert app.redis is not None and app.acquisition is not None
        # A customer stored before the name index existed: the rotation indexes it.
        await app.redis.delete(*[k async for k in app.redis.scan_iter("{crm}:name:*")])
        assert await app.acquisition.customers.named("Anna Muster") == ([], "")
        monkeypatch.setenv("CHARGING_REDIS_DIR", str(directory))
        monkeypatch.setenv("CHARGING_DATA_KEY", f"{K1},{K2}")
        monkeypatch.setenv("CHARGING_DATABASE_URL", database_url)
        out = io.StringIO()
        with redirect_stdout(out):
            assert await asyncio.to_thread(cli.main, ["rotate-data-key", "--timeout", "30"]) == 0
        assert json.loads(out.getvalue())["rotated"] == {
            "customers": 1,
            "order_requests": 1,
            # in PostgreSQL: the interaction and the ticket (and its first change) sealed with
            # k1; the interaction moved from Redis at this start was sealed with k2 already
            "interactions": 1,
            "tickets": 1,
            "ticket_changes": 1,
            "disputes": 0,  # disputes are billing's now (issue 15); the CRM keeps none of its own
            "billing_accounts": 2,
            "customer_versions": 2,  # in PostgreSQL: the customer as created and as activated, with k1
        }
        assert json.loads(out.getvalue())["names_indexed"] == 1
        assert [c.id for c in (await app.acquisition.customers.named("muster ANNA"))[0]] == [who]
        files = on_disk(directory)
        assert b"enc:k1:" not in b"".join(files.values())  # the AOF was rewritten: old ciphertext gone
        assert b"enc:k2:" in b"".join(files.values())
        assert found(files, [*PERSONAL, b"before sealing"]) == []
        assert app.redis is not None
        assert app.database is not None
        assert all(v.startswith("enc:k2:") for v in await sealed_values(app.redis, app.database, who))
        async with app.database.connection() as conn:
            versions = await (
                await conn.execute("SELECT sealed_personal FROM customer_versions WHERE customer_id = %s", (int(who),))
            ).fetchall()
        assert versions and all(str(v[0]).startswith("enc:k2:") for v in versions)
    # The old key can go: a server with the new key alone reads everything.
    async with server(directory, clock, database_url, data_key=K2) as app:
        assert await read_back(app, who) == (
            "anna@example.org",
            "***36",
            ["Anna Muster, before sealing", "Anna Muster asked about roaming abroad"],
        )
        assert app.acquisition is not None
        claim = await app.acquisition.orders.take_over("o-2", clock.now_ms() + 60_000)
        assert claim is not None and claim.request == {"applicant": {"family_name": "Muster"}}
        assert app.billing is not None
        assert (await app.billing.accounts.get("C1"))["name"] == "Anna Muster"
        assert {k: (await app.billing.accounts.get("C2"))[k] for k in BEFORE_SEALING} == BEFORE_SEALING


async def sealed_values(client: aioredis.Redis, pool: Pool, who: str) -> list[str]:
    """Every personal value stored for the customer, and the SUBMITTED order's request."""
    values = await client.hmget(
        keys.customer(who), ["name", "street", "city", "email", "postal_code", "document_number"]
    )
    values += [await client.get(keys.dispute(str(i))) for i in await client.lrange(keys.disputes(who), 0, -1)]
    values.append(await client.hget(keys.order_work("o-2"), "request"))
    values += await client.hmget(bill_keys.billing_account("C1"), ["name", "email"])
    values += await client.hmget(bill_keys.billing_account("C2"), list(accounts.PERSONAL))
    async with pool.connection() as conn:
        for query in (
            "SELECT sealed_note, sealed_refs FROM interactions WHERE customer_id = %s",
            "SELECT sealed_summary FROM tickets WHERE customer_id = %s",
            "SELECT c.sealed_note FROM ticket_changes c JOIN tickets t USING (ticket_id) WHERE t.customer_id = %s",
        ):
            values += [v for row in await (await conn.execute(query, (who,))).fetchall() for v in row]
    # 6 of the customer, the request, 2 + 3 of billing accounts; 2 x 2 of interactions, 1 + 1 of the ticket
    assert len(values) == 18 and None not in values
    return [str(v) for v in values]


def test_rotation_never_makes_a_key_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run where no key is configured, it stops instead of sealing with a key no server has."""
    monkeypatch.delenv("CHARGING_DATA_KEY", raising=False)
    monkeypatch.setenv("CHARGING_REDIS_DIR", str(tmp_path))
    assert cli.main(["rotate-data-key"]) == 1
    assert "no data key" in capsys.readouterr().err
    assert not (tmp_path / DEV_KEY_FILE).exists()


def test_a_sealed_value_opens_only_as_what_it_was_sealed_as() -> None:
    ring = Sealer.from_text(f"{K1}\n{K2}\n", "test")
    sealed = ring.seal("anna@example.org", "customer.email")
    assert sealed.startswith("enc:k2:") and "anna" not in sealed
    assert ring.open(sealed, "customer.email") == "anna@example.org"
    assert sealed != ring.seal("anna@example.org", "customer.email")  # a fresh nonce each time
    with pytest.raises(Unreadable):
        ring.open(sealed, "customer.postal_code")  # moved into another field
    with pytest.raises(Unreadable, match="not in the key ring"):
        Sealer.from_text(K1, "test").open(sealed, "customer.email")
    # A character in the middle: every bit of it is data (near the end of base64, a
    # character may carry padding bits that decoding drops, which would change nothing).
    middle = len(sealed) - 12
    tampered = sealed[:middle] + ("A" if sealed[middle] != "A" else "B") + sealed[middle + 1 :]
    with pytest.raises(Unreadable):
        ring.open(tampered, "customer.email")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("k1:c2hvcnQ=", "not the base64 of 32 bytes"),
        ("bad!id:" + K1.partition(":")[2], "needs an id"),
        (f"{K1},{K1}", "given twice"),
    ],
    ids=["short", "bad-id", "twice"],  # not the key: the same names in every pytest-xdist worker
)
def test_a_bad_key_ring_is_refused_without_showing_the_key(text: str, problem: str) -> None:
    from charging.errors import StartupError

    with pytest.raises(StartupError, match=problem) as err:
        Sealer.from_text(text, "CHARGING_DATA_KEY")
    assert K1.partition(":")[2] not in str(err.value)
