"""Identity and fraud screening on a real Redis, with decisions recorded."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio as aioredis

from charging.server import App
from charging.v1 import crm_pb2, crm_pb2_grpc
from provisioning.keys import DECISIONS
from provisioning.screening import Limits, Screener, fingerprint
from tests.test_acquisition import application

NOW = 1_795_000_000


@pytest.fixture
async def screener(redis_url: str) -> AsyncIterator[Screener]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield Screener(client, salt="test-salt", limits=Limits(per_document_per_day=2, per_address_per_day=3))
    await client.aclose()


async def test_a_clean_application_passes_and_the_decision_is_recorded(
    crm: crm_pb2_grpc.CrmStub, app: App, r: redis.Redis
) -> None:
    order = await crm.SubmitApplication(application("app-1"))
    assert order.status == crm_pb2.ORDER_STATUS_IN_PROGRESS
    again = await crm.SubmitApplication(application("app-2", msisdn="491701234568", imsi="262011234567891"))
    assert again.status == crm_pb2.ORDER_STATUS_REJECTED  # the same identity
    # the decision is a step row of its order (PostgreSQL), not a list growing in Redis
    assert app.database is not None
    async with app.database.connection() as conn:
        decisions = await (
            await conn.execute(
                "SELECT crm_order_id, step, outcome, reasons, at FROM order_steps WHERE step = 'screening' "
                "ORDER BY crm_order_id"
            )
        ).fetchall()
    assert [(o, s, out, reasons, int(at.timestamp())) for o, s, out, reasons, at in decisions] == [
        ("app-1", "screening", "passed", ["identity and fraud checks passed"], NOW),
        ("app-2", "screening", "refused", ["this identity already has an active customer"], NOW),
    ]
    assert not r.exists(DECISIONS)


async def test_blacklisted_document_or_address_is_refused(screener: Screener) -> None:
    doc = screener.document_print("PASSPORT", "DE", "L898902C36")
    addr = screener.address_print("DE", "10115", "Hauptstr. 1")
    await screener.blacklist(doc, "fraud")
    await screener.blacklist(addr, "bad debt")
    result = await screener.screen("app-2", doc, addr, NOW)
    assert not result.approved
    assert result.reasons == ("identity document blacklisted (fraud)", "address blacklisted (bad debt)")


async def test_an_identity_active_elsewhere_is_refused(screener: Screener) -> None:
    doc = screener.document_print("NATIONAL_ID", "DE", "T220001293")
    addr = screener.address_print("DE", "10115", "Hauptstr. 1")
    assert await screener.register(doc, "customer-1")
    assert not await screener.register(doc, "customer-2")
    result = await screener.screen("app-3", doc, addr, NOW)
    assert result.reasons == ("this identity already has an active customer",)


async def test_velocity_limits_per_document_and_address_per_day(screener: Screener) -> None:
    doc = screener.document_print("PASSPORT", "DE", "L898902C36")
    addr = screener.address_print("DE", "10115", "Hauptstr. 1")
    assert [(await screener.screen(f"a{n}", doc, addr, NOW)).approved for n in range(3)] == [True, True, False]
    other_doc = screener.document_print("PASSPORT", "DE", "X00000000")
    assert not (await screener.screen("a4", other_doc, addr, NOW)).approved  # 4th at this address
    assert (await screener.screen("a5", doc, addr, NOW + 86_400)).approved  # the next day


def test_fingerprints_hide_the_data_and_ignore_case_and_spacing() -> None:
    a = fingerprint("s", "doc", "passport", "de", " l898902c36 ")
    assert a == fingerprint("s", "doc", "PASSPORT", "DE", "L898902C36")
    assert "L898902C36" not in a and a != fingerprint("other salt", "doc", "PASSPORT", "DE", "L898902C36")


async def test_an_application_screened_again_counts_once_and_its_customer_registers_again(
    screener: Screener,
) -> None:
    doc = screener.document_print("PASSPORT", "DE", "L898902C36")
    addr = screener.address_print("DE", "10115", "Hauptstr. 1")
    # an interrupted run screened "a1"; its resumed run screens it again, twice over
    assert [(await screener.screen(n, doc, addr, NOW)).approved for n in ("a1", "a1", "a1", "a2")] == [True] * 4
    assert not (await screener.screen("a3", doc, addr, NOW)).approved  # the third application today
    assert await screener.register(doc, "customer-1")
    assert await screener.register(doc, "customer-1")  # the same customer's order, run again
    assert not await screener.register(doc, "customer-2")
    assert await screener.customer_of(doc) == "customer-1"
