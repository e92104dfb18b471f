"""The bytes of a whole Diameter exchange, decoded by Wireshark's dissector (``tshark``,
installed by ``make test``): every message must decode without a malformed packet or
an expert warning or error. The capture is written from the frames the client sent and
received (``tests/pcap.py``): no capture privileges needed."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from diameter.message import constants as c
from diameter.message.avp import Avp
from diameter.message.commands.credit_control import RequestedServiceUnit, UsedServiceUnit

from charging.server import App
from charging.settings import Settings
from tests import pcap
from tests.conftest import Stubs
from tests.diameter_client import Client, find, msccs, result_code
from tests.test_diameter_open5gs import INITIAL, TERMINATE, THRESHOLD, UPDATE, ccr

MSISDN = "491700000001"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, diameter_address="127.0.0.1:0")


def tshark(*args: str) -> str:
    binary = shutil.which("tshark")
    if binary is None:
        pytest.fail("tshark is missing: `make test` installs it (apt-get install tshark)")
    done = subprocess.run([binary, *args], capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


async def test_a_captured_exchange_decodes_without_malformed_packets_or_expert_warnings(
    app: App, stubs: Stubs, tmp_path: Path
) -> None:
    assert app.diameter is not None
    await stubs.subscriber(MSISDN, balance=1_000_000)
    client = await Client.connect(app.diameter.port, origin_host="smf.localdomain", origin_realm="localdomain")
    assert result_code(await client.cer()) == 2001
    # An Open5GS data session, one UPDATE sent again with the T flag.
    assert result_code(await client.send(ccr(client, INITIAL, 0), application=4)) == 2001
    update = client.encode(ccr(client, UPDATE, 1, used=(60, 300_000, 200_000), usu_reason=THRESHOLD), application=4)
    assert result_code(await client.send_raw(update)) == 2001
    assert result_code(await client.retransmit(update)) == 2001
    assert result_code(await client.send(ccr(client, TERMINATE, 2, used=(5, 1_000, 1_000)), application=4)) == 2001
    # A voice session with two services, an SMS event and its refund.
    sid = "ims.localdomain;7;voice"
    voice = client.ccr(sid, INITIAL, 0, context="32260@3gpp.org")
    voice.add_subscription_id(subscription_id_type=c.E_SUBSCRIPTION_ID_TYPE_END_USER_E164, subscription_id_data=MSISDN)
    voice.add_multiple_services_credit_control(
        requested_service_unit=RequestedServiceUnit(cc_time=120), rating_group=10
    )
    voice.add_multiple_services_credit_control(requested_service_unit=RequestedServiceUnit(cc_time=60), rating_group=11)
    assert result_code(await client.send(voice, application=4)) == 2001
    end = client.ccr(sid, TERMINATE, 1, context="32260@3gpp.org")
    end.add_subscription_id(subscription_id_type=c.E_SUBSCRIPTION_ID_TYPE_END_USER_E164, subscription_id_data=MSISDN)
    end.add_multiple_services_credit_control(used_service_unit=UsedServiceUnit(cc_time=61), rating_group=10)
    end.add_multiple_services_credit_control(used_service_unit=UsedServiceUnit(cc_time=0), rating_group=11)
    assert result_code(await client.send(end, application=4)) == 2001
    sms = client.ccr("smsc.localdomain;8;sms", 4, 0, context="32274@3gpp.org")
    sms.add_subscription_id(subscription_id_type=c.E_SUBSCRIPTION_ID_TYPE_END_USER_E164, subscription_id_data=MSISDN)
    sms.requested_action = c.E_REQUESTED_ACTION_DIRECT_DEBITING
    sms.add_multiple_services_credit_control(
        requested_service_unit=RequestedServiceUnit(cc_service_specific_units=1), rating_group=20
    )
    debit = await client.send(sms, application=4)
    assert result_code(debit) == 2001
    token = find(msccs(debit)[0], c.AVP_TGPP_REFUND_INFORMATION, c.VENDOR_TGPP)
    assert token is not None
    refund = client.ccr("smsc.localdomain;9;refund", 4, 0, context="32274@3gpp.org")
    refund.add_subscription_id(subscription_id_type=c.E_SUBSCRIPTION_ID_TYPE_END_USER_E164, subscription_id_data=MSISDN)
    refund.requested_action = c.E_REQUESTED_ACTION_REFUND_ACCOUNT
    refund.add_multiple_services_credit_control(
        requested_service_unit=RequestedServiceUnit(cc_service_specific_units=1), rating_group=20
    )
    refund.multiple_services_credit_control[0].refund_information = token.value
    assert result_code(await client.send(refund, application=4)) == 2001
    # Refused: an unknown AVP with the M bit (5001 with Failed-AVP).
    bad = client.ccr("pgw;10;m-bit", INITIAL, 0)
    bad.add_subscription_id(subscription_id_type=c.E_SUBSCRIPTION_ID_TYPE_END_USER_E164, subscription_id_data=MSISDN)
    unknown = Avp(code=99_999, vendor_id=0, payload=b"\0\0\0\1")
    unknown.is_mandatory = True
    bad.append_avp(unknown)
    assert result_code(await client.send(bad, application=4)) == 5001
    assert result_code(await client.dwr()) == 2001
    assert result_code(await client.dpr()) == 2001
    await client.wait_closed()

    capture = tmp_path / "diameter.pcap"
    pcap.write(capture, client.exchanged)
    summary = tshark(
        "-r", str(capture), "-Y", "diameter", "-T", "fields", "-e", "diameter.cmd.code", "-e", "diameter.flags.request"
    )
    commands = [line.split("\t") for line in summary.splitlines()]
    assert len(commands) == len(client.exchanged) == 24
    assert [code for code, _ in commands].count("272") == 18
    detail = tshark("-r", str(capture), "-V")
    assert "Malformed" not in detail
    assert "Multiple-Services-Credit-Control" in detail and "PS-Information" in detail
    assert "Result-Code: DIAMETER_SUCCESS (2001)" in detail
    assert "DIAMETER_AVP_UNSUPPORTED (5001)" in detail
    experts = tshark("-r", str(capture), "-q", "-z", "expert,warn")
    # The one warning: the AVP we made up for the 5001 case, in the CCR and its Failed-AVP.
    problems = [line.split() for line in experts.splitlines() if line.strip()[:1].isdigit()]
    assert problems == [["2", "Undecoded", "Diameter", "Unknown", "AVP", "99999", *problems[0][6:]]], experts
    assert "Errors" not in experts, experts
