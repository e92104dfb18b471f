"""The one server interceptor: who is calling, and may they call this method.

For every call but health: the caller's identity comes from its client certificate (a
SAN URI or DNS name in the policy file) or else from a bearer token in the
``authorization`` metadata; none is UNAUTHENTICATED. The method's roles
(``roles.py``) must include one of the caller's, else PERMISSION_DENIED; a top-up or
bundle sale must name one of the caller's channels. Then the identity is set for the
servicer (``identity.caller()``) and the call goes on.

Behind the compiled gRPC door (``door/``, ``door=True``: the worker listens on a Unix socket
only the door reaches) the certificate was verified by the door, which forwards its SAN
URIs and DNS names as ``charging-door-peer-uri`` and ``charging-door-peer-dns`` (and drops
any caller metadata of that name); they stand for the auth context's.

The certificate is in the call's auth context, which grpc.aio gives only to the handler,
not to ``intercept_service``: so the check wraps the handler and runs when the call is
served, before the servicer. A refusal is counted (``charging_auth_refusals_total`` by
method and reason) and logged with the method, the reason and the caller's name (a
machine's certificate name or token name, never a subscriber's data).

A stream outlives the moment it was allowed: a gateway's ChargeStream, the door's
ChargeBatches for one caller, a WatchSessions may stay open for hours. So a stream's
caller is judged again, as at its start, when a message flows and the last judgement is
older than ``RECHECK_S`` (the policy file is read again as often): a revoked token, a
certificate taken out of the policy or a role taken away ends the stream with the
refusal's status. A request read after that is not served (it changes nothing: the
caller retries it elsewhere or not at all); those read before are answered first. A
signal about to be sent on a server stream is withheld the same way. A judgement that
cannot be made because Redis does not answer ends the stream UNAVAILABLE, as it refuses
a unary call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from charging import metrics
from charging.errors import StorageUnavailable
from charging.security.identity import LOCAL, Identity, set_caller
from charging.security.policy import Policy, PolicyFile
from charging.security.roles import CHANNEL_METHODS, HEALTH_PREFIX, roles_for
from charging.security.tokens import TokenStore
from charging.v1 import topup_pb2

log = logging.getLogger("charging.security")

UNAUTHENTICATED, ROLE, CHANNEL, NO_POLICY = "unauthenticated", "role", "channel", "no_policy"
# What the compiled gRPC door forwards of a verified client certificate (door/grpc_door.cc).
DOOR_PEER_URI, DOOR_PEER_DNS = "charging-door-peer-uri", "charging-door-peer-dns"
# How old a stream's last judgement of its caller may be when a message flows (seconds).
RECHECK_S = 1.0


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Why a caller may not make a call: ``reason`` is the metric's label."""

    reason: str
    caller: str
    details: str

    @property
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAUTHENTICATED if self.reason == UNAUTHENTICATED else grpc.StatusCode.PERMISSION_DENIED


def _values(auth: dict[str, list[bytes]], name: str) -> list[str]:
    return [v.decode(errors="replace") for v in auth.get(name, ())]


