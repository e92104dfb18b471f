"""A secured server, end to end: real TLS handshakes with certificates made here, mutual
TLS for machine callers, bearer tokens on the token port, roles per method, channels per
caller, certificate renewal without a restart, and the caller named in audit entries."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from prometheus_client import REGISTRY

from charging.clock import ManualClock
from charging.security import certs
from charging.security.guard import RECHECK_S
from charging.security.roles import CHANNEL_METHODS, ROLES, roles_for
from charging.security.tokens import TokenStore
from charging.server import App
from charging.settings import Settings
from charging.v1 import billing_pb2, billing_pb2_grpc, charging_pb2, common_pb2, topup_pb2, topup_pb2_grpc
from postpaid import config as billing_config
from postpaid import keys as bill_keys
from postpaid.billing import Billing
from tests.conftest import SEALER, LineBook, Stubs, enrol, sms_request
from tests.streaming import status_of
from tests.test_charge_stream import Stream, message_of
from tests.test_security_roles import METHODS

PRIVATE = {"grpc.use_local_subchannel_pool": 1}  # a new connection (handshake) per channel


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    directory = tmp_path / "certs"
    certs.write_dev_set(directory)
    return directory


def secured_settings(settings: Settings, pki: Path, **more: object) -> Settings:
    """The test settings (their Redis and database) with TLS, mutual TLS and the policy."""
    values: dict[str, object] = {
        "grpc_token_address": "127.0.0.1:0",
        "tls_cert": str(pki / "server.pem"),
        "tls_key": str(pki / "server.key"),
        "tls_client_ca": str(pki / "ca.pem"),
        "policy_file": str(pki / "policy.json"),
        **more,
    }
    return dataclasses.replace(settings, **values)  # type: ignore[arg-type]


@pytest.fixture
async def secured(settings: Settings, clock: ManualClock, pki: Path) -> AsyncIterator[App]:
    application = App(secured_settings(settings, pki), clock=clock, run_background=False)
    await application.start()
    yield application
    await application.stop()


def creds(pki: Path, role: str = "", token: str = "", ca: Path | None = None) -> grpc.ChannelCredentials:
    root = (ca or pki / "ca.pem").read_bytes()
    if role:
        c = grpc.ssl_channel_credentials(root, (pki / f"{role}.key").read_bytes(), (pki / f"{role}.pem").read_bytes())
    else:
        c = grpc.ssl_channel_credentials(root)
    if token:
        c = grpc.composite_channel_credentials(c, grpc.access_token_call_credentials(token))
    return c


def connect(port: int, c: grpc.ChannelCredentials) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", c, options=list(PRIVATE.items()))


async def code_of(channel: grpc.aio.Channel, method: str, body: bytes = b"") -> grpc.StatusCode:
    return (await status_of(channel, method, body, 10))[0]


def refusals(method: str, reason: str) -> float:
    return REGISTRY.get_sample_value("charging_auth_refusals_total", {"method": method, "reason": reason}) or 0.0


async def health(channel: grpc.aio.Channel) -> int:
    answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return int(answer.status)


SALE = topup_pb2.RechargeRequest(channel=topup_pb2.CHANNEL_RETAIL).SerializeToString()


@pytest.mark.timeout(120)
async def test_every_method_against_every_role_certificate(secured: App, pki: Path) -> None:
    """Each role's certificate calls every method of every service: refused
    PERMISSION_DENIED exactly where the table says (and, on sales, where the caller's
    channels lack the request's), answered otherwise."""
    before = refusals("/charging.v1.Admin/LoadCatalog", "role")
    assert await against_the_role_table(secured.grpc_port, pki) == []
    assert refusals("/charging.v1.Admin/LoadCatalog", "role") - before == len(ROLES) - 1


async def against_the_role_table(port: int, pki: Path) -> list[str]:
    """Every method called with every role's certificate on ``port``: the calls whose
    outcome is not what ``roles.py`` says (refused PERMISSION_DENIED exactly where the
    table, or on sales the caller's channels, deny it)."""
    wrong: list[str] = []
    for role in ROLES:
        async with connect(port, creds(pki, role)) as channel:
            for method in METHODS:
                code = await code_of(channel, method, SALE if method in CHANNEL_METHODS else b"")
                allowed = role in roles_for(method) and (method not in CHANNEL_METHODS or role == "channel")
                denied = code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
                if denied == allowed or (denied and code != grpc.StatusCode.PERMISSION_DENIED):
                    wrong.append(f"{role} {method}: {code.name}")
    return wrong


async def test_no_certificate_or_a_foreign_one_fails_the_handshake(secured: App, pki: Path, tmp_path: Path) -> None:
    async with connect(secured.grpc_port, creds(pki)) as channel:
        assert await code_of(channel, "/grpc.health.v1.Health/Check") == grpc.StatusCode.UNAVAILABLE
    other = tmp_path / "other"
    certs.write_dev_set(other)  # another CA, same names
    async with connect(secured.grpc_port, creds(other, "operator", ca=pki / "ca.pem")) as channel:
        assert await code_of(channel, "/grpc.health.v1.Health/Check") == grpc.StatusCode.UNAVAILABLE
    async with connect(secured.grpc_port, creds(pki, "monitor")) as channel:
        assert await health(channel) == health_pb2.HealthCheckResponse.SERVING


async def test_a_trusted_certificate_outside_the_policy_is_unauthenticated(
    secured: App, pki: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = certs.Issued((pki / "ca.pem").read_bytes(), (pki / "ca.key").read_bytes())
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    certs.write_pair(stranger, "x", certs.issue(ca, "x", uris=["spiffe://charging.local/nobody"], dns=["x.example"]))
    c = grpc.ssl_channel_credentials(
        (pki / "ca.pem").read_bytes(), (stranger / "x.key").read_bytes(), (stranger / "x.pem").read_bytes()
    )
    method = "/charging.v1.TopUp/GetBalance"
    before = refusals(method, "unauthenticated")
    body = topup_pb2.BalanceRequest(subscriber=common_pb2.SubscriberId(msisdn="491700000001")).SerializeToString()
    with caplog.at_level(logging.WARNING, logger="charging.security"):
        async with connect(secured.grpc_port, c) as channel:
            assert await code_of(channel, method, body) == grpc.StatusCode.UNAUTHENTICATED
            assert await health(channel) == health_pb2.HealthCheckResponse.SERVING  # health to everyone
    assert refusals(method, "unauthenticated") - before == 1
    (record,) = [r for r in caplog.records if r.getMessage() == "call refused"]
    assert (record.method, record.reason, record.caller) == (method, "unauthenticated", "-")  # type: ignore[attr-defined]
    assert "491700000001" not in caplog.text


async def test_a_policy_dns_name_identifies_a_certificate(settings: Settings, clock: ManualClock, pki: Path) -> None:
    ca = certs.Issued((pki / "ca.pem").read_bytes(), (pki / "ca.key").read_bytes())
    certs.write_pair(pki, "shop", certs.issue(ca, "shop", dns=["Shop.Example"]))
    (pki / "policy.json").write_text(
        '{"clients": [{"dns": "shop.example", "roles": ["channel"], "channels": ["APP"]}]}'
    )
    app = App(secured_settings(settings, pki), clock=clock, run_background=False)
    await app.start()
    try:
        async with connect(app.grpc_port, creds(pki, "shop")) as channel:
            app_sale = topup_pb2.RechargeRequest(channel=topup_pb2.CHANNEL_APP, amount_micros=1).SerializeToString()
            # Past the guard: the servicer's own answer (no such subscriber).
            assert await code_of(channel, "/charging.v1.TopUp/Recharge", app_sale) == grpc.StatusCode.INVALID_ARGUMENT
            assert await code_of(channel, "/charging.v1.TopUp/Recharge", SALE) == grpc.StatusCode.PERMISSION_DENIED
            assert await code_of(channel, "/charging.v1.Charging/ChargeEvent") == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await app.stop()


async def test_bearer_tokens_on_the_token_port(secured: App, pki: Path, r: redis.Redis) -> None:
    assert secured.redis is not None
    async with connect(secured.grpc_port, creds(pki, "operator")) as operator:
        await Stubs.on(operator).subscriber(balance=0)
    store = TokenStore(secured.redis)
    token = await store.create("webshop", ("channel",), ("RETAIL",), 1_800_000_000)
    recharge = topup_pb2.RechargeRequest(
        subscriber=common_pb2.SubscriberId(msisdn="491700000001"),
        amount_micros=2_000_000,
        channel=topup_pb2.CHANNEL_RETAIL,
        idempotency_key="shop-1",
    )
    async with connect(secured.token_port, creds(pki)) as anonymous:
        assert await health(anonymous) == health_pb2.HealthCheckResponse.SERVING
        stub = topup_pb2_grpc.TopUpStub(anonymous)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Recharge(recharge)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with connect(secured.token_port, creds(pki, token="chg_" + "x" * 43)) as guessing:
        assert await code_of(guessing, "/charging.v1.TopUp/Recharge", SALE) == grpc.StatusCode.UNAUTHENTICATED
    async with connect(secured.token_port, creds(pki, token=token)) as shop:
        stub = topup_pb2_grpc.TopUpStub(shop)
        answer = await stub.Recharge(recharge)
        assert answer.balance.balance_micros == 2_000_000
        bank = topup_pb2.RechargeRequest()
        bank.CopyFrom(recharge)
        bank.channel, bank.idempotency_key = topup_pb2.CHANNEL_BANK, "shop-2"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Recharge(bank)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "channel" in (refused.value.details() or "")
        assert await code_of(shop, "/charging.v1.Admin/CreateSubscriber") == grpc.StatusCode.PERMISSION_DENIED
        # Only the token's hash is stored.
        stored = [str(r.dump(k)) for k in r.scan_iter("*")]  # type: ignore[union-attr]
        assert not any(token[4:20] in s for s in stored)
        assert [t.name for t in await store.list()] == ["webshop"]
        await store.revoke("webshop")
        assert await code_of(shop, "/charging.v1.TopUp/Recharge", SALE) == grpc.StatusCode.UNAUTHENTICATED
    assert await store.list() == []


async def test_renewed_certificates_are_used_without_a_restart(secured: App, pki: Path, tmp_path: Path) -> None:
    async with connect(secured.grpc_port, creds(pki, "monitor")) as channel:
        assert await health(channel) == health_pb2.HealthCheckResponse.SERVING
    renewed = tmp_path / "renewed"
    certs.write_dev_set(renewed)  # a new CA: the old certificates stop being trusted
    for name in ("server.key", "server.pem", "ca.pem"):
        staged = pki / f".{name}.new"
        shutil.copy(renewed / name, staged)
        os.replace(staged, pki / name)  # renamed into place, as a renewal should
    async with connect(secured.grpc_port, creds(renewed, "monitor")) as channel:
        assert await health(channel) == health_pb2.HealthCheckResponse.SERVING
    async with connect(secured.grpc_port, creds(renewed, "monitor", ca=renewed / "ca.pem")) as channel:
        assert await code_of(channel, "/charging.v1.Admin/GetCatalog") == grpc.StatusCode.OK
    # A client still trusting only the old CA no longer completes a handshake.
    old = tmp_path / "old"
    certs.write_dev_set(old)
    async with connect(secured.grpc_port, creds(old, "monitor")) as channel:
        assert await code_of(channel, "/grpc.health.v1.Health/Check") == grpc.StatusCode.UNAVAILABLE


async def test_a_half_written_renewal_keeps_the_old_certificate(secured: App, pki: Path, tmp_path: Path) -> None:
    renewed = tmp_path / "renewed"
    certs.write_dev_set(renewed)
    shutil.copy(renewed / "server.pem", pki / "server.pem")  # the key is not there yet
    async with connect(secured.grpc_port, creds(pki, "monitor")) as channel:
        assert await health(channel) == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_is_for_operators_only(secured: App, pki: Path) -> None:
    method = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"

    async def services(role: str) -> list[str] | grpc.StatusCode:
        async with connect(secured.grpc_port, creds(pki, role)) as channel:
            call = channel.stream_stream(
                method,
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            try:
                async for answer in call(iter([reflection_pb2.ServerReflectionRequest(list_services="")])):
                    return [s.name for s in answer.list_services_response.service]
            except grpc.aio.AioRpcError as exc:
                return exc.code()
        return []

    async def refusal(role: str) -> grpc.StatusCode:
        """The status of a call that sends nothing: the server decides before reading.
        (A client that writes while the server refuses may see its own failed write's
        INTERNAL instead of the server's status: grpc.aio's client, grpc/grpc#36066.)"""
        async with connect(secured.grpc_port, creds(pki, role)) as channel:
            code: grpc.StatusCode = await asyncio.wait_for(channel.stream_stream(method)().code(), 20)
            return code

    listed = await services("operator")
    assert isinstance(listed, list) and "charging.v1.Charging" in listed
    assert await refusal("monitor") == grpc.StatusCode.PERMISSION_DENIED


async def test_reflection_can_be_turned_off(settings: Settings, clock: ManualClock, pki: Path) -> None:
    app = App(secured_settings(settings, pki, reflection=False), clock=clock, run_background=False)
    await app.start()
    try:
        async with connect(app.grpc_port, creds(pki, "operator")) as channel:
            # A call that sends nothing (see test_reflection_is_for_operators_only).
            call = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")()
            assert await asyncio.wait_for(call.code(), 20) == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await app.stop()


async def test_audit_entries_name_the_authenticated_caller(secured: App, pki: Path, clock: ManualClock) -> None:
    assert secured.redis is not None and secured.catalogs is not None
    clock.advance(ms=1_768_046_400_000 - clock.now_ms())
    assert secured.database is not None
    b = Billing(
        secured.redis, billing_config.default(), secured.catalogs, clock, database=secured.database, sealer=SEALER
    )
    b.attach_lines(LineBook())
    async with connect(secured.grpc_port, creds(pki, "operator")) as operator:
        await enrol(Stubs.on(operator), b, "10", "491700000304")
    async with connect(secured.grpc_port, creds(pki, "billing")) as channel:
        await billing_pb2_grpc.BillingStub(channel).AddAdjustment(
            billing_pb2.AdjustmentRequest(
                adjustment_id="adj-1", billing_account="C10", amount_minor=-500, reason="outage", actor="agent-7"
            )
        )
    await b.payments.adjust("adj-2", "C10", 100, "fee", "batch")  # not a gRPC call
    audit: list[tuple[str, dict[str, str]]] = await secured.redis.xrange(bill_keys.audit("C10"))  # type: ignore[assignment]
    assert [(e[1]["actor"], e[1]["caller"]) for e in audit] == [
        ("agent-7", "spiffe://charging.local/billing"),
        ("batch", "internal"),
    ]


async def test_a_caller_removed_from_the_policy_is_shut_out_without_a_restart(
    secured: App, pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    policy = json.loads((pki / "policy.json").read_text())
    async with connect(secured.grpc_port, creds(pki, "monitor")) as channel:
        assert await code_of(channel, "/charging.v1.Admin/GetCatalog") == grpc.StatusCode.OK
        (pki / "policy.json").write_text('{"clients": [{"uri": "x:y", "roles": ["root"]}]}')  # not valid
        await asyncio.sleep(1.1)
        with caplog.at_level(logging.WARNING, logger="charging.security"):
            assert await code_of(channel, "/charging.v1.Admin/GetCatalog") == grpc.StatusCode.OK  # kept
        (record,) = [r for r in caplog.records if r.getMessage() == "policy file not reloaded"]
        assert "clients[0].roles[0]: must be one of" in record.error  # type: ignore[attr-defined]
        policy["clients"] = [c for c in policy["clients"] if c["uri"] != certs.role_uri("monitor")]
        (pki / "policy.json").write_text(json.dumps(policy))
        await asyncio.sleep(1.1)
        # The same connection: the policy is applied per call, not per handshake.
        assert await code_of(channel, "/charging.v1.Admin/GetCatalog") == grpc.StatusCode.UNAUTHENTICATED


async def test_an_open_stream_s_caller_revoked_or_taken_out_of_the_policy_is_shut_out(secured: App, pki: Path) -> None:
    """A stream's caller is judged again once a second while messages flow: a token
    revoked, or a certificate's role taken away, ends the open stream with the refusal,
    and the request that found it out changed nothing."""
    assert secured.redis is not None
    async with connect(secured.grpc_port, creds(pki, "operator")) as operator:
        await Stubs.on(operator).subscriber()
        tokens = TokenStore(secured.redis)
        token = await tokens.create("pgw-7", ("network",), (), 1_800_000_000)
        async with connect(secured.token_port, creds(pki, token=token)) as pgw:
            stream = Stream(Stubs.on(pgw))
            (first,) = await stream.exchange([sms_request("sms-1")])
            assert first.event.result_code == 2001
            await tokens.revoke("pgw-7")
            await asyncio.sleep(RECHECK_S + 0.5)
            await stream.call.write(message_of(sms_request("sms-2"), 2))
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await stream.call.read()
            assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert (await Stubs.on(operator).balance()).balance_micros == 1_000_000 - first.event.cost_micros

        before = refusals("/charging.v1.Charging/ChargeBatches", "role")
        async with connect(secured.grpc_port, creds(pki, "network")) as network:
            batches = Stream(Stubs.on(network), batched=True)
            (second,) = await batches.exchange([sms_request("sms-3")])
            assert second.event.result_code == 2001
            policy = json.loads((pki / "policy.json").read_text())
            for client in policy["clients"]:
                if client["uri"] == certs.role_uri("network"):
                    client["roles"] = ["monitor"]
            (pki / "policy.json").write_text(json.dumps(policy))
            await asyncio.sleep(RECHECK_S + 0.5)
            await batches.call.write(charging_pb2.ChargeBatch(messages=[message_of(sms_request("sms-4"), 2)]))
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await batches.call.read()
            assert ended.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert refusals("/charging.v1.Charging/ChargeBatches", "role") == before + 1
        paid = first.event.cost_micros + second.event.cost_micros
        assert (await Stubs.on(operator).balance()).balance_micros == 1_000_000 - paid
