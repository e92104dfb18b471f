"""The seeded workload: concurrent clients acting as a network element and as channels.

Each client draws from its own ``random.Random(seed, client)``: the same seed gives the
same sequence of requests per client (which requests meet which fault depends on timing).
Event accounts see top-ups (some keys sent again, some twice at once), SMS debits (some
twice at once under one event id), refunds presenting a debit's refund information, and
bundle purchases; session accounts see voice sessions (INITIAL, UPDATEs within and beyond
the grant, TERMINATE; some steps sent twice, some sessions abandoned to supervision) and
top-ups. A grant that announces a tariff change makes the next report split its usage
around it (``chaos/tariff.py``), sent once the change has passed. A step whose outcome is
unknown is sent again, as a network element would with the T flag, a few times; a
session that still gets no answer is abandoned.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from chaos import tariff
from chaos.history import Answer, History, Kind, Operation
from charging.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    charging_pb2,
    charging_pb2_grpc,
    common_pb2,
    crm_pb2,
    crm_pb2_grpc,
    topup_pb2,
    topup_pb2_grpc,
)

# gRPC codes that say the request was not applied; any other failure may have been.
REFUSED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)
CALL_TIMEOUT_S = 2.0
# How long after a tariff change a report of units used after it is sent at the earliest.
CHANGE_MARGIN_S = 0.05
NATIONAL = "491711234567"
BUNDLES = ("sms-100", "voice-100")


@dataclass(frozen=True)
class Subscriber:
    account: str
    msisdn: str
    sessions: bool  # a session account (else events)
    crm: bool = False  # made through the CRM: line orders go through it (chaos/line_orders.py)


class Stubs:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.charging = charging_pb2_grpc.ChargingStub(channel)
        self.topup = topup_pb2_grpc.TopUpStub(channel)
        self.admin = admin_pb2_grpc.AdminStub(channel)
        self.crm = crm_pb2_grpc.CrmStub(channel)


# Line orders racing the traffic: a line barred, suspended or barred for outgoing use for
# a moment, then active again (the charging side of a CRM line order).
STATUSES = {
    "barred": admin_pb2.SUBSCRIBER_STATUS_BARRED,
    "suspended": admin_pb2.SUBSCRIBER_STATUS_SUSPENDED,
    "barred_outgoing": admin_pb2.SUBSCRIBER_STATUS_BARRED_OUTGOING,
    "active": admin_pb2.SUBSCRIBER_STATUS_ACTIVE,
}


def who(msisdn: str) -> common_pb2.SubscriberId:
    return common_pb2.SubscriberId(msisdn=msisdn)


def build(kind: Kind, request: dict[str, Any]) -> Any:
    """The protobuf request of an operation (from the plain description kept in history)."""
    if kind == "status":
        return admin_pb2.SetStatusRequest(subscriber=who(request["msisdn"]), status=STATUSES[request["status"]])
    if kind == "topup":
        return topup_pb2.RechargeRequest(
            subscriber=who(request["msisdn"]),
            amount_micros=request["amount_micros"],
            channel=topup_pb2.CHANNEL_RETAIL,
            idempotency_key=request["key"],
        )
    if kind == "buy":
        return topup_pb2.BuyBundleRequest(
            subscriber=who(request["msisdn"]),
            bundle_id=request["bundle_id"],
            channel=topup_pb2.CHANNEL_APP,
            idempotency_key=request["key"],
        )
    if kind in ("debit", "refund"):
        req = charging_pb2.EventRequest(
            event_id=request["event_id"],
            action=charging_pb2.REQUESTED_ACTION_DIRECT_DEBITING
            if kind == "debit"
            else charging_pb2.REQUESTED_ACTION_REFUND_ACCOUNT,
            subscriber=who(request["msisdn"]),
            rating_group=20,
            called_party=NATIONAL,
            refund_information=bytes.fromhex(request.get("refund_information", "")),
        )
        req.requested.service_specific_units = request["units"]
        return req
    return session_message(request)


def session_message(request: dict[str, Any]) -> charging_pb2.SessionRequest:
    req = charging_pb2.SessionRequest(
        session_id=request["session_id"],
        request_type=request["type"],
        request_number=request["number"],
        subscriber=who(request["msisdn"]),
        called_party=NATIONAL,
    )
    group = req.rating_groups.add(rating_group=tariff.RATING_GROUP)
    if request["type"] != charging_pb2.REQUEST_TYPE_TERMINATE:
        group.requested.SetInParent()
    if request["type"] != charging_pb2.REQUEST_TYPE_INITIAL:
        group.used.time_s = request["used_s"]
    if request.get("used_after_s"):
        group.used_after_tariff_change.time_s = request["used_after_s"]
    return req


async def send(stubs: Stubs, kind: Kind, request: dict[str, Any], timeout_s: float = CALL_TIMEOUT_S) -> Answer:
    """Send once; raises AioRpcError on failure."""
    if kind == "status" and "crm_order" in request:
        order = crm_pb2.LineOrder(crm_order_id=request["crm_order"], msisdn=request["msisdn"], kind=request["status"])
        await stubs.crm.SubmitOrder(order, timeout=timeout_s)
        return Answer(2001)  # taken (decided later, by the network's acknowledgement)
    message = build(kind, request)
    if kind == "status":
        await stubs.admin.SetSubscriberStatus(message, timeout=timeout_s)
        return Answer(2001)
    if kind == "topup":
        t = await stubs.topup.Recharge(message, timeout=timeout_s)
        return Answer(2001, balance_micros=t.balance.balance_micros)
    if kind == "buy":
        b = await stubs.topup.BuyBundle(message, timeout=timeout_s)
        return Answer(int(b.result), balance_micros=b.balance.balance_micros)
    if kind in ("debit", "refund"):
        e = await stubs.charging.ChargeEvent(message, timeout=timeout_s)
        return Answer(
            e.result_code,
            cost_micros=e.cost_micros,
            units=e.granted.service_specific_units,
            balance_micros=e.balance_micros,
            refund_information=e.refund_information.hex(),
        )
    s = await stubs.charging.ChargeSession(message, timeout=timeout_s)
    return Answer(
        s.result_code,
        cost_micros=sum(g.cost_micros for g in s.rating_groups),
        units=sum(g.granted.time_s for g in s.rating_groups),
        refund_information=s.refund_information.hex(),
        tariff_change_time=max((g.tariff_change_time for g in s.rating_groups), default=0),
    )


async def attempt(stubs: Stubs, op: Operation, timeout_s: float = CALL_TIMEOUT_S) -> Operation:
    """Send ``op`` once and record what the client saw."""
    try:
        op.answer = await send(stubs, op.kind, op.request, timeout_s)
        op.outcome, op.error, op.acked_at = "ok", "", time.time()
    except grpc.aio.AioRpcError as err:
        op.outcome = "refused" if err.code() in REFUSED else "unknown"
        op.error = f"{err.code().name}: {(err.details() or '')[:120]}"
    return op


@dataclass(frozen=True)
class Grant:
    """What a session step's answer gave: units, and the tariff change within them."""

    units: int
    change_s: int  # 0: none
    server_s: float  # the server's clock when the answer came


