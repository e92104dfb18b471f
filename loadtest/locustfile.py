"""Locust load of a mixed, realistic subscriber population over gRPC.

Why Locust when ``loadtest.bench`` exists: the bench measures peak throughput of one
repeated request; this drives the traffic mix a network produces (voice and data
sessions with usage reports, SMS debits, recharges, balance checks) from many
independent subscribers, so reservations, per-session state, idempotency keys and the
top-up path are all exercised while Locust reports latency per request kind.

Locust is gevent-based, so the sync gRPC API is used and gRPC is told to cooperate with
gevent at import (as gRPC documents for gevent programs). Timing is done by hand around
each call rather than with a client interceptor, because a charging answer is a
*success* at the gRPC level even when it carries a failure result code: each call is
recorded as a failure when the RPC fails or the result code is not one it allows.

    make loadtest
    locust -f loadtest/locustfile.py --headless -u 50 -r 10 -t 30s --host 127.0.0.1:50051

Against a secured server, the users present what the ``charging`` CLI takes from the
environment: ``CHARGING_CLIENT_TLS_CA``, ``CHARGING_CLIENT_TLS_CERT`` and ``_KEY``, or
``CHARGING_TOKEN``. Each user creates its subscriber, charges and recharges, so that
identity needs the roles ``operator``, ``network`` and ``channel`` (with the channels
RETAIL, BANK, VOUCHER, APP and USSD) in the policy.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Collection
from typing import Any, TypeVar

import grpc
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()  # before any channel exists

import os  # noqa: E402

from locust import User, between, task  # noqa: E402
from locust.exception import StopUser  # noqa: E402

from charging.security.tls import channel_credentials, token_credentials  # noqa: E402
from charging.v1 import (  # noqa: E402
    admin_pb2,
    admin_pb2_grpc,
    charging_pb2,
    charging_pb2_grpc,
    common_pb2,
    topup_pb2,
    topup_pb2_grpc,
)

SUCCESS = 2001
CREDIT_LIMIT_REACHED = 4012
INITIAL_BALANCE_MICROS = 50_000_000  # 50 EUR: enough for a long run, small enough to be realistic
RECHARGE_MICROS = 10_000_000
CHANNELS = (
    topup_pb2.CHANNEL_RETAIL,
    topup_pb2.CHANNEL_BANK,
    topup_pb2.CHANNEL_VOUCHER,
    topup_pb2.CHANNEL_APP,
    topup_pb2.CHANNEL_USSD,
)
RG_VOICE, RG_SMS, RG_DATA = 10, 20, 30
TIMEOUT_S = 10.0

Answer = TypeVar("Answer")


def open_channel(target: str) -> grpc.Channel:
    """Plaintext, or TLS with the CLI's client credentials from the environment."""
    env = os.environ.get
    ca, cert, key = (env(f"CHARGING_CLIENT_TLS_{n}", "") for n in ("CA", "CERT", "KEY"))
    token = env("CHARGING_TOKEN", "")
    if not (ca or cert or key or token):
        return grpc.insecure_channel(target)
    creds = channel_credentials(ca, cert, key)
    if token:
        creds = grpc.composite_channel_credentials(creds, token_credentials(token))
    return grpc.secure_channel(target, creds)


class ResultCodeError(Exception):
    """An answer whose result code the caller did not allow (reported as a Locust failure)."""


