"""TLS after CER (RFC 6733 inband security, RFC 3588's way) on the cleartext Diameter
address: the CER offers Inband-Security-Id TLS, the CEA chooses it, and the TLS handshake
follows on the same connection. Real handshakes from Python's ``ssl`` on the client side
of the same socket (``StreamWriter.start_tls``) and from OTP's diameter application
(``tests/erlang/gy_peer.escript``); the peer must present a certificate naming its
Origin-Host."""

from __future__ import annotations

import contextlib
import dataclasses
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from diameter.message import constants as c
from diameter.message.avp import Avp
from diameter.message.commands import CapabilitiesExchangeRequest
from diameter.message.commands.credit_control import RequestedServiceUnit
from prometheus_client import REGISTRY

from charging.clock import ManualClock
from charging.diameter.base import inband_security
from charging.diameter.codec import Refused
from charging.diameter.config import DiameterConfig
from charging.errors import InvalidRequest
from charging.security import certs
from charging.server import App
from charging.settings import Settings
from tests.conftest import Stubs
from tests.diameter_client import Client, find, granted, msccs, result_code
from tests.test_diameter_erlang import HERE, Peer
from tests.test_security import connect, creds, secured_settings

MSISDN = "491700000001"
PGW = "pgw.test.example"
OTP_PEER = "pgw.erlang.test"  # the escript's Origin-Host


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    directory = tmp_path / "certs"
    certs.write_dev_set(directory)
    ca = certs.Issued((directory / "ca.pem").read_bytes(), (directory / "ca.key").read_bytes())
    certs.write_pair(directory, "pgw", certs.issue(ca, PGW, dns=[PGW]))
    certs.write_pair(directory, "otp", certs.issue(ca, OTP_PEER, dns=[OTP_PEER]))
    certs.write_pair(directory, "other", certs.issue(ca, "other", dns=["other.test.example"]))
    return directory


@contextlib.asynccontextmanager
async def server(settings: Settings, clock: ManualClock, pki: Path, mode: str) -> AsyncIterator[App]:
    secured = secured_settings(settings, pki, diameter_address="127.0.0.1:0", diameter_inband_tls=mode)
    application = App(secured, clock=clock, run_background=False)
    await application.start()
    try:
        yield application
    finally:
        await application.stop()


@pytest.fixture
async def ocs(settings: Settings, clock: ManualClock, pki: Path) -> AsyncIterator[App]:
    async with server(settings, clock, pki, "offer") as application:
        yield application


def client_tls(pki: Path, name: str = "") -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if name:
        context.load_cert_chain(pki / f"{name}.pem", pki / f"{name}.key")
    return context


async def cer(client: Client, *security: int) -> int:
    """A CER offering ``security`` (none: no Inband-Security-Id); the CEA's choice, -1
    when it names none, after asserting it is 2001."""
    request = CapabilitiesExchangeRequest()
    request.origin_host = client.origin_host.encode()
    request.origin_realm = client.origin_realm.encode()
    request.host_ip_address = ["127.0.0.1"]
    request.vendor_id = 0
    request.product_name = "inband TLS test client"
    request.auth_application_id = [4]
    if security:
        request.inband_security_id = list(security)
    answer = await client.send(request)
    assert result_code(answer) == 2001
    chosen = find(answer.avps, c.AVP_INBAND_SECURITY_ID)
    return -1 if chosen is None else int(chosen.value)


async def plain(app: App) -> Client:
    assert app.diameter is not None
    return await Client.connect(app.diameter.port)


def connects(outcome: str) -> float:
    return REGISTRY.get_sample_value("charging_diameter_connects_total", {"outcome": outcome}) or 0.0


async def test_a_peer_offering_tls_in_its_cer_charges_over_tls_on_the_same_connection(ocs: App, pki: Path) -> None:
    async with connect(ocs.grpc_port, creds(pki, "operator")) as channel:
        await Stubs.on(channel).subscriber(MSISDN, balance=1_000_000)
    pgw = await plain(ocs)
    try:
        assert await cer(pgw, 0, 1) == 1  # NO_INBAND_SECURITY or TLS offered: TLS chosen
        assert pgw.writer.get_extra_info("ssl_object") is None
        await pgw.writer.start_tls(client_tls(pki, "pgw"), server_hostname="127.0.0.1")
        assert pgw.writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
        ccr = pgw.ccr(f"{PGW};1;inband", 1, 0)
        ccr.add_subscription_id(
            subscription_id_type=c.E_SUBSCRIPTION_ID_TYPE_END_USER_E164, subscription_id_data=MSISDN
        )
        ccr.add_multiple_services_credit_control(
            requested_service_unit=RequestedServiceUnit(cc_total_octets=1_000_000), rating_group=30
        )
        cca = await pgw.send(ccr, application=4)
        assert result_code(cca) == 2001
        assert granted(msccs(cca)[0]) == {"CC-Total-Octets": 1_000_448}
        assert result_code(await pgw.dwr()) == 2001
        assert result_code(await pgw.dpr()) == 2001
        await pgw.wait_closed()
    finally:
        await pgw.close()


