"""The door against python-diameter's own peer machinery (``diameter.node.Node``, threads
and blocking sockets, written by others): it connects, exchanges capabilities, sends a
CCR-I/T through its application, and on stop says DPR and waits for our DPA."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from diameter.message import constants as c
from diameter.message.commands import CreditControlRequest
from diameter.message.commands.credit_control import RequestedServiceUnit, UsedServiceUnit
from diameter.node import Node
from diameter.node.application import SimpleThreadingApplication

from charging.server import App
from charging.settings import Settings
from tests.conftest import Stubs

MSISDN = "491700000001"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, diameter_address="127.0.0.1:0")


def ccr(app: SimpleThreadingApplication, session_id: str, kind: int, number: int) -> CreditControlRequest:
    req = CreditControlRequest()
    req.session_id = session_id
    req.origin_host = app.node.origin_host.encode()
    req.origin_realm = app.node.realm_name.encode()
    req.destination_realm = b"localdomain"
    req.auth_application_id = app.application_id
    req.service_context_id = "32260@3gpp.org"
    req.cc_request_type = kind
    req.cc_request_number = number
    req.add_subscription_id(subscription_id_type=c.E_SUBSCRIPTION_ID_TYPE_END_USER_E164, subscription_id_data=MSISDN)
    return req


def session(port: int) -> tuple[int, int, int]:
    """Run on a thread: a Node connects, charges a 61 s call, stops (DPR)."""
    node = Node("pgw.node.test", "node.test", vendor_ids=[c.VENDOR_TGPP])
    node.wakeup_interval = 0.2
    peer = node.add_peer(
        f"aaa://ocs.charging.localdomain:{port};transport=tcp",
        "localdomain",
        ip_addresses=["127.0.0.1"],
        is_persistent=True,
    )
    client = SimpleThreadingApplication(c.APP_DIAMETER_CREDIT_CONTROL_APPLICATION, is_auth_application=True)
    node.add_application(client, [peer])
    node.start()
    try:
        client.wait_for_ready(timeout=10)
        sid = node.session_generator.next_id()
        start = ccr(client, sid, c.E_CC_REQUEST_TYPE_INITIAL_REQUEST, 0)
        start.add_multiple_services_credit_control(
            requested_service_unit=RequestedServiceUnit(cc_time=120), rating_group=10
        )
        first = client.send_request(start, timeout=10)
        end = ccr(client, sid, c.E_CC_REQUEST_TYPE_TERMINATION_REQUEST, 1)
        end.add_multiple_services_credit_control(used_service_unit=UsedServiceUnit(cc_time=61), rating_group=10)
        last = client.send_request(end, timeout=10)
        granted = first.multiple_services_credit_control[0].granted_service_unit.cc_time
        return first.result_code, granted, last.result_code
    finally:
        node.stop(wait_timeout=10)


async def test_python_diameters_node_connects_charges_and_disconnects(app: App, stubs: Stubs) -> None:
    assert app.diameter is not None
    await stubs.subscriber(MSISDN, balance=1_000_000)
    assert await asyncio.to_thread(session, app.diameter.port) == (2001, 120, 2001)
    assert (await stubs.balance(MSISDN)).balance_micros == 1_000_000 - 200_000  # two started minutes
    assert len(app.diameter.table) == 0  # its DPR was answered and the connection closed
