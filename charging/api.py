"""gRPC servicers: protobuf in, domain values through, protobuf out. Nothing else.

Malformed calls (no session id, no request type, no event id for a debit) fail with
INVALID_ARGUMENT naming the field. A request that is well-formed as a call but carries
a bad value is answered the Diameter way: result code 5004 or 5005 and ``failed_field``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf.message import Message
from prometheus_client import Counter, Histogram

from charging import metrics, stream_wire
from charging.admission import Admission
from charging.buckets import Bucket
from charging.catalog import Usage
from charging.codes import ResultCode
from charging.errors import ChargingError, InvalidRequest, StorageUnavailable
from charging.events import Action, EventAnswer, EventCharging, EventRequest
from charging.rating import Units
from charging.sessions import (
    RatingGroupRequest,
    RequestKind,
    SessionAnswer,
    SessionCharging,
    SessionRequest,
)
from charging.status import Undecodable, details_of, rpc, status_of
from charging.store import storage_errors
from charging.subscribers import Identity, parse_identity
from charging.topups import CHANNELS, BundlePurchase, Recharge, TopUps
from charging.v1 import (
    charging_pb2,
    charging_pb2_grpc,
    common_pb2,
    topup_pb2,
    topup_pb2_grpc,
)
from charging.watch import CLOSED, SessionWatch, gateway_of

SESSION_ID = re.compile(r"^[\x21-\x7e]{1,256}$")
DIGITS = re.compile(r"^[0-9]{1,20}$")
MCC_MNC = re.compile(r"^[0-9]{5,6}$")
EVENT_ID = SESSION_ID
MAX_RATING_GROUPS = 64
DEFAULT_PLAN_ID = "default"
log = logging.getLogger("charging.api")
# How a streamed message ended (charging_requests_total{method="ChargeStream"}); the result
# codes of the answers are in the answers, not in this label.
STREAM_OUTCOMES = (
    "OK",
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "FAILED_PRECONDITION",
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "INTERNAL",
)

REPORTING_REASON_FINAL = charging_pb2.REPORTING_REASON_FINAL
DIRECTION_TERMINATING = charging_pb2.DIRECTION_TERMINATING
NO_USAGE = Usage()  # frozen: one shared value for the usual request without destination or roaming

REQUEST_KINDS: dict[int, RequestKind] = {
    charging_pb2.REQUEST_TYPE_INITIAL: "I",
    charging_pb2.REQUEST_TYPE_UPDATE: "U",
    charging_pb2.REQUEST_TYPE_TERMINATE: "T",
}
ACTIONS: dict[int, Action] = {
    charging_pb2.REQUESTED_ACTION_DIRECT_DEBITING: "D",
    charging_pb2.REQUESTED_ACTION_REFUND_ACCOUNT: "R",
    charging_pb2.REQUESTED_ACTION_CHECK_BALANCE: "C",
    charging_pb2.REQUESTED_ACTION_PRICE_ENQUIRY: "P",
}


class Unanswerable(Exception):
    """A bad value the caller hears about as a result code in the answer."""

    def __init__(self, code: ResultCode, field: str) -> None:
        super().__init__(field)
        self.code = code
        self.field = field


def digest(message: Message) -> str:
    return hashlib.blake2b(message.SerializeToString(deterministic=True), digest_size=16).hexdigest()


def identity_of(sub: common_pb2.SubscriberId, field: str = "subscriber") -> Identity:
    kind = sub.WhichOneof("id")
    if kind is None:
        raise Unanswerable(ResultCode.MISSING_AVP, field)
    try:
        return parse_identity(kind, getattr(sub, kind), f"{field}.{kind}")
    except InvalidRequest as exc:
        raise Unanswerable(ResultCode.INVALID_AVP_VALUE, exc.field) from None


def identity_or_invalid(sub: common_pb2.SubscriberId) -> Identity:
    """For calls outside Diameter semantics (top-up, admin): bad identity is INVALID_ARGUMENT."""
    try:
        return identity_of(sub)
    except Unanswerable as exc:
        raise InvalidRequest(exc.field, "a valid msisdn or imsi is required") from None


def units_of(u: common_pb2.ServiceUnits) -> Units:
    return Units(u.time_s, u.total_octets, u.input_octets, u.output_octets, u.service_specific_units, u.money_micros)


def set_units(out: common_pb2.ServiceUnits, u: Units) -> None:
    """``units_pb`` written into a message's field in place (no temporary message)."""
    if u.time_s:
        out.time_s = u.time_s
    if u.total_octets:
        out.total_octets = u.total_octets
    if u.service_specific_units:
        out.service_specific_units = u.service_specific_units
    if u.money_micros:
        out.money_micros = u.money_micros
    if not (u.time_s or u.total_octets or u.service_specific_units or u.money_micros):
        out.SetInParent()


