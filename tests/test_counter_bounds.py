"""Random extreme sequences through the real server and scripts, against a Python model.

Huge reported usage, many updates, top-ups, events, interleaved sessions and UPDATEs of
several sessions at once (the model must agree with one order of them) on one
prepaid account: every answer and every counter the scripts keep (balance, reserved,
unbilled overrun, each session's per-rating-group counters) must equal the model's
exactly, stay within the bounds of ``charging/money.py``, and below 2**53.

The model is written from the rules, in Python integers: ``rating.py`` for prices,
``sessions.command_result`` for the command level, and the overrun floor.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import redis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from charging import keys
from charging.catalog import Usage
from charging.codes import ResultCode
from charging.money import MAX_AMOUNT, MAX_BALANCE, MAX_UNITS
from charging.rating import (
    Rate,
    UnitKind,
    affordable_units,
    billable_units,
    cost,
    quota,
    session_cost,
    worst_case_cost,
)
from charging.server import App
from charging.sessions import RequestKind, UsageLimits, command_result
from charging.settings import Settings
from charging.v1 import charging_pb2, common_pb2, topup_pb2
from tests.conftest import INITIAL, TERMINATE, UPDATE, Stubs, session_request

EXACT = 2**53
# Rating groups of the default plan: voice per started minute, data per started KB,
# content priced in money; SMS for events.
GROUPS = (10, 30, 50)
SMS = 20
FIELD = {UnitKind.TIME: "time_s", UnitKind.VOLUME: "total_octets", UnitKind.MONEY: "money_micros"}
numbers = itertools.count()


def priceable(rate: Rate, units: int) -> bool:
    return rate.max_session_cost > 0 or worst_case_cost(rate, units) <= MAX_AMOUNT


@dataclass
class Group:
    reserved_units: int = 0
    reserved_money: int = 0
    used: int = 0
    money_units: int = 0
    number: int = -1


@dataclass
class Model:
    """The account and its open sessions as the rules say they must be."""

    rates: dict[int, Rate]
    limits: UsageLimits
    floor: int
    balance: int
    reserved: int = 0
    unbilled: dict[int, int] = field(default_factory=dict)
    sessions: dict[str, dict[int, Group]] = field(default_factory=dict)

    def charge(
        self, kind: RequestKind, sid: str, n: int, requests: list[tuple[int, int | None, int]]
    ) -> tuple[int, list[tuple[int, int, int]]]:
        """Apply one session request; (command code, [(code, granted, cost)] per group).
        requests: (rating group, requested units or None, used units)."""
        if kind == "I" and sid in self.sessions:
            return ResultCode.UNABLE_TO_COMPLY, []
        if kind != "I" and sid not in self.sessions:
            return ResultCode.UNKNOWN_SESSION_ID, []
        session = self.sessions.get(sid, {})
        answers: list[tuple[int, int, int]] = []
        limit_reached = False
        for rg, requested, used in requests:
            rate = self.rates[rg]
            ceiling = self.limits.ceiling(rate)
            refused = requested is not None and (requested > MAX_UNITS or worst_case_cost(rate, requested) > MAX_AMOUNT)
            if refused or used > ceiling:
                answers.append((ResultCode.INVALID_AVP_VALUE, 0, 0))
                continue
            want = min(quota(rate, requested or 0), ceiling) if requested is not None else 0
            g = session.setdefault(rg, Group())
            overrun = g.number >= 0 and used > g.reserved_units
            self.reserved -= g.reserved_money
            g.reserved_units = g.reserved_money = 0
            charged, stopped = 0, False
            if used > 0:
                need = billable_units(rate, g.used + used) - billable_units(rate, g.used)
                billed = 0
                if g.used + used <= MAX_UNITS and g.money_units + need <= MAX_UNITS:
                    billed = need
                    budget = self.balance - self.reserved + self.floor
                    if not priceable(rate, g.money_units + need):
                        billed = 0
                    elif session_cost(rate, g.money_units + need) - session_cost(rate, g.money_units) > budget:
                        billed = affordable_units(rate, g.money_units, budget, need)
                    charged = session_cost(rate, g.money_units + billed) - session_cost(rate, g.money_units)
                    g.money_units += billed
                    g.used += used
                if billed < need:
                    stopped = True
                    self.unbilled[rate.unit] = self.unbilled.get(rate.unit, 0) + need - billed
            self.balance -= charged
            code, granted = ResultCode.SUCCESS, 0
            if stopped or overrun:
                code = ResultCode.CREDIT_LIMIT_REACHED
            elif kind != "T" and want > 0:
                need = billable_units(rate, g.used + want) - billable_units(rate, g.used)
                paid_rest = billable_units(rate, g.used) - g.used
                if g.used + want > MAX_UNITS or not priceable(rate, g.money_units + need):
                    code = ResultCode.CREDIT_LIMIT_REACHED
                else:
                    money_units = affordable_units(rate, g.money_units, self.balance - self.reserved, need)
                    granted = min(want, paid_rest + money_units)
                    if granted <= 0:
                        code, granted = ResultCode.CREDIT_LIMIT_REACHED, 0
                    else:
                        g.reserved_units = granted
                        g.reserved_money = session_cost(rate, g.money_units + money_units) - session_cost(
                            rate, g.money_units
                        )
                        self.reserved += g.reserved_money
            g.number = n
            limit_reached = limit_reached or stopped
            answers.append((code, granted, charged))
        held = any(g.reserved_units > 0 for g in session.values())
        outcome = command_result(kind, [a[0] for a in answers], held_after=held, limit_reached=limit_reached)
        if outcome.ends:
            self.reserved -= sum(g.reserved_money for g in session.values())
            self.sessions.pop(sid, None)
        else:
            self.sessions[sid] = session
        return outcome.code, answers

    def debit(self, units: int) -> int:
        price = cost(self.rates[SMS], units)
        if self.balance - self.reserved < price:
            return ResultCode.CREDIT_LIMIT_REACHED
        self.balance -= price
        return ResultCode.SUCCESS

    def top_up(self, micros: int) -> bool:
        if self.balance + micros > MAX_BALANCE:
            return False
        self.balance += micros
        return True


CEILINGS = {UnitKind.TIME: 86_400, UnitKind.VOLUME: 10**12, UnitKind.MONEY: 10**9}


# Mostly extreme: a day of voice, a terabyte, 1,000 units of currency, and just above.
used_units = st.sampled_from([0, 1, 60, 300, 10**6, 86_400, 86_401, 10**9, 10**9 + 1, 10**12, 10**12 + 1])
request = st.tuples(
    st.sampled_from(GROUPS),
    st.one_of(st.none(), st.just(0), st.sampled_from([1, 60, 10**6, 10**12, 10**13])),
    used_units,
)
requests = st.lists(request, min_size=1, max_size=3, unique_by=lambda r: r[0])
op = st.one_of(
    st.tuples(st.just("start"), requests),
    st.tuples(st.just("start"), requests),
    st.tuples(st.just("update"), requests),
    st.tuples(st.just("update"), requests),
    st.tuples(st.just("update"), requests),
    st.tuples(st.just("end"), st.lists(request, max_size=2, unique_by=lambda r: r[0])),
    st.tuples(st.just("burst"), requests),
    st.tuples(st.just("sms"), st.sampled_from([1, 10, 10_000])),
    st.tuples(st.just("topup"), st.sampled_from([1, 2, 3, 10**6, 10**12, MAX_AMOUNT])),
)


@pytest.fixture(name="settings")
def small_floor(redis_url: str, app_database_url: str) -> Settings:
    """The server under test, with an overrun floor of 500 units of currency: a few
    extreme reports reach it (the default, the plan's largest grant, is 9,765 EUR)."""
    return Settings(
        grpc_address="127.0.0.1:0",
        metrics_address="",
        nchf_address="",
        redis_url=redis_url,
        database_url=app_database_url,
        grace_period_s=1.0,
        overrun_floor_micros=500 * 10**6,
    )


def fill(units: common_pb2.ServiceUnits, rate: Rate, amount: int) -> None:
    units.SetInParent()
    setattr(units, FIELD[rate.unit], amount)


def request_of(
    m: Model, msisdn: str, kind: RequestKind, sid: str, n: int, requests: list[tuple[int, int | None, int]]
) -> charging_pb2.SessionRequest:
    req = session_request(sid, {"I": INITIAL, "U": UPDATE, "T": TERMINATE}[kind], n, [], msisdn=msisdn)
    for rg, requested, used in requests:
        g = req.rating_groups.add(rating_group=rg)
        if requested is not None:
            fill(g.requested, m.rates[rg], requested)
        if used or kind != "I":
            fill(g.used, m.rates[rg], used)
    return req


def answer_of(a: charging_pb2.SessionAnswer) -> tuple[int, list[tuple[int, int, int]]]:
    """The command-level code and (code, granted, cost) per rating group."""
    return a.result_code, [(g.result_code, _granted(g), g.cost_micros) for g in a.rating_groups]


def check_counters(r: redis.Redis, account: str, m: Model) -> None:
    acct = r.hgetall(keys.account(account))
    assert int(acct["balance"]) == m.balance
    assert int(acct["reserved"]) == m.reserved
    for unit in UnitKind:
        assert int(acct.get(f"unbilled_{int(unit)}", 0)) == m.unbilled.get(unit, 0)
    # the stated bounds: available money at or above -floor, reserved within the balance ceiling
    assert -m.floor <= m.balance - m.reserved and m.balance <= MAX_BALANCE
    assert 0 <= m.reserved <= MAX_BALANCE
    assert all(abs(v) < EXACT for v in (m.balance, m.reserved, *m.unbilled.values()))
    assert set(r.zrange(keys.sessions(account), 0, -1)) == set(m.sessions)
    for sid, groups in m.sessions.items():
        stored = r.hgetall(keys.session(account, sid))
        for rg, g in groups.items():
            got = [int(stored.get(f"{c}{rg}", 0)) for c in "umckn"]
            assert got == [g.reserved_units, g.reserved_money, g.used, g.money_units, g.number], (sid, rg)
            assert g.used <= MAX_UNITS and g.money_units <= min(billable_units(m.rates[rg], g.used), MAX_UNITS)
            assert session_cost(m.rates[rg], g.money_units) <= MAX_AMOUNT or m.rates[rg].max_session_cost


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    balance=st.sampled_from([0, 0, 10**6, 10**10, MAX_BALANCE]),
    ops=st.lists(op, min_size=5, max_size=40),
)
async def test_random_extreme_sequences_keep_every_counter_exact_and_bounded(
    app: App, stubs: Stubs, r: redis.Redis, balance: int, ops: list[tuple[str, Any]]
) -> None:
    msisdn = f"4917{next(numbers):08d}"
    sub = await stubs.subscriber(msisdn, balance=balance)
    assert app.catalogs is not None and app.sessions is not None
    catalog = app.catalogs.current
    plan = catalog.plans["default"]
    now_s = app.clock.now_ms() // 1000
    rates = {rg: catalog.rate(plan, rg, Usage(), now_s) for rg in (*GROUPS, SMS)}
    limits = app.sessions.limits
    m = Model({rg: rate for rg, rate in rates.items() if rate is not None}, limits, limits.floor(plan), balance)
    assert len(m.rates) == len(rates)
    who = common_pb2.SubscriberId(msisdn=msisdn)
    numbers_of: dict[str, int] = {}
    for step, (name, arg) in enumerate(ops):
        if name in ("start", "update", "end"):
            requests: list[tuple[int, int | None, int]] = arg
            if name == "start":
                sid, kind, n = f"s{step}", "I", 0
            elif m.sessions:
                sid = sorted(m.sessions)[step % len(m.sessions)]
                kind, n = ("U" if name == "update" else "T"), numbers_of[sid] + 1
            else:
                continue
            numbers_of[sid] = n
            expected = m.charge(kind, sid, n, requests)
            a = await stubs.charging.ChargeSession(request_of(m, msisdn, kind, sid, n, requests))
            assert answer_of(a) == expected, (step, name, requests)
            event(f"{name} answered {expected[0]}")
        elif name == "burst":
            # UPDATEs of up to three sessions at once: the ledger applies them in some
            # order, and the model must agree with one of the orders.
            sids = sorted(m.sessions)[:3]
            for sid in sids:
                numbers_of[sid] += 1
            answers = await asyncio.gather(
                *(stubs.charging.ChargeSession(request_of(m, msisdn, "U", sid, numbers_of[sid], arg)) for sid in sids)
            )
            got = {sid: answer_of(a) for sid, a in zip(sids, answers, strict=True)}
            for order in itertools.permutations(sids):
                trial = copy.deepcopy(m)
                if {sid: trial.charge("U", sid, numbers_of[sid], arg) for sid in order} == got:
                    m = trial
                    break
            else:
                raise AssertionError(f"no order of {sids} gives {got}")
            event(f"burst of {len(sids)}")
        elif name == "sms":
            ev = charging_pb2.EventRequest(
                event_id=f"e{step}",
                action=charging_pb2.REQUESTED_ACTION_DIRECT_DEBITING,
                subscriber=who,
                rating_group=SMS,
            )
            ev.requested.service_specific_units = int(arg)
            a = await stubs.charging.ChargeEvent(ev)
            assert a.result_code == m.debit(int(arg))
        else:
            accepted = m.top_up(int(arg))
            topup = topup_pb2.RechargeRequest(
                subscriber=who, amount_micros=int(arg), channel=topup_pb2.CHANNEL_RETAIL, idempotency_key=f"t{step}"
            )
            if accepted:
                await stubs.topup.Recharge(topup)
            else:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stubs.topup.Recharge(topup)
                assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        check_counters(r, sub.account_id, m)
    if m.unbilled:
        event("usage went past the overrun floor")


def _granted(g: charging_pb2.RatingGroupAnswer) -> int:
    return max(g.granted.time_s, g.granted.total_octets, g.granted.money_micros)
