"""Client mistakes, walked over every RPC of every service: never INTERNAL or UNKNOWN, and
the logs stay bounded.

The methods come from the proto descriptors, so a new RPC is walked without touching this
file. Each method gets an empty request, every enum field set to an unknown number, every
string field 100 KB long, and bodies that do not decode at all. Where a method has a seed
(a request that is valid up to the field being spoiled), the enum and string cases are
applied to the seed too, so they reach past the first check.

Nor can a client flood the logs: library tracebacks become one short line, and repeated
lines of one kind are let through a few per second with a count of those dropped.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import json
import logging
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

import charging.v1
from charging import logs
from charging.logs import RateLimit
from charging.server import App
from charging.v1 import admin_pb2, charging_pb2, common_pb2, crm_pb2, topup_pb2
from tests.conftest import Stubs
from tests.streaming import status_of

MSISDN = "491700000001"
UNKNOWN_ENUM = 999
OVERSIZE = "x" * 100_000
UNDECODABLE = (b"\xff\xff\xff\xff\xff", b"\x0a\x05ab")  # a tag that never ends, a field cut short
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
}
MAX_LOG_LINE = 300
# Ids that make a request new: each case of a seed gets its own, so that it is not taken
# for a retransmission of the previous case.
FRESH_IDS = ("session_id", "event_id", "idempotency_key", "crm_order_id")


def services() -> Iterator[MethodDescriptor]:
    for info in pkgutil.iter_modules(charging.v1.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"charging.v1.{info.name}")
            for service in module.DESCRIPTOR.services_by_name.values():
                yield from service.methods


METHODS = {f"/{m.containing_service.full_name}/{m.name}": m for m in services()}
STREAM = "/charging.v1.Charging/ChargeStream"
BATCHES = "/charging.v1.Charging/ChargeBatches"


def _subscriber() -> common_pb2.SubscriberId:
    return common_pb2.SubscriberId(msisdn=MSISDN)


SEEDS: dict[str, Callable[[], Message]] = {
    "/charging.v1.Charging/ChargeSession": lambda: charging_pb2.SessionRequest(
        session_id="walk",
        request_type=charging_pb2.REQUEST_TYPE_INITIAL,
        subscriber=_subscriber(),
        rating_groups=[charging_pb2.RatingGroupRequest(rating_group=10, requested=common_pb2.ServiceUnits())],
    ),
    "/charging.v1.Charging/ChargeEvent": lambda: charging_pb2.EventRequest(
        event_id="walk",
        action=charging_pb2.REQUESTED_ACTION_DIRECT_DEBITING,
        subscriber=_subscriber(),
        rating_group=20,
        requested=common_pb2.ServiceUnits(service_specific_units=1),
    ),
    "/charging.v1.TopUp/Recharge": lambda: topup_pb2.RechargeRequest(
        subscriber=_subscriber(), amount_micros=1, channel=topup_pb2.CHANNEL_RETAIL, idempotency_key="walk"
    ),
    "/charging.v1.TopUp/GetBalance": lambda: topup_pb2.BalanceRequest(subscriber=_subscriber()),
    "/charging.v1.TopUp/BuyBundle": lambda: topup_pb2.BuyBundleRequest(
        subscriber=_subscriber(), bundle_id="sms-100", channel=topup_pb2.CHANNEL_APP, idempotency_key="walk"
    ),
    "/charging.v1.Admin/CreateSubscriber": lambda: admin_pb2.CreateSubscriberRequest(
        msisdn="491700000002", plan_id="default", initial_balance_micros=1
    ),
    "/charging.v1.Admin/GetSubscriber": _subscriber,
    "/charging.v1.Crm/SubmitApplication": lambda: crm_pb2.Application(
        crm_order_id="walk",
        customer_kind="INDIVIDUAL",
        contract="PREPAID",
        plan_id="mobile-prepaid",
        msisdn="491701234567",
        imsi="262011234567890",
        applicant=crm_pb2.Person(given_name="Anna", family_name="Muster", date_of_birth="1990-05-17"),
        address=crm_pb2.Address(street="Hauptstr. 1", city="Berlin", postal_code="10115", country="DE"),
        contact=crm_pb2.Contact(email="anna@example.org"),
        identity_document=crm_pb2.IdentityDocument(
            type="PASSPORT", number="L898902C36", issuing_country="DE", expiry_date="2030-01-01"
        ),
    ),
    "/charging.v1.Crm/SubmitOrder": lambda: crm_pb2.LineOrder(crm_order_id="walk", msisdn=MSISDN, kind="SUSPEND"),
    "/charging.v1.Crm/GetCustomerBase": lambda: crm_pb2.BaseRequest(first_date="2026-01-01", last_date="2026-01-31"),
    "/charging.v1.Admin/SetSubscriberStatus": lambda: admin_pb2.SetStatusRequest(
        subscriber=_subscriber(), status=admin_pb2.SUBSCRIBER_STATUS_ACTIVE
    ),
}


def _message_fields(d: Descriptor, depth: int = 0) -> Iterator[tuple[tuple[FieldDescriptor, ...], FieldDescriptor]]:
    """Every (path of message fields, leaf field) under d, three levels deep at most."""
    for f in d.fields:
        if f.message_type is not None:
            if depth < 3 and not f.message_type.GetOptions().map_entry:
                for path, leaf in _message_fields(f.message_type, depth + 1):
                    yield (f, *path), leaf
        else:
            yield (), f


def _spoil(base: Message, path: tuple[FieldDescriptor, ...], leaf: FieldDescriptor, value: object) -> Message:
    message = type(base)()
    message.CopyFrom(base)
    target = message
    for f in path:
        target = getattr(target, f.name).add() if f.is_repeated else getattr(target, f.name)
    if leaf.is_repeated:
        getattr(target, leaf.name).append(value)
    else:
        if leaf.containing_oneof is not None:
            target.ClearField(leaf.containing_oneof.name)
        setattr(target, leaf.name, value)
    return message


@dataclass
class Case:
    name: str
    body: bytes
    field: str = ""  # on a seed, the one field at fault: an INVALID_ARGUMENT names it


def cases(path: str) -> Iterator[Case]:
    if path == BATCHES:
        # ChargeStream's cases, each as the one message of a batch (a message that does
        # not decode makes the batch undecodable: answered with one error, id 0).
        for case in cases(STREAM):
            yield Case(case.name, _as_batch(case.body), case.field)
        return
    method = METHODS[path]
    request_class = GetMessageClass(method.input_type)
    bases = [("empty", request_class())]
    if path in SEEDS:
        bases.append(("seed", SEEDS[path]()))
    yield Case("empty", b"")
    for base_name, base in bases:
        for n, (fields, leaf) in enumerate(_message_fields(method.input_type)):
            for name in FRESH_IDS:
                if name in base.DESCRIPTOR.fields_by_name and getattr(base, name):
                    setattr(base, name, f"walk-{n}")
            name = ".".join(f.name for f in (*fields, leaf))
            at_fault = leaf.name if base_name == "seed" else ""
            if leaf.type == FieldDescriptor.TYPE_ENUM:
                body = _spoil(base, fields, leaf, UNKNOWN_ENUM).SerializeToString()
                yield Case(f"{base_name}: {name}={UNKNOWN_ENUM}", body, at_fault)
            elif leaf.type == FieldDescriptor.TYPE_STRING:
                body = _spoil(base, fields, leaf, OVERSIZE).SerializeToString()
                yield Case(f"{base_name}: {name} 100 KB", body, at_fault)
    bodies = list(UNDECODABLE)
    strings = [f for f in method.input_type.fields if f.type == FieldDescriptor.TYPE_STRING]
    if strings:  # a string field that is not UTF-8
        bodies.append(bytes([strings[0].number << 3 | 2, 2, 0xC3, 0x28]))
    for raw in bodies:
        yield Case(f"undecodable {raw!r}", raw)


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """The JSON logs of the process, as the server writes them, into a buffer."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    logs.configure("INFO", stream)
    yield stream
    root.handlers[:], level = saved
    root.setLevel(level)