def units_pb(u: Units) -> common_pb2.ServiceUnits:
    return common_pb2.ServiceUnits(
        time_s=u.time_s,
        total_octets=u.total_octets,
        service_specific_units=u.service_specific_units,
        money_micros=u.money_micros,
    )


def session_request(req: charging_pb2.SessionRequest) -> SessionRequest:
    # Hot path: every protobuf access below costs a wrapper (upb), so each repeated field
    # and submessage is read once, and error field names are built only on an error.
    if not SESSION_ID.match(req.session_id):
        raise InvalidRequest("session_id", "must be 1-256 printable characters without spaces")
    kind = REQUEST_KINDS.get(req.request_type)
    if kind is None:
        raise InvalidRequest("request_type", "must be INITIAL, UPDATE or TERMINATE")
    rating_groups = req.rating_groups
    if len(rating_groups) > MAX_RATING_GROUPS:
        raise InvalidRequest("rating_groups", f"at most {MAX_RATING_GROUPS} per request")
    if not req.HasField("subscriber"):
        raise Unanswerable(ResultCode.MISSING_AVP, "subscriber")
    identity = identity_of(req.subscriber)
    groups = []
    seen: set[int] = set()
    for i, g in enumerate(rating_groups):
        rating_group = g.rating_group
        if rating_group in seen:
            raise Unanswerable(ResultCode.INVALID_AVP_VALUE, f"rating_groups[{i}].rating_group")
        seen.add(rating_group)
        groups.append(
            RatingGroupRequest(
                rating_group,
                g.service_identifier,
                units_of(g.requested) if g.HasField("requested") else None,
                units_of(g.used) if g.HasField("used") else None,
                g.reporting_reason == REPORTING_REASON_FINAL,
                units_of(g.used_after_tariff_change) if g.HasField("used_after_tariff_change") else None,
            )
        )
    return SessionRequest(
        req.session_id,
        kind,
        req.request_number,
        identity,
        tuple(groups),
        usage_of(req),
        digest(req),
        req.direction == DIRECTION_TERMINATING,
    )


def usage_of(req: charging_pb2.SessionRequest | charging_pb2.EventRequest) -> Usage:
    called, visited = req.called_party, req.visited_network
    if not called and not visited:
        return NO_USAGE
    if called and not DIGITS.match(called):
        raise Unanswerable(ResultCode.INVALID_AVP_VALUE, "called_party")
    if visited and not MCC_MNC.match(visited):
        raise Unanswerable(ResultCode.INVALID_AVP_VALUE, "visited_network")
    return Usage(called, visited)


def session_answer_pb(req: charging_pb2.SessionRequest, a: SessionAnswer) -> charging_pb2.SessionAnswer:
    out = charging_pb2.SessionAnswer(
        session_id=req.session_id,
        request_type=req.request_type,
        request_number=req.request_number,
        result_code=a.result_code,
        failed_field=a.failed_field,
        refund_information=a.refund_information,
    )
    for g in a.rating_groups:
        rg = out.rating_groups.add(
            rating_group=g.rating_group,
            service_identifier=g.service_identifier,
            result_code=g.result_code,
            validity_time_s=g.validity_time_s,
            cost_micros=g.cost_micros,
            tariff_change_time=g.tariff_change_time,
        )
        if g.granted is not None:
            set_units(rg.granted, g.granted)
        if g.final_unit is not None:
            rg.final_unit.action = common_pb2.FinalUnitAction.ValueType(g.final_unit.action)
            rg.final_unit.redirect_address = g.final_unit.redirect_address
            rg.final_unit.restriction_filter_rules.extend(g.final_unit.restriction_filter_rules)
    return out


# Initial metadata of a WatchSessions stream once its watch is in place.
READY = (("charging-watch", "ready"),)
SESSION_ACTIONS = {"reauth": charging_pb2.SESSION_ACTION_REAUTHORIZE, "abort": charging_pb2.SESSION_ACTION_ABORT}