class Client:
    def __init__(
        self,
        number: int,
        seed: int,
        stubs: Stubs,
        history: History,
        subscribers: list[Subscriber],
        t0: float,
        server_time: Callable[[], float] = time.time,
    ) -> None:
        self.number = number
        # The server's wall clock (the chaos clock's when it jumps), in fractional seconds:
        # a gateway in time with the server tells from it when a tariff change has passed.
        self.server_time = server_time
        self.rnd = random.Random(f"{seed}/{number}")
        self.stubs = stubs
        self.history = history
        self.subscribers = subscribers
        self.t0 = t0
        self.issued = 0
        self.debits: list[tuple[Operation, int]] = []  # acknowledged debits, units left to refund
        self.sent: list[Operation] = []  # top-ups and purchases that may be sent again
        self.last: Operation | None = None
        # A client's first line order goes through the CRM when there are CRM lines, so
        # that even a short run on a slow machine has one (later ones: any line).
        self.ordered_through_crm = not any(s.crm for s in subscribers)

    def _op(self, kind: Kind, sub: Subscriber, identity: str, request: dict[str, Any]) -> Operation:
        self.issued += 1
        op = Operation(
            len(self.history.operations),
            self.number,
            kind,
            sub.account,
            identity,
            {"msisdn": sub.msisdn, **request},
            time.monotonic() - self.t0,
        )
        self.last = op
        return self.history.add(op)

    async def _twice_at_once(self, first: Operation) -> None:
        again = self._op(first.kind, self._sub(first.account), first.identity, dict(first.request))
        await asyncio.gather(attempt(self.stubs, first), attempt(self.stubs, again))

    def _sub(self, account: str) -> Subscriber:
        return next(s for s in self.subscribers if s.account == account)

    async def run(self, until: float, max_ops: int) -> None:
        while time.monotonic() < until and self.issued < max_ops:
            if self.last is not None and self.last.outcome == "unknown":
                # The server is down or paused: back off as a network element would.
                await asyncio.sleep(self.rnd.uniform(0.05, 0.3))
            sub = self.rnd.choice(self.subscribers)
            step = self.issued
            if self.rnd.random() < 0.02:
                if not self.ordered_through_crm:
                    crm = [s for s in self.subscribers if s.crm]
                    sub = crm[self.number % len(crm)]
                self.ordered_through_crm = True
                await self.line_order(sub, step)
                continue
            if sub.sessions:
                if self.rnd.random() < 0.2:
                    await self.topup(sub, step)
                else:
                    await self.session(sub, step)
                continue
            choice = self.rnd.choices(["topup", "again", "debit", "refund", "buy"], [3, 1, 6, 2, 1])[0]
            if choice == "topup":
                await self.topup(sub, step)
            elif choice == "again" and self.sent:
                old = self.rnd.choice(self.sent)
                await attempt(self.stubs, self._op(old.kind, self._sub(old.account), old.identity, dict(old.request)))
            elif choice == "debit":
                await self.debit(sub, step)
            elif choice == "refund":
                await self.refund(step)
            elif choice == "buy":
                key = f"c{self.number}-b{step}"
                op = self._op("buy", sub, key, {"bundle_id": self.rnd.choice(BUNDLES), "key": key})
                self.sent.append(await attempt(self.stubs, op))

    async def line_order(self, sub: Subscriber, step: int) -> None:
        """Bar, suspend or bar outgoing use, for a moment, then make the line active again."""
        if sub.crm:
            for n, kind in enumerate((self.rnd.choice(["SUSPEND", "BAR_OUTGOING"]), "RESUME")):
                identity = f"chaos-c{self.number}-o{step}-{n}"
                request = {"status": kind, "crm_order": identity}
                await attempt(self.stubs, self._op("status", sub, identity, request))
                if n == 0:
                    await asyncio.sleep(self.rnd.uniform(0.05, 0.5))
            return
        for n, status in enumerate((self.rnd.choice(["barred", "suspended", "barred_outgoing"]), "active")):
            identity = f"c{self.number}-st{step}-{n}"
            await attempt(self.stubs, self._op("status", sub, identity, {"status": status}))
            if n == 0:
                await asyncio.sleep(self.rnd.uniform(0.05, 0.5))

    async def topup(self, sub: Subscriber, step: int) -> None:
        key = f"c{self.number}-t{step}"
        amount = self.rnd.choice([100_000, 250_000, 1_000_000, 3_000_000])
        op = self._op("topup", sub, key, {"amount_micros": amount, "key": key})
        if self.rnd.random() < 0.15:
            await self._twice_at_once(op)
        else:
            await attempt(self.stubs, op)
        self.sent.append(op)

    async def debit(self, sub: Subscriber, step: int) -> None:
        event_id = f"c{self.number}-e{step}"
        op = self._op("debit", sub, event_id, {"event_id": event_id, "units": self.rnd.randint(1, 3)})
        if self.rnd.random() < 0.15:
            await self._twice_at_once(op)
        else:
            await attempt(self.stubs, op)
        if op.outcome == "ok" and op.answer is not None and op.answer.code == 2001 and op.answer.units:
            self.debits.append((op, op.answer.units))

    async def refund(self, step: int) -> None:
        if not self.debits:
            return
        index = self.rnd.randrange(len(self.debits))
        debit, left = self.debits[index]
        assert debit.answer is not None
        event_id = f"c{self.number}-r{step}"
        request = {"event_id": event_id, "units": 1, "refund_information": debit.answer.refund_information}
        await attempt(self.stubs, self._op("refund", self._sub(debit.account), event_id, request))
        if left <= 1:
            self.debits.pop(index)
        else:
            self.debits[index] = (debit, left - 1)

    async def session(self, sub: Subscriber, step: int) -> None:
        session_id = f"c{self.number}-s{step}"
        grant = await self._step(sub, session_id, charging_pb2.REQUEST_TYPE_INITIAL, 0, 0, None)
        if grant is None:
            return
        number = 1
        for _ in range(self.rnd.randint(0, 3)):
            granted = grant.units
            used = self.rnd.choice([0, 1, 59, 61, granted, granted + self.rnd.randint(1, 30)])
            grant = await self._step(sub, session_id, charging_pb2.REQUEST_TYPE_UPDATE, number, used, grant)
            number += 1
            if grant is None:
                return
        if self.rnd.random() < 0.15:
            return  # abandoned: supervision releases what it holds
        used = self.rnd.choice([0, 30, grant.units])
        await self._step(sub, session_id, charging_pb2.REQUEST_TYPE_TERMINATE, number, used, grant)

    async def _step(
        self, sub: Subscriber, session_id: str, kind: int, number: int, used: int, grant: Grant | None
    ) -> Grant | None:
        """One session step, sent again (up to three times) while its outcome is unknown;
        what it granted, or None when the session cannot go on. A report on a ``grant``
        that announced a tariff change splits ``used`` around it and, with units after
        it, is sent once the change has passed: by the gateway's clock, in time with the
        server's when the grant came."""
        request: dict[str, Any] = {"session_id": session_id, "type": kind, "number": number, "used_s": used}
        if grant is not None:
            # Drawn whether or not a change was announced: a seed's draws do not depend on
            # the moment a step happened to be answered.
            draw = self.rnd.random()
            if grant.change_s:
                before, after = tariff.split(used, draw)
                if after:
                    request.update(used_s=before, used_after_s=after)
                    await asyncio.sleep(max(0.0, grant.change_s - grant.server_s) + CHANGE_MARGIN_S)
        identity = f"{session_id}:{number}"
        for attempt_number in range(3):
            op = self._op("session", sub, identity, dict(request))
            if attempt_number == 0 and self.rnd.random() < 0.1:
                await self._twice_at_once(op)
            else:
                await attempt(self.stubs, op)
            if op.outcome == "ok" and op.answer is not None:
                if op.answer.code != 2001:
                    return None
                return Grant(op.answer.units, op.answer.tariff_change_time, self.server_time())
            if op.outcome == "refused":
                return None
        return None
