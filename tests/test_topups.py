"""Recharges and balance queries through gRPC on a real Redis."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from redis.crc import key_slot

from charging import keys
from charging.ledger import BUY, TOPUP
from charging.money import MAX_BALANCE
from charging.v1 import charging_pb2, common_pb2, topup_pb2
from tests.conftest import INITIAL, Stubs, redis_client, session_request
from tests.redis_monitor import Monitor, primaries


def recharge(amount: int, key: str, channel: int = topup_pb2.CHANNEL_RETAIL, msisdn: str = "491700000001"):
    return topup_pb2.RechargeRequest(
        subscriber=common_pb2.SubscriberId(msisdn=msisdn), amount_micros=amount, channel=channel, idempotency_key=key
    )


async def test_recharge_credits_and_returns_the_new_balance(stubs: Stubs) -> None:
    await stubs.subscriber(balance=1_000_000)
    a = await stubs.topup.Recharge(recharge(5_000_000, "k1"))
    assert (a.balance.balance_micros, a.balance.available_micros, a.balance.currency) == (6_000_000, 6_000_000, "EUR")
    assert not a.replayed
    b = await stubs.topup.GetBalance(
        topup_pb2.BalanceRequest(subscriber=common_pb2.SubscriberId(msisdn="491700000001"))
    )
    assert b.balance_micros == 6_000_000


async def test_repeated_key_returns_the_first_answer_and_credits_once(stubs: Stubs) -> None:
    await stubs.subscriber(balance=0)
    answers = await asyncio.gather(*(stubs.topup.Recharge(recharge(2_500_000, "same")) for _ in range(10)))
    assert {a.balance.balance_micros for a in answers} == {2_500_000}
    assert sum(not a.replayed for a in answers) == 1
    assert (await stubs.balance()).balance_micros == 2_500_000
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.topup.Recharge(recharge(9_000_000, "same"))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert (await stubs.balance()).balance_micros == 2_500_000


@pytest.mark.parametrize(
    ("req", "field"),
    [
        (recharge(0, "k"), "amount_micros"),
        (recharge(-5, "k"), "amount_micros"),
        (recharge(1, ""), "idempotency_key"),
        (recharge(1, "k", channel=topup_pb2.CHANNEL_UNSPECIFIED), "channel"),
        (recharge(1, "k", msisdn="12"), "subscriber.msisdn"),
    ],
)
async def test_bad_recharges_name_the_field_and_change_nothing(stubs: Stubs, req, field: str) -> None:
    await stubs.subscriber(balance=100)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.topup.Recharge(req)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (err.value.details() or "")
    assert (await stubs.balance()).balance_micros == 100


async def test_unknown_subscriber_and_balance_ceiling(stubs: Stubs) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.topup.Recharge(recharge(1, "k", msisdn="491799999999"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    await stubs.subscriber(balance=MAX_BALANCE - 10)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.topup.Recharge(recharge(11, "k"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await stubs.balance()).balance_micros == MAX_BALANCE - 10


async def test_top_ups_and_purchases_touch_only_the_subscribers_slot_and_signal_on_its_shard(
    stubs: Stubs, redis_url: str, redis_backend: str
) -> None:
    """Recharges and bundle purchases of subscribers spread over the slots (over every
    primary of a cluster): every key their scripts name or touch lives in the subscriber's
    own slot, no key is shared by two subscribers' top-ups, and the ``credit`` signal goes
    on the account's sharded channel on a cluster (a PUBLISH there would go from one
    primary to every node), heard by a watcher of the sessions all the same."""
    ours = {}
    for n in range(12):
        msisdn = f"4917000001{n:02d}"
        ours[(await stubs.subscriber(msisdn, balance=5_000)).account_id] = msisdn
    watch = stubs.charging.WatchSessions(charging_pb2.WatchRequest())
    await watch.initial_metadata()
    data = {"rating_group": 30, "requested": {"total_octets": 1_000_000}}
    for account, msisdn in ours.items():  # each holds a session with a final-unit indication
        first = await stubs.charging.ChargeSession(session_request(f"s-{account}", INITIAL, 0, [data], msisdn))
        assert first.rating_groups[0].HasField("final_unit")
    ports = primaries(redis_url)
    if redis_backend == "cluster":  # the subscribers are spread over every primary
        assert len(ports) == 3
        assert {cluster_port(redis_url, keys.account(a)) for a in ours} == set(ports)
    with Monitor(ports) as seen:
        for account, msisdn in ours.items():
            await stubs.topup.Recharge(recharge(10_000_000, f"r-{account}", msisdn=msisdn))
            bought = await stubs.topup.BuyBundle(
                topup_pb2.BuyBundleRequest(
                    subscriber=common_pb2.SubscriberId(msisdn=msisdn),
                    bundle_id="voice-100",
                    channel=topup_pb2.CHANNEL_APP,
                    idempotency_key=f"b-{account}",
                )
            )
            assert bought.result == topup_pb2.PURCHASE_RESULT_PURCHASED
        told: set[str] = set()
        while len(told) < len(ours):  # each session is told to re-authorize
            signal = await asyncio.wait_for(watch.read(), 10)
            assert isinstance(signal, charging_pb2.SessionSignal)
            assert signal.action == charging_pb2.SESSION_ACTION_REAUTHORIZE
            told.add(signal.session_id)
    watch.cancel()
    assert told == {f"s-{a}" for a in ours}

    runs = seen.script_runs(TOPUP.sha, BUY.sha)  # an EVALSHA that ran nothing met NOSCRIPT
    assert sorted(r.sha for r in runs if r.touched) == sorted([TOPUP.sha, BUY.sha] * len(ours))
    owners: dict[str, str] = {}
    for run in runs:
        account = next(a for a in ours if run.keys[0] == keys.account(a))
        slot = key_slot(keys.account(account).encode())
        assert all(key_slot(k.encode()) == slot for k in (*run.keys, *run.touched)), run
        for k in (*run.keys, *run.touched):
            assert owners.setdefault(k, account) == account, f"{k} is touched by two subscribers' top-ups"
    assert {a for a in owners.values()} == set(ours)

    published = [c for c in seen.commands if c.name in ("PUBLISH", "SPUBLISH") and c.args[1] != "changes"]
    assert len(published) == 2 * len(ours)
    for c in published:
        kind, account = c.args[2].split(" ")
        assert kind == "credit" and account in ours
        if redis_backend == "cluster":
            assert c.name == "SPUBLISH" and c.args[1] == keys.account_signals(account)
            assert c.port == cluster_port(redis_url, c.args[1])  # on the primary of its slot only
        else:
            assert (c.name, c.args[1]) == ("PUBLISH", keys.SIGNALS)


def cluster_port(url: str, key: str) -> int:
    """The port of the primary that serves ``key``."""
    client = redis_client(url)
    try:
        node = client.get_node_from_key(key)  # type: ignore[attr-defined]
        return int(node.port)
    finally:
        client.close()