async def test_without_an_offer_the_connection_stays_cleartext_when_tls_is_only_offered(ocs: App) -> None:
    for offered in ((), (0,)):  # nothing (NO_INBAND_SECURITY), or NO_INBAND_SECURITY itself
        pgw = await plain(ocs)
        try:
            assert await cer(pgw, *offered) == -1  # the CEA names no choice: cleartext
            assert result_code(await pgw.dwr()) == 2001
            assert pgw.writer.get_extra_info("ssl_object") is None
        finally:
            await pgw.close()


async def test_a_certificate_naming_another_host_ends_the_connection_after_the_handshake(ocs: App, pki: Path) -> None:
    before = connects("tls_failed")
    impostor = await plain(ocs)  # claims pgw.test.example, presents other.test.example
    try:
        assert await cer(impostor, 1) == 1
        await impostor.writer.start_tls(client_tls(pki, "other"), server_hostname="127.0.0.1")
        await impostor.wait_closed()  # closed without a word: its CEA is already sent
    finally:
        await impostor.close()
    assert ocs.diameter is not None and len(ocs.diameter.table) == 0
    assert connects("tls_failed") == before + 1


async def test_a_peer_without_a_client_certificate_gets_no_connection(ocs: App, pki: Path) -> None:
    before = connects("tls_failed")
    anonymous = await plain(ocs)
    try:
        assert await cer(anonymous, 1) == 1
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await anonymous.writer.start_tls(client_tls(pki), server_hostname="127.0.0.1")
        await anonymous.wait_closed()  # (TLS 1.3: the handshake ends well on our side, then the alert)
    finally:
        await anonymous.close()
    assert connects("tls_failed") == before + 1


async def test_require_refuses_a_cer_without_tls_with_no_common_security(
    settings: Settings, clock: ManualClock, pki: Path
) -> None:
    async with server(settings, clock, pki, "require") as app:
        pgw = await plain(app)
        try:
            request = CapabilitiesExchangeRequest()
            request.origin_host = pgw.origin_host.encode()
            request.origin_realm = pgw.origin_realm.encode()
            request.host_ip_address = ["127.0.0.1"]
            request.vendor_id = 0
            request.product_name = "no TLS"
            request.auth_application_id = [4]
            request.inband_security_id = [0]
            assert result_code(await pgw.send(request)) == 5017  # DIAMETER_NO_COMMON_SECURITY
            await pgw.wait_closed()
        finally:
            await pgw.close()


async def test_otp_diameter_does_tls_after_cer_and_charges(settings: Settings, clock: ManualClock, pki: Path) -> None:
    async with server(settings, clock, pki, "require") as app:
        assert app.diameter is not None
        async with connect(app.grpc_port, creds(pki, "operator")) as channel:
            stubs = Stubs.on(channel)
            await stubs.subscriber(MSISDN, balance=1_000_000)
            await stubs.subscriber("491700000002", balance=5_000)
            tls = ["tls", str(pki / "otp.pem"), str(pki / "otp.key"), str(pki / "ca.pem")]
            peer = await Peer.start(str(app.diameter.port), str(HERE / "gy.dia"), MSISDN, "491700000002", *tls)
            try:
                assert await peer.step() == ["CEA", "2001", "ocs.charging.localdomain"]
                assert await peer.step() == ["CCA-I", "2001", "[30]=CC-Total-Octets:1000448", "[10]=CC-Time:120"]
                (connection,) = app.diameter.table.all()
                assert connection.certified == frozenset({OTP_PEER})  # TLS, its certificate checked
            finally:
                peer.process.kill()
                await peer.finish()


def test_inband_tls_needs_the_certificate_settings_and_a_known_mode(settings: Settings, pki: Path) -> None:
    plain_settings = dataclasses.replace(settings, diameter_address="127.0.0.1:0", diameter_inband_tls="offer")
    with pytest.raises(InvalidRequest) as refused:
        DiameterConfig.of(plain_settings)
    assert refused.value.field == "CHARGING_DIAMETER_INBAND_TLS"
    secured = secured_settings(settings, pki, diameter_address="127.0.0.1:0", diameter_inband_tls="always")
    with pytest.raises(InvalidRequest) as refused:
        DiameterConfig.of(secured)
    assert refused.value.field == "CHARGING_DIAMETER_INBAND_TLS"
    config = DiameterConfig.of(dataclasses.replace(secured, diameter_inband_tls="require"))
    assert config is not None and config.inband_tls == "require" and config.needs_tls


def test_the_choice_of_inband_security_per_mode() -> None:
    def offered(*ids: int) -> list[Avp]:
        return [Avp.new(c.AVP_INBAND_SECURITY_ID, value=i) for i in ids]

    assert [inband_security(offered(), mode) for mode in ("off", "offer")] == [0, 0]  # none listed: NO_INBAND
    assert [inband_security(offered(0, 1), mode) for mode in ("off", "offer", "require")] == [0, 1, 1]
    assert inband_security(offered(1), "offer") == 1
    for avps, mode in ((offered(1), "off"), (offered(), "require"), (offered(0), "require")):
        with pytest.raises(Refused) as refused:
            inband_security(avps, mode)  # type: ignore[arg-type]
        assert refused.value.code == 5017
    assert Settings.from_env({"CHARGING_DIAMETER_INBAND_TLS": "offer"}).diameter_inband_tls == "offer"
