"""Line orders through the CRM and the provisioning worker, racing the sessions.

Some session subscribers are made the way an operator makes them: an application through
the CRM (``SubmitApplication``), accepted, its line activated by the provisioning worker
once the (bundled, simulated) network acknowledges. Their line orders go the same way:
``SubmitOrder`` SUSPEND or BAR_OUTGOING, then RESUME, each IN_PROGRESS until the network
acknowledges and the worker acts on it (or REJECTED when the line's state does not allow
it at that moment); nothing sets their charging status directly.

What must hold (besides every money check of the run): once the faults end and a RESUME
is asked for every line not active, every order is decided (COMPLETED or REJECTED, none
left IN_PROGRESS), every line is active in the CRM, and charging's status of its account
agrees with the line.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import grpc
import redis

from chaos import checks
from chaos.history import History
from charging import keys
from charging.v1 import crm_pb2, crm_pb2_grpc
from provisioning import keys as provisioning_keys
from provisioning.applications import icao_check_digit

INITIAL_MICROS = 5_000_000
# A line's state in the CRM and the charging status it must give its account.
CHARGING_STATUS = {"active": "active", "barred_outgoing": "barred_outgoing", "suspended": "suspended"}


@dataclass(frozen=True)
class CrmLine:
    account: str
    msisdn: str


def application(seed: int, n: int) -> crm_pb2.Application:
    document = f"C{seed % 10_000:04d}{n:04d}"
    return crm_pb2.Application(
        crm_order_id=f"chaos-{seed}-app-{n}",
        customer_kind="INDIVIDUAL",
        contract="PREPAID",
        plan_id="mobile-prepaid",
        msisdn=f"4917091{seed % 1000:03d}{n:03d}",
        imsi=f"26201{seed % 100_000:05d}{n:05d}",
        applicant=crm_pb2.Person(
            given_name="Chaos", family_name="Client " + chr(ord("A") + n % 26), date_of_birth="1990-05-17"
        ),
        address=crm_pb2.Address(street="Hauptstr. 1", city="Berlin", postal_code="10115", country="DE"),
        contact=crm_pb2.Contact(email=f"chaos{n}@example.org"),
        identity_document=crm_pb2.IdentityDocument(
            type="PASSPORT",
            number=document + str(icao_check_digit(document)),
            issuing_country="DE",
            expiry_date="2030-01-01",
        ),
        initial_balance_micros=INITIAL_MICROS,
    )


async def open_lines(crm: crm_pb2_grpc.CrmStub, seed: int, count: int, timeout_s: float = 60.0) -> list[CrmLine]:
    """``count`` customers through the CRM, returned once the worker activated each line."""
    lines: list[CrmLine] = []
    for n in range(count):
        order = await crm.SubmitApplication(application(seed, n), timeout=30)
        if order.status != crm_pb2.ORDER_STATUS_IN_PROGRESS:
            raise RuntimeError(f"application {n} not accepted: {order}")
        lines.append(CrmLine(order.account_id, order.msisdn or application(seed, n).msisdn))
    deadline = time.monotonic() + timeout_s
    for line in lines:
        while (await crm.GetLine(crm_pb2.LineRef(msisdn=line.msisdn), timeout=10)).state != "active":
            if time.monotonic() > deadline:
                raise RuntimeError(f"line {line.msisdn} not activated within {timeout_s:g} s")
            await asyncio.sleep(0.2)
    return lines


async def settle(
    crm: crm_pb2_grpc.CrmStub,
    client: redis.Redis | redis.RedisCluster,
    history: History,
    lines: list[CrmLine],
    seed: int,
    timeout_s: float,
) -> list[checks.Violation]:
    """Wait until every order is decided, RESUME every line not active, and again until
    every order is decided and every line active; then compare charging's statuses with
    the lines. An order whose run a kill interrupted stays SUBMITTED until its lease has
    passed (``CHARGING_ORDER_LEASE_S``) and may then still suspend a line that looked
    active: a RESUME is asked only once no order is undecided."""
    deadline = time.monotonic() + timeout_s
    orders = {op.identity for op in history.operations if op.request.get("crm_order")}
    found: list[checks.Violation] = []
    attempt = 0
    while time.monotonic() < deadline:
        undecided = await _undecided(crm, orders)
        if not undecided:
            waiting = [line for line in lines if await _state(crm, line) != "active"]
            if not waiting:
                break
            for line in waiting:
                order_id = f"chaos-{seed}-resume-{line.account}-{attempt}"
                orders.add(order_id)
                await crm.SubmitOrder(crm_pb2.LineOrder(crm_order_id=order_id, msisdn=line.msisdn, kind="RESUME"))
            attempt += 1
        await asyncio.sleep(0.2)
    for order_id in sorted(await _undecided(crm, orders)):
        order = await crm.GetOrder(crm_pb2.OrderRef(crm_order_id=order_id), timeout=10)
        detail = f"order {order_id} still undecided: {_steps(order)}; {_held(client, order.msisdn)}"
        found.append(checks.Violation("line_orders", "-", detail))
    for line in lines:
        state = await _state(crm, line)
        status = str(client.hget(keys.account(line.account), "status"))
        if state != "active" or status != CHARGING_STATUS.get(state):
            found.append(
                checks.Violation(
                    "line_orders",
                    line.account,
                    f"line {state}, charging status {status} after RESUME; {_held(client, line.msisdn)}",
                )
            )
    return found


def _steps(order: crm_pb2.Order) -> str:
    """An order's status and steps, to read a violation by."""
    steps = "; ".join(f"{s.step} {s.outcome} {' '.join(s.reasons)} at {s.at}".strip() for s in order.steps)
    return f"{crm_pb2.OrderStatus.Name(order.status)} msisdn {order.msisdn} [{steps}]"


def _held(client: redis.Redis | redis.RedisCluster, msisdn: str) -> str:
    """The line's record (its last order) and what the provisioning worker holds for it
    (desired and acknowledged), to read a violation by."""
    line = {str(k): str(v) for k, v in client.hgetall(provisioning_keys.line(msisdn)).items()}
    worker = {str(k): str(v) for k, v in client.hgetall(provisioning_keys.network_line(msisdn)).items()}
    due = client.zscore(provisioning_keys.DUE, msisdn)
    return f"line order {line.get('order_id')} state {line.get('state')}, worker {worker}, due {due}"


async def _state(crm: crm_pb2_grpc.CrmStub, line: CrmLine) -> str:
    state: str = (await crm.GetLine(crm_pb2.LineRef(msisdn=line.msisdn), timeout=10)).state
    return state


async def _undecided(crm: crm_pb2_grpc.CrmStub, orders: set[str]) -> set[str]:
    left: set[str] = set()
    for order_id in orders:
        try:
            order = await crm.GetOrder(crm_pb2.OrderRef(crm_order_id=order_id), timeout=10)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                continue  # never taken (its outcome was unknown and it was not applied)
            raise
        if order.status not in (crm_pb2.ORDER_STATUS_COMPLETED, crm_pb2.ORDER_STATUS_REJECTED):
            left.add(order_id)
    return left
