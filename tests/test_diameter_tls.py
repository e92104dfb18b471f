"""Diameter over TLS (RFC 6733 13: TLS from the start, on a port of its own): real TLS
handshakes from python-diameter's codec over an ``ssl`` connection, with the server
certificate of the gRPC API's settings and client certificates that must name the
peer's Origin-Host (a DNS subject alternative name), mutual authentication required."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from diameter.message import constants as c
from diameter.message.commands import CapabilitiesExchangeRequest
from diameter.message.commands.credit_control import RequestedServiceUnit

from charging.clock import ManualClock
from charging.diameter.config import DiameterConfig
from charging.errors import InvalidRequest
from charging.security import certs
from charging.server import App
from charging.settings import Settings
from tests.conftest import Stubs
from tests.diameter_client import Client, granted, msccs, result_code
from tests.test_security import connect, creds, secured_settings

MSISDN = "491700000001"
PGW = "pgw.test.example"


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    directory = tmp_path / "certs"
    certs.write_dev_set(directory)
    ca = certs.Issued((directory / "ca.pem").read_bytes(), (directory / "ca.key").read_bytes())
    certs.write_pair(directory, "pgw", certs.issue(ca, PGW, dns=[PGW]))
    certs.write_pair(directory, "other", certs.issue(ca, "other", dns=["other.test.example"]))
    return directory


@pytest.fixture
async def ocs(settings: Settings, clock: ManualClock, pki: Path) -> AsyncIterator[App]:
    secured = secured_settings(settings, pki, diameter_address="127.0.0.1:0", diameter_tls_address="127.0.0.1:0")
    application = App(secured, clock=clock, run_background=False)
    await application.start()
    yield application
    await application.stop()


def client_tls(pki: Path, name: str = "") -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if name:
        context.load_cert_chain(pki / f"{name}.pem", pki / f"{name}.key")
    return context


@contextlib.asynccontextmanager
async def peer(app: App, pki: Path, name: str) -> AsyncIterator[Client]:
    assert app.diameter is not None
    client = await Client.connect(app.diameter.tls_port, tls=client_tls(pki, name))
    try:
        yield client
    finally:
        await client.close()


async def test_a_peer_named_by_its_certificate_charges_over_tls(ocs: App, pki: Path) -> None:
    async with connect(ocs.grpc_port, creds(pki, "operator")) as channel:
        await Stubs.on(channel).subscriber(MSISDN, balance=1_000_000)
    async with peer(ocs, pki, "pgw") as pgw:
        assert pgw.writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
        assert result_code(await pgw.cer()) == 2001
        ccr = pgw.ccr(f"{PGW};1;tls", 1, 0)
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


async def test_a_certificate_naming_another_host_is_refused_unknown_peer(ocs: App, pki: Path) -> None:
    async with peer(ocs, pki, "other") as impostor:  # presents other.test.example, claims pgw
        assert result_code(await impostor.cer()) == 3010
        await impostor.wait_closed()


async def test_a_peer_without_a_client_certificate_never_gets_an_answer(ocs: App, pki: Path) -> None:
    assert ocs.diameter is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", ocs.diameter.tls_port, ssl=client_tls(pki))
    client = Client(reader, writer)
    writer.write(client.encode(bare_cer(client)))
    with contextlib.suppress(ssl.SSLError, ConnectionError):
        await writer.drain()
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(20), 10)
    writer.close()


def bare_cer(client: Client) -> CapabilitiesExchangeRequest:
    cer = CapabilitiesExchangeRequest()
    cer.origin_host = client.origin_host.encode()
    cer.origin_realm = client.origin_realm.encode()
    cer.host_ip_address = ["127.0.0.1"]
    cer.vendor_id = 0
    cer.product_name = "no certificate"
    cer.auth_application_id = [4]
    return cer


def test_the_tls_port_needs_the_certificate_settings(settings: Settings) -> None:
    plain = dataclasses.replace(settings, diameter_address="127.0.0.1:0", diameter_tls_address="127.0.0.1:0")
    with pytest.raises(InvalidRequest) as refused:
        DiameterConfig.of(plain)
    assert refused.value.field == "CHARGING_DIAMETER_TLS_ADDRESS"