@dataclass(frozen=True)
class StreamMeters:
    """A streaming method's per-message counters (by how the message ended) and latency."""

    method: str
    counts: dict[str, Counter]
    latency: Histogram

    @staticmethod
    def of(method: str) -> StreamMeters:
        counts = {o: metrics.REQUESTS.labels(method, o) for o in STREAM_OUTCOMES}
        return StreamMeters(method, counts, metrics.LATENCY.labels(method))


def messages_of(batch: list[stream_wire.Request] | Undecodable) -> Sequence[stream_wire.Request]:
    """The requests of one ChargeBatches message (``stream_wire.charge_batch``); a batch
    whose framing cannot be decoded is one request, answered with an error."""
    return (batch,) if isinstance(batch, Undecodable) else batch


class ChargingServicer(charging_pb2_grpc.ChargingServicer):
    # The streams' bodies, decoded one request at a time (``status.add_servicer``).
    request_decoders = {"ChargeStream": stream_wire.charge_message, "ChargeBatches": stream_wire.charge_batch}

    def __init__(
        self,
        sessions: SessionCharging,
        events: EventCharging,
        admission: Admission,
        watch: SessionWatch | None = None,
    ) -> None:
        self.sessions = sessions
        self.events = events
        self.admission = admission
        self.watch = watch
        self._streamed = {method: StreamMeters.of(method) for method in ("ChargeStream", "ChargeBatches")}

    @rpc("ChargeSession")
    async def ChargeSession(
        self, request: charging_pb2.SessionRequest, context: grpc.aio.ServicerContext
    ) -> charging_pb2.SessionAnswer:
        gateway = gateway_of(context.invocation_metadata()) if self.watch is not None else ""
        return await self._session(request, "ChargeSession", gateway)

    @rpc("ChargeEvent")
    async def ChargeEvent(
        self, request: charging_pb2.EventRequest, context: grpc.aio.ServicerContext
    ) -> charging_pb2.EventAnswer:
        return await self._event(request, "ChargeEvent")

    async def ChargeStream(
        self,
        request_iterator: AsyncIterator[charging_pb2.ChargeMessage | Undecodable],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[charging_pb2.ChargeReply]:
        reply = await self._replying(context, "ChargeStream")
        async with contextlib.aclosing(self.admission.each(request_iterator, reply)) as answers:
            async for answer in answers:
                yield answer

    async def ChargeBatches(  # type: ignore[override]  # requests decoded by stream_wire.charge_batch
        self,
        request_iterator: AsyncIterator[list[stream_wire.Request] | Undecodable],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[charging_pb2.ChargeReplies]:
        reply = await self._replying(context, "ChargeBatches")
        async with contextlib.aclosing(self.admission.grouped(request_iterator, messages_of, reply)) as batches:
            async for replies in batches:
                yield charging_pb2.ChargeReplies(replies=replies)

    async def _replying(
        self, context: grpc.aio.ServicerContext, method: str
    ) -> Callable[[stream_wire.Request], Awaitable[charging_pb2.ChargeReply]]:
        """How the requests of one stream call are answered: for the gateway its metadata
        names (a malformed name ends the call INVALID_ARGUMENT), counted under ``method``."""
        try:
            gateway = gateway_of(context.invocation_metadata()) if self.watch is not None else ""
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        meters = self._streamed[method]

        async def reply(message: stream_wire.Request) -> charging_pb2.ChargeReply:
            return await self._reply(message, meters, gateway)

        return reply

    async def _reply(
        self, message: charging_pb2.ChargeMessage | Undecodable, meters: StreamMeters, gateway: str = ""
    ) -> charging_pb2.ChargeReply:
        """One streamed message answered as its unary RPC would answer it; where that RPC
        would fail with a status, the reply carries the status for this message alone.
        Counted and timed per message, as ``rpc`` does per call."""
        started = time.perf_counter()
        try:
            return await self._answer(message, meters, gateway)
        finally:
            meters.latency.observe(time.perf_counter() - started)

    async def _answer(
        self, message: charging_pb2.ChargeMessage | Undecodable, meters: StreamMeters, gateway: str = ""
    ) -> charging_pb2.ChargeReply:
        if isinstance(message, Undecodable):
            # Under its correlation id if that could be read (stream_wire), else 0.
            error = InvalidRequest("request", f"not a valid {message.type_name} message")
            return self._failed(message.correlation_id, error, meters)
        cid = message.correlation_id
        try:
            with storage_errors():
                kind = message.WhichOneof("request")
                if kind == "session":
                    reply = charging_pb2.ChargeReply(
                        correlation_id=cid, session=await self._session(message.session, meters.method, gateway)
                    )
                elif kind == "event":
                    reply = charging_pb2.ChargeReply(
                        correlation_id=cid, event=await self._event(message.event, meters.method)
                    )
                else:
                    raise InvalidRequest("request", "a session or an event is required")
        except ChargingError as exc:
            return self._failed(cid, exc, meters)
        except Exception:
            log.exception("unexpected error", extra={"method": meters.method})
            meters.counts["INTERNAL"].inc()
            return charging_pb2.ChargeReply(
                correlation_id=cid,
                error=charging_pb2.ChargeError(code=grpc.StatusCode.INTERNAL.value[0], message="internal error"),
            )
        meters.counts["OK"].inc()
        return reply

    def _failed(self, cid: int, exc: ChargingError, meters: StreamMeters) -> charging_pb2.ChargeReply:
        status = status_of(exc)
        if isinstance(exc, StorageUnavailable):
            metrics.REDIS_ERRORS.labels("api").inc()
        meters.counts[status.name if status.name in STREAM_OUTCOMES else "INTERNAL"].inc()
        return charging_pb2.ChargeReply(
            correlation_id=cid, error=charging_pb2.ChargeError(code=status.value[0], message=details_of(exc))
        )

    async def _session(
        self, request: charging_pb2.SessionRequest, method: str, gateway: str = ""
    ) -> charging_pb2.SessionAnswer:
        try:
            req = session_request(request)
        except Unanswerable as exc:
            return session_answer_pb(request, SessionAnswer(exc.code, failed_field=exc.field))
        answer = await self.sessions.charge(req)
        if self.watch is not None:
            await self.watch.hold(gateway, req.session_id, req.identity, req.kind, answer)
        if answer.replayed:
            metrics.RETRANSMISSIONS.labels(method).inc()
        elif answer.session_delta > 0:
            metrics.SESSIONS_OPENED.inc()
        elif answer.session_delta < 0:
            # A TERMINATE ends its session; an UPDATE does when the session cannot go on.
            metrics.SESSIONS_CLOSED.labels("terminate" if req.kind == "T" else "refused").inc()
        return session_answer_pb(request, answer)

    async def WatchSessions(
        self, request: charging_pb2.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[charging_pb2.SessionSignal]:
        """The signals of the caller's gateway until it goes away (``charging/watch.py``)."""
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request: not a valid {request.type_name} message")
        if self.watch is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "session signals are not served here")
        assert self.watch is not None
        try:
            gateway = gateway_of(context.invocation_metadata())
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            with self.watch.watching(gateway) as queue:
                await context.send_initial_metadata(READY)  # the watch is in place
                while (signal := await queue.get()) is not CLOSED:
                    action = SESSION_ACTIONS[signal.action]
                    yield charging_pb2.SessionSignal(session_id=signal.session_id, action=action)
        except OverflowError as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))

    async def _event(self, request: charging_pb2.EventRequest, method: str) -> charging_pb2.EventAnswer:
        action = ACTIONS.get(request.action)
        if action is None:
            raise InvalidRequest("action", "must be DIRECT_DEBITING, REFUND_ACCOUNT, CHECK_BALANCE or PRICE_ENQUIRY")
        if action in ("D", "R") and not EVENT_ID.match(request.event_id):
            raise InvalidRequest("event_id", "must be 1-256 printable characters without spaces")
        try:
            identity = identity_of(request.subscriber)
            usage = usage_of(request)
        except Unanswerable as exc:
            return self._event_pb(request, EventAnswer(exc.code, failed_field=exc.field))
        req = EventRequest(
            event_id=request.event_id,
            action=action,
            identity=identity,
            rating_group=request.rating_group,
            service_identifier=request.service_identifier,
            requested=units_of(request.requested),
            # Only debits and refunds are remembered by event id.
            digest=digest(request) if action in ("D", "R") else "",
            usage=usage,
            terminating=request.direction == charging_pb2.DIRECTION_TERMINATING,
            refund_information=request.refund_information,
        )
        answer = await self.events.charge(req)
        if answer.replayed:
            metrics.RETRANSMISSIONS.labels(method).inc()
        return self._event_pb(request, answer)

    @staticmethod
    def _event_pb(request: charging_pb2.EventRequest, a: EventAnswer) -> charging_pb2.EventAnswer:
        out = charging_pb2.EventAnswer(
            event_id=request.event_id,
            action=request.action,
            result_code=a.result_code,
            cost_micros=a.cost_micros,
            failed_field=a.failed_field,
            refund_information=a.refund_information,
        )
        if a.granted is not None:
            set_units(out.granted, a.granted)
        if a.enough_credit is not None:
            out.check_balance_result = (
                charging_pb2.CHECK_BALANCE_RESULT_ENOUGH_CREDIT
                if a.enough_credit
                else charging_pb2.CHECK_BALANCE_RESULT_NO_CREDIT
            )
        if a.balance_micros is not None:
            out.balance_micros = a.balance_micros
        return out


