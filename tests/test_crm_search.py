"""Finding customers through the CRM: by kind, state, a line's number and the identity
document (by fingerprint; the number is never stored), a page at a time; a customer's
lines and orders, a page at a time."""

from __future__ import annotations

import grpc
import pytest
import redis
import redis.asyncio as aioredis

from charging.server import App
from charging.v1 import crm_pb2, crm_pb2_grpc
from provisioning.applications import icao_check_digit
from provisioning.customers import Customer, Customers, customer_state
from provisioning.screening import Screener
from tests.conftest import SEALER
from tests.test_acquisition import application


def document(n: int) -> str:
    stem = f"P0000000{n}"
    return stem + str(icao_check_digit(stem))


def person(order_id: str, n: int) -> crm_pb2.Application:
    return application(order_id, msisdn=f"49170123456{n}", imsi=f"26201123456789{n}", document=document(n))


def ids(page: crm_pb2.CustomerPage) -> list[str]:
    return [c.id for c in page.customers]


@pytest.mark.parametrize(
    ("line_states", "state"),
    [
        ([], "PENDING"),
        (["pending_activation"], "PENDING"),
        (["pending_activation", "suspended"], "ACTIVE"),
        (["terminated", "barred_outgoing"], "ACTIVE"),
        (["terminated", "terminated"], "TERMINATED"),
        (["terminated", "pending_activation"], "PENDING"),
    ],
)
def test_a_customer_is_in_the_state_its_lines_make(line_states: list[str], state: str) -> None:
    assert customer_state(line_states) == state


