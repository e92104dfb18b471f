"""Admission control: how much work one server process takes on, and whether a call can
still be answered in time.

Every unary method of our services goes through ``Admission.guard`` (``status.add_servicer``
wires it), every Nchf request through ``enter``/``leave`` with the same slots (answered
503 NF_CONGESTION with Retry-After beyond them); health checking and reflection are
registered apart and are never refused, so a load balancer keeps seeing an overloaded
process as alive. (The Diameter door keeps its own count against the same limit and
answers 3004 DIAMETER_TOO_BUSY.)

* **In flight.** At most ``limit`` calls are being worked on at once in this process.
  One more is answered RESOURCE_EXHAUSTED at once, having changed nothing. Without a
  bound, calls from many connections pile up behind a slow Redis or a busy event loop,
  every one of them late, until their callers have given up on all of them.
* **Deadlines.** A call whose deadline has passed, or is closer than ``MIN_BUDGET_S``, is
  answered DEADLINE_EXCEEDED at admission. The hot path asks again just before its one
  Redis call (``check_deadline``): time spent waiting for the event loop, the subscriber
  lookup or rating can use up the rest. A charging request refused there was never sent,
  so it changed nothing, and the caller's retransmission is charged once. A request
  already sent is left to complete: Redis runs it whatever the caller does, and its
  answer is stored for the retransmission.

grpc also cancels a handler when its deadline passes, but only at the handler's next
``await`` and only once the event loop gets to the cancellation; on a busy loop that is
after the script has been sent. Hence the explicit checks.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from charging import metrics
from charging.errors import DeadlineExpired
from charging.settings import Settings

# A call with less time than this left is not started: one Redis round trip and the
# answer do not fit (about 0.5 ms on an idle server, 15 ms at 70% of capacity).
MIN_BUDGET_S = 0.001

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Behaviour = Callable[[Req, grpc.aio.ServicerContext], Awaitable[Resp]]

# The gRPC context of the call this task serves, for ``check_deadline``. grpc.aio runs
# each call in its own task, so the value never leaks from one call to another.
_CALL: contextvars.ContextVar[tuple[str, grpc.aio.ServicerContext] | None] = contextvars.ContextVar(
    "admission_call", default=None
)


class Admission:
    """The in-flight bound of one server process."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the in-flight limit must be at least 1")
        self.limit = limit
        self.in_flight = 0

    def guard(self, method: str, behaviour: Behaviour[Req, Resp]) -> Behaviour[Req, Resp]:
        """``behaviour`` (a unary handler) behind the in-flight bound and the deadline check."""
        rejected_limit = metrics.ADMISSION_REJECTIONS.labels(method, "in_flight")
        rejected_deadline = metrics.ADMISSION_REJECTIONS.labels(method, "deadline")

        async def guarded(request: Req, context: grpc.aio.ServicerContext) -> Resp:
            if not self.enter():
                rejected_limit.inc()
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "server overloaded: retry later")
            try:
                remaining = context.time_remaining()
                if remaining is not None and remaining < MIN_BUDGET_S:
                    rejected_deadline.inc()
                    await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the call started")
                token = _CALL.set((method, context))
                try:
                    return await behaviour(request, context)
                finally:
                    _CALL.reset(token)
            finally:
                self.leave()

        return guarded

    def enter(self) -> bool:
        """Take an in-flight slot; False when every slot is taken (refuse the request at
        once, having changed nothing). Every door of the process draws on the same slots:
        the gRPC methods here, the Nchf door (``nchf/app.py``)."""
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1


def check_deadline() -> None:
    """Raise ``DeadlineExpired`` when the caller of the call being served has given up.

    Called just before a charging request is sent to Redis; outside a gRPC call (the
    sweeper, the renewer) it does nothing."""
    call = _CALL.get()
    if call is None:
        return
    remaining = call[1].time_remaining()
    if remaining is not None and remaining <= 0:
        metrics.ADMISSION_REJECTIONS.labels(call[0], "deadline").inc()
        raise DeadlineExpired("deadline exceeded before the request was sent: nothing changed")


def server_options(s: Settings) -> list[tuple[str, int]]:
    """gRPC server options bounding connections: idle ones are closed, dead (half-open)
    ones found by keepalive pings, long-lived ones recycled so that a new server gets its
    share, and client keepalives as frequent as network elements send them are allowed."""

    def ms(seconds: float) -> int:
        return max(1, round(seconds * 1000))

    return [
        # Ping a connection after this long without any frame; close it when the ping is
        # not answered within the timeout: a peer that vanished without a FIN or RST.
        ("grpc.keepalive_time_ms", ms(s.grpc_keepalive_s)),
        ("grpc.keepalive_timeout_ms", ms(s.grpc_keepalive_timeout_s)),
        # Keep pinging an idle connection (grpc's default stops after 2 pings without data).
        ("grpc.http2.max_pings_without_data", 0),
        # GOAWAY to a connection without calls for this long; the client reconnects on
        # its next call.
        ("grpc.max_connection_idle_ms", ms(s.grpc_max_idle_s)),
        # GOAWAY after this age (grpc adds +-10% jitter); calls in flight get the grace.
        ("grpc.max_connection_age_ms", ms(s.grpc_max_age_s)),
        ("grpc.max_connection_age_grace_ms", ms(s.grpc_max_age_grace_s)),
        # Client pings: allowed without calls, down to this interval (grpc's default, 5
        # minutes, answers a network element pinging every 30 s with GOAWAY too_many_pings).
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", ms(s.grpc_min_ping_interval_s)),
        ("grpc.max_concurrent_streams", 1000),
        # Calls that arrived but that the event loop has not taken up yet wait in grpc's
        # own queue, before any Python code sees them; beyond this many, grpc resets the
        # call itself (the client sees CANCELLED), at little cost. Left at grpc's default
        # (1,000 to 3,000), this queue is where an overloaded server keeps its backlog:
        # every call then waits through all of it (README "Admission").
        ("grpc.server.max_pending_requests", s.max_in_flight),
        ("grpc.server.max_pending_requests_hard_limit", s.max_in_flight),
        # gRPC sets SO_REUSEPORT unless told not to: a second server then binds a port in
        # use beside the first and clients alternate between two databases. The workers
        # of one supervisor share their port on purpose, under its address lock
        # (supervisor.py).
        ("grpc.so_reuseport", 1 if s.worker_of else 0),
    ]
