"""The door against a Diameter implementation we did not write, running: OTP's diameter
application (Debian's ``erlang-diameter``) in ``tests/erlang/gy_peer.escript``, with the
RFC 4006 dictionary of ``tests/erlang/gy.dia``. OTP's own peer state machine does the
capabilities exchange, its watchdog (a DWR of its own) and DPR; its strict decoder reads
every answer; it charges a session with two MSCCs (CCR-I/U/T) and an SMS event, and it is
the server of our RAR and ASR: a line that ran out is topped up over gRPC, the peer gets
the RAR, answers it and re-authorizes with a CCR-U; the line is barred and it gets an
ASR. The balances are read through the gRPC API."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from charging.server import App
from charging.settings import Settings
from charging.v1 import admin_pb2, common_pb2, topup_pb2
from tests.conftest import Stubs

HERE = Path(__file__).parent / "erlang"
MSISDN = "491700000001"
LOW = "491700000002"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, diameter_address="127.0.0.1:0")


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Peer:
    """The escript as a subprocess: its step lines, and a line back at each WAIT."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    @staticmethod
    async def start(*args: str) -> Peer:
        escript = shutil.which("escript")
        if escript is None:
            pytest.fail("escript is missing: `make test` installs it (apt-get install erlang-diameter)")
        process = await asyncio.create_subprocess_exec(
            escript,
            str(HERE / "gy_peer.escript"),
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        return Peer(process)

    async def step(self) -> list[str]:
        """The next step line, split; a failure of the peer fails the test with its reason."""
        assert self.process.stdout is not None
        while True:
            raw = await asyncio.wait_for(self.process.stdout.readline(), 30)
            line = raw.decode().strip()
            assert raw, f"the peer exited: {self.lines}"
            self.lines.append(line)
            words = line.split()
            assert words[0] != "FAILED", "\n".join(self.lines)
            if words[0].isupper():  # OTP may log reports of its own: not steps
                return words

    async def go_on(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"done\n")
        await self.process.stdin.drain()

    async def finish(self) -> int:
        try:
            return await asyncio.wait_for(self.process.wait(), 30)
        finally:
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()


async def test_otp_diameter_charges_a_session_and_an_event_and_answers_our_rar_and_asr(app: App, stubs: Stubs) -> None:
    assert app.diameter is not None
    await stubs.subscriber(MSISDN, balance=1_000_000)
    await stubs.subscriber(LOW, balance=5_000)  # 500 KB of data at 10 micros per KB
    dwa, dpa = (
        sample("charging_diameter_requests_total", command="DWR", result="2001"),
        sample("charging_diameter_requests_total", command="DPR", result="2001"),
    )
    rar, asr = (
        sample("charging_diameter_sent_total", command="RAR", outcome="answered"),
        sample("charging_diameter_sent_total", command="ASR", outcome="answered"),
    )
    peer = await Peer.start(str(app.diameter.port), str(HERE / "gy.dia"), MSISDN, LOW)

    assert await peer.step() == ["CEA", "2001", "ocs.charging.localdomain"]
    # Data in whole KB (1,000,000 octets -> 977 KB), voice as asked.
    assert await peer.step() == ["CCA-I", "2001", "[30]=CC-Total-Octets:1000448", "[10]=CC-Time:120"]
    assert await peer.step() == ["CCA-U", "2001", "[30]=CC-Total-Octets:1000448"]
    assert await peer.step() == ["CCA-T", "2001"]
    assert await peer.step() == ["CCA-E", "2001", "[20]=CC-Service-Specific-Units:1"]
    # 1,024,000 octets (1,000 KB: 10,000), two started minutes (200,000), one SMS (50,000).
    assert (await stubs.balance(MSISDN)).balance_micros == 1_000_000 - 10_000 - 200_000 - 50_000

    # Final unit with a redirect (Final-Unit-Action 1) for what is left.
    assert await peer.step() == ["CCA-I-LOW", "2001", "[30]=CC-Total-Octets:512000", "fui", "1"]
    assert await peer.step() == ["WAIT", "topup"]
    await stubs.topup.Recharge(
        topup_pb2.RechargeRequest(
            subscriber=common_pb2.SubscriberId(msisdn=LOW),
            amount_micros=1_000_000,
            channel=topup_pb2.CHANNEL_RETAIL,
            idempotency_key="erlang-topup",
        )
    )
    await peer.go_on()
    assert await peer.step() == ["RAR", "0"]  # Re-Auth-Request-Type AUTHORIZE_ONLY
    assert await peer.step() == ["CCA-U-LOW", "2001", "[30]=CC-Total-Octets:1000448", "fui", "0"]
    assert (await stubs.balance(LOW)).balance_micros == 5_000 + 1_000_000 - 5_000

    assert await peer.step() == ["WAIT", "bar"]
    await stubs.admin.SetSubscriberStatus(
        admin_pb2.SetStatusRequest(
            subscriber=common_pb2.SubscriberId(msisdn=LOW), status=admin_pb2.SUBSCRIBER_STATUS_BARRED
        )
    )
    await peer.go_on()
    assert await peer.step() == ["ASR"]

    # OTP's watchdog: its DWR answered by our DWA; then its DPR, our DPA.
    assert (await peer.step())[0] == "DWA"
    assert await peer.step() == ["DPA"]
    assert await peer.step() == ["DONE"]
    assert await peer.finish() == 0, peer.lines
    assert sample("charging_diameter_requests_total", command="DWR", result="2001") > dwa
    assert sample("charging_diameter_requests_total", command="DPR", result="2001") == dpa + 1
    assert sample("charging_diameter_sent_total", command="RAR", outcome="answered") == rar + 1
    assert sample("charging_diameter_sent_total", command="ASR", outcome="answered") == asr + 1
    assert len(app.diameter.table) == 0
