"""The customer's itemised usage through the API (Billing.ListUsageRecords): usage records
of an account or a line in a time range, paged, from a real PostgreSQL that the relay
filled from real charging requests."""

from __future__ import annotations

import grpc
import pytest

from charging.cdr_relay import drain
from charging.clock import ManualClock
from charging.security.roles import roles_for
from charging.server import App
from charging.v1 import billing_pb2, billing_pb2_grpc
from tests.conftest import Stubs, set_time, sms_request
from tests.test_cdrs import app, relay_of

__all__ = ["app"]  # the fixture

A, B = "491700000021", "491700000022"
NOV, DEC = "2026-11-01T00:00:00+00:00", "2026-12-01T00:00:00+00:00"


def query(**kw: object) -> billing_pb2.UsageQuery:
    q = billing_pb2.UsageQuery(**{k: v for k, v in kw.items() if k not in ("start", "end")})  # type: ignore[arg-type]
    setattr(q, "from", kw.get("start", NOV))
    q.to = str(kw.get("end", DEC))
    return q


async def every_page(billing: billing_pb2_grpc.BillingStub, q: billing_pb2.UsageQuery) -> list[list[str]]:
    pages: list[list[str]] = []
    while True:
        page = await billing.ListUsageRecords(q)
        pages.append([r.event_id for r in page.records])
        if not page.next_page_token:
            return pages
        q.page_token = page.next_page_token


async def test_a_lines_usage_in_a_range_page_by_page(app: App, stubs: Stubs, clock: ManualClock) -> None:
    billing = billing_pb2_grpc.BillingStub(stubs.channel)
    a = (await stubs.subscriber(msisdn=A, balance=10_000_000)).account_id
    await stubs.subscriber(msisdn=B, balance=10_000_000)
    set_time(clock, "2026-10-31T23:59:59+00:00")
    await stubs.charging.ChargeEvent(sms_request("october", msisdn=A))
    for day in range(1, 6):
        set_time(clock, f"2026-11-{day:02d}T08:00:00+00:00")
        await stubs.charging.ChargeEvent(sms_request(f"a-{day}", msisdn=A))
        await stubs.charging.ChargeEvent(sms_request(f"b-{day}", msisdn=B))
    set_time(clock, "2026-12-01T00:00:00+00:00")
    await stubs.charging.ChargeEvent(sms_request("december", msisdn=A))
    await drain(relay_of(app))

    november = [f"a-{d}" for d in range(1, 6)]
    assert await every_page(billing, query(account_id=a, page_size=2)) == [november[:2], november[2:4], november[4:]]
    assert await every_page(billing, query(msisdn=A)) == [november]  # 0: 100 a page
    assert await every_page(billing, query(account_id=a, msisdn=A, page_size=5)) == [november]
    assert await every_page(billing, query(account_id=a, msisdn=B)) == [[]]  # B's line is not a's
    assert await every_page(billing, query(msisdn=A, start="2026-11-03T08:00:00Z", end="2026-11-04T08:00:00Z")) == [
        ["a-3"]
    ]

    [first] = (await billing.ListUsageRecords(query(account_id=a, page_size=1))).records
    assert (first.account_id, first.msisdn, first.service, first.units) == (a, A, "sms", 1)
    assert first.unit == "service_specific"
    assert first.occurred_at == "2026-11-01T08:00:00+00:00"
    assert first.rating_group == 20 and first.called_party == "491711234567"
    assert first.cost_micros > 0 and first.money_micros == first.cost_micros
    assert first.record_id == f"{a}:e:a-1"


@pytest.mark.parametrize(
    ("q", "field"),
    [
        (query(), "account_id"),
        (query(account_id="x", start=""), "from"),
        (query(account_id="x", end="2026-11-02T00:00:00"), "to"),
        (query(account_id="x", end=NOV), "to"),
        (query(account_id="x", page_size=1001), "page_size"),
        (query(account_id="x", page_token="not a token"), "page_token"),
    ],
)
async def test_a_bad_query_names_its_field_and_reads_nothing(
    app: App, stubs: Stubs, q: billing_pb2.UsageQuery, field: str
) -> None:
    billing = billing_pb2_grpc.BillingStub(stubs.channel)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await billing.ListUsageRecords(q)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (refused.value.details() or "")


def test_the_roles_are_those_of_the_billing_reads() -> None:
    assert roles_for("/charging.v1.Billing/ListUsageRecords") == roles_for("/charging.v1.Billing/ListInvoices")
