"""Lenient decoding of the charging streams' messages, one request at a time.

grpc hands a handler a request only once its deserializer has decoded the whole body. For
ChargeBatches that would make one bad request (a string that is not UTF-8, a field cut
short) cost every request in its batch, answered together with one error and no id. So
ChargeBatches' bodies are read in two steps: first as a list of raw entries (the wire
form of ``repeated ChargeMessage messages = 1`` is that of ``repeated bytes``), then each
entry on its own. A ChargeMessage that does not decode, on either stream, still gets its
error under its own ``correlation_id`` when the id itself can be read (field 1, read by a
view that skips every other field unparsed); only when even that fails is the id 0.

The two views are protobuf messages of a private descriptor pool (``charging.internal``,
never on the wire as such): protobuf does the parsing, as for every other message.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from charging.status import Undecodable
from charging.v1 import charging_pb2

_FIELD = descriptor_pb2.FieldDescriptorProto


def _views() -> tuple[type[Message], type[Message]]:
    """(Entries: ``repeated bytes messages = 1``, Correlation: ``uint64 correlation_id = 1``)."""
    file = descriptor_pb2.FileDescriptorProto(
        name="charging/internal/stream_wire.proto", package="charging.internal", syntax="proto3"
    )
    entries = file.message_type.add(name="Entries")
    entries.field.add(name="messages", number=1, type=_FIELD.TYPE_BYTES, label=_FIELD.LABEL_REPEATED)
    correlation = file.message_type.add(name="Correlation")
    correlation.field.add(name="correlation_id", number=1, type=_FIELD.TYPE_UINT64, label=_FIELD.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("charging.internal.Entries")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("charging.internal.Correlation")),
    )


_Entries, _Correlation = _views()
_MESSAGE = charging_pb2.ChargeMessage.DESCRIPTOR.full_name
_BATCH = charging_pb2.ChargeBatch.DESCRIPTOR.full_name

Request = charging_pb2.ChargeMessage | Undecodable


def charge_message(body: bytes) -> Request:
    """One ChargeMessage; one that does not decode is ``Undecodable`` with its
    correlation id when that can be read (else 0)."""
    try:
        return charging_pb2.ChargeMessage.FromString(body)
    except DecodeError:
        pass
    try:
        correlation_id = int(_Correlation.FromString(body).correlation_id)  # type: ignore[attr-defined]
    except DecodeError:
        correlation_id = 0
    return Undecodable(_MESSAGE, correlation_id)


def charge_batch(body: bytes) -> list[Request] | Undecodable:
    """The requests of one ChargeBatch, each decoded on its own (``charge_message``);
    ``Undecodable`` (id 0) only when the batch's own framing is broken."""
    try:
        entries = _Entries.FromString(body).messages  # type: ignore[attr-defined]
    except DecodeError:
        return Undecodable(_BATCH)
    return [charge_message(entry) for entry in entries]
