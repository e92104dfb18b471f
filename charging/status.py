"""The one place where domain errors become gRPC status codes, and where every gRPC
method is timed and counted.

Client mistakes never reach INTERNAL or UNKNOWN: a request body that does not decode is
handed to the servicer as ``Undecodable`` (grpc would otherwise answer UNKNOWN and log a
traceback per call) and answered INVALID_ARGUMENT, like every ``InvalidRequest``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from charging import metrics
from charging.admission import Admission
from charging.errors import (
    ChargingError,
    Conflict,
    DeadlineExpired,
    InUse,
    InvalidRequest,
    LimitExceeded,
    NotFound,
    StorageUnavailable,
)
from charging.store import storage_errors

log = logging.getLogger("charging.api")

# Details travel in a trailer; grpc refuses trailers over 16 KB (the client then sees
# RESOURCE_EXHAUSTED or worse), and an echoed 100 KB field would get there.
MAX_DETAILS_BYTES = 1000

STATUS: dict[type[ChargingError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Conflict: grpc.StatusCode.ALREADY_EXISTS,
    LimitExceeded: grpc.StatusCode.FAILED_PRECONDITION,
    InUse: grpc.StatusCode.FAILED_PRECONDITION,
    StorageUnavailable: grpc.StatusCode.UNAVAILABLE,
    DeadlineExpired: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_of(exc: ChargingError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return grpc.StatusCode.INTERNAL


def details_of(exc: Exception) -> str:
    """The status details: the error's text, cut to MAX_DETAILS_BYTES of UTF-8."""
    text = str(exc)
    raw = text.encode()
    if len(raw) <= MAX_DETAILS_BYTES:
        return text
    return raw[:MAX_DETAILS_BYTES].decode(errors="ignore") + f"... ({len(raw) - MAX_DETAILS_BYTES} bytes more)"


class Undecodable:
    """A request body that is not a valid message of the method's request type (with the
    correlation id it carried, on the charging streams, when that could still be read)."""

    __slots__ = ("correlation_id", "type_name")

    def __init__(self, type_name: str, correlation_id: int = 0) -> None:
        self.type_name = type_name
        self.correlation_id = correlation_id


def lenient(message: type[Message]) -> Callable[[bytes], Message | Undecodable]:
    """A request deserializer that never raises."""
    type_name = message.DESCRIPTOR.full_name

    def deserialize(body: bytes) -> Message | Undecodable:
        try:
            return message.FromString(body)
        except DecodeError:
            return Undecodable(type_name)

    return deserialize


# Services whose methods grpc matches in its core ("registered" methods) rather than
# through the generic handlers' lookup in Python. grpc.aio waits for the next call of every
# registered method at once, with ``asyncio.wait`` over one task per method on each call
# (O(methods) per call: 58 methods made it about 6% of the event loop's time under load),
# so of our services only the charging service, the hot path, is registered; the others
# are found by the generic lookup, a dictionary per service. (Health and reflection
# register their own few methods: about ten tasks in all.)
REGISTERED_SERVICES = frozenset({"charging.v1.Charging"})


def add_servicer(
    server: grpc.aio.Server, servicer: object, service: ServiceDescriptor, admission: Admission | None = None
) -> None:
    """Register a servicer as the generated ``add_*Servicer_to_server`` does, but with
    lenient request deserializers: each method, wrapped by ``rpc``, answers an undecodable
    body INVALID_ARGUMENT. With ``admission``, every unary method is behind its in-flight
    bound and deadline check."""
    handlers = {}
    # A servicer may decode some methods' requests itself (never raising either).
    decoders: dict[str, Callable[[bytes], object]] = getattr(servicer, "request_decoders", {})
    for method in service.methods:
        if method.client_streaming and method.server_streaming:
            # Bidirectional (ChargeStream, ChargeBatches): the servicer answers each
            # request itself, errors included, through ``Admission.grouped``.
            stream_behaviour = getattr(servicer, method.name)
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                stream_behaviour if admission is None else admission.guard_stream(method.name, stream_behaviour),
                request_deserializer=decoders.get(method.name) or lenient(GetMessageClass(method.input_type)),
                response_serializer=GetMessageClass(method.output_type).SerializeToString,
            )
            continue
        if method.client_streaming:
            raise TypeError(f"{service.full_name}/{method.name}: client streaming alone is not supported")
        behaviour = getattr(servicer, method.name)
        if method.server_streaming:
            # A stream lives as long as its client watches: it holds no in-flight slot
            # (its servicer bounds the number of streams itself).
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                behaviour,
                request_deserializer=lenient(GetMessageClass(method.input_type)),
                response_serializer=GetMessageClass(method.output_type).SerializeToString,
            )
            continue
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            behaviour if admission is None else admission.guard(method.name, behaviour),
            request_deserializer=lenient(GetMessageClass(method.input_type)),
            response_serializer=GetMessageClass(method.output_type).SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    if service.full_name in REGISTERED_SERVICES:
        server.add_registered_method_handlers(service.full_name, handlers)


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]


def rpc(method: str) -> Callable[[Handler[Req, Resp]], Handler[Req, Resp]]:
    """Wrap a servicer method: map errors to a status, count by outcome, time it."""

    def wrap(fn: Handler[Req, Resp]) -> Handler[Req, Resp]:
        latency = metrics.LATENCY.labels(method)
        counters: dict[str, Any] = {}

        def count(outcome: str) -> None:
            counter = counters.get(outcome)
            if counter is None:
                counter = counters[outcome] = metrics.REQUESTS.labels(method, outcome)
            counter.inc()

        @functools.wraps(fn)
        async def handler(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
            started = time.perf_counter()
            outcome = "CANCELLED"
            try:
                if isinstance(request, Undecodable):
                    raise InvalidRequest("request", f"not a valid {request.type_name} message")
                with storage_errors():  # also where a Redis call was not wrapped
                    answer = await fn(self, request, context)
                code = getattr(answer, "result_code", 0)
                outcome = str(code) if code else "OK"
                return answer
            except ChargingError as exc:
                status = status_of(exc)
                outcome = status.name
                if isinstance(exc, StorageUnavailable):
                    metrics.REDIS_ERRORS.labels("api").inc()
                    log.warning("storage unavailable", extra={"method": method, "error": str(exc)})
                await context.abort(status, details_of(exc))
                raise  # abort raises; this line is for type checkers
            except grpc.aio.AbortError:
                outcome = "ABORTED"
                raise
            except Exception:
                outcome = "INTERNAL"
                log.exception("unexpected error", extra={"method": method})
                await context.abort(grpc.StatusCode.INTERNAL, "internal error")
                raise
            finally:
                count(outcome)
                latency.observe(time.perf_counter() - started)

        return handler

    return wrap
