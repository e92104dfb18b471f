"""The rating engine end to end: plans of every customer type, destinations, bands,
roaming, tariff changes and catalog reloads, through gRPC on a real Redis."""

from __future__ import annotations

import json
from datetime import datetime

import grpc
import pytest

from charging.catalogs import read_catalog_file
from charging.clock import ManualClock
from charging.v1 import admin_pb2, charging_pb2, common_pb2
from tests.conftest import INITIAL, TERMINATE, UPDATE, Stubs, session_request, set_time, sms_request

MSISDN = "491700000001"
PEAK = "2026-11-26T11:00:00+01:00"  # a Thursday in Berlin


def voice(sid: str, kind: int, n: int, called: str, network: str = "", **units: object) -> charging_pb2.SessionRequest:
    group: dict[str, object] = {"rating_group": 10, **units}
    return session_request(sid, kind, n, [group], called_party=called, visited_network=network)


@pytest.mark.parametrize(
    ("plan", "called", "expected"),
    [
        # 90 s national at peak: first 60 s block, then per second
        ("mobile-prepaid", "491711234567", 90_000 + 30 * 1_500),
        ("mobile-postpaid", "491711234567", 60_000 + 30 * 1_000),
        ("fixed-prepaid", "4930123456", 30_000 + 30 * 500),
        ("fixed-postpaid", "4930123456", 20_000 + 30 * 300),
        # international zone 1, 60/60: two started minutes
        ("mobile-prepaid", "33123456789", 2 * 300_000),
        # rest of the world: connect fee + two minutes, above the minimum charge
        ("mobile-prepaid", "8613912345678", 200_000 + 2 * 1_200_000),
        # on-net per second
        ("mobile-prepaid", "491701234567", 90 * 300),
    ],
)
async def test_each_plan_prices_a_call(stubs: Stubs, clock: ManualClock, plan: str, called: str, expected: int) -> None:
    set_time(clock, PEAK)
    await stubs.subscriber(MSISDN, balance=50_000_000, plan=plan)
    a = await stubs.charging.ChargeSession(voice("c", INITIAL, 0, called, requested={}))
    assert a.rating_groups[0].result_code == 2001
    t = await stubs.charging.ChargeSession(voice("c", TERMINATE, 1, called, used={"time_s": 90}))
    assert t.rating_groups[0].cost_micros == expected
    b = await stubs.balance()
    assert (b.balance_micros, b.reserved_micros) == (50_000_000 - expected, 0)


@pytest.mark.parametrize("called", ["112", "49800123456"])
async def test_emergency_and_toll_free_are_not_credit_controlled(stubs: Stubs, clock: ManualClock, called: str) -> None:
    set_time(clock, PEAK)
    await stubs.subscriber(MSISDN, balance=0, plan="mobile-prepaid")
    a = await stubs.charging.ChargeSession(voice("e", INITIAL, 0, called, requested={}))
    assert (a.result_code, a.rating_groups[0].result_code) == (4011, 4011)
    assert not a.rating_groups[0].HasField("granted")
    # no session was opened: nothing to report on, nothing supervised
    t = await stubs.charging.ChargeSession(voice("e", TERMINATE, 1, called, used={"time_s": 600}))
    assert t.result_code == 5002
    b = await stubs.balance()
    assert (b.balance_micros, b.reserved_micros) == (0, 0)


async def test_roaming_selects_roaming_rates(stubs: Stubs, clock: ManualClock) -> None:
    set_time(clock, PEAK)
    await stubs.subscriber(MSISDN, balance=50_000_000, plan="mobile-prepaid")
    await stubs.charging.ChargeSession(voice("r", INITIAL, 0, "491711234567", "20801", requested={}))
    t = await stubs.charging.ChargeSession(voice("r", TERMINATE, 1, "491711234567", "20801", used={"time_s": 61}))
    assert t.rating_groups[0].cost_micros == 2 * 500_000
    data = session_request("d", INITIAL, 0, [{"rating_group": 30, "requested": {}}], visited_network="20801")
    a = await stubs.charging.ChargeSession(data)
    assert a.rating_groups[0].granted.total_octets == 1_048_576  # the roaming quota
    assert a.rating_groups[0].final_unit.action == 0


