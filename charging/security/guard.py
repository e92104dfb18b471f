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
"""

from __future__ import annotations

import logging
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
            async for answer in inner(requests, context):
                yield answer

        return grpc.stream_stream_rpc_method_handler(checked, handler.request_deserializer, handler.response_serializer)

    def _server_stream(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        inner = handler.unary_stream

        async def checked(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await self.authorize(method, request, context)
            async for answer in inner(request, context):
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
            identity = await self.identify(context)
        except StorageUnavailable as exc:
            metrics.REDIS_ERRORS.labels("auth").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            raise
        if identity is None:
            await self._refuse(
                context, method, UNAUTHENTICATED, "-", "no identity: present a client certificate or a bearer token"
            )
            raise AssertionError  # abort raised
        allowed = roles_for(method)
        if not allowed or not identity.roles & allowed:
            reason = ROLE if allowed else NO_POLICY
            await self._refuse(context, method, reason, identity.name, f"{identity.name} may not call {method}")
        if method in CHANNEL_METHODS and hasattr(request, "channel"):
            channel = topup_pb2.Channel.Name(request.channel) if request.channel in _CHANNEL_NUMBERS else ""
            if not identity.may_use_channel(channel.removeprefix("CHANNEL_")):
                await self._refuse(
                    context,
                    method,
                    CHANNEL,
                    identity.name,
                    f"{identity.name} may not act on channel {channel or request.channel}",
                )
        set_caller(identity)
        return identity

    async def _refuse(
        self, context: grpc.aio.ServicerContext, method: str, reason: str, caller: str, details: str
    ) -> None:
        metrics.AUTH_REFUSALS.labels(method, reason).inc()
        log.warning("call refused", extra={"method": method, "reason": reason, "caller": caller})
        code = grpc.StatusCode.UNAUTHENTICATED if reason == UNAUTHENTICATED else grpc.StatusCode.PERMISSION_DENIED
        await context.abort(code, details)


_CHANNEL_NUMBERS = frozenset(topup_pb2.Channel.values())
_NO_POLICY = Policy()