async def test_customers_by_kind_state_number_and_document(crm: crm_pb2_grpc.CrmStub, app: App, r: redis.Redis) -> None:
    assert app.worker is not None
    active = await crm.SubmitApplication(person("a", 1))
    gone = await crm.SubmitApplication(person("c", 2))
    await app.worker.reconcile_once()
    await crm.SubmitOrder(
        crm_pb2.LineOrder(crm_order_id="t", msisdn="491701234562", kind="TERMINATE", termination_reason="MOVED_AWAY")
    )
    await app.worker.reconcile_once()
    corporate = person("b", 3)
    corporate.customer_kind = "CORPORATE"
    corporate.company.CopyFrom(crm_pb2.Company(name="Muster GmbH", country="DE", registration_number="HRB 12345"))
    pending = await crm.SubmitApplication(corporate)
    a, c, b = active.customer_id, gone.customer_id, pending.customer_id

    everyone = await crm.ListCustomers(crm_pb2.CustomerQuery())
    assert (ids(everyone), everyone.next_page_token) == ([a, c, b], "")
    first = await crm.ListCustomers(crm_pb2.CustomerQuery(page_size=2))
    assert ids(first) == [a, c] and first.next_page_token
    rest = await crm.ListCustomers(crm_pb2.CustomerQuery(page_size=2, page_token=first.next_page_token))
    assert (ids(rest), rest.next_page_token) == ([b], "")

    async def find(**query: object) -> list[str]:
        return ids(await crm.ListCustomers(crm_pb2.CustomerQuery(**query)))  # type: ignore[arg-type]

    assert await find(state="ACTIVE") == [a]
    assert await find(state="TERMINATED") == [c]
    assert await find(state="PENDING") == [b]
    assert await find(kind="CORPORATE") == [b]
    assert await find(kind="INDIVIDUAL", state="ACTIVE") == [a]
    assert await find(msisdn="491701234561") == [a]
    assert await find(msisdn="491701234561", kind="CORPORATE") == []
    assert await find(msisdn="491709999999") == []

    passport = crm_pb2.IdentityDocument(type="PASSPORT", issuing_country="DE", number=document(1).lower())
    (found,) = (await crm.ListCustomers(crm_pb2.CustomerQuery(identity_document=passport))).customers
    assert (found.id, found.kind, found.state, found.country, found.postal_code) == (
        a,
        "INDIVIDUAL",
        "ACTIVE",
        "DE",
        "10115",
    )
    assert (found.identity_document.type, found.identity_document.number) == ("PASSPORT", "***" + document(1)[-2:])
    other = crm_pb2.IdentityDocument(type="PASSPORT", issuing_country="DE", number=document(7))
    assert await find(identity_document=other) == []
    assert await find(identity_document=passport, msisdn="491701234562") == []

    # By the words of the name, through the keyed blind index: whole words, any order.
    assert await find(name="muster") == [a, c, b]
    assert await find(name="MUSTER anna") == [a, c]
    assert await find(name="Muste") == []
    assert await find(name="gmbh", kind="CORPORATE") == [b]
    assert await find(name="muster", state="ACTIVE") == [a]
    assert await find(name="anna", msisdn="491701234561") == [a]
    assert await find(name="gmbh", msisdn="491701234561") == []
    by_name = await crm.ListCustomers(crm_pb2.CustomerQuery(name="muster", page_size=2))
    assert ids(by_name) == [a, c] and by_name.next_page_token
    rest = await crm.ListCustomers(crm_pb2.CustomerQuery(name="muster", page_token=by_name.next_page_token))
    assert (ids(rest), rest.next_page_token) == ([b], "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await find(name=" ".join(f"w{n}" for n in range(9)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "name" in str(err.value.details())

    # the document numbers are nowhere in Redis, only their fingerprints
    stored = "\n".join(dump(r, key) for key in r.scan_iter())
    assert all(document(n) not in stored.upper() for n in (1, 2, 3))

    # a terminated customer's new line makes it pending again
    await crm.SubmitOrder(
        crm_pb2.LineOrder(crm_order_id="n", kind="NEW_LINE", customer_id=c, plan_id="mobile-prepaid",
                          msisdn="491701234569")
    )  # fmt: skip
    assert await find(state="PENDING") == [c, b]
    await app.worker.reconcile_once()
    assert await find(state="ACTIVE") == [a, c, b]


def dump(r: redis.Redis, key: str) -> str:
    kind = r.type(key)
    if kind == "string":
        return str(r.get(key))
    if kind == "hash":
        return str(r.hgetall(key))
    if kind == "list":
        return str(r.lrange(key, 0, -1))
    if kind == "set":
        return str(r.smembers(key))
    if kind == "zset":
        return str(r.zrange(key, 0, -1))
    return str(r.xrange(key))


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (crm_pb2.CustomerQuery(kind="PERSON"), "kind"),
        (crm_pb2.CustomerQuery(state="ASLEEP"), "state"),
        (crm_pb2.CustomerQuery(msisdn="+49170"), "msisdn"),
        (crm_pb2.CustomerQuery(page_token="abc"), "page_token"),
        (
            crm_pb2.CustomerQuery(identity_document=crm_pb2.IdentityDocument(type="PASSPORT", issuing_country="DE")),
            "identity_document.number",
        ),
    ],
)
async def test_bad_queries_name_the_field(crm: crm_pb2_grpc.CrmStub, query: crm_pb2.CustomerQuery, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await crm.ListCustomers(query)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (err.value.details() or "")


async def test_a_customers_lines_and_orders_a_page_at_a_time(crm: crm_pb2_grpc.CrmStub, app: App) -> None:
    assert app.worker is not None
    first = await crm.SubmitApplication(person("o-1", 1))
    who = first.customer_id
    await app.worker.reconcile_once()
    for n, msisdn in enumerate(("491701234565", "491701234566")):
        await crm.SubmitOrder(
            crm_pb2.LineOrder(crm_order_id=f"nl-{n}", kind="NEW_LINE", customer_id=who, plan_id="mobile-prepaid",
                              msisdn=msisdn)
        )  # fmt: skip
    await crm.SubmitOrder(crm_pb2.LineOrder(crm_order_id="s", msisdn="491701234561", kind="SUSPEND"))
    await crm.SubmitApplication(person("other", 2))  # someone else's order

    pages: list[list[str]] = []
    token = ""
    while True:
        page = await crm.ListCustomerLines(crm_pb2.CustomerPageRequest(customer_id=who, page_size=2, page_token=token))
        pages.append([f"{line.msisdn}:{line.state}" for line in page.lines])
        token = page.next_page_token
        if not token:
            break
    assert pages == [["491701234561:active", "491701234565:pending_activation"], ["491701234566:pending_activation"]]

    orders = await crm.ListCustomerOrders(crm_pb2.CustomerPageRequest(customer_id=who, page_size=3))
    assert [(o.crm_order_id, o.status) for o in orders.orders] == [
        ("o-1", crm_pb2.ORDER_STATUS_COMPLETED),
        ("nl-0", crm_pb2.ORDER_STATUS_IN_PROGRESS),
        ("nl-1", crm_pb2.ORDER_STATUS_IN_PROGRESS),
    ]
    more = await crm.ListCustomerOrders(
        crm_pb2.CustomerPageRequest(customer_id=who, page_size=3, page_token=orders.next_page_token)
    )
    assert ([o.crm_order_id for o in more.orders], more.next_page_token) == (["s"], "")

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await crm.ListCustomerOrders(crm_pb2.CustomerPageRequest(customer_id="999"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_filtered_pages_cover_every_match_once(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    customers = Customers(client, Screener(client, "salt"), SEALER)
    for n in range(1, 121):
        await customers.create(Customer(str(n), "CORPORATE" if n % 7 == 0 else "INDIVIDUAL", created=n))
    await client.hset("{crm}:customer:14", "state", "ACTIVE")  # out of step with its index: not listed as pending
    seen: list[str] = []
    after, calls = 0, 0
    while True:
        page, token = await customers.search(kind="CORPORATE", state="PENDING", after=after, size=2)
        seen += [c.id for c in page]
        calls += 1
        if not token:
            break
        after = int(token)
    assert seen == [str(n) for n in range(7, 121, 7) if n != 14]
    assert calls >= len(seen) // 2
    await client.aclose()