async def test_grant_across_a_band_change_names_the_change_and_prices_each_side(
    stubs: Stubs, clock: ManualClock
) -> None:
    change = int(datetime.fromisoformat("2026-11-26T20:00:00+01:00").timestamp())
    set_time(clock, "2026-11-26T19:58:00+01:00")
    await stubs.subscriber(MSISDN, balance=50_000_000, plan="mobile-prepaid")
    a = await stubs.charging.ChargeSession(voice("b", INITIAL, 0, "491711234567", requested={}))
    g = a.rating_groups[0]
    assert g.tariff_change_time == change
    # sized at the dearer side (peak): 300 s = 90000 + 240 x 1500
    assert (await stubs.balance()).reserved_micros == 90_000 + 240 * 1_500
    set_time(clock, "2026-11-26T20:01:00+01:00")
    u = await stubs.charging.ChargeSession(
        voice("b", UPDATE, 1, "491711234567", requested={}, used={"time_s": 120}, used_after={"time_s": 60})
    )
    # 120 s before 20:00 at peak, then 60 s after at off-peak (750 per second)
    assert u.rating_groups[0].cost_micros == (90_000 + 60 * 1_500) + 60 * 750
    assert u.rating_groups[0].tariff_change_time == 0  # no change within this grant
    assert (await stubs.balance()).reserved_micros == 300 * 750


async def test_a_session_keeps_its_catalog_across_a_reload(stubs: Stubs, clock: ManualClock) -> None:
    set_time(clock, PEAK)
    await stubs.subscriber(MSISDN, balance=50_000_000, plan="mobile-prepaid")
    await stubs.charging.ChargeSession(voice("old", INITIAL, 0, "33123456789", requested={}))

    doc = read_catalog_file("")
    doc["version"] = "2026-11-26.2"
    for version in doc["plans"][1]["versions"]:
        for rate in version["rates"]:
            if rate.get("name") == "international zone 1":
                rate["price_micros"] *= 10
    info = await stubs.admin.LoadCatalog(admin_pb2.CatalogDocument(json=json.dumps(doc)))
    assert info.version == "2026-11-26.2"

    old = await stubs.charging.ChargeSession(voice("old", TERMINATE, 1, "33123456789", used={"time_s": 60}))
    assert old.rating_groups[0].cost_micros == 300_000  # the price it started with
    await stubs.charging.ChargeSession(voice("new", INITIAL, 0, "33123456789", requested={}))
    new = await stubs.charging.ChargeSession(voice("new", TERMINATE, 1, "33123456789", used={"time_s": 60}))
    assert new.rating_groups[0].cost_micros == 3_000_000


async def test_a_bad_catalog_is_rejected_whole_and_the_running_one_stays(stubs: Stubs) -> None:
    doc = read_catalog_file("")
    doc["version"] = "broken"
    doc["plans"][1]["currency"] = "euro"
    doc["plans"][2]["versions"][0]["rates"][3]["increment"] = -1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.admin.LoadCatalog(admin_pb2.CatalogDocument(json=json.dumps(doc)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.value.details() or ""
    assert "plans[1].currency" in details and "plans[2].versions[0].rates[3].increment" in details
    running = json.loads((await stubs.admin.GetCatalog(admin_pb2.GetCatalogRequest())).json)
    assert running["version"] == read_catalog_file("")["version"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.admin.LoadCatalog(admin_pb2.CatalogDocument(json="{not json"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_same_version_with_other_content_is_refused(stubs: Stubs) -> None:
    doc = read_catalog_file("")
    doc["plans"][1]["name"] = "renamed"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.admin.LoadCatalog(admin_pb2.CatalogDocument(json=json.dumps(doc)))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_future_dated_plan_version_applies_from_its_time(stubs: Stubs, clock: ManualClock) -> None:
    set_time(clock, "2026-12-31T23:59:00+01:00")
    await stubs.subscriber(MSISDN, balance=50_000_000, plan="mobile-prepaid")
    assert (await stubs.charging.ChargeEvent(sms_request("before"))).cost_micros == 90_000
    set_time(clock, "2027-01-01T00:00:01+01:00")
    assert (await stubs.charging.ChargeEvent(sms_request("after"))).cost_micros == 99_000


async def test_price_enquiry_for_an_international_call_changes_nothing(stubs: Stubs, clock: ManualClock) -> None:
    set_time(clock, PEAK)
    await stubs.subscriber(MSISDN, balance=1_000_000, plan="mobile-prepaid")
    req = charging_pb2.EventRequest(
        action=charging_pb2.REQUESTED_ACTION_PRICE_ENQUIRY,
        subscriber=common_pb2.SubscriberId(msisdn=MSISDN),
        rating_group=10,
        called_party="15551234567",
    )
    req.requested.time_s = 150
    a = await stubs.charging.ChargeEvent(req)
    assert (a.result_code, a.cost_micros) == (2001, 3 * 600_000)
    assert (await stubs.balance()).balance_micros == 1_000_000


async def test_bad_called_party_is_5004(stubs: Stubs) -> None:
    await stubs.subscriber(MSISDN, plan="mobile-prepaid")
    a = await stubs.charging.ChargeSession(voice("x", INITIAL, 0, "+33 1", requested={}))
    assert (a.result_code, a.failed_field) == (5004, "called_party")
