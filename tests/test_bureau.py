"""The credit bureau adapter against a real local HTTP stub, and its use in acquisition."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest

from charging.clock import ManualClock
from charging.server import App
from charging.settings import Settings
from charging.v1 import crm_pb2, crm_pb2_grpc
from provisioning.bureau import BureauUnavailable, HttpCreditBureau
from provisioning.credit import MICROS, CreditHistory
from tests.test_acquisition import application

REPORTS: dict[str, dict[str, int]] = {}


class Bureau(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        report = REPORTS.get(self.path.removeprefix("/reports/"))
        body = json.dumps(report or {"error": "unknown"}).encode()
        self.send_response(200 if report else 404)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def bureau_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Bureau)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    REPORTS.clear()


async def test_the_bureau_record_replaces_the_declared_history(bureau_url: str) -> None:
    REPORTS["fp1"] = {"defaults_5y": 2, "late_payments_12m": 0, "tenure_months": 12, "monthly_debt_micros": 0}
    bureau = HttpCreditBureau(bureau_url)
    declared = CreditHistory(tenure_months=100, monthly_income_micros=3000 * MICROS)
    assert await bureau.history("fp1", declared) == replace(declared, defaults_5y=2, tenure_months=12)
    assert await bureau.history("unknown", declared) == declared
    await bureau.aclose()
    with pytest.raises(BureauUnavailable):
        await HttpCreditBureau("http://127.0.0.1:9", timeout_s=0.5).history("fp1", declared)


@pytest.fixture
async def crm_with_bureau(
    settings: Settings, clock: ManualClock, bureau_url: str
) -> AsyncIterator[tuple[App, crm_pb2_grpc.CrmStub]]:
    clock.advance(ms=1_795_000_000_000 - clock.now_ms())
    application_ = App(replace(settings, bureau_url=bureau_url), clock=clock, run_background=False)
    await application_.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{application_.grpc_port}")
    yield application_, crm_pb2_grpc.CrmStub(channel)
    await channel.close()
    await application_.stop()


async def test_a_bad_bureau_record_refuses_postpaid(crm_with_bureau: tuple[App, crm_pb2_grpc.CrmStub]) -> None:
    app, crm = crm_with_bureau
    assert app.acquisition is not None
    print_ = app.acquisition.screener.document_print("PASSPORT", "DE", "L898902C36")
    REPORTS[print_] = {"defaults_5y": 3, "late_payments_12m": 0, "tenure_months": 0, "monthly_debt_micros": 0}
    good_declared = {"tenure_months": 36, "monthly_income_micros": 4_000_000_000}
    order = await crm.SubmitApplication(
        application("b1", contract="POSTPAID", plan="mobile-postpaid", history=good_declared)
    )
    assert [s.step for s in order.steps][:4] == ["application", "screening", "bureau", "credit"]
    assert (order.status, order.credit_class) == (crm_pb2.ORDER_STATUS_REJECTED, "E")
