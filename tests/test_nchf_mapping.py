"""The Nchf mapping's pure rules, table by table (no server)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from charging.codes import ResultCode
from charging.nchf.mapping import (
    INT32_MAX,
    Operation,
    core_field,
    granted_unit,
    new_ref,
    reply,
    request_number,
    session_request,
)
from charging.nchf.requests import Amounts, ChargingData, Container, UnitUsage, microseconds
from charging.rating import Units
from charging.sessions import DEFAULT_CEILINGS, RatingGroupAnswer, SessionAnswer
from charging.subscribers import Identity

AT = microseconds("2026-11-30T12:00:00.000001Z")


def data(seq: int = 0, units: tuple[UnitUsage, ...] = (), fingerprint: str = "f") -> ChargingData:
    return ChargingData(Identity("imsi", "262011234567890"), seq, AT, units, fingerprint=fingerprint)


def test_timestamps_to_microseconds() -> None:
    expected = int(datetime(2026, 11, 30, 12, 0, tzinfo=UTC).timestamp()) * 1_000_000
    assert microseconds("2026-11-30T12:00:00Z") == expected
    assert microseconds("2026-11-30T20:00:00.123456789+08:00") == expected + 123_456
    with pytest.raises(ValueError):
        microseconds("2026-02-30T12:00:00Z")


@pytest.mark.parametrize(
    ("op", "seq", "number"),
    [
        ("create", 0, 0),
        ("create", 7, 7),
        ("update", 3, 3),
        ("release", 4, 4),
        # free5GC numbers every request 0: later requests by their invocationTimeStamp.
        ("update", 0, AT),
        ("release", 0, AT),
    ],
)
def test_request_numbers(op: Operation, seq: int, number: int) -> None:
    assert request_number(op, data(seq)) == number


def test_refs_are_stable_per_caller_and_body() -> None:
    assert new_ref("smf-1", data(fingerprint="a")) == new_ref("smf-1", data(fingerprint="a"))
    assert new_ref("smf-1", data(fingerprint="a")) != new_ref("smf-1", data(fingerprint="b"))
    assert new_ref("smf-1", data(fingerprint="a")) != new_ref("smf-2", data(fingerprint="a"))


def test_offline_usage_asks_for_no_quota_and_usage_adds_up() -> None:
    offline = Container(Amounts(total_volume=100), offline=True)
    online = Container(Amounts(uplink_volume=50, downlink_volume=25), final=True)
    req = session_request(
        "update",
        "0" * 32,
        data(2, (UnitUsage(30, Amounts(), (offline,)), UnitUsage(31, Amounts(total_volume=2**40), (offline, online)))),
        DEFAULT_CEILINGS,
    )
    first, second = req.rating_groups
    assert first.requested is None and first.used == Units(total_octets=100)
    assert not first.final
    assert second.requested == Units(total_octets=INT32_MAX)  # within free5GC's int32
    assert second.used == Units(total_octets=175, input_octets=50, output_octets=25)
    assert second.final
    assert req.session_id == "nchf:" + "0" * 32 and req.kind == "U"


def test_grants_are_clamped_to_int32() -> None:
    assert granted_unit(Units(total_octets=2**33), 0) == {"totalVolume": INT32_MAX}
    assert granted_unit(Units(time_s=60), 1_795_000_000) == {"time": 60, "tariffTimeChange": "2026-11-18T11:06:40.000Z"}


@pytest.mark.parametrize(
    ("op", "code", "status", "result"),
    [
        ("create", ResultCode.SUCCESS, 201, "SUCCESS"),
        ("update", ResultCode.SUCCESS, 200, "SUCCESS"),
        ("release", ResultCode.SUCCESS, 204, "SUCCESS"),
        ("release", ResultCode.CREDIT_LIMIT_REACHED, 204, "QUOTA_LIMIT_REACHED"),
        ("create", ResultCode.CREDIT_LIMIT_REACHED, 403, "QUOTA_LIMIT_REACHED"),
        ("update", ResultCode.CREDIT_LIMIT_REACHED, 403, "QUOTA_LIMIT_REACHED"),
        ("update", ResultCode.END_USER_SERVICE_DENIED, 403, "END_USER_REQUEST_DENIED"),
        ("create", ResultCode.CREDIT_CONTROL_NOT_APPLICABLE, 403, "CHARGING_NOT_APPLICABLE"),
        ("create", ResultCode.USER_UNKNOWN, 404, "USER_UNKNOWN"),
        ("release", ResultCode.USER_UNKNOWN, 404, "USER_UNKNOWN"),
        ("update", ResultCode.UNKNOWN_SESSION_ID, 404, "CONTEXT_NOT_FOUND"),
        ("create", ResultCode.RATING_FAILED, 400, "CHARGING_FAILED"),
    ],
)
def test_result_mapping(op: Operation, code: int, status: int, result: str) -> None:
    units = (UnitUsage(30, None, (), upf_id="upf-9"),)
    answer = SessionAnswer(code, (RatingGroupAnswer(30, 0, code),) if code != ResultCode.USER_UNKNOWN else ())
    out = reply(op, data(1, units), answer, 0.0, "http://chf/x")
    assert (out.status, out.result) == (status, result)
    assert out.problem == (status >= 400)
    if out.body is not None and "multipleUnitInformation" in out.body:
        assert out.body["multipleUnitInformation"][0]["uPFID"] == "upf-9"
    assert (("location", "http://chf/x") in out.headers) == (status == 201)


def test_core_fields_name_the_request_parameters() -> None:
    assert core_field("rating_groups[1].used.total_octets") == "/multipleUnitUsage/1/usedUnitContainer"
    assert core_field("rating_groups[0].requested.time_s") == "/multipleUnitUsage/0/requestedUnit/time"
    assert core_field("subscriber.imsi") == "/subscriberIdentifier"
