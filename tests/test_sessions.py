"""Session-based charging through a real gRPC client against a real Redis.

Default tariff: rating group 10 is voice at 100000 micros per started 60 s with a
300 s default quota; 11 is 1700 micros per second; 30 is data at 10 micros per
started KB with REDIRECT as final unit action; 40 is toll-free.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from charging.server import App
from charging.v1 import common_pb2
from tests.conftest import INITIAL, TERMINATE, UPDATE, Stubs, redis_client, session_request

MINUTE = 100_000  # price of one started minute on rating group 10


def ledger_is_consistent(redis_url: str) -> None:
    """Every account's reserved money equals the sum of its sessions' reservations."""
    r = redis_client(redis_url)
    held: dict[str, int] = {}
    for key in r.scan_iter("{a:*}:s:*"):
        account = key.split("}")[0] + "}"
        for field, value in r.hgetall(str(key)).items():
            if str(field).startswith("m"):
                held[account] = held.get(account, 0) + int(value)
    for key in r.scan_iter("{a:*}"):
        if key.endswith("}"):
            assert int(r.hget(key, "reserved") or 0) == held.get(key, 0), key
    r.close()


async def test_initial_reserves_update_debits_and_replaces_terminate_releases(stubs: Stubs, redis_url: str) -> None:
    await stubs.subscriber(balance=1_000_000)
    a = await stubs.charging.ChargeSession(session_request("s1", INITIAL, 0, [{"rating_group": 10, "requested": {}}]))
    assert a.result_code == 2001
    assert a.rating_groups[0].result_code == 2001
    assert a.rating_groups[0].granted.time_s == 300
    assert a.rating_groups[0].validity_time_s == 900
    b = await stubs.balance()
    assert (b.balance_micros, b.reserved_micros, b.available_micros) == (1_000_000, 5 * MINUTE, 5 * MINUTE)

    a = await stubs.charging.ChargeSession(
        session_request("s1", UPDATE, 1, [{"rating_group": 10, "requested": {}, "used": {"time_s": 120}}])
    )
    assert a.rating_groups[0].cost_micros == 2 * MINUTE
    assert a.rating_groups[0].granted.time_s == 300
    b = await stubs.balance()
    assert (b.balance_micros, b.reserved_micros) == (800_000, 5 * MINUTE)
    ledger_is_consistent(redis_url)

    a = await stubs.charging.ChargeSession(
        session_request("s1", TERMINATE, 2, [{"rating_group": 10, "used": {"time_s": 30}}])
    )
    assert a.result_code == 2001
    assert a.rating_groups[0].cost_micros == MINUTE
    assert not a.rating_groups[0].HasField("granted")
    b = await stubs.balance()
    assert (b.balance_micros, b.reserved_micros, b.available_micros) == (700_000, 0, 700_000)
    ledger_is_consistent(redis_url)


async def test_reservations_never_stack(stubs: Stubs) -> None:
    await stubs.subscriber(balance=10_000_000)
    await stubs.charging.ChargeSession(session_request("s", INITIAL, 0, [{"rating_group": 10, "requested": {}}]))
    for n in range(1, 4):
        await stubs.charging.ChargeSession(session_request("s", UPDATE, n, [{"rating_group": 10, "requested": {}}]))
    b = await stubs.balance()
    assert b.reserved_micros == 5 * MINUTE
    assert b.balance_micros == 10_000_000


async def test_usage_is_rounded_on_the_cumulative_total(stubs: Stubs) -> None:
    await stubs.subscriber(balance=10_000_000)
    await stubs.charging.ChargeSession(session_request("s", INITIAL, 0, [{"rating_group": 10, "requested": {}}]))
    costs = []
    for n in range(1, 5):
        a = await stubs.charging.ChargeSession(
            session_request("s", UPDATE, n, [{"rating_group": 10, "requested": {}, "used": {"time_s": 30}}])
        )
        costs.append(a.rating_groups[0].cost_micros)
    # 30 s, 60 s, 90 s, 120 s cumulative: the 1st and 3rd report start a new minute.
    assert costs == [MINUTE, 0, MINUTE, 0]


async def test_concurrent_sessions_never_reserve_more_than_available(stubs: Stubs, redis_url: str) -> None:
    await stubs.subscriber(balance=1_250_000)
    answers = await asyncio.gather(
        *(
            stubs.charging.ChargeSession(session_request(f"c{i}", INITIAL, 0, [{"rating_group": 10, "requested": {}}]))
            for i in range(20)
        )
    )
    granted = sorted(a.rating_groups[0].granted.time_s for a in answers)
    assert granted.count(300) == 2
    assert granted.count(120) == 1  # 250000 left buys two started minutes
    assert granted.count(0) == 17
    partial = next(a for a in answers if a.rating_groups[0].granted.time_s == 120)
    assert partial.rating_groups[0].final_unit.action == common_pb2.FINAL_UNIT_ACTION_TERMINATE
    assert sum(a.result_code == 4012 for a in answers) == 17
    b = await stubs.balance()
    assert b.reserved_micros == 1_250_000 - 50_000
    assert b.available_micros >= 0
    ledger_is_consistent(redis_url)


async def test_retransmission_gets_identical_answer_and_changes_nothing(stubs: Stubs) -> None:
    await stubs.subscriber(balance=5_000_000)
    await stubs.charging.ChargeSession(session_request("r", INITIAL, 0, [{"rating_group": 10, "requested": {}}]))
    update = session_request("r", UPDATE, 1, [{"rating_group": 10, "requested": {}, "used": {"time_s": 61}}])
    first = await stubs.charging.ChargeSession(update)
    after_first = await stubs.balance()
    again = await stubs.charging.ChargeSession(update)
    assert again.SerializeToString() == first.SerializeToString()
    assert await stubs.balance() == after_first


async def test_racing_copies_are_applied_once(stubs: Stubs) -> None:
    await stubs.subscriber(balance=5_000_000)
    await stubs.charging.ChargeSession(session_request("r", INITIAL, 0, [{"rating_group": 10, "requested": {}}]))
    update = session_request("r", UPDATE, 1, [{"rating_group": 10, "requested": {}, "used": {"time_s": 60}}])
    answers = await asyncio.gather(*(stubs.charging.ChargeSession(update) for _ in range(10)))
    assert len({a.SerializeToString() for a in answers}) == 1
    b = await stubs.balance()
    assert b.balance_micros == 5_000_000 - MINUTE


async def test_updates_out_of_order_are_all_applied(stubs: Stubs, redis_url: str) -> None:
    await stubs.subscriber(balance=5_000_000)
    await stubs.charging.ChargeSession(session_request("o", INITIAL, 0, [{"rating_group": 11, "requested": {}}]))
    u2 = session_request("o", UPDATE, 2, [{"rating_group": 11, "requested": {}, "used": {"time_s": 20}}])
    u1 = session_request("o", UPDATE, 1, [{"rating_group": 11, "requested": {}, "used": {"time_s": 10}}])
    a2 = await stubs.charging.ChargeSession(u2)
    a1 = await stubs.charging.ChargeSession(u1)  # the original arrives after the later one
    assert a2.rating_groups[0].granted.time_s == 300
    # The late, older request is charged but does not replace the newer reservation.
    assert a1.rating_groups[0].cost_micros == 10 * 1700
    assert not a1.rating_groups[0].HasField("granted")
    b = await stubs.balance()
    assert b.balance_micros == 5_000_000 - 30 * 1700
    assert b.reserved_micros == 300 * 1700
    assert (await stubs.charging.ChargeSession(u1)).SerializeToString() == a1.SerializeToString()
    ledger_is_consistent(redis_url)


async def test_reused_request_number_with_other_payload_is_rejected(stubs: Stubs) -> None:
    await stubs.subscriber(balance=5_000_000)
    await stubs.charging.ChargeSession(session_request("x", INITIAL, 0, [{"rating_group": 10, "requested": {}}]))
    await stubs.charging.ChargeSession(session_request("x", UPDATE, 1, [{"rating_group": 10, "used": {"time_s": 60}}]))
    before = await stubs.balance()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.charging.ChargeSession(
            session_request("x", UPDATE, 1, [{"rating_group": 10, "used": {"time_s": 600}}])
        )
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "request_number" in (err.value.details() or "")
    assert await stubs.balance() == before


async def test_usage_above_the_grant_is_debited_below_zero_with_4012(stubs: Stubs, redis_url: str) -> None:
    await stubs.subscriber(balance=600_000)
    await stubs.charging.ChargeSession(session_request("o", INITIAL, 0, [{"rating_group": 10, "requested": {}}]))
    a = await stubs.charging.ChargeSession(
        session_request("o", UPDATE, 1, [{"rating_group": 10, "requested": {}, "used": {"time_s": 1000}}])
    )
    assert a.result_code == 4012
    assert a.rating_groups[0].result_code == 4012
    assert not a.rating_groups[0].HasField("granted")
    assert a.rating_groups[0].cost_micros == 17 * MINUTE
    b = await stubs.balance()
    assert (b.balance_micros, b.reserved_micros) == (600_000 - 17 * MINUTE, 0)
    ledger_is_consistent(redis_url)


async def test_usage_up_to_the_ceiling_is_exact_and_above_it_is_5004(stubs: Stubs) -> None:
    await stubs.subscriber(balance=0)
    await stubs.charging.ChargeSession(session_request("h", INITIAL, 0, []))
    a = await stubs.charging.ChargeSession(
        session_request("h", UPDATE, 1, [{"rating_group": 30, "used": {"total_octets": 10**12}}])
    )
    assert a.rating_groups[0].cost_micros == 10**12 // 1024 * 10
    assert (await stubs.balance()).balance_micros == -(10**12 // 1024 * 10)
    # Above the 1 TB ceiling of one report, or beyond any range: refused on the rating
    # group, while the session goes on.
    for n, octets in ((2, 10**12 + 1), (3, 2**64 - 1)):
        a = await stubs.charging.ChargeSession(
            session_request("h", UPDATE, n, [{"rating_group": 30, "used": {"total_octets": octets}}])
        )
        assert (a.result_code, a.rating_groups[0].result_code) == (2001, 5004)
        assert a.failed_field == "rating_groups[0].used.total_octets"
    assert (await stubs.balance()).balance_micros == -(10**12 // 1024 * 10)


async def test_partial_grant_carries_final_unit_indication(stubs: Stubs) -> None:
    await stubs.subscriber(balance=250_000)
    a = await stubs.charging.ChargeSession(session_request("p", INITIAL, 0, [{"rating_group": 10, "requested": {}}]))
    g = a.rating_groups[0]
    assert (a.result_code, g.result_code, g.granted.time_s) == (2001, 2001, 120)
    assert g.final_unit.action == common_pb2.FINAL_UNIT_ACTION_TERMINATE
    b = await stubs.charging.ChargeSession(
        session_request("p2", INITIAL, 0, [{"rating_group": 30, "requested": {"total_octets": 100 * 2**20}}])
    )
    g = b.rating_groups[0]
    assert g.granted.total_octets == 5_000 * 1024  # the 50000 micros left buy 5000 KB
    assert g.final_unit.action == common_pb2.FINAL_UNIT_ACTION_REDIRECT
    assert g.final_unit.redirect_address == "http://topup.invalid/"
    c = await stubs.charging.ChargeSession(session_request("p3", INITIAL, 0, [{"rating_group": 10, "requested": {}}]))
    assert (c.result_code, c.rating_groups[0].result_code) == (4012, 4012)
    assert not c.rating_groups[0].HasField("granted")


async def test_rating_groups_are_independent(stubs: Stubs) -> None:
    await stubs.subscriber(balance=5 * MINUTE)
    a = await stubs.charging.ChargeSession(
        session_request(
            "m",
            INITIAL,
            0,
            [
                {"rating_group": 10, "requested": {}},
                {"rating_group": 30, "requested": {}},
                {"rating_group": 40, "requested": {}},
                {"rating_group": 99, "requested": {}},
            ],
        )
    )
    assert a.result_code == 2001
    assert [g.result_code for g in a.rating_groups] == [2001, 4012, 4011, 5031]
    assert a.rating_groups[0].granted.time_s == 300
    assert all(g.validity_time_s > 0 for g in a.rating_groups if g.HasField("granted"))


async def test_unknown_subscriber_and_unknown_session(stubs: Stubs) -> None:
    a = await stubs.charging.ChargeSession(session_request("u", INITIAL, 0, [{"rating_group": 10, "requested": {}}]))
    assert a.result_code == 5030
    await stubs.subscriber()
    a = await stubs.charging.ChargeSession(session_request("nope", UPDATE, 1, [{"rating_group": 10, "requested": {}}]))
    assert a.result_code == 5002
    await stubs.charging.ChargeSession(session_request("t", INITIAL, 0, [{"rating_group": 10, "requested": {}}]))
    await stubs.charging.ChargeSession(session_request("t", TERMINATE, 1, []))
    a = await stubs.charging.ChargeSession(session_request("t", UPDATE, 2, [{"rating_group": 10, "requested": {}}]))
    assert a.result_code == 5002
    a = await stubs.charging.ChargeSession(session_request("t", INITIAL, 3, []))
    assert a.result_code == 2001  # a released session id may start again


async def test_final_reporting_reason_releases_that_rating_group(stubs: Stubs) -> None:
    await stubs.subscriber(balance=5_000_000)
    await stubs.charging.ChargeSession(
        session_request("f", INITIAL, 0, [{"rating_group": 10, "requested": {}}, {"rating_group": 11, "requested": {}}])
    )
    a = await stubs.charging.ChargeSession(
        session_request("f", UPDATE, 1, [{"rating_group": 10, "used": {"time_s": 60}, "final": True}])
    )
    assert a.rating_groups[0].result_code == 2001
    b = await stubs.balance()
    assert b.reserved_micros == 300 * 1700
    assert b.balance_micros == 5_000_000 - MINUTE


async def test_barred_subscriber_is_denied_but_usage_is_charged(stubs: Stubs) -> None:
    from charging.v1 import admin_pb2

    await stubs.subscriber(balance=5_000_000)
    await stubs.charging.ChargeSession(session_request("b", INITIAL, 0, [{"rating_group": 10, "requested": {}}]))
    await stubs.admin.SetSubscriberStatus(
        admin_pb2.SetStatusRequest(
            subscriber=common_pb2.SubscriberId(msisdn="491700000001"), status=admin_pb2.SUBSCRIBER_STATUS_BARRED
        )
    )
    a = await stubs.charging.ChargeSession(
        session_request("b", UPDATE, 1, [{"rating_group": 10, "requested": {}, "used": {"time_s": 60}}])
    )
    assert (a.result_code, a.rating_groups[0].result_code, a.rating_groups[0].cost_micros) == (4010, 4010, MINUTE)
    a = await stubs.charging.ChargeSession(session_request("b2", INITIAL, 0, [{"rating_group": 10, "requested": {}}]))
    assert a.result_code == 4010
    b = await stubs.balance()
    assert (b.balance_micros, b.reserved_micros) == (5_000_000 - MINUTE, 0)


async def test_session_id_in_use_is_5012(stubs: Stubs) -> None:
    await stubs.subscriber(balance=5_000_000)
    await stubs.charging.ChargeSession(session_request("d", INITIAL, 0, [{"rating_group": 10, "requested": {}}]))
    a = await stubs.charging.ChargeSession(session_request("d", INITIAL, 7, [{"rating_group": 10, "requested": {}}]))
    assert a.result_code == 5012
    assert (await stubs.balance()).reserved_micros == 5 * MINUTE


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: setattr(r, "session_id", ""), "session_id"),
        (lambda r: setattr(r, "session_id", "has space"), "session_id"),
        (lambda r: setattr(r, "request_type", 0), "request_type"),
    ],
)
async def test_malformed_calls_are_invalid_argument_naming_the_field(stubs: Stubs, mutate: object, field: str) -> None:
    req = session_request("s", INITIAL, 0, [{"rating_group": 10, "requested": {}}])
    mutate(req)  # type: ignore[operator]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.charging.ChargeSession(req)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (err.value.details() or "")


async def test_bad_values_are_answered_with_5004_or_5005(stubs: Stubs) -> None:
    await stubs.subscriber()
    req = session_request("s", INITIAL, 0, [{"rating_group": 10, "requested": {}}])
    req.ClearField("subscriber")
    a = await stubs.charging.ChargeSession(req)
    assert (a.result_code, a.failed_field) == (5005, "subscriber")
    a = await stubs.charging.ChargeSession(
        session_request("s", INITIAL, 0, [{"rating_group": 10, "requested": {}}], msisdn="+49 170")
    )
    assert (a.result_code, a.failed_field) == (5004, "subscriber.msisdn")
    a = await stubs.charging.ChargeSession(
        session_request("s", INITIAL, 0, [{"rating_group": 10, "requested": {}}, {"rating_group": 10}])
    )
    assert (a.result_code, a.failed_field) == (5004, "rating_groups[1].rating_group")
    assert (await stubs.balance()).reserved_micros == 0


async def test_imsi_identifies_the_subscriber_too(stubs: Stubs) -> None:
    await stubs.subscriber(balance=1_000_000, imsi="262011234567890")
    req = session_request("i", INITIAL, 0, [{"rating_group": 10, "requested": {}}])
    req.subscriber.imsi = "262011234567890"
    a = await stubs.charging.ChargeSession(req)
    assert a.rating_groups[0].granted.time_s == 300


async def test_money_rating_group_grants_money(stubs: Stubs) -> None:
    await stubs.subscriber(balance=1_500_000)
    a = await stubs.charging.ChargeSession(session_request("$", INITIAL, 0, [{"rating_group": 50, "requested": {}}]))
    assert a.rating_groups[0].granted.money_micros == 1_000_000
    a = await stubs.charging.ChargeSession(
        session_request("$", TERMINATE, 1, [{"rating_group": 50, "used": {"money_micros": 333_333}}])
    )
    assert a.rating_groups[0].cost_micros == 333_333
    assert (await stubs.balance()).balance_micros == 1_500_000 - 333_333


async def test_a_number_moved_to_another_account_is_followed(stubs: Stubs, redis_url: str) -> None:
    """The identity cache is only a hint: the script notices the move and the request is re-routed."""
    first = await stubs.subscriber(msisdn="491700000001", balance=1_000_000)
    second = await stubs.subscriber(msisdn="491700000002", balance=3_000_000)
    await stubs.charging.ChargeSession(session_request("a", INITIAL, 0, [{"rating_group": 10, "requested": {}}]))
    r = redis_client(redis_url)
    r.hdel("{a:" + first.account_id + "}", "msisdn")
    r.hset("{a:" + second.account_id + "}", "msisdn", "491700000001")
    r.set("id:msisdn:491700000001", second.account_id)
    r.close()
    a = await stubs.charging.ChargeSession(session_request("b", INITIAL, 0, [{"rating_group": 10, "requested": {}}]))
    assert a.rating_groups[0].granted.time_s == 300
    b = await stubs.balance("491700000001")
    assert (b.account_id, b.reserved_micros) == (second.account_id, 5 * MINUTE)


async def test_a_retransmission_to_a_process_without_the_cached_plan_is_answered_identically(
    stubs: Stubs, app: App
) -> None:
    await stubs.subscriber(balance=250_000)
    req = session_request("cold", INITIAL, 0, [{"rating_group": 10, "requested": {}}])
    first = await stubs.charging.ChargeSession(req)
    assert first.rating_groups[0].granted.time_s == 120
    assert app.sessions is not None
    app.sessions.ctx.directory._plans.clear()  # as in another server process, or after a restart
    again = await stubs.charging.ChargeSession(req)
    assert again.SerializeToString() == first.SerializeToString()