class ChargingUser(User):
    """One subscriber: creates itself on start, then uses voice, data and SMS and recharges."""

    host = "127.0.0.1:50051"
    wait_time = between(0.5, 2.0)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.channel = open_channel(self.host or ChargingUser.host)
        self.charging = charging_pb2_grpc.ChargingStub(self.channel)
        self.topup = topup_pb2_grpc.TopUpStub(self.channel)
        self.admin = admin_pb2_grpc.AdminStub(self.channel)
        self.msisdn = ""

    # ------------------------------------------------------------------ plumbing

    def call(
        self,
        name: str,
        rpc: Callable[..., Answer],
        request: Any,
        allowed: Collection[int] | None = (SUCCESS,),
    ) -> Answer | None:
        """Time one unary call and report it to Locust.

        ``allowed`` are the result codes that count as success (None: the answer has no
        result code). Returns the answer, or None when the call failed.
        """
        started = time.perf_counter()
        answer: Answer | None = None
        exception: Exception | None = None
        length = 0
        try:
            answer = rpc(request, timeout=TIMEOUT_S)
            length = answer.ByteSize()  # type: ignore[attr-defined]
            code = getattr(answer, "result_code", None)
            if allowed is not None and code not in allowed:
                exception = ResultCodeError(f"result_code {code}")
        except grpc.RpcError as exc:
            exception = exc
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            response=answer,
            context={},
            exception=exception,
        )
        return None if exception is not None else answer

    def subscriber(self) -> common_pb2.SubscriberId:
        return common_pb2.SubscriberId(msisdn=self.msisdn)

    @staticmethod
    def think(low: float = 0.05, high: float = 0.3) -> None:
        """A short pause between the requests of one session (gevent-patched sleep)."""
        time.sleep(random.uniform(low, high))

    # ------------------------------------------------------------------ lifecycle

    def on_start(self) -> None:
        """Create this user's own subscriber; a number already taken is reused (tolerated)."""
        self.msisdn = "4917" + "".join(random.choices("0123456789", k=8))
        started = time.perf_counter()
        exception: Exception | None = None
        try:
            self.admin.CreateSubscriber(
                admin_pb2.CreateSubscriberRequest(msisdn=self.msisdn, initial_balance_micros=INITIAL_BALANCE_MICROS),
                timeout=TIMEOUT_S,
            )
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:  # type: ignore[attr-defined]
                exception = exc
        self.environment.events.request.fire(
            request_type="grpc",
            name="Admin.CreateSubscriber",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            response=None,
            context={},
            exception=exception,
        )
        if exception is not None:
            raise StopUser()

    def on_stop(self) -> None:
        self.channel.close()

    # ------------------------------------------------------------------ sessions

    def session(self, label: str, rating_group: int, used_field: str, used_range: tuple[int, int]) -> None:
        """INITIAL, 1-3 UPDATEs reporting usage, TERMINATE reporting the last usage.

        Usage reported never exceeds the last grant (more would be an overrun, 4012).
        4012 on INITIAL ends the session on the server; on an UPDATE it means no more
        credit, and the session is then terminated as a network element would.
        """
        session_id = f"locust;{self.msisdn};{uuid.uuid4().hex}"
        kinds = [charging_pb2.REQUEST_TYPE_INITIAL]
        kinds += [charging_pb2.REQUEST_TYPE_UPDATE] * random.randint(1, 3)
        kinds.append(charging_pb2.REQUEST_TYPE_TERMINATE)
        granted = 0
        for number, kind in enumerate(kinds):
            final = kind == charging_pb2.REQUEST_TYPE_TERMINATE
            req = self.session_request(session_id, kind, number, rating_group)
            rg = req.rating_groups[0]
            if not final:
                rg.requested.SetInParent()  # the tariff's default quota
            if kind != charging_pb2.REQUEST_TYPE_INITIAL:
                low, high = used_range
                setattr(rg.used, used_field, random.randint(min(low, granted), min(high, granted)))
            allowed = (SUCCESS,) if final else (SUCCESS, CREDIT_LIMIT_REACHED)
            name = f"ChargeSession {label} {charging_pb2.RequestType.Name(kind).removeprefix('REQUEST_TYPE_')}"
            answer = self.call(name, self.charging.ChargeSession, req, allowed)
            if answer is None or final:
                return
            if answer.result_code == CREDIT_LIMIT_REACHED:
                if kind == charging_pb2.REQUEST_TYPE_UPDATE:
                    self.think()
                    req = self.session_request(
                        session_id, charging_pb2.REQUEST_TYPE_TERMINATE, number + 1, rating_group
                    )
                    self.call(f"ChargeSession {label} TERMINATE", self.charging.ChargeSession, req)
                return
            granted = getattr(answer.rating_groups[0].granted, used_field) if answer.rating_groups else 0
            self.think()

    def session_request(
        self, session_id: str, kind: charging_pb2.RequestType.ValueType, number: int, rating_group: int
    ) -> charging_pb2.SessionRequest:
        req = charging_pb2.SessionRequest(
            session_id=session_id,
            request_type=kind,
            request_number=number,
            subscriber=self.subscriber(),
            service_context_id="32260@3gpp.org" if rating_group == RG_VOICE else "32251@3gpp.org",
        )
        req.rating_groups.add(rating_group=rating_group)
        return req

    @task(4)
    def voice_call(self) -> None:
        self.session("voice", RG_VOICE, "time_s", (1, 300))

    @task(3)
    def data_session(self) -> None:
        self.session("data", RG_DATA, "total_octets", (1_000, 10_000_000))

    # ------------------------------------------------------------------ events and top-ups

    @task(5)
    def sms(self) -> None:
        req = charging_pb2.EventRequest(
            event_id=f"locust-sms-{uuid.uuid4().hex}",
            action=charging_pb2.REQUESTED_ACTION_DIRECT_DEBITING,
            subscriber=self.subscriber(),
            service_context_id="32274@3gpp.org",
            rating_group=RG_SMS,
            requested=common_pb2.ServiceUnits(service_specific_units=1),
        )
        self.call("ChargeEvent SMS DIRECT_DEBITING", self.charging.ChargeEvent, req, (SUCCESS, CREDIT_LIMIT_REACHED))

    @task(2)
    def balance_check(self) -> None:
        req = charging_pb2.EventRequest(
            action=charging_pb2.REQUESTED_ACTION_CHECK_BALANCE,
            subscriber=self.subscriber(),
            rating_group=RG_SMS,
            requested=common_pb2.ServiceUnits(service_specific_units=1),
        )
        self.call("ChargeEvent CHECK_BALANCE", self.charging.ChargeEvent, req)
        self.call(
            "TopUp.GetBalance", self.topup.GetBalance, topup_pb2.BalanceRequest(subscriber=self.subscriber()), None
        )

    @task(1)
    def recharge(self) -> None:
        req = topup_pb2.RechargeRequest(
            subscriber=self.subscriber(),
            amount_micros=RECHARGE_MICROS,
            channel=random.choice(CHANNELS),
            idempotency_key=f"locust-{uuid.uuid4().hex}",
            reference=f"receipt-{random.randint(0, 999_999):06d}",
        )
        answer = self.call("TopUp.Recharge", self.topup.Recharge, req, None)
        if answer is not None and answer.replayed:
            self.environment.events.request.fire(
                request_type="grpc",
                name="TopUp.Recharge replayed",
                response_time=0,
                response_length=0,
                exception=ResultCodeError("a fresh idempotency key was answered as a replay"),
            )
