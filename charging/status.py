"""The one place where domain errors become gRPC status codes, and where every gRPC
method is timed and counted."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from charging import metrics
from charging.errors import (
    ChargingError,
    Conflict,
    InUse,
    InvalidRequest,
    LimitExceeded,
    NotFound,
    StorageUnavailable,
)

log = logging.getLogger("charging.api")

STATUS: dict[type[ChargingError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Conflict: grpc.StatusCode.ALREADY_EXISTS,
    LimitExceeded: grpc.StatusCode.FAILED_PRECONDITION,
    InUse: grpc.StatusCode.FAILED_PRECONDITION,
    StorageUnavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_of(exc: ChargingError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return grpc.StatusCode.INTERNAL


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
                await context.abort(status, str(exc))
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
