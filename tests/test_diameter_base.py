"""The Diameter base protocol at the door: CER/CEA, DWR/DWA, DPR/DPA, the allow-list,
several peers at once, and what is refused, against a real server on 127.0.0.1 with a
client built from python-diameter."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import replace

import pytest
from diameter.message import Message
from diameter.message import constants as c
from prometheus_client import REGISTRY

from charging.diameter.config import DiameterConfig
from charging.errors import InvalidRequest, StartupError
from charging.server import App
from charging.settings import Settings
from tests.diameter_client import Client, find, result_code


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, diameter_address="127.0.0.1:0")


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_cer_is_answered_with_our_capabilities_and_the_credit_control_application(app: App) -> None:
    assert app.diameter is not None
    client = await Client.connect(app.diameter.port)
    cea = await client.cer()
    assert result_code(cea) == 2001
    assert not cea.header.is_request and not cea.header.is_error
    assert find(cea.avps, c.AVP_ORIGIN_HOST).value == b"ocs.charging.localdomain"  # type: ignore[union-attr]
    assert find(cea.avps, c.AVP_ORIGIN_REALM).value == b"localdomain"  # type: ignore[union-attr]
    assert find(cea.avps, c.AVP_AUTH_APPLICATION_ID).value == 4  # type: ignore[union-attr]
    assert find(cea.avps, c.AVP_SUPPORTED_VENDOR_ID).value == c.VENDOR_TGPP  # type: ignore[union-attr]
    assert find(cea.avps, c.AVP_HOST_IP_ADDRESS).value == (1, "127.0.0.1")  # type: ignore[union-attr]
    state = find(cea.avps, c.AVP_ORIGIN_STATE_ID)
    assert state is not None and state.value == app.diameter.me.state_id > 0
    dwa = await client.dwr()
    assert result_code(dwa) == 2001
    assert find(dwa.avps, c.AVP_ORIGIN_STATE_ID).value == state.value  # type: ignore[union-attr]
    dpa = await client.dpr()
    assert result_code(dpa) == 2001
    await client.wait_closed()  # the server closes after its DPA
    assert len(app.diameter.table) == 0


async def test_a_peer_without_the_credit_control_application_gets_5010_and_is_disconnected(app: App) -> None:
    assert app.diameter is not None
    client = await Client.connect(app.diameter.port)
    cea = await client.cer(application=c.APP_3GPP_GX)
    assert result_code(cea) == 5010
    await client.wait_closed()


async def test_anything_before_the_cer_closes_the_connection_unanswered(app: App) -> None:
    assert app.diameter is not None
    client = await Client.connect(app.diameter.port)
    dwr = Message.from_bytes(client.encode(_dwr(client)))
    client.writer.write(dwr.as_bytes())
    await client.wait_closed()
    assert [sent for sent, _ in client.exchanged] == []


def _dwr(client: Client) -> Message:
    from diameter.message.commands import DeviceWatchdogRequest

    dwr = DeviceWatchdogRequest()
    dwr.origin_host = client.origin_host.encode()
    dwr.origin_realm = client.origin_realm.encode()
    return dwr


async def test_an_unknown_command_is_answered_3001_with_the_error_bit(app: App) -> None:
    assert app.diameter is not None
    client = await Client.connect(app.diameter.port)
    assert result_code(await client.cer()) == 2001
    from diameter.message.commands import AaRequest

    aar = AaRequest()
    aar.session_id = "pgw;1;unknown-command"
    aar.origin_host = client.origin_host.encode()
    aar.origin_realm = client.origin_realm.encode()
    aar.destination_realm = b"localdomain"
    aar.auth_application_id = 1
    aar.auth_request_type = 1
    answer = await client.send(aar, application=1)
    assert result_code(answer) == 3001
    assert answer.header.is_error
    assert result_code(await client.dwr()) == 2001  # the connection goes on
    await client.close()


async def test_several_peers_and_connections_at_once(app: App) -> None:
    assert app.diameter is not None
    port = app.diameter.port
    clients = [
        await Client.connect(port, origin_host="pgw1.test.example"),
        await Client.connect(port, origin_host="pgw1.test.example"),
        await Client.connect(port, origin_host="smsc.test.example"),
    ]
    answers = await asyncio.gather(*(cl.cer() for cl in clients))
    assert [result_code(a) for a in answers] == [2001, 2001, 2001]
    assert len(app.diameter.table) == 3
    assert len(app.diameter.table.connections("PGW1.test.example")) == 2
    assert [result_code(a) for a in await asyncio.gather(*(cl.dwr() for cl in clients))] == [2001] * 3
    await clients[0].dpr()
    await clients[0].wait_closed()
    assert len(app.diameter.table.connections("pgw1.test.example")) == 1
    for cl in clients[1:]:
        await cl.close()


async def test_a_peer_that_restarts_is_counted(app: App) -> None:
    assert app.diameter is not None
    before = sample("charging_diameter_peer_restarts_total")
    first = await Client.connect(app.diameter.port)
    assert result_code(await first.cer(state_id=7)) == 2001
    await first.dpr()
    await first.wait_closed()
    second = await Client.connect(app.diameter.port)
    assert result_code(await second.cer(state_id=8)) == 2001
    assert sample("charging_diameter_peer_restarts_total") == before + 1
    await second.close()


async def test_the_server_says_dpr_to_its_peers_when_it_stops(settings: Settings, clock: object) -> None:
    app = App(settings, run_background=False)
    await app.start()
    assert app.diameter is not None
    client = await Client.connect(app.diameter.port)
    assert result_code(await client.cer()) == 2001
    stopping = asyncio.create_task(app.stop())
    dpr = await asyncio.wait_for(client.incoming.get(), 10)
    assert dpr.header.command_code == c.CMD_DISCONNECT_PEER and dpr.header.is_request
    await client.answer(dpr, [*_result_ok(), *client.origin()])
    await stopping
    await client.wait_closed()


def _result_ok() -> list:  # type: ignore[type-arg]
    from diameter.message.avp import Avp

    return [Avp.new(c.AVP_RESULT_CODE, value=2001)]


def test_allow_list_and_addresses_are_checked_when_settings_are_read() -> None:
    config = DiameterConfig.of(
        Settings(diameter_address="0.0.0.0:3868", diameter_peers="pgw.operator.example@operator.example,*@ims.example")
    )
    assert config is not None and config.port == 3868 and not config.loopback_only
    assert config.peers[0].admits("PGW.operator.example", "operator.example")
    assert not config.peers[0].admits("other.operator.example", "operator.example")
    assert config.peers[1].admits("anything", "ims.example")
    assert config.default_rating_groups == {"32251@3gpp.org": 30}
    assert DiameterConfig.of(Settings()) is None  # no address: no Diameter
    with pytest.raises(InvalidRequest) as bad:
        Settings.from_env({"CHARGING_DIAMETER_ADDRESS": "0.0.0.0:3868"})
    assert bad.value.field == "CHARGING_DIAMETER_PEERS"
    with pytest.raises(InvalidRequest) as bad:
        Settings.from_env({"CHARGING_DIAMETER_ADDRESS": "127.0.0.1:3868", "CHARGING_DIAMETER_PEERS": "pgw"})
    assert bad.value.field == "CHARGING_DIAMETER_PEERS"
    with pytest.raises(InvalidRequest) as bad:
        Settings.from_env({"CHARGING_DIAMETER_ADDRESS": "127.0.0.1", "CHARGING_DIAMETER_PEERS": ""})
    assert bad.value.field == "CHARGING_DIAMETER_ADDRESS"
    with pytest.raises(InvalidRequest) as bad:
        Settings.from_env(
            {"CHARGING_DIAMETER_ADDRESS": "127.0.0.1:0", "CHARGING_DIAMETER_DEFAULT_RATING_GROUPS": "32251@3gpp.org"}
        )
    assert bad.value.field == "CHARGING_DIAMETER_DEFAULT_RATING_GROUPS"


async def test_a_peer_not_on_the_allow_list_gets_3010(settings: Settings) -> None:
    app = App(replace(settings, diameter_peers="pgw.operator.example@operator.example"), run_background=False)
    await app.start()
    try:
        assert app.diameter is not None
        stranger = await Client.connect(app.diameter.port)
        cea = await stranger.cer()
        assert result_code(cea) == 3010 and cea.header.is_error
        await stranger.wait_closed()
        allowed = await Client.connect(
            app.diameter.port, origin_host="pgw.operator.example", origin_realm="operator.example"
        )
        assert result_code(await allowed.cer()) == 2001
        await allowed.close()
    finally:
        await app.stop()


async def test_a_silent_peer_gets_a_dwr_and_is_closed_when_it_does_not_answer(settings: Settings) -> None:
    app = App(replace(settings, diameter_watchdog_s=0.2), run_background=False)
    await app.start()
    try:
        assert app.diameter is not None
        before = sample("charging_diameter_connects_total", outcome="watchdog")
        client = await Client.connect(app.diameter.port)
        assert result_code(await client.cer()) == 2001
        dwr = await asyncio.wait_for(client.incoming.get(), 10)  # after Tw of silence
        assert dwr.header.command_code == c.CMD_DEVICE_WATCHDOG and dwr.header.is_request
        assert find(dwr.avps, c.AVP_ORIGIN_STATE_ID).value == app.diameter.me.state_id  # type: ignore[union-attr]
        await client.wait_closed()  # unanswered for another Tw: closed
        assert sample("charging_diameter_connects_total", outcome="watchdog") == before + 1
        assert len(app.diameter.table) == 0
    finally:
        await app.stop()


async def test_a_message_length_that_cannot_be_trusted_closes_the_connection(app: App) -> None:
    assert app.diameter is not None
    for length in (12, 22, 1 << 23):  # shorter than a header, not a multiple of 4, past 1 MiB
        client = await Client.connect(app.diameter.port)
        assert result_code(await client.cer()) == 2001
        client.writer.write(bytes([1]) + length.to_bytes(3, "big") + bytes(16))
        await client.wait_closed()
    client = await Client.connect(app.diameter.port)  # the server is fine
    assert result_code(await client.cer()) == 2001
    await client.close()


async def test_a_diameter_address_in_use_stops_the_start_saying_so(settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        app = App(replace(settings, diameter_address=f"127.0.0.1:{port}"), run_background=False)
        with pytest.raises(StartupError, match=f"Diameter address 127.0.0.1:{port}"):
            try:
                await app.start()
            finally:
                await app.stop()
