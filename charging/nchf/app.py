"""The Nchf_ConvergedCharging ASGI application: HTTP in, the charging core in process,
HTTP out. Nothing else: the shapes are ``requests.py`` and ``mapping.py``.

Paths (any apiRoot prefix, so an NF profile's ``apiPrefix`` works):

    POST {apiRoot}/nchf-convergedcharging/v3/chargingdata                  create  201
    POST {apiRoot}/nchf-convergedcharging/v3/chargingdata/{ref}/update     update  200
    POST {apiRoot}/nchf-convergedcharging/v3/chargingdata/{ref}/release    release 204

Every error is application/problem+json: 400 with invalidParams naming each invalid
field (nothing charged), 401 without an identity, 403 without the network role, 404 for
an unknown ChargingDataRef, 413 for a body over 64 KiB, 503 NF_CONGESTION when Redis
cannot answer or when the process already works on ``CHARGING_MAX_IN_FLIGHT`` requests
(the gRPC API's admission slots, ``charging/admission.py``, taken once the body is read;
with ``Retry-After``, TS 29.500 5.2.7.2), having changed nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from charging import metrics as core_metrics
from charging.admission import Admission
from charging.clock import Clock
from charging.codes import ResultCode
from charging.errors import Conflict, StorageUnavailable
from charging.nchf import metrics
from charging.nchf.mapping import REF, Operation, Reply, invalid, new_ref, problem, reply, session_request
from charging.nchf.notify import ChargingNotifier
from charging.nchf.requests import MAX_BODY_BYTES, ChargingData, RequestInvalid, parse, pointer
from charging.rating import UnitKind
from charging.security.identity import Identity, set_caller
from charging.security.roles import NETWORK
from charging.sessions import SessionAnswer, SessionCharging

log = logging.getLogger("charging.nchf")

PATH = re.compile(r"^(?P<root>.*)/nchf-convergedcharging/v3/chargingdata(?:/(?P<ref>[^/]+)/(?P<op>update|release))?$")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
# Who is calling on this connection: an identity, or None (refused as unauthenticated).
Identify = Callable[[Scope], Awaitable[Identity | None]]
# Seconds an SMF refused for overload waits before trying again (Retry-After).
RETRY_AFTER_S = 1


class TooLarge(Exception):
    pass


class NchfApp:
    def __init__(
        self,
        sessions: SessionCharging,
        clock: Clock,
        identify: Identify,
        ceilings: Mapping[UnitKind, int],
        admission: Admission | None = None,
        notifier: ChargingNotifier | None = None,
    ) -> None:
        self.sessions = sessions
        self.clock = clock
        self.identify = identify
        self.ceilings = ceilings
        self.admission = admission
        self.notifier = notifier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        metrics.IN_FLIGHT.inc()
        try:
            await self._answer(scope, receive, send)
        finally:
            metrics.IN_FLIGHT.dec()

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        op = "unknown"
        try:
            body: bytes | None = await _body(receive)
        except TooLarge:
            body = None
        admitted = self.admission is None or self.admission.enter()
        try:
            if admitted:
                op, answer = await self._handle(scope, body)
            else:
                op = _operation(scope["path"])
                core_metrics.ADMISSION_REJECTIONS.labels(f"Nchf.{op}", "in_flight").inc()
                busy = problem(503, "NF_CONGESTION", "server overloaded: retry later")
                answer = dataclasses.replace(busy, headers=(("retry-after", str(RETRY_AFTER_S)),))
        except StorageUnavailable:
            core_metrics.REDIS_ERRORS.labels("nchf").inc()
            answer = problem(503, "NF_CONGESTION", "charging storage unavailable, retry")
        except Exception:
            log.exception("Nchf request failed", extra={"operation": op})
            answer = problem(500, "SYSTEM_FAILURE", "internal error")
        finally:
            if admitted and self.admission is not None:
                self.admission.leave()
        metrics.REQUESTS.labels(op, answer.result).inc()
        metrics.LATENCY.labels(op).observe(time.perf_counter() - started)
        await _send(send, answer)

    async def _handle(self, scope: Scope, body: bytes | None) -> tuple[str, Reply]:
        found = PATH.match(scope["path"])
        if found is None:
            return "unknown", problem(404, "RESOURCE_URI_STRUCTURE_NOT_FOUND", "no such resource")
        op: Operation = "create" if found["op"] is None else found["op"]  # type: ignore[assignment]
        if scope["method"] != "POST":
            return op, Reply(405, None, "METHOD_NOT_ALLOWED", headers=(("allow", "POST"),))
        identity = await self.identify(scope)
        if identity is None:
            metrics.REFUSALS.labels("unauthenticated").inc()
            return op, problem(401, "UNAUTHENTICATED", "present a client certificate or a bearer token")
        if NETWORK not in identity.roles:
            metrics.REFUSALS.labels("role").inc()
            log.warning("Nchf request refused", extra={"reason": "role", "caller": identity.name})
            return op, problem(403, "UNAUTHORIZED", f"{identity.name} does not have the network role")
        set_caller(identity)
        if body is None:
            return op, problem(413, "PAYLOAD_TOO_LARGE", f"the body is larger than {MAX_BODY_BYTES} bytes")
        try:
            data = parse(body)
        except RequestInvalid as exc:
            return op, invalid([(pointer(f), m) for f, m in exc.problems])
        ref = new_ref(identity.name, data) if op == "create" else found["ref"]
        if not REF.match(ref):
            return op, problem(404, "CONTEXT_NOT_FOUND", "no such charging data resource")
        try:
            request = session_request(op, ref, data, self.ceilings)
        except RequestInvalid as exc:
            return op, invalid(exc.problems)
        try:
            answer = await self.sessions.charge(request)
        except Conflict:
            return op, invalid([("/invocationSequenceNumber", "was used before in this resource with another body")])
        if answer.replayed:
            metrics.RETRANSMISSIONS.labels(op).inc()
        elif answer.session_delta > 0:
            core_metrics.SESSIONS_OPENED.inc()
        elif answer.session_delta < 0:
            core_metrics.SESSIONS_CLOSED.labels("terminate" if op == "release" else "refused").inc()
        if self.notifier is not None:
            await self._hold(self.notifier, op, ref, data, answer)
        location = (
            f"{scope['scheme']}://{_authority(scope)}{found['root']}/nchf-convergedcharging/v3/chargingdata/{ref}"
        )
        return op, reply(op, data, answer, self.clock.now_ms() / 1000, location)

    @staticmethod
    async def _hold(
        notifier: ChargingNotifier, op: Operation, ref: str, data: ChargingData, answer: SessionAnswer
    ) -> None:
        """Keep what ChargingNotify needs of an open resource (``notify.py``)."""
        if op == "release" or answer.session_delta < 0:
            notifier.forget(ref)
        elif answer.result_code == ResultCode.SUCCESS:
            groups = ((g.rating_group, g.final_unit is not None) for g in answer.rating_groups)
            await notifier.hold(ref, data.identity, data.notify_uri, groups)


def _operation(path: str) -> str:
    """The operation a path names (a metrics label), ``unknown`` for any other path."""
    found = PATH.match(path)
    if found is None:
        return "unknown"
    return "create" if found["op"] is None else str(found["op"])


def _authority(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name in (b":authority", b"host"):
            return str(value.decode("latin-1"))
    host, port = scope.get("server") or ("localhost", 80)
    return f"{host}:{port}"


async def _body(receive: Receive) -> bytes:
    """The request body, read to its end before any answer: hypercorn's HTTP/2 ends the
    connection when DATA frames arrive for a stream it has already answered (KeyError in
    its stream table). Past ``MAX_BODY_BYTES`` the rest is read and dropped (up to 16
    times as much), then ``TooLarge``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= MAX_BODY_BYTES:
            chunks.append(chunk)
        if not message.get("more_body", False) or size > 16 * MAX_BODY_BYTES:
            break
    if size > MAX_BODY_BYTES:
        raise TooLarge
    return b"".join(chunks)


async def _send(send: Send, answer: Reply) -> None:
    headers = [(k.encode(), v.encode()) for k, v in answer.headers]
    content = b""
    if answer.body is not None:
        content = orjson.dumps(answer.body)
        kind = b"application/problem+json" if answer.problem else b"application/json"
        headers += [(b"content-type", kind), (b"content-length", str(len(content)).encode())]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": content})
