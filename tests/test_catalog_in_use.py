"""A catalog that drops a plan or service still in use is refused, with counts, unless
the load migrates its subscribers; through the real LoadCatalog on a real Redis."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import grpc
import pytest

from charging import keys
from charging.catalogs import CatalogBook, read_catalog_file
from charging.errors import InUse
from charging.server import App
from charging.v1 import admin_pb2, common_pb2
from tests.conftest import INITIAL, TERMINATE, Stubs, async_redis_client, session_request
from tests.test_events import DEBIT, event

MSISDNS = ["491700000001", "491700000002"]
SMS, NEW_SMS = 50_000, 70_000


def without_default(version: str) -> dict[str, Any]:
    """The sample catalog without the "default" plan and the "video" service (only
    "default" rates it)."""
    doc = read_catalog_file("")
    doc["version"] = version
    doc["plans"] = [p for p in doc["plans"] if p["id"] != "default"]
    doc["services"] = [s for s in doc["services"] if s["name"] != "video"]
    return doc


def with_successor(version: str, price: int = NEW_SMS) -> dict[str, Any]:
    """ "default" replaced by "default-2" (SMS dearer), its subscribers migrated."""
    doc = read_catalog_file("")
    doc["version"] = version
    successor = copy.deepcopy(doc["plans"][0])
    successor["id"] = "default-2"
    sms = successor["versions"][0]["rates"][3]
    assert sms["service"] == "sms"
    sms["price_micros"] = price
    for rate in successor["versions"][0]["rates"]:
        if rate["service"] == "voice" and not rate.get("free"):
            rate["price_micros"] *= 2
    doc["plans"][0] = successor
    doc["migrations"] = {"plans": {"default": "default-2"}}
    return doc


async def load(stubs: Stubs, doc: dict[str, Any]) -> admin_pb2.CatalogInfo:
    return await stubs.admin.LoadCatalog(admin_pb2.CatalogDocument(json=json.dumps(doc)))


async def running_version(stubs: Stubs) -> str:
    return str(json.loads((await stubs.admin.GetCatalog(admin_pb2.GetCatalogRequest())).json)["version"])


async def test_dropping_a_plan_or_service_in_use_is_refused_with_counts(stubs: Stubs) -> None:
    for msisdn in MSISDNS:
        await stubs.subscriber(msisdn, balance=10_000_000)
    await stubs.subscriber("491700000009", balance=10_000_000, plan="mobile-prepaid")
    for sid, msisdn, group in (("voice", MSISDNS[0], 10), ("video", MSISDNS[1], 11)):
        opened = await stubs.charging.ChargeSession(
            session_request(sid, INITIAL, 0, [{"rating_group": group, "requested": {}}], msisdn=msisdn)
        )
        assert opened.rating_groups[0].result_code == 2001

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await load(stubs, without_default("drops-default"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = err.value.details() or ""
    assert "plans.default: in use by 2 subscribers and 2 open sessions" in details
    assert "services.video: in use by 2 subscribers and 1 open session" in details
    assert "mobile-prepaid" not in details and not any(m in details for m in [*MSISDNS, "491700000009"])

    assert await running_version(stubs) == read_catalog_file("")["version"]
    answer = await stubs.charging.ChargeEvent(event("sms-1", DEBIT))
    assert (answer.result_code, answer.cost_micros) == (2001, SMS)  # not 5031
    # Nothing was kept of the refused catalog: the same version may be loaded once fixed.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.admin.GetCatalog(admin_pb2.GetCatalogRequest(version="drops-default"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_migrated_subscribers_are_rated_on_the_new_plan(stubs: Stubs) -> None:
    for msisdn in MSISDNS:
        await stubs.subscriber(msisdn, balance=10_000_000)
    voice = [{"rating_group": 10, "requested": {}}]
    await stubs.charging.ChargeSession(session_request("open", INITIAL, 0, voice))

    info = await load(stubs, with_successor("migrates-default"))
    assert info.version == "migrates-default" and "default" not in info.plan_ids
    await load(stubs, with_successor("migrates-default"))  # again, as a restart with the file does
    for msisdn in MSISDNS:
        assert (await stubs.balance(msisdn)).plan_id == "default-2"
        answer = await stubs.charging.ChargeEvent(event(f"sms-{msisdn}", DEBIT, msisdn=msisdn))
        assert (answer.result_code, answer.cost_micros) == (2001, NEW_SMS)
    # The session opened before the load ends on the prices it started with, not 5031.
    done = await stubs.charging.ChargeSession(
        session_request("open", TERMINATE, 1, [{"rating_group": 10, "used": {"time_s": 60}}])
    )
    assert (done.result_code, done.rating_groups[0].result_code) == (2001, 2001)
    assert done.rating_groups[0].cost_micros == 100_000  # 0.10 EUR per started minute, not 0.20

    # The old plan is gone for new subscribers; the next catalog need not migrate again.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.subscriber("491700000003")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    later = with_successor("after-migration")
    del later["migrations"]
    await load(stubs, later)
    answer = await stubs.charging.ChargeEvent(event("sms-later", DEBIT))
    assert (answer.result_code, answer.cost_micros) == (2001, NEW_SMS)
    # A plan nobody is on may be dropped without a migration.
    later["version"] = "drops-fixed-prepaid"
    later["plans"] = [p for p in later["plans"] if p["id"] != "fixed-prepaid"]
    assert "fixed-prepaid" not in (await load(stubs, later)).plan_ids


@pytest.mark.parametrize(
    ("migrations", "field"),
    [
        ({"plans": {"default": "mobile-postpaid"}}, "migrations.plans.default"),  # prepaid -> postpaid
        ({"plans": {"default": "nowhere"}}, "migrations.plans.default"),
        ({"plans": {"default": "default-2"}, "services": {"sms": "mms"}}, "migrations.services.sms"),
        ({"plans": {"mobile-prepaid": "default-2"}}, "migrations.plans.mobile-prepaid"),  # still in the catalog
        ({"plans": {"default": "default-2"}, "services": {"video": "sms"}}, "migrations.services.video"),
    ],
)
async def test_a_migration_that_cannot_take_over_is_refused(
    stubs: Stubs, migrations: dict[str, Any], field: str
) -> None:
    await stubs.subscriber(balance=10_000_000)
    doc = with_successor("bad-migration")
    doc["migrations"] = migrations
    if "services" in migrations:  # drop video everywhere
        doc["services"] = [s for s in doc["services"] if s["name"] != "video"]
        doc["plans"][0]["versions"][0]["rates"] = [
            r for r in doc["plans"][0]["versions"][0]["rates"] if r["service"] != "video"
        ]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await load(stubs, doc)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (err.value.details() or "")
    assert (await stubs.balance()).plan_id == "default"


async def test_a_catalog_switch_does_not_race_with_subscribers_being_created(stubs: Stubs, app: App) -> None:
    """Subscribers created on "default" while a catalog dropping it is loaded: either the
    load is refused, or every subscriber that exists is on a plan of the running catalog."""
    for round_ in range(4):
        base = 491710000000 + round_ * 1000
        creations = [stubs.subscriber(str(base + i), balance=1_000_000) for i in range(40)]
        loading = load(stubs, without_default(f"race-{round_}"))
        results = await asyncio.gather(loading, *creations[:20], return_exceptions=True)
        results += await asyncio.gather(*creations[20:], return_exceptions=True)
        running = json.loads((await stubs.admin.GetCatalog(admin_pb2.GetCatalogRequest())).json)
        plans = {p["id"] for p in running["plans"]}
        for i in range(40):
            try:
                sub = await stubs.admin.GetSubscriber(common_pb2.SubscriberId(msisdn=str(base + i)))
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND
                continue
            assert sub.plan_id in plans, (round_, running["version"], sub.plan_id)
        for result in results:
            if isinstance(result, grpc.aio.AioRpcError):
                assert result.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)
        if running["version"] != read_catalog_file("")["version"]:
            await load(stubs, {**read_catalog_file(""), "version": f"back-{round_}"})


async def test_a_migration_does_not_race_with_subscribers_being_created(stubs: Stubs) -> None:
    for i in range(5):
        await stubs.subscriber(str(491720000000 + i), balance=1_000_000)
    creations = [stubs.subscriber(str(491720000100 + i), balance=1_000_000) for i in range(40)]
    await asyncio.gather(load(stubs, with_successor("migrating")), *creations, return_exceptions=True)
    for msisdn in [*(491720000000 + i for i in range(5)), *(491720000100 + i for i in range(40))]:
        try:
            sub = await stubs.admin.GetSubscriber(common_pb2.SubscriberId(msisdn=str(msisdn)))
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
            continue
        assert sub.plan_id == "default-2", msisdn


async def test_the_first_start_after_an_upgrade_counts_the_existing_accounts(stubs: Stubs, redis_url: str) -> None:
    for msisdn in MSISDNS:
        await stubs.subscriber(msisdn, balance=1_000_000)
    await stubs.subscriber("491700000003", balance=1_000_000, plan="mobile-prepaid")
    client = await async_redis_client(redis_url)
    try:
        # As before the index existed: accounts, a stored catalog, no member sets.
        stale = [k async for k in client.scan_iter(match="plan:*")]
        await client.delete(keys.CATALOG_PLANS, *stale)
        book = CatalogBook(client)
        await book.start("", prefer_file=False)
        assert await client.scard(keys.plan_members("default")) == 2  # type: ignore[misc]
        with pytest.raises(InUse, match=r"plans\.default: in use by 2 subscribers"):
            await book.load(without_default("after-upgrade"))
    finally:
        await client.aclose()
