"""Orders interrupted by a crash are resumed: by the same order id submitted again once
the run's lease has passed, or by the periodic pass, making every customer, account,
line and activation exactly once. A crash is simulated by a step that fails once right
after its side effect, before the run could record it."""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any

import grpc
import pytest
import redis

from charging import keys
from charging.clock import ManualClock
from charging.errors import Conflict
from charging.server import App
from charging.subscribers import Directory, Identity
from charging.v1 import crm_pb2, crm_pb2_grpc
from provisioning import lines
from provisioning.keys import SUBMITTED, order_work, velocity
from provisioning.orders import Orders, Superseded
from provisioning.organisation import Organisation
from provisioning.screening import Screener
from provisioning.worker import ProvisioningWorker
from tests.conftest import SEALER
from tests.test_acquisition import application

MSISDN = "491701234567"


class Crash(Exception):
    """The process dies here."""


def crash_once_after(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> None:
    """Make ``owner.name`` do its work, then crash, the first time it is called."""
    original = getattr(owner, name)
    crashed: list[bool] = []

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        if crashed:
            return result
        crashed.append(True)
        if hasattr(result, "__await__"):

            async def then_crash() -> Any:
                await result
                raise Crash(name)

            return then_crash()
        raise Crash(name)

    monkeypatch.setattr(owner, name, wrapper)


def corporate(order_id: str) -> crm_pb2.Application:
    app = application(order_id)
    app.customer_kind = "CORPORATE"
    app.company.CopyFrom(crm_pb2.Company(name="Muster GmbH", country="DE", registration_number="HRB 12345"))
    return app


async def crashed_submit(crm: crm_pb2_grpc.CrmStub, app: crm_pb2.Application) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await crm.SubmitApplication(app)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    stalled = await crm.GetOrder(crm_pb2.OrderRef(crm_order_id=app.crm_order_id))
    assert (stalled.status, list(stalled.steps), stalled.customer_id) == (crm_pb2.ORDER_STATUS_SUBMITTED, [], "")


def accounts(r: redis.Redis) -> list[str]:
    """The charging accounts that exist (an id may be taken and given up on a conflict)."""
    return [str(n) for n in range(1, int(r.get(keys.ACCOUNT_SEQ) or 0) + 1) if r.exists(keys.account(str(n)))]


def assert_made_once(r: redis.Redis, app: App, *, units: int = 0) -> None:
    assert r.get("{crm}:seq:customer") == "1"
    assert accounts(r) == ["1"]
    assert len(list(r.scan_iter("{crm}:customer:*"))) == 1
    assert r.get(keys.identity("msisdn", MSISDN)) == "1"
    assert r.get(keys.identity("imsi", "262011234567890")) == "1"
    assert r.lrange("{crm}:lines:1", 0, -1) == [MSISDN]
    assert r.llen("{crm}:units:1") == units
    assert app.acquisition is not None
    screener = app.acquisition.screener
    document = screener.document_print("PASSPORT", "DE", "L898902C36")
    assert r.get(f"{{crm}}:identity:{document}") == "1"
    day = 1_795_000_000 // 86_400
    assert r.scard(velocity(document, day)) == 1
    assert app._simulator is not None
    assert app._simulator.lines[MSISDN]["applied"] == 1  # one ACTIVATE
    assert r.zcard(SUBMITTED) == 0 and not list(r.scan_iter("{crm}:order:*:work"))


CRASH_POINTS = [
    (Screener, "screen"),  # velocity counted, nothing decided yet
    (Screener, "register"),  # customer id taken, identity registered
    (Organisation, "add_unit"),  # the company's root unit made
    (Directory, "create"),  # the charging account made but not recorded
    (lines, "push_once"),  # the line recorded
    (ProvisioningWorker, "desire_in"),  # everything made; the last transaction not run
]


@pytest.mark.parametrize(("owner", "name"), CRASH_POINTS, ids=[name for _, name in CRASH_POINTS])
async def test_a_crashed_application_is_resumed_by_the_periodic_pass(
    crm: crm_pb2_grpc.CrmStub,
    app: App,
    clock: ManualClock,
    r: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    owner: Any,
    name: str,
) -> None:
    assert app.acquisition is not None and app.worker is not None
    crash_once_after(monkeypatch, owner, name)
    await crashed_submit(crm, corporate("o-1"))
    assert r.hexists(order_work("o-1"), "request")  # the application, kept apart from the order

    assert await app.acquisition.resume_stalled() == 0  # the crashed run's lease still holds
    clock.advance(seconds=31)
    assert await app.acquisition.resume_stalled() == 1
    order = await crm.GetOrder(crm_pb2.OrderRef(crm_order_id="o-1"))
    assert order.status == crm_pb2.ORDER_STATUS_IN_PROGRESS
    assert [s.step for s in order.steps] == [
        *(["resumed"] if name in ("screen",) else []),
        "application",
        "screening",
        "offer",
        *(["resumed"] if name not in ("screen",) else []),
        "line",
        "provisioning",
    ]
    assert (order.customer_id, order.account_id, order.msisdn) == ("1", "1", MSISDN)

    assert await app.worker.reconcile_once() == 1
    done = await crm.GetOrder(crm_pb2.OrderRef(crm_order_id="o-1"))
    assert done.status == crm_pb2.ORDER_STATUS_COMPLETED
    assert (await crm.GetLine(crm_pb2.LineRef(msisdn=MSISDN))).state == "active"
    assert_made_once(r, app, units=1)
    customer = await crm.GetCustomer(crm_pb2.CustomerRef(customer_id="1"))
    assert [(line.msisdn, line.unit_id) for line in customer.lines] == [(MSISDN, customer.units[0].id)]
    assert await app.acquisition.resume_stalled() == 0


async def test_the_same_order_id_resumes_once_the_lease_has_passed(
    crm: crm_pb2_grpc.CrmStub, app: App, clock: ManualClock, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert app.worker is not None
    crash_once_after(monkeypatch, Directory, "create")
    await crashed_submit(crm, application("o-2"))

    clock.advance(seconds=10)
    early = await crm.SubmitApplication(application("o-2"))  # the first run might still be working
    assert early.status == crm_pb2.ORDER_STATUS_SUBMITTED
    assert accounts(r) == ["1"]

    clock.advance(seconds=21)
    resumed = await crm.SubmitApplication(application("o-2"))
    assert (resumed.status, resumed.customer_id, resumed.account_id) == (crm_pb2.ORDER_STATUS_IN_PROGRESS, "1", "1")
    await app.worker.reconcile_once()
    assert_made_once(r, app)
    again = await crm.SubmitApplication(application("o-2"))
    assert again.status == crm_pb2.ORDER_STATUS_COMPLETED


async def test_a_resumed_run_that_is_refused_takes_back_what_it_made(
    crm: crm_pb2_grpc.CrmStub, app: App, clock: ManualClock, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    crash_once_after(monkeypatch, Organisation, "add_unit")
    await crashed_submit(crm, corporate("o-3"))
    r.set(keys.identity("msisdn", MSISDN), "999")  # the number went to someone else meanwhile
    clock.advance(seconds=31)
    order = await crm.SubmitApplication(corporate("o-3"))
    assert order.status == crm_pb2.ORDER_STATUS_REJECTED
    assert list(order.steps[-1].reasons) == ["msisdn is already assigned to another subscriber"]
    assert not list(r.scan_iter("{crm}:customer:*")) and not list(r.scan_iter("{crm}:identity:*"))
    assert not list(r.scan_iter("{crm}:unit*")) and not list(r.scan_iter("{crm}:order:*:work"))


async def test_a_crashed_new_line_makes_one_account(
    crm: crm_pb2_grpc.CrmStub, app: App, clock: ManualClock, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert app.acquisition is not None and app.worker is not None
    first = await crm.SubmitApplication(application("o-4"))
    crash_once_after(monkeypatch, Directory, "create")
    request = crm_pb2.LineOrder(
        crm_order_id="nl", kind="NEW_LINE", customer_id=first.customer_id, plan_id="mobile-prepaid",
        msisdn="491701234599", imsi="262011234567899",
    )  # fmt: skip
    with pytest.raises(grpc.aio.AioRpcError):
        await crm.SubmitOrder(request)
    clock.advance(seconds=31)
    assert await app.acquisition.resume_stalled() == 1
    order = await crm.GetOrder(crm_pb2.OrderRef(crm_order_id="nl"))
    assert (order.status, order.account_id) == (crm_pb2.ORDER_STATUS_IN_PROGRESS, "2")
    assert accounts(r) == ["1", "2"]
    assert r.lrange(f"{{crm}}:lines:{first.customer_id}", 0, -1) == [MSISDN, "491701234599"]
    await app.worker.reconcile_once()
    line = await crm.GetLine(crm_pb2.LineRef(msisdn="491701234599"))
    assert (line.state, line.account_id) == ("active", "2")


async def test_a_crashed_line_order_is_provisioned_once(
    crm: crm_pb2_grpc.CrmStub, app: App, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert app.acquisition is not None and app.worker is not None and app._simulator is not None
    await crm.SubmitApplication(application("o-5"))
    await app.worker.reconcile_once()
    crash_once_after(monkeypatch, ProvisioningWorker, "desire_in")
    suspend = crm_pb2.LineOrder(crm_order_id="s", msisdn=MSISDN, kind="SUSPEND")
    with pytest.raises(grpc.aio.AioRpcError):
        await crm.SubmitOrder(suspend)
    assert await app.worker.reconcile_once() == 0  # nothing was asked of the network
    clock.advance(seconds=31)
    assert (await crm.SubmitOrder(suspend)).status == crm_pb2.ORDER_STATUS_IN_PROGRESS
    assert await app.worker.reconcile_once() == 1
    assert (await crm.GetOrder(crm_pb2.OrderRef(crm_order_id="s"))).status == crm_pb2.ORDER_STATUS_COMPLETED
    assert app._simulator.lines[MSISDN]["state"] == "suspended"
    assert app._simulator.lines[MSISDN]["applied"] == 2  # ACTIVATE, SUSPEND


async def test_the_order_store_leases_and_decides_once(redis_url: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    orders = Orders(client, SEALER, lease_ms=1_000)
    first = await orders.claim("x", {"kind": "LINE_ORDER"}, now_ms=10_000)
    assert first.outcome == "new"
    assert (await orders.claim("x", {}, now_ms=10_500)).outcome == "existing"
    assert await orders.take_over("x", now_ms=10_999) is None
    assert await orders.stalled(now_ms=11_000) == ["x"]
    taken = await orders.take_over("x", now_ms=11_000)
    assert taken is not None and taken.request == {"kind": "LINE_ORDER"}
    assert await orders.take_over("x", now_ms=11_000) is None  # one run at a time
    assert await orders.allocate("x", "customer_id", "seq") == await orders.allocate("x", "customer_id", "seq")

    done = replace(first.order, status="REJECTED")
    assert (await orders.finish(done)).status == "REJECTED"
    late = await orders.finish(replace(first.order, status="IN_PROGRESS"))  # an overlapping run
    assert late.status == "REJECTED"
    assert await orders.stalled(now_ms=99_000) == [] and await orders.work("x") == {}
    with pytest.raises(Superseded):
        await orders.note("x", "account_id", "7")
    await client.aclose()


async def test_the_directory_adopts_what_a_crashed_create_left_behind(app: App, r: redis.Redis) -> None:
    """What an order run asks of charging after a crash inside ``Directory.create``: the
    account that holds the number, made for this line after the run's first try; its
    IMSI claimed, or the account released when someone else has the IMSI now."""
    assert app.redis is not None and app.catalogs is not None
    directory = Directory(app.redis, 100)
    plan = app.catalogs.current.plans["mobile-prepaid"]
    msisdn, imsi = Identity("msisdn", MSISDN), Identity("imsi", "262011234567890")
    assert await directory.newest_account_id() == 0
    made = await directory.create(msisdn, imsi, plan, 0)
    r.delete(keys.identity("imsi", imsi.value))  # the crash came before the IMSI was claimed
    assert await directory.orphan(msisdn, imsi, plan.id, newer_than=0) == made.account_id
    assert await directory.orphan(msisdn, imsi, plan.id, newer_than=1) is None  # there before the order
    assert await directory.orphan(msisdn, imsi, "mobile-prepaid-data", newer_than=0) is None  # another line's
    assert await directory.orphan(msisdn, None, plan.id, newer_than=0) is None
    await directory.adopt(made.account_id, msisdn, imsi)
    assert await directory.resolve(imsi) == made.account_id

    other, other_imsi = Identity("msisdn", "491701234599"), Identity("imsi", "262011234567899")
    second = await directory.create(other, other_imsi, plan, 0)
    r.set(keys.identity("imsi", other_imsi.value), "999")  # the IMSI went to someone else meanwhile
    with pytest.raises(Conflict):
        await directory.adopt(second.account_id, other, other_imsi)
    assert await directory.resolve(other) is None and not r.exists(keys.account(second.account_id))
    assert await directory.newest_account_id() == 2
