"""The sweeper's and the renewer's due indexes in shards (``charging/due_shards.py``): the
shards spread over a cluster's primaries, a pass walks them all, and the single index of
before the shards is moved into them at the first pass. On a single server and a real
Redis Cluster (``CLUSTER_MODULES``)."""

from __future__ import annotations

from redis.crc import key_slot

from charging import keys
from charging.clock import ManualClock
from charging.server import App
from tests.conftest import INITIAL, Stubs, redis_client, session_request
from tests.test_sessions import MINUTE, ledger_is_consistent
from tests.test_sweeper import VOICE_SUPERVISION_S

LINES = [f"4917000001{n:02d}" for n in range(24)]


def test_every_shard_has_its_own_tag_and_the_shards_cover_every_primary() -> None:
    slots = {key_slot(due.encode()) for due, _ in keys.SWEEP_SHARDS + keys.RENEW_SHARDS}
    assert len(slots) == 2 * keys.DUE_SHARDS
    for due, epochs in keys.SWEEP_SHARDS + keys.RENEW_SHARDS:
        assert key_slot(due.encode()) == key_slot(epochs.encode())
    # redis-cli --cluster create gives 3 primaries even slot ranges: each gets shards.
    for shards in (keys.SWEEP_SHARDS, keys.RENEW_SHARDS):
        per_primary = [0, 0, 0]
        for due, _ in shards:
            per_primary[min(key_slot(due.encode()) * 3 // 16384, 2)] += 1
        assert min(per_primary) >= 3, per_primary


async def test_sessions_of_many_accounts_spread_over_the_shards_and_one_pass_sweeps_them_all(
    stubs: Stubs, app: App, clock: ManualClock, redis_url: str
) -> None:
    accounts = []
    for n, msisdn in enumerate(LINES):
        sub = await stubs.subscriber(msisdn=msisdn, balance=1_000_000)
        accounts.append(sub.account_id)
        await stubs.charging.ChargeSession(
            session_request(f"s{n}", INITIAL, 0, [{"rating_group": 10, "requested": {}}], msisdn=msisdn)
        )
    r = redis_client(redis_url)
    used = {keys.due_shard(a) for a in accounts}
    assert len(used) >= 8  # 24 accounts over 16 shards
    for account in accounts:
        assert r.zscore(keys.sweep_index(account)[0], account) is not None
    assert (await stubs.balance(LINES[0])).reserved_micros == 5 * MINUTE

    assert app.sweeper is not None
    clock.advance(seconds=VOICE_SUPERVISION_S + 1)
    await app.sweeper.sweep_due()
    for msisdn in LINES:
        b = await stubs.balance(msisdn)
        assert (b.balance_micros, b.reserved_micros) == (1_000_000, 0)
    assert sum(r.zcard(due) for due, _ in keys.SWEEP_SHARDS) == 0
    r.close()
    ledger_is_consistent(redis_url)


async def test_the_single_indexes_of_before_the_shards_are_moved_at_the_first_pass(
    stubs: Stubs, app: App, clock: ManualClock, redis_url: str
) -> None:
    """An upgraded server: its accounts sit in ``{sweep}:due`` and ``{renew}:due``."""
    assert app.sweeper is not None and app.renewer is not None
    sub = await stubs.subscriber(balance=1_000_000)
    await stubs.charging.ChargeSession(session_request("old", INITIAL, 0, [{"rating_group": 10, "requested": {}}]))
    account = sub.account_id
    r = redis_client(redis_url)
    # As the server of before kept it: the session's account in the single index only.
    due_ms = int(r.zscore(keys.sweep_index(account)[0], account) or 0)
    r.delete(*keys.sweep_index(account))
    r.zadd(keys.UNSHARDED_SWEEP[0], {account: due_ms})
    r.hset(keys.UNSHARDED_SWEEP[1], account, 1)
    later_ms = clock.now_ms() + 30 * 86_400_000
    r.zadd(keys.UNSHARDED_RENEW[0], {account: later_ms})
    r.hset(keys.UNSHARDED_RENEW[1], account, 1)

    assert await app.sweeper.sweep_once() == 0  # moved, not due yet
    assert not r.exists(*keys.UNSHARDED_SWEEP)
    assert r.zscore(keys.sweep_index(account)[0], account) == due_ms
    assert await app.renewer.renew_once() == 0
    assert not r.exists(*keys.UNSHARDED_RENEW)
    assert r.zscore(keys.renew_index(account)[0], account) == later_ms

    clock.advance(ms=due_ms - clock.now_ms() + 1000)
    assert await app.sweeper.sweep_once() == 1  # found in its shard when due
    b = await stubs.balance()
    assert (b.balance_micros, b.reserved_micros) == (1_000_000, 0)
    r.close()