def _as_batch(message: bytes) -> bytes:
    """A ChargeBatch whose one message is ``message`` (field 1, length-delimited)."""
    size, length = bytearray(), len(message)
    while True:
        size.append(length & 0x7F | (0x80 if length > 0x7F else 0))
        length >>= 7
        if not length:
            return bytes([1 << 3 | 2]) + bytes(size) + message


async def streamed(stubs: Stubs, path: str, body: bytes) -> tuple[grpc.StatusCode, str]:
    """ChargeStream and ChargeBatches: the body as the one message of a stream; a reply
    carrying an error counts as that status (the stream itself must end OK)."""
    call = stubs.channel.stream_stream(path)(iter([body]), timeout=20)
    if path == BATCHES:
        replies = [reply async for raw in call for reply in charging_pb2.ChargeReplies.FromString(raw).replies]
    else:
        replies = [charging_pb2.ChargeReply.FromString(raw) async for raw in call]
    assert len(replies) == 1 and await call.code() == grpc.StatusCode.OK
    if replies[0].WhichOneof("answer") != "error":
        return grpc.StatusCode.OK, ""
    code = next(c for c in grpc.StatusCode if c.value[0] == replies[0].error.code)
    return code, replies[0].error.message


@pytest.mark.parametrize("path", sorted(METHODS))
async def test_client_mistakes_are_never_internal_nor_unknown(
    path: str, app: App, stubs: Stubs, log_lines: io.StringIO
) -> None:
    await stubs.subscriber(MSISDN)
    wrong: list[str] = []
    for case in cases(path):  # identity serializers: raw bytes both ways
        if METHODS[path].client_streaming:
            code, details = await streamed(stubs, path, case.body)
        else:
            code, details = await status_of(stubs.channel, path, case.body, 20)
        if code not in ALLOWED:
            wrong.append(f"{case.name}: {code.name} {details[:120]!r}")
        if code == grpc.StatusCode.INVALID_ARGUMENT and case.field not in details.partition(":")[0]:
            wrong.append(f"{case.name}: {details[:120]!r} does not name {case.field}")
        undecodable = case.name.startswith("undecodable")
        if undecodable and (code != grpc.StatusCode.INVALID_ARGUMENT or not details.startswith("request:")):
            wrong.append(f"{case.name}: {code.name} {details[:120]!r}, expected INVALID_ARGUMENT naming the request")
    assert not wrong, "\n".join(wrong)
    lines = log_lines.getvalue().splitlines()
    long = [line[:200] for line in lines if len(line) >= MAX_LOG_LINE]
    assert not long, long
    assert len(lines) < 20, lines[:20]


