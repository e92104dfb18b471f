"""Metrics hygiene: no ``_created`` series; the customer base read from Redis when a server
starts; every issued invoice counted, final ones too; invoices nobody can deliver counted
and logged; the loaded certificates' expiry exported."""

from __future__ import annotations

import logging
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from charging.census import record_census
from charging.clock import ManualClock
from charging.security import certs
from charging.security.tls import CertificateFiles
from charging.server import App
from charging.v1 import crm_pb2, crm_pb2_grpc
from postpaid import keys as bill_keys
from postpaid.billing import Billing
from tests.conftest import INITIAL, LineBook, Stubs, enrol, free_port, session_request
from tests.server_process import serve, stop, wait_serving
from tests.test_acquisition import application
from tests.test_bill_run import call
from tests.test_billing_edges import terminate
from tests.test_payments import DAY


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scrape(port: int) -> dict[str, float]:
    """The metrics endpoint's samples, by ``name{label="value",...}`` in label order."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def test_customer_base_gauges_come_from_redis_right_after_a_restart(tmp_path: Path, database_url: str) -> None:
    """``crm_active_lines`` used to be empty after a restart until a line changed."""
    redis_dir = tmp_path / "redis"
    proc, port = serve(redis_dir, database_url)
    try:
        wait_serving(proc, port)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            crm = crm_pb2_grpc.CrmStub(channel)
            crm.SubmitApplication(application("restart-1"), timeout=30)
            deadline = time.monotonic() + 30  # the provisioning job activates it on the simulator
            while crm.GetLine(crm_pb2.LineRef(msisdn="491701234567"), timeout=10).state != "active":
                assert time.monotonic() < deadline, "the line was not activated"
                time.sleep(0.05)
    finally:
        stop(proc)

    metrics_port = free_port()
    proc, port = serve(redis_dir, database_url, CHARGING_METRICS_ADDRESS=f"127.0.0.1:{metrics_port}")
    try:
        wait_serving(proc, port)
        samples = scrape(metrics_port)  # before any census pass could have run
    finally:
        stop(proc)
    assert samples['crm_active_lines{customer_type="MOBILE_PREPAID"}'] == 1
    assert samples['crm_active_lines{customer_type="MOBILE_POSTPAID"}'] == 0
    assert not [name for name in samples if "_created{" in name]


async def test_final_invoices_are_counted_like_bill_run_invoices(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock, app: App
) -> None:
    b, _book = postpaid_billing
    before = {kind: sample("billing_invoices_issued_total", kind=kind) for kind in ("period", "final")}
    await enrol(stubs, b, "61", "491700000611")
    acct = await enrol(stubs, b, "62", "491700000612")
    assert await call(stubs, "491700000611", "a", 60) == 2001
    assert await call(stubs, "491700000612", "b", 60) == 2001
    clock.advance(seconds=33 * DAY)
    report = await b.runs.run()
    assert report.issued == 2
    await terminate(b, "62", acct, "491700000612")
    assert [(await b.invoice(n)).kind for n in await b.invoices_of("C62")] == ["REGULAR", "FINAL"]
    assert sample("billing_invoices_issued_total", kind="period") - before["period"] == 2
    assert sample("billing_invoices_issued_total", kind="final") - before["final"] == 1


async def test_invoices_without_a_delivery_channel_are_counted_and_logged(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    b, _book = postpaid_billing  # no delivery channel configured
    before = sample("billing_invoices_without_channel_total")
    await enrol(stubs, b, "63", "491700000613")
    clock.advance(seconds=33 * DAY)
    assert (await b.runs.run()).issued == 1
    caplog.set_level(logging.WARNING, logger="postpaid.billing")
    assert await b.deliver_pending() == 1
    (number,) = await b.invoices_of("C63")
    assert (await b.invoice_state(number)).get("delivery", "PENDING") == "PENDING"
    assert sample("billing_invoices_without_channel_total") - before == 1
    warnings = [r for r in caplog.records if "no delivery channel" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


def test_the_loaded_certificates_expiry_is_exported_and_follows_a_renewal(tmp_path: Path) -> None:
    ca = certs.make_ca(days=400)
    certs.write_pair(tmp_path, "ca", ca)
    certs.write_pair(tmp_path, "server", certs.issue(ca, "server", dns=["localhost"], server=True, days=30))
    files = CertificateFiles(str(tmp_path / "server.pem"), str(tmp_path / "server.key"), str(tmp_path / "ca.pem"))

    def not_after(name: str) -> float:
        return x509.load_pem_x509_certificate((tmp_path / name).read_bytes()).not_valid_after_utc.timestamp()

    assert sample("charging_tls_certificate_not_after_seconds", certificate="server") == not_after("server.pem")
    assert sample("charging_tls_certificate_not_after_seconds", certificate="client_ca") == not_after("ca.pem")
    first = not_after("server.pem")

    renewed = tmp_path / "renewed"
    renewed.mkdir()
    certs.write_pair(renewed, "server", certs.issue(ca, "server", dns=["localhost"], server=True, days=90))
    (tmp_path / "server.key").write_bytes((renewed / "server.key").read_bytes())
    (tmp_path / "server.pem").write_bytes((renewed / "server.pem").read_bytes())
    assert files.fetch() is not None  # what gRPC asks before a handshake
    assert sample("charging_tls_certificate_not_after_seconds", certificate="server") == not_after("server.pem")
    assert not_after("server.pem") - first > 59 * DAY


async def test_reservations_the_sweeper_has_not_released_are_counted(
    stubs: Stubs, app: App, clock: ManualClock
) -> None:
    """``charging_sweep_overdue_accounts``: what the alert on reservations not released reads."""
    await stubs.subscriber(balance=5_000_000)
    ask = [{"rating_group": 10, "requested": {"time_s": 60}}]
    assert (await stubs.charging.ChargeSession(session_request("lost-1", INITIAL, 0, ask))).result_code == 2001
    assert app.redis is not None and app.sweeper is not None
    await record_census(app.redis, clock.now_ms())
    assert sample("charging_sweep_overdue_accounts") == 0
    clock.advance(seconds=3 * 3600)  # past its supervision deadline: never ended, and no sweeper ran
    await record_census(app.redis, clock.now_ms())
    assert sample("charging_sweep_overdue_accounts") == 1
    assert sample("charging_reserved_micros") > 0
    assert await app.sweeper.sweep_once() == 1
    await record_census(app.redis, clock.now_ms())
    assert (sample("charging_sweep_overdue_accounts"), sample("charging_reserved_micros")) == (0, 0)


async def test_accounts_a_bill_run_or_dunning_cannot_handle_are_counted(
    stubs: Stubs, postpaid_billing: tuple[Billing, LineBook], clock: ManualClock, app: App
) -> None:
    """A pass goes on past an account it cannot handle (and succeeds): the metric is what shows it."""
    b, _book = postpaid_billing
    before = {step: sample("billing_account_failures_total", step=step) for step in ("bill_run", "dunning")}
    await enrol(stubs, b, "64", "491700000614")
    await enrol(stubs, b, "65", "491700000615")
    assert app.redis is not None
    await app.redis.hset(bill_keys.billing_account("C64"), "cycle_day", "the 10th")  # damaged
    clock.advance(seconds=33 * DAY)
    report = await b.runs.run()
    assert (report.issued, report.failed) == (1, 1)
    await app.redis.rpush(bill_keys.billing_open("C65"), "NO-SUCH-INVOICE")  # damaged
    await app.redis.sadd(bill_keys.recheck("C65"), "C65")
    await b.collection.run()
    assert sample("billing_account_failures_total", step="bill_run") - before["bill_run"] == 1
    assert sample("billing_account_failures_total", step="dunning") - before["dunning"] == 1
