"""In-process caches stay right across processes: two real server processes on one Redis,
a change made through one applies on the other before its next request (charging/changes.py
for the catalog; the scripts' checks for subscribers, plans and line states)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import grpc
import pytest

from charging.v1 import admin_pb2, admin_pb2_grpc, charging_pb2_grpc, common_pb2
from tests import server_process
from tests.conftest import MSISDN, sms_request
from tests.test_catalog_in_use import with_successor


@pytest.fixture
def two(redis_url: str, app_database_url: str, tmp_path: Path) -> Iterator[tuple[int, int]]:
    # The catalog job would pick a change up within an hour: not what these tests rely on.
    env = {"CHARGING_CATALOG_REFRESH_S": "3600"}
    one, port_one = server_process.serve(tmp_path / "a", app_database_url, redis_url=redis_url, **env)
    try:
        server_process.wait_serving(one, port_one)
        two, port_two = server_process.serve(tmp_path / "b", app_database_url, redis_url=redis_url, **env)
        try:
            server_process.wait_serving(two, port_two)
            yield port_one, port_two
        finally:
            server_process.stop(two)
    finally:
        server_process.stop(one)


def admin(port: int) -> admin_pb2_grpc.AdminStub:
    return admin_pb2_grpc.AdminStub(grpc.insecure_channel(f"127.0.0.1:{port}"))


def charging(port: int) -> charging_pb2_grpc.ChargingStub:
    return charging_pb2_grpc.ChargingStub(grpc.insecure_channel(f"127.0.0.1:{port}"))


def catalog_with_sms_price(version: str, price_micros: int) -> str:
    doc = json.loads(resources.files("charging").joinpath("catalog.json").read_text())
    doc["version"] = version
    default = next(p for p in doc["plans"] if p["id"] == "default")
    for rate in default["versions"][-1]["rates"]:
        if rate.get("service") == "sms":
            rate["price_micros"] = price_micros
    return json.dumps(doc)


def test_a_catalog_loaded_through_one_process_rates_the_next_request_on_the_other(two: tuple[int, int]) -> None:
    a, b = two
    admin(a).CreateSubscriber(
        admin_pb2.CreateSubscriberRequest(msisdn=MSISDN, plan_id="default", initial_balance_micros=1_000_000)
    )
    first = charging(b).ChargeEvent(sms_request("e1"))
    assert (first.result_code, first.cost_micros) == (2001, 50_000)  # b has the catalog cached now
    admin(a).LoadCatalog(admin_pb2.CatalogDocument(json=catalog_with_sms_price("2099-01-01.1", 70_000)))
    second = charging(b).ChargeEvent(sms_request("e2"))
    assert (second.result_code, second.cost_micros) == (2001, 70_000)
    # And the other way round.
    admin(b).LoadCatalog(admin_pb2.CatalogDocument(json=catalog_with_sms_price("2099-01-01.2", 30_000)))
    third = charging(a).ChargeEvent(sms_request("e3"))
    assert (third.result_code, third.cost_micros) == (2001, 30_000)


def test_a_line_state_changed_through_one_process_applies_on_the_other(two: tuple[int, int]) -> None:
    a, b = two
    admin(a).CreateSubscriber(
        admin_pb2.CreateSubscriberRequest(msisdn=MSISDN, plan_id="default", initial_balance_micros=1_000_000)
    )
    assert charging(b).ChargeEvent(sms_request("e1")).result_code == 2001
    admin(a).SetSubscriberStatus(
        admin_pb2.SetStatusRequest(
            subscriber=common_pb2.SubscriberId(msisdn=MSISDN), status=admin_pb2.SUBSCRIBER_STATUS_SUSPENDED
        )
    )
    assert charging(b).ChargeEvent(sms_request("e2")).result_code == 4010  # end user service denied
    assert admin(b).GetSubscriber(common_pb2.SubscriberId(msisdn=MSISDN)).balance_micros == 950_000


def test_a_plan_migrated_through_one_process_rates_the_next_request_on_the_other(two: tuple[int, int]) -> None:
    a, b = two
    admin(a).CreateSubscriber(
        admin_pb2.CreateSubscriberRequest(msisdn=MSISDN, plan_id="default", initial_balance_micros=1_000_000)
    )
    assert charging(b).ChargeEvent(sms_request("e1")).cost_micros == 50_000  # b caches the plan "default"
    admin(a).LoadCatalog(admin_pb2.CatalogDocument(json=json.dumps(with_successor("2099-03-01.1", 80_000))))
    assert admin(b).GetSubscriber(common_pb2.SubscriberId(msisdn=MSISDN)).plan_id == "default-2"
    answer = charging(b).ChargeEvent(sms_request("e2"))
    assert (answer.result_code, answer.cost_micros) == (2001, 80_000)