def balance_pb(account_id: str, currency: str, balance: int, reserved: int) -> topup_pb2.Balance:
    return topup_pb2.Balance(
        account_id=account_id,
        currency=currency,
        balance_micros=balance,
        reserved_micros=reserved,
        available_micros=balance - reserved,
    )


class TopUpServicer(topup_pb2_grpc.TopUpServicer):
    def __init__(self, topups: TopUps) -> None:
        self.topups = topups

    @rpc("Recharge")
    async def Recharge(
        self, request: topup_pb2.RechargeRequest, context: grpc.aio.ServicerContext
    ) -> topup_pb2.RechargeAnswer:
        channel = channel_of(request.channel)
        result = await self.topups.recharge(
            Recharge(
                identity_or_invalid(request.subscriber),
                request.amount_micros,
                channel,
                request.idempotency_key,
                digest(request),
            )
        )
        if result.replayed:
            metrics.RETRANSMISSIONS.labels("Recharge").inc()
        else:
            metrics.TOPUPS.labels(channel).inc()
            metrics.TOPUP_MICROS.labels(channel).inc(request.amount_micros)
        return topup_pb2.RechargeAnswer(
            balance=balance_pb(result.account_id, result.currency, result.balance_micros, result.reserved_micros),
            replayed=result.replayed,
        )

    @rpc("GetBalance")
    async def GetBalance(
        self, request: topup_pb2.BalanceRequest, context: grpc.aio.ServicerContext
    ) -> topup_pb2.Balance:
        a = await self.topups.balance(identity_or_invalid(request.subscriber))
        out = balance_pb(a.account_id, a.currency, a.balance, a.reserved)
        out.buckets.extend(bucket_pb(b) for b in await self.topups.buckets(a.account_id))
        return out

    @rpc("BuyBundle")
    async def BuyBundle(
        self, request: topup_pb2.BuyBundleRequest, context: grpc.aio.ServicerContext
    ) -> topup_pb2.BuyBundleAnswer:
        channel = channel_of(request.channel)
        result = await self.topups.buy_bundle(
            BundlePurchase(
                identity_or_invalid(request.subscriber),
                request.bundle_id,
                channel,
                request.idempotency_key,
                digest(request),
            )
        )
        if result.replayed:
            metrics.RETRANSMISSIONS.labels("BuyBundle").inc()
        elif result.outcome == "OK":
            metrics.BUNDLES_SOLD.labels(channel).inc()
        return topup_pb2.BuyBundleAnswer(
            result=PURCHASE_RESULTS[result.outcome],
            balance=balance_pb(result.account_id, result.currency, result.balance_micros, result.reserved_micros),
            bucket_ids=result.bucket_ids,
            replayed=result.replayed,
        )


