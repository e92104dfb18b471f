"""The scale bench's bulk subscriber base (loadtest/scale_load.py) writes the keys the
admin API and the postpaid and bundle scripts write, without them: the server must
charge those lines as it charges lines made the ordinary way (a bundle holder's data
from the bucket, a postpaid line's usage recorded in its bill period, a prepaid line
debited and topped up), and find them through the admin API and the plan index."""

from __future__ import annotations

from urllib.parse import urlparse

import redis

from charging import keys
from charging.clock import ManualClock
from charging.v1 import charging_pb2, common_pb2
from loadtest.scale_load import CREDIT_LIMIT, PATHS, Router, answer_ok, msisdn, populate, unit_bodies
from postpaid import config as billing_config
from tests.conftest import Stubs, balance


async def test_bulk_base_is_charged_like_created_lines(
    stubs: Stubs, r: redis.Redis, redis_url: str, clock: ManualClock
) -> None:
    port = urlparse(redis_url).port
    assert port is not None
    router = Router([port], cluster=False)
    counts = populate(router, 30, clock.now_ms() // 1000, billing_config.default().time_zone)
    router.close()
    assert counts == {"postpaid": 3, "bundle": 3, "prepaid": 24}
    assert r.scard(keys.plan_members("mobile-postpaid")) == 3
    assert r.scard(keys.plan_members("mobile-prepaid")) == 27

    # Line 0 is postpaid, line 1 holds the data bundle, line 2 is prepaid: a whole session each.
    for index in (0, 1, 2):
        for body in unit_bodies("session", "t", index, index):
            answer = await stubs.charging.ChargeSession(charging_pb2.SessionRequest.FromString(body))
            assert answer_ok("session", answer.SerializeToString()), answer
    for kind in ("event", "topup"):
        raw = await stubs.channel.unary_unary(PATHS[kind])(unit_bodies(kind, "t", 0, 2)[0])
        assert answer_ok(kind, raw)

    bundle = await balance(stubs, msisdn(1))
    assert bundle.balance_micros == CREDIT_LIMIT  # the data came out of the bucket
    assert [b.id for b in bundle.buckets] == ["data-1gb.1"]
    assert bundle.buckets[0].amount < bundle.buckets[0].initial
    usage = r.hgetall(keys.usage("1"))  # the postpaid line, account 1
    assert [v.split(",")[0] for f, v in usage.items() if "|voice|" in f] == ["210"]  # 60 + 60 + 60 + 30 s
    prepaid = await stubs.admin.GetSubscriber(common_pb2.SubscriberId(msisdn=msisdn(2)))
    assert prepaid.plan_id == "mobile-prepaid"
    assert CREDIT_LIMIT < prepaid.balance_micros < CREDIT_LIMIT + 1_000_000  # topped up 1 EUR, then debited


def test_the_flat_comparisons_marginal_cost_and_median() -> None:
    """What the idle setup used while the clients got ready, at that rate over the busy
    window, is taken off (``--flat-*``, loadtest/scale_bench.py); medians of the rounds."""
    from loadtest.scale_bench import RedisSample, median

    before = RedisSample(10.0, 4.0, 100, 10, (5.0, 5.0))
    at_go = RedisSample(10.5, 4.25, 120, 10, (5.25, 5.25))  # idle for 1 s
    assert at_go.back(before, 2.0) == RedisSample(9.5, 3.75, 80, 10, (4.75, 4.75))  # 2 s busy
    assert median([3.0, 1.0, 2.0]) == 2.0 and median([4.0, 1.0, 2.0, 3.0]) == 2.5
