"""The coverage table: checked field by field, loaded through the CRM into Redis as a new
version in force for every process at once, and what offers of fixed lines follow."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from charging.v1 import crm_pb2, crm_pb2_grpc
from provisioning.coverage import CoverageBook, CoverageInvalid, bundled_table, coverage_from_doc
from tests.test_acquisition import application

GOOD = {
    "home_country": "DE",
    "areas": [
        {"country": "DE", "postal_prefix": "", "access": ["PSTN"]},
        {"country": "DE", "postal_prefix": "99", "access": ["PSTN", "WIMAX"]},
    ],
}


def test_the_bundled_table_is_valid_and_the_longest_prefix_wins() -> None:
    coverage = bundled_table().coverage
    assert coverage.access_at("DE", "10115") == {"PSTN", "WIMAX", "FIBER"}
    assert coverage.access_at("DE", "99084") == {"PSTN"}
    assert coverage.access_at("FR", "75001") == frozenset()


@pytest.mark.parametrize(
    ("doc", "fields"),
    [
        ([], {"json"}),
        ({"home_country": "de", "areas": [], "extra": 1}, {"home_country", "areas", "extra"}),
        (
            {
                "home_country": "DE",
                "areas": [
                    {"country": "DE", "postal_prefix": "10 1", "access": ["PSTN", "DSL", "PSTN"]},
                    "nothing",
                    {"country": "Germany", "postal_prefix": 10, "access": [], "speed": 1},
                    {"country": "DE", "postal_prefix": "", "access": ["PSTN"]},
                    {"country": "DE", "postal_prefix": "", "access": ["FIBER"]},
                ],
            },
            {
                "areas[0].postal_prefix",
                "areas[0].access[1]",
                "areas[0].access[2]",
                "areas[1]",
                "areas[2].country",
                "areas[2].postal_prefix",
                "areas[2].access",
                "areas[2].speed",
                "areas[4]",
            },
        ),
    ],
)
def test_every_bad_field_is_named(doc: Any, fields: set[str]) -> None:
    with pytest.raises(CoverageInvalid) as err:
        coverage_from_doc(doc)
    assert {field for field, _ in err.value.problems} == fields


async def test_loaded_tables_are_versioned_and_decide_the_offers(crm: crm_pb2_grpc.CrmStub, redis_url: str) -> None:
    bundled = await crm.GetCoverage(crm_pb2.CoverageRef())
    assert bundled.version == 0 and json.loads(bundled.json) == json.loads(bundled_table().text)

    fixed = application("f-1", plan="fixed-prepaid")  # sold on WiMax
    fixed.address.postal_code = "99084"
    refused = await crm.SubmitApplication(fixed)
    assert list(refused.steps[-1].reasons) == ["no WIMAX coverage at the address"]

    info = await crm.LoadCoverage(crm_pb2.CoverageDocument(json=json.dumps(GOOD)))
    assert (info.version, info.areas) == (1, 2)
    fixed.crm_order_id = "f-2"
    assert (await crm.SubmitApplication(fixed)).status == crm_pb2.ORDER_STATUS_IN_PROGRESS

    bad = {**GOOD, "areas": [{"country": "DE", "postal_prefix": "", "access": ["FIBRE"]}], "home_country": "XX1"}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await crm.LoadCoverage(crm_pb2.CoverageDocument(json=json.dumps(bad)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "home_country" in (err.value.details() or "") and "areas[0].access[0]" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await crm.LoadCoverage(crm_pb2.CoverageDocument(json="{not json"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    current = await crm.GetCoverage(crm_pb2.CoverageRef())  # the bad tables changed nothing
    assert current.version == 1 and json.loads(current.json) == GOOD
    assert (await crm.GetCoverage(crm_pb2.CoverageRef(version=1))).json == current.json
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await crm.GetCoverage(crm_pb2.CoverageRef(version=7))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    # another server process (its own book and connection) offers by the same table
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    elsewhere = await CoverageBook(client).current()
    assert elsewhere.version == 1 and elsewhere.coverage.access_at("DE", "99084") == {"PSTN", "WIMAX"}
    await client.aclose()


async def test_concurrent_loads_each_get_their_own_version(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    books = [CoverageBook(client) for _ in range(5)]
    tables = [{**GOOD, "areas": [{"country": "DE", "postal_prefix": str(n), "access": ["PSTN"]}]} for n in range(5)]
    loaded = await asyncio.gather(*(book.load(t) for book, t in zip(books, tables, strict=True)))
    assert sorted(t.version for t in loaded) == [1, 2, 3, 4, 5]
    current = await CoverageBook(client).current()
    assert current.version == 5
    assert current.text == next(t.text for t in loaded if t.version == 5)
    for table in loaded:
        assert (await CoverageBook(client).table(table.version)) == table
    await client.aclose()