PURCHASE_RESULTS = {
    "OK": topup_pb2.PURCHASE_RESULT_PURCHASED,
    "FUNDS": topup_pb2.PURCHASE_RESULT_INSUFFICIENT_BALANCE,
    "DENIED": topup_pb2.PURCHASE_RESULT_DENIED,
    "CURRENCY": topup_pb2.PURCHASE_RESULT_CURRENCY_MISMATCH,
}


CHANNEL_NAMES = {value: name.removeprefix("CHANNEL_").lower() for name, value in topup_pb2.Channel.items()}


def channel_of(value: topup_pb2.Channel.ValueType) -> str:
    # Enums are open: a client may send any number, not only the declared ones.
    channel = CHANNEL_NAMES.get(value, "")
    if channel not in CHANNELS:
        raise InvalidRequest("channel", "must be one of " + ", ".join(c.upper() for c in CHANNELS))
    return channel


def bucket_pb(b: Bucket) -> topup_pb2.Bucket:
    return topup_pb2.Bucket(
        id=b.id,
        unit=int(b.unit),  # type: ignore[arg-type]
        amount=b.amount,
        reserved=b.reserved,
        initial=b.initial,
        start_time=b.start_s,
        expiry_time=b.expiry_s,
        priority=b.priority,
        services=b.services,
        zones=b.zones,
        bands=b.bands,
    )
