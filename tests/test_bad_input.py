"""Client mistakes, walked over every RPC of every service: never INTERNAL or UNKNOWN, and
the logs stay bounded.

The methods come from the proto descriptors, so a new RPC is walked without touching this
file. Each method gets an empty request, every enum field set to an unknown number, every
string field 100 KB long, and bodies that do not decode at all. Where a method has a seed
(a request that is valid up to the field being spoiled), the enum and string cases are
applied to the seed too, so they reach past the first check.
"""

from __future__ import annotations

import importlib
import io
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
from charging.server import App
from charging.v1 import admin_pb2, charging_pb2, common_pb2, topup_pb2
from tests.conftest import Stubs

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


def services() -> Iterator[MethodDescriptor]:
    for info in pkgutil.iter_modules(charging.v1.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"charging.v1.{info.name}")
            for service in module.DESCRIPTOR.services_by_name.values():
                yield from service.methods


METHODS = {f"/{m.containing_service.full_name}/{m.name}": m for m in services()}


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


def cases(path: str) -> Iterator[Case]:
    method = METHODS[path]
    request_class = GetMessageClass(method.input_type)
    bases = [("empty", request_class())]
    if path in SEEDS:
        bases.append(("seed", SEEDS[path]()))
    yield Case("empty", b"")
    for base_name, base in bases:
        for fields, leaf in _message_fields(method.input_type):
            name = ".".join(f.name for f in (*fields, leaf))
            if leaf.type == FieldDescriptor.TYPE_ENUM:
                body = _spoil(base, fields, leaf, UNKNOWN_ENUM).SerializeToString()
                yield Case(f"{base_name}: {name}={UNKNOWN_ENUM}", body)
            elif leaf.type == FieldDescriptor.TYPE_STRING:
                yield Case(f"{base_name}: {name} 100 KB", _spoil(base, fields, leaf, OVERSIZE).SerializeToString())
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


@pytest.mark.parametrize("path", sorted(METHODS))
async def test_client_mistakes_are_never_internal_nor_unknown(
    path: str, app: App, stubs: Stubs, log_lines: io.StringIO
) -> None:
    await stubs.subscriber(MSISDN)
    call = stubs.channel.unary_unary(path)  # identity serializers: raw bytes both ways
    wrong: list[str] = []
    for case in cases(path):
        try:
            await call(case.body, timeout=20)
            code, details = grpc.StatusCode.OK, ""
        except grpc.aio.AioRpcError as err:
            code, details = err.code(), err.details() or ""
        if code not in ALLOWED:
            wrong.append(f"{case.name}: {code.name} {details[:120]!r}")
        undecodable = case.name.startswith("undecodable")
        if undecodable and (code != grpc.StatusCode.INVALID_ARGUMENT or not details.startswith("request:")):
            wrong.append(f"{case.name}: {code.name} {details[:120]!r}, expected INVALID_ARGUMENT naming the request")
    assert not wrong, "\n".join(wrong)
    lines = log_lines.getvalue().splitlines()
    long = [line[:200] for line in lines if len(line) >= MAX_LOG_LINE]
    assert not long, long
    assert len(lines) < 20, lines[:20]
