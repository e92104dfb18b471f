"""The provisioning worker as a real separate process: it activates lines, and one killed
in the middle of a command is restarted without losing or doubling the activation."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
import pytest

from charging.clock import ManualClock
from charging.server import App
from charging.settings import Settings
from charging.v1 import crm_pb2, crm_pb2_grpc
from provisioning.applications import icao_check_digit
from provisioning.simulator import NetworkSimulator
from tests.conftest import DATA_KEY
from tests.test_acquisition import application


@pytest.fixture
async def crm(settings: Settings, clock: ManualClock, network: NetworkSimulator) -> AsyncIterator[crm_pb2_grpc.CrmStub]:
    app = App(
        replace(settings, network_url=network.url, provisioning_in_server=False), clock=clock, run_background=False
    )
    await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    yield crm_pb2_grpc.CrmStub(channel)
    await channel.close()
    await app.stop()


def start_worker(redis_url: str, network: NetworkSimulator, database_url: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "CHARGING_REDIS_URL": redis_url,
        "CHARGING_DATABASE_URL": database_url,
        "CHARGING_NETWORK_URL": network.url,
        "CHARGING_PROVISIONING_INTERVAL_S": "0.2",
        "CHARGING_LEASE_S": "1",  # a killed worker's leases lapse soon: its restart takes them over
        "CHARGING_NETWORK_TIMEOUT_S": "5",
        "CHARGING_DATA_KEY": DATA_KEY,  # the servers' key ring: it reads the customers they sealed
    }
    return subprocess.Popen([sys.executable, "-m", "charging.cli", "worker"], env=env, stderr=subprocess.PIPE)


WAIT_S = 60.0  # a worker process to start (imports take seconds on a loaded machine) and act


async def wait_state(crm: crm_pb2_grpc.CrmStub, msisdn: str, state: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if (await crm.GetLine(crm_pb2.LineRef(msisdn=msisdn))).state == state:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"line {msisdn} never became {state}")


async def settled_order(crm: crm_pb2_grpc.CrmStub, order_id: str) -> crm_pb2.Order:
    """The order once the worker has finished acting on the acknowledgement: it marks the
    line active first and the order completed after, so a reader can see the one before
    the other."""
    deadline = time.monotonic() + WAIT_S
    while True:
        order = await crm.GetOrder(crm_pb2.OrderRef(crm_order_id=order_id))
        if order.status != crm_pb2.ORDER_STATUS_IN_PROGRESS or time.monotonic() >= deadline:
            return order
        await asyncio.sleep(0.05)


def numbered(n: int) -> crm_pb2.Application:
    doc = f"W0000000{n}"
    return application(
        f"w{n}", msisdn=f"49170123400{n}", imsi=f"26201000000000{n}", document=doc + str(icao_check_digit(doc))
    )


async def test_a_separate_worker_process_activates_and_survives_a_kill(
    crm: crm_pb2_grpc.CrmStub, network: NetworkSimulator, redis_url: str, settings: Settings
) -> None:
    worker = start_worker(redis_url, network, settings.database_url)
    try:
        await crm.SubmitApplication(numbered(1))
        await wait_state(crm, "491701234001", "active")

        network.mode, network.delay_s = "slow", 2.0
        before = network.requests
        await crm.SubmitApplication(numbered(2))
        for _ in range(100):  # the ACTIVATE command is on the wire
            if network.requests > before:
                break
            await asyncio.sleep(0.05)
        worker.send_signal(signal.SIGKILL)
        worker.communicate(timeout=10)
        network.mode = "ok"

        worker = start_worker(redis_url, network, settings.database_url)  # restarted after the crash
        await wait_state(crm, "491701234002", "active")
        assert network.lines["491701234002"]["applied"] == 1
        order = await settled_order(crm, "w2")
        assert order.status == crm_pb2.ORDER_STATUS_COMPLETED
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            _, err = worker.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()  # never left running after the test, whatever went wrong
            raise
    assert b"provisioning worker stopped" in err
    assert b"491701234002" not in err  # no MSISDN in the logs
