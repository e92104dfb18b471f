"""The command-level result of a session request with several rating groups (RFC 8506
section 7: a client ends the whole session on a command-level failure)."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from charging.codes import ResultCode
from charging.sessions import Outcome, RequestKind, command_result
from charging.v1 import admin_pb2, common_pb2
from tests.conftest import INITIAL, TERMINATE, UPDATE, Stubs, session_request
from tests.test_sessions import MINUTE, ledger_is_consistent

OK, DENIED, FREE, LIMIT = 2001, 4010, 4011, 4012
INVALID, RATING = 5004, 5031

# kind, rating group codes, a reservation held after the request, the overrun floor
# reached -> command-level code, the session ends
TABLE: list[tuple[RequestKind, tuple[int, ...], bool, bool, int, bool]] = [
    # UPDATE: the session goes on unless it cannot
    ("U", (LIMIT,), True, False, OK, False),  # VOICE still holds its grant, DATA refused
    ("U", (OK, LIMIT), True, False, OK, False),
    ("U", (LIMIT,), False, False, LIMIT, True),  # nothing is held any more
    ("U", (LIMIT, LIMIT), False, False, LIMIT, True),
    ("U", (OK,), False, False, OK, False),  # usage reported, nothing asked for
    ("U", (), False, False, OK, False),
    ("U", (DENIED,), True, False, DENIED, True),  # barred: nothing may go on
    ("U", (OK, DENIED), True, False, DENIED, True),
    ("U", (INVALID,), True, False, OK, False),
    ("U", (RATING,), False, False, OK, False),
    ("U", (FREE,), False, False, OK, False),
    ("U", (OK,), True, True, LIMIT, True),  # past the overrun floor
    ("U", (OK, LIMIT), True, True, LIMIT, True),
    # INITIAL: opens the session only with 2001
    ("I", (OK, LIMIT, FREE, RATING), True, False, OK, False),
    ("I", (LIMIT,), False, False, LIMIT, True),
    ("I", (RATING, LIMIT), False, False, RATING, True),
    ("I", (FREE, FREE), False, False, FREE, True),
    ("I", (FREE, LIMIT), False, False, OK, False),
    ("I", (), False, False, OK, False),
    ("I", (OK,), True, True, LIMIT, True),
    # TERMINATE: always ends
    ("T", (OK,), False, False, OK, True),
    ("T", (LIMIT,), False, False, LIMIT, True),
    ("T", (OK, LIMIT), False, False, OK, True),
    ("T", (FREE,), False, False, FREE, True),
    ("T", (), False, False, OK, True),
    ("T", (OK,), False, True, LIMIT, True),
]


@pytest.mark.parametrize(("kind", "codes", "held", "limit", "code", "ends"), TABLE)
def test_command_result(
    kind: RequestKind, codes: tuple[int, ...], held: bool, limit: bool, code: int, ends: bool
) -> None:
    assert command_result(kind, codes, held_after=held, limit_reached=limit) == Outcome(code, ends)


VOICE = {"rating_group": 10, "requested": {}}
DATA = {"rating_group": 30, "requested": {}}


async def test_a_refused_rating_group_leaves_the_session_and_other_groups_going(stubs: Stubs, redis_url: str) -> None:
    # 0.50 EUR: a VOICE grant of 300 s holds all of it
    await stubs.subscriber(balance=5 * MINUTE)
    a = await stubs.charging.ChargeSession(session_request("m", INITIAL, 0, [VOICE]))
    assert (a.result_code, a.rating_groups[0].granted.time_s) == (2001, 300)
    a = await stubs.charging.ChargeSession(session_request("m", UPDATE, 1, [DATA]))
    assert a.result_code == ResultCode.SUCCESS
    assert a.rating_groups[0].result_code == ResultCode.CREDIT_LIMIT_REACHED
    assert not a.rating_groups[0].HasField("granted")
    # VOICE goes on being charged in the same session
    a = await stubs.charging.ChargeSession(
        session_request("m", UPDATE, 2, [{"rating_group": 10, "requested": {}, "used": {"time_s": 60}}])
    )
    assert (a.result_code, a.rating_groups[0].result_code) == (2001, 2001)
    assert a.rating_groups[0].cost_micros == MINUTE
    assert a.rating_groups[0].granted.time_s == 240
    a = await stubs.charging.ChargeSession(
        session_request("m", TERMINATE, 3, [{"rating_group": 10, "used": {"time_s": 240}}])
    )
    assert a.result_code == 2001
    b = await stubs.balance()
    assert (b.balance_micros, b.reserved_micros) == (0, 0)
    ledger_is_consistent(redis_url)


async def test_a_refusal_that_leaves_nothing_held_ends_the_session(stubs: Stubs, redis_url: str) -> None:
    await stubs.subscriber(balance=5 * MINUTE)
    refused = REGISTRY.get_sample_value("charging_sessions_closed_total", {"reason": "refused"}) or 0.0
    await stubs.charging.ChargeSession(session_request("v", INITIAL, 0, [VOICE]))
    # all 300 s used, more wanted, nothing left: 4012 at command level, and the server
    # has ended the session
    a = await stubs.charging.ChargeSession(
        session_request("v", UPDATE, 1, [{"rating_group": 10, "requested": {}, "used": {"time_s": 300}}])
    )
    assert (a.result_code, a.rating_groups[0].result_code) == (4012, 4012)
    b = await stubs.balance()
    assert (b.balance_micros, b.reserved_micros) == (0, 0)
    late = await stubs.charging.ChargeSession(session_request("v", UPDATE, 2, [VOICE]))
    assert late.result_code == ResultCode.UNKNOWN_SESSION_ID
    assert REGISTRY.get_sample_value("charging_sessions_closed_total", {"reason": "refused"}) == refused + 1
    ledger_is_consistent(redis_url)


async def test_a_barred_line_ends_the_session_and_releases_every_reservation(stubs: Stubs, redis_url: str) -> None:
    await stubs.subscriber(balance=10_000_000)
    a = await stubs.charging.ChargeSession(session_request("b", INITIAL, 0, [VOICE, DATA]))
    assert [g.result_code for g in a.rating_groups] == [2001, 2001]
    await stubs.admin.SetSubscriberStatus(
        admin_pb2.SetStatusRequest(
            subscriber=common_pb2.SubscriberId(msisdn="491700000001"), status=admin_pb2.SUBSCRIBER_STATUS_BARRED
        )
    )
    a = await stubs.charging.ChargeSession(session_request("b", UPDATE, 1, [DATA]))
    assert (a.result_code, a.rating_groups[0].result_code) == (4010, 4010)
    b = await stubs.balance()
    assert (b.balance_micros, b.reserved_micros) == (10_000_000, 0)
    late = await stubs.charging.ChargeSession(session_request("b", UPDATE, 2, [VOICE]))
    assert late.result_code == ResultCode.UNKNOWN_SESSION_ID
    ledger_is_consistent(redis_url)
