"""Random sequences of sessions, events, purchases, time and supervision against the real
ledger: buckets never go below zero, reservations always add up, and money goes below
zero only when usage beyond a grant was reported."""

from __future__ import annotations

import json
import random

from charging import keys
from charging.buckets import unpack
from charging.clock import ManualClock
from charging.server import App
from charging.v1 import admin_pb2, charging_pb2, common_pb2, topup_pb2
from tests.conftest import INITIAL, TERMINATE, UPDATE, Stubs, redis_client, session_request
from tests.test_buckets import small_bundles

MSISDN = "491700000001"
WHO = common_pb2.SubscriberId(msisdn=MSISDN)


def check(redis_url: str, account: str, overrun: bool) -> None:
    r = redis_client(redis_url)
    money_held = 0
    units_held: dict[str, int] = {}
    for key in r.scan_iter(keys.session_prefix(account) + "*"):
        for field, value in r.hgetall(key).items():
            if field.startswith("m"):
                money_held += int(value)
            elif field.startswith("b") and value:
                for item in str(value).split("|"):
                    bucket, amount = item.split(":")
                    units_held[bucket] = units_held.get(bucket, 0) + int(amount)
    acct = r.hgetall(keys.account(account))
    assert int(acct["reserved"]) == money_held
    assert int(acct["balance"]) >= 0 or overrun
    for bucket_id, text in r.hgetall(keys.buckets(account)).items():
        b = unpack(str(bucket_id), str(text))
        assert b.amount >= 0 and 0 <= b.reserved <= b.amount, b
        assert b.reserved == units_held.get(str(bucket_id), 0), (b, units_held)
    r.close()


async def test_random_operations_keep_the_ledger_consistent(
    stubs: Stubs, clock: ManualClock, app: App, redis_url: str
) -> None:
    await stubs.admin.LoadCatalog(admin_pb2.CatalogDocument(json=json.dumps(small_bundles())))
    sub = await stubs.subscriber(MSISDN, balance=3_000_000, plan="mobile-prepaid")
    rnd = random.Random(20261126)
    open_sessions: dict[str, tuple[int, int]] = {}  # session -> (next request number, granted)
    overrun = False
    for step in range(250):
        op = rnd.choice(["start", "update", "update", "end", "sms", "buy", "time", "sweep"])
        called = rnd.choice(["491711234567", "33123456", "112", "491701234567"])
        if op == "start":
            sid = f"s{step}"
            a = await stubs.charging.ChargeSession(
                session_request(sid, INITIAL, 0, [{"rating_group": 10, "requested": {}}], called_party=called)
            )
            if a.result_code == 2001:
                open_sessions[sid] = (1, a.rating_groups[0].granted.time_s)
        elif op in ("update", "end") and open_sessions:
            sid = rnd.choice(sorted(open_sessions))
            number, granted = open_sessions[sid]
            used = rnd.choice([0, 1, 59, 61, granted, granted + rnd.randint(1, 200)])
            overrun = overrun or used > granted
            kind = UPDATE if op == "update" else TERMINATE
            group: dict[str, object] = {"rating_group": 10, "used": {"time_s": used}}
            if kind == UPDATE:
                group["requested"] = {}
            a = await stubs.charging.ChargeSession(session_request(sid, kind, number, [group], called_party=called))
            if kind == TERMINATE or a.result_code == 5002:
                open_sessions.pop(sid, None)
            else:
                open_sessions[sid] = (number + 1, a.rating_groups[0].granted.time_s)
        elif op == "sms":
            req = charging_pb2.EventRequest(
                event_id=f"e{step}",
                action=charging_pb2.REQUESTED_ACTION_DIRECT_DEBITING,
                subscriber=WHO,
                rating_group=20,
                called_party=called,
            )
            req.requested.service_specific_units = rnd.randint(1, 3)
            await stubs.charging.ChargeEvent(req)
        elif op == "buy":
            await stubs.topup.BuyBundle(
                topup_pb2.BuyBundleRequest(
                    subscriber=WHO,
                    bundle_id=rnd.choice(["voice-2", "voice-2-first", "sms-10"]),
                    channel=topup_pb2.CHANNEL_APP,
                    idempotency_key=f"b{step}",
                )
            )
        elif op == "time":
            clock.advance(seconds=rnd.choice([30, 600, 3 * 3600, 10 * 86_400]))
        elif op == "sweep":
            assert app.sweeper is not None
            await app.sweeper.sweep_once()
            alive = set(redis_client(redis_url).zrange(keys.sessions(sub.account_id), 0, -1))
            open_sessions = {k: v for k, v in open_sessions.items() if k in alive}
        check(redis_url, sub.account_id, overrun)