BAD_BODY = UNDECODABLE[0]


def record(msg: str, at: float, name: str = "charging.test") -> logging.LogRecord:
    r = logging.LogRecord(name, logging.WARNING, __file__, 1, msg, None, None)
    r.created = at
    return r


def test_rate_limit_lets_a_burst_through_then_counts_the_rest() -> None:
    limit = RateLimit(burst=5, window_s=1.0)
    passed = [limit.filter(record("same", 100 + i / 100)) for i in range(100)]
    assert passed == [True] * 5 + [False] * 95
    assert limit.filter(record("other kind", 100.5))  # kinds are counted apart
    later = record("same", 101.5)
    assert limit.filter(later)
    assert later.suppressed == 95  # type: ignore[attr-defined]
    again = record("same", 101.6)
    assert limit.filter(again)
    assert not hasattr(again, "suppressed")


def test_rate_limit_forgets_old_kinds_but_not_owed_counts() -> None:
    limit = RateLimit(burst=1, window_s=1.0, max_kinds=3)
    assert limit.filter(record("a", 0.0))
    assert not limit.filter(record("a", 0.1))  # one owed for "a"
    for i, kind in enumerate(("b", "c", "d", "e")):
        assert limit.filter(record(kind, 5.0 + i))
    late = record("a", 9.5)
    assert limit.filter(late)
    assert late.suppressed == 1  # type: ignore[attr-defined]


async def test_undecodable_bodies_do_not_flood_the_log(app: App, stubs: Stubs, log_lines: io.StringIO) -> None:
    """500 bad bodies to our TopUp service and 500 to grpc's own health service (which
    logs a traceback each): a few one-line records, and the count of the others."""
    ours = stubs.channel.unary_unary("/charging.v1.TopUp/Recharge")
    health = stubs.channel.unary_unary("/grpc.health.v1.Health/Check")
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(500):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ours(BAD_BODY)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == "request: not a valid charging.v1.RechargeRequest message"
        with pytest.raises(grpc.aio.AioRpcError):
            await health(BAD_BODY)
    elapsed = loop.time() - started
    await asyncio.sleep(1.1)
    with pytest.raises(grpc.aio.AioRpcError):
        await health(BAD_BODY)  # the first of its kind in a new second: it reports the dropped ones

    lines = log_lines.getvalue().splitlines()
    assert all(len(line) < 300 for line in lines), max(lines, key=len)
    grpc_records = [json.loads(line) for line in lines if '"logger": "grpc' in line]
    assert grpc_records, "the grpc library logs a bad body sent to its health service"
    assert len(grpc_records) <= 5 * (int(elapsed) + 2)
    assert sum(1 + r.get("suppressed", 0) for r in grpc_records) == 501
    assert all("\n" not in r["msg"] and "exc" not in r for r in grpc_records)
    assert "DecodeError" in grpc_records[0]["error"]