class Guard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """``local``: every caller is the development identity (no TLS, loopback). ``door``:
    the certificate's names come from the door's metadata (module docstring)."""

    def __init__(
        self, policy: PolicyFile | None, tokens: TokenStore | None, local: bool = False, door: bool = False
    ) -> None:
        self.policy = policy
        self.tokens = tokens
        self.local = local
        self.door = door
        # The checked handler of each method, built once: method -> (handler, checked).
        self._checked: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler | None]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or method.startswith(HEALTH_PREFIX):
            return handler
        known = self._checked.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        checked = self._check(method, handler)
        self._checked[method] = (handler, checked)
        return checked

    def _check(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler | None:
        if handler.unary_unary is not None:
            return self._unary(method, handler)
        if handler.stream_stream is not None:
            return self._stream(method, handler)
        if handler.unary_stream is not None:
            return self._server_stream(method, handler)
        # No such method is registered outside health; refuse rather than pass one unchecked.
        log.error("no authorization for this kind of method", extra={"method": method})
        return None

    def _unary(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        inner = handler.unary_unary

        async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self.authorize(method, request, context)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(checked, handler.request_deserializer, handler.response_serializer)

    def _stream(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        inner = handler.stream_stream

        async def checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await self.authorize(method, None, context)
            standing = Standing(self, method, context)
            async with contextlib.aclosing(inner(standing.requests(requests), context)) as answers:
                async for answer in answers:
                    yield answer
            await standing.end_if_refused()  # the requests read before the refusal are answered

        return grpc.stream_stream_rpc_method_handler(checked, handler.request_deserializer, handler.response_serializer)

    def _server_stream(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        inner = handler.unary_stream

        async def checked(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await self.authorize(method, request, context)
            standing = Standing(self, method, context)
            async with contextlib.aclosing(inner(request, context)) as answers:
                async for answer in answers:
                    if not await standing.still_allowed():
                        await standing.end_if_refused()
                    yield answer

        return grpc.unary_stream_rpc_method_handler(checked, handler.request_deserializer, handler.response_serializer)

    async def identify(self, context: grpc.aio.ServicerContext) -> Identity | None:
        """The certificate's identity, else the bearer token's, else None."""
        if self.local:
            return LOCAL
        metadata = context.invocation_metadata() or ()
        if self.door:
            uris = [v for k, v in metadata if k == DOOR_PEER_URI and isinstance(v, str)]
            dns_names = [v for k, v in metadata if k == DOOR_PEER_DNS and isinstance(v, str)]
        else:
            auth = context.auth_context()
            uris, dns_names = _values(auth, "peer_uri"), _values(auth, "peer_dns")
        policy = self.policy.current() if self.policy is not None else _NO_POLICY
        found = policy.identify(uris, dns_names)
        if found is not None or self.tokens is None:
            return found
        for key, value in metadata:
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                return await self.tokens.identify(value[len("Bearer ") :].strip())
        return None

    async def authorize(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> Identity:
        try:
            verdict = await self.judge(method, request, context)
        except StorageUnavailable as exc:
            await self.unavailable(context, exc)
            raise
        if isinstance(verdict, Refusal):
            await self.refuse(context, method, verdict)
            raise AssertionError  # abort raised
        set_caller(verdict)
        return verdict

    async def judge(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> Identity | Refusal:
        """The caller's identity if it may make this call, else why not."""
        identity = await self.identify(context)
        if identity is None:
            return Refusal(UNAUTHENTICATED, "-", "no identity: present a client certificate or a bearer token")
        allowed = roles_for(method)
        if not allowed or not identity.roles & allowed:
            return Refusal(ROLE if allowed else NO_POLICY, identity.name, f"{identity.name} may not call {method}")
        if method in CHANNEL_METHODS and hasattr(request, "channel"):
            channel = topup_pb2.Channel.Name(request.channel) if request.channel in _CHANNEL_NUMBERS else ""
            if not identity.may_use_channel(channel.removeprefix("CHANNEL_")):
                return Refusal(
                    CHANNEL, identity.name, f"{identity.name} may not act on channel {channel or request.channel}"
                )
        return identity

    async def refuse(self, context: grpc.aio.ServicerContext, method: str, refusal: Refusal) -> None:
        metrics.AUTH_REFUSALS.labels(method, refusal.reason).inc()
        log.warning("call refused", extra={"method": method, "reason": refusal.reason, "caller": refusal.caller})
        await context.abort(refusal.code, refusal.details)

    @staticmethod
    async def unavailable(context: grpc.aio.ServicerContext, exc: StorageUnavailable) -> None:
        metrics.REDIS_ERRORS.labels("auth").inc()
        await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))


class Standing:
    """One stream's caller, judged again when a message flows and the last judgement is
    older than ``RECHECK_S`` (module docstring). ``still_allowed`` may run in whichever
    task reads the stream's requests; ``end_if_refused`` ends the call and runs in the
    handler's own task."""

    def __init__(self, guard: Guard, method: str, context: grpc.aio.ServicerContext) -> None:
        self.guard = guard
        self.method = method
        self.context = context
        self.due = time.monotonic() + RECHECK_S
        self.refusal: Refusal | None = None
        self.failure: StorageUnavailable | None = None

    async def still_allowed(self) -> bool:
        if self.refusal is not None or self.failure is not None:
            return False
        now = time.monotonic()
        if now < self.due:
            return True
        self.due = now + RECHECK_S
        try:
            verdict = await self.guard.judge(self.method, None, self.context)
        except StorageUnavailable as exc:
            self.failure = exc
            return False
        if isinstance(verdict, Refusal):
            self.refusal = verdict
            return False
        return True

    async def requests(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """The stream's requests, until its caller is no longer allowed."""
        async for request in requests:
            if not await self.still_allowed():
                return
            yield request

    async def end_if_refused(self) -> None:
        if self.failure is not None:
            await self.guard.unavailable(self.context, self.failure)
        if self.refusal is not None:
            await self.guard.refuse(self.context, self.method, self.refusal)


_CHANNEL_NUMBERS = frozenset(topup_pb2.Channel.values())
_NO_POLICY = Policy()
