"""A real Prometheus scrapes a real server while traffic runs: sessions, events, top-ups, CRM
applications activated by the provisioning worker, a termination, a bill run, invoice
delivery, dunning and a payment. What an operator reads through Prometheus's HTTP API
exists and adds up: requests by method and result against the calls made, latency
histograms against request counts, gauges against the balances, counters against the
amounts; the rules of ops/prometheus/alerts.yml evaluate without error on these series.

Counters are process-wide (earlier tests in the session counted too), so each figure is
checked as what this traffic added to the value the registry had before it."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from charging.clock import ManualClock
from charging.server import App
from charging.settings import Settings
from charging.v1 import billing_pb2, billing_pb2_grpc, charging_pb2, common_pb2, crm_pb2, crm_pb2_grpc, topup_pb2
from postpaid.invoices import Invoice
from tests.conftest import DATA_KEY, INITIAL, NETWORK_TIMEOUT_S, TERMINATE, UPDATE, Stubs, session_request, sms_request
from tests.prometheus_server import DEADLINE_S, Prometheus, running
from tests.test_acquisition import application
from tests.test_dashboard import dashboard_queries
from tests.test_postpaid_e2e import DAY, GOOD, NOV_18, voice

pytestmark = pytest.mark.timeout(300)
PREPAID = "491700000001"


def local(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def local_sum(name: str, **labels: str) -> float:
    """The sum of the registry's samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for family in REGISTRY.collect():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


@pytest.fixture
async def server(
    redis_url: str, database_url: str, clock: ManualClock, tmp_path: Path
) -> AsyncIterator[tuple[App, grpc.aio.Channel]]:
    clock.advance(ms=NOV_18 * 1000 - clock.now_ms())
    settings = Settings(
        grpc_address="127.0.0.1:0",
        metrics_address="127.0.0.1:0",
        redis_url=redis_url,
        database_url=database_url,
        data_key=DATA_KEY,
        invoice_dir=str(tmp_path / "invoices"),
        billing_interval_s=0.0,  # bill runs and dunning are asked for below
        census_interval_s=0.2,
        sweep_interval_s=0.2,
        provisioning_interval_s=0.2,
        grace_period_s=1.0,
        shutdown_delay_s=0.0,
        job_retry_s=0.05,
        job_retry_max_s=0.2,
        network_timeout_s=NETWORK_TIMEOUT_S,
    )
    app = App(settings, clock=clock, run_background=True)
    await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    yield app, channel
    await channel.close()
    await app.stop()


async def line_becomes(crm: crm_pb2_grpc.CrmStub, msisdn: str, state: str) -> None:
    """Wait for the provisioning job (and the network simulator) to bring the line to ``state``."""
    async with asyncio.timeout(DEADLINE_S):
        while (await crm.GetLine(crm_pb2.LineRef(msisdn=msisdn))).state != state:  # noqa: ASYNC110 (a remote state)
            await asyncio.sleep(0.05)


async def test_prometheus_scrapes_what_an_operator_needs_and_it_adds_up(
    server: tuple[App, grpc.aio.Channel], clock: ManualClock, tmp_path: Path
) -> None:
    app, channel = server
    stubs = Stubs.on(channel)
    crm = crm_pb2_grpc.CrmStub(channel)
    billing = billing_pb2_grpc.BillingStub(channel)
    counted = {
        "requests": {
            (m, r): local("charging_requests_total", method=m, result=r)
            for m, r in [
                ("ChargeSession", "2001"),
                ("ChargeEvent", "2001"),
                ("ChargeEvent", "5030"),
                ("ChargeEvent", "INVALID_ARGUMENT"),
                ("Recharge", "OK"),
                ("SubmitApplication", "OK"),
                ("RunBilling", "OK"),
                ("RunDunning", "OK"),
                ("RecordPayment", "OK"),
            ]
        },
        "topups": local("charging_topups_total", channel="voucher"),
        "topup_micros": local("charging_topup_micros_total", channel="voucher"),
        "opened": local("charging_sessions_opened_total"),
        "closed": local("charging_sessions_closed_total", reason="terminate"),
        "adds": local_sum("crm_gross_additions_total"),
        "disconnections": local_sum("crm_disconnections_total"),
        "moved_away_prepaid": local("crm_disconnections_total", reason="MOVED_AWAY", customer_type="MOBILE_PREPAID"),
        "invoices": local("billing_invoices_issued_total", kind="period"),
        "delivered": local("billing_invoice_deliveries_total", channel="directory", outcome="delivered"),
        "dunning": local_sum("billing_dunning_actions_total"),
        "payments": local_sum("billing_payment_minor_total"),
        "commands": local_sum("provisioning_commands_total", outcome="acknowledged"),
    }
    assert app.metrics_port

    with running(tmp_path / "prometheus", app.metrics_port) as prom:
        # The CRM: a postpaid and a prepaid customer, activated by the provisioning job;
        # the prepaid line is terminated again (churn).
        postpaid = "491701234567"
        order = await crm.SubmitApplication(
            application("pp-1", contract="POSTPAID", plan="mobile-postpaid", history=GOOD)
        )
        other = application("pre-1", msisdn="491701234568", imsi="262011234567891", document="C01X00T478")
        other.applicant.given_name, other.applicant.date_of_birth = "Ben", "1985-02-03"  # another person
        assert (await crm.SubmitApplication(other)).status == crm_pb2.ORDER_STATUS_IN_PROGRESS
        await line_becomes(crm, postpaid, "active")
        await line_becomes(crm, "491701234568", "active")
        await crm.SubmitOrder(
            crm_pb2.LineOrder(
                crm_order_id="pre-1-end", msisdn="491701234568", kind="TERMINATE", termination_reason="MOVED_AWAY"
            )
        )
        await line_becomes(crm, "491701234568", "terminated")

        # Billing: usage, the bill run at the end of the period, delivery, dunning, a payment.
        assert await voice(stubs, postpaid, "pp-call", 185) == 2001
        clock.advance(seconds=31 * DAY)
        assert (await billing.RunBilling(billing_pb2.RunBillingRequest())).issued == 1
        assert app.billing is not None
        assert await app.billing.deliver_pending() == 1
        ba = "C" + order.customer_id
        (inv_pb,) = (await billing.ListInvoices(billing_pb2.BillingAccountId(billing_account=ba))).invoices
        invoice = Invoice.from_json(inv_pb.document_json)
        clock.advance(seconds=((invoice.due - invoice.issued).days + 3) * DAY)
        await billing.RunDunning(billing_pb2.RunDunningRequest())
        assert (await billing.GetDunningStatus(billing_pb2.BillingAccountId(billing_account=ba))).invoices[0].step
        await billing.RecordPayment(
            billing_pb2.PaymentRequest(billing_account=ba, amount_minor=100, channel="BANK_TRANSFER", reference="bt-1")
        )

        # Prepaid traffic: sessions (one left open, after the clock has moved for billing), events,
        # top-ups.
        await stubs.subscriber(msisdn=PREPAID, balance=10_000_000)
        for n in range(5):
            sid = f"voice-{n}"
            ask = [{"rating_group": 10, "requested": {"time_s": 120}}]
            assert (await stubs.charging.ChargeSession(session_request(sid, INITIAL, 0, ask))).result_code == 2001
            more = [{"rating_group": 10, "used": {"time_s": 30}, "requested": {"time_s": 120}}]
            assert (await stubs.charging.ChargeSession(session_request(sid, UPDATE, 1, more))).result_code == 2001
            used = [{"rating_group": 10, "used": {"time_s": 30}}]
            assert (await stubs.charging.ChargeSession(session_request(sid, TERMINATE, 2, used))).result_code == 2001
        ask = [{"rating_group": 10, "requested": {"time_s": 120}}]
        assert (await stubs.charging.ChargeSession(session_request("held", INITIAL, 0, ask))).result_code == 2001
        for n in range(7):
            assert (await stubs.charging.ChargeEvent(sms_request(f"sms-{n}"))).result_code == 2001
        assert (await stubs.charging.ChargeEvent(sms_request("nobody", msisdn="491709999999"))).result_code == 5030
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stubs.charging.ChargeEvent(charging_pb2.EventRequest(event_id="x"))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        for n, amount in enumerate((1_000_000, 2_500_000, 500_000)):
            await stubs.topup.Recharge(
                topup_pb2.RechargeRequest(
                    subscriber=common_pb2.SubscriberId(msisdn=PREPAID),
                    amount_micros=amount,
                    channel=topup_pb2.CHANNEL_VOUCHER,
                    idempotency_key=f"voucher-{n}",
                )
            )
        balance = await stubs.topup.GetBalance(
            topup_pb2.BalanceRequest(subscriber=common_pb2.SubscriberId(msisdn=PREPAID))
        )
        assert balance.reserved_micros > 0

        await scraped_after_the_traffic(prom, app)
        check_requests(prom, counted["requests"])
        check_latency(prom)
        check_sessions_and_money(prom, counted, balance.reserved_micros)
        check_customer_base(prom, counted)
        check_billing(prom, counted)
        check_jobs_and_hygiene(prom)
        check_dashboard(prom)


async def scraped_after_the_traffic(prom: Prometheus, app: App) -> None:
    """Wait until Prometheus holds a scrape taken after the traffic (the last call counted)
    and after a census pass that saw the open session, and until the rules were evaluated
    on it."""
    last = local("charging_requests_total", method="GetBalance", result="OK")  # the last call made
    assert last > 0

    def fresh() -> bool:
        return (
            prom.value('charging_requests_total{method="GetBalance",result="OK"}') == last
            and prom.value("charging_active_sessions") == 1
            and prom.value('method:charging_request_errors:ratio_rate5m{method="GetBalance"}') is not None
        )

    await asyncio.to_thread(prom.wait_for, "a scrape after the traffic", fresh)


def added(prom: Prometheus, promql: str, before: float) -> float:
    now = prom.value(promql)
    assert now is not None, f"no series for {promql}"
    return now - before


def check_requests(prom: Prometheus, before: dict[tuple[str, str], float]) -> None:
    expected = {
        ("ChargeSession", "2001"): 5 * 3 + 1 + 2,  # five calls, the held INITIAL, the postpaid call
        ("ChargeEvent", "2001"): 7,
        ("ChargeEvent", "5030"): 1,
        ("ChargeEvent", "INVALID_ARGUMENT"): 1,
        ("Recharge", "OK"): 3,
        ("SubmitApplication", "OK"): 2,
        ("RunBilling", "OK"): 1,
        ("RunDunning", "OK"): 1,
        ("RecordPayment", "OK"): 1,
    }
    for (method, result), count in expected.items():
        promql = f'charging_requests_total{{job="charging",method="{method}",result="{result}"}}'
        assert added(prom, promql, before[(method, result)]) == count, promql
    # Every method's requests by result add up to its latency histogram's count.
    by_method = {
        r["metric"]["method"]: float(r["value"][1]) for r in prom.query("sum by (method) (charging_requests_total)")
    }
    timed = {
        r["metric"]["method"]: float(r["value"][1])
        for r in prom.query("sum by (method) (charging_request_duration_seconds_count)")
    }
    assert by_method and by_method == {m: timed[m] for m in by_method}


def check_latency(prom: Prometheus) -> None:
    buckets = prom.query('charging_request_duration_seconds_bucket{method="ChargeSession"}')
    bounds = sorted(float(b["metric"]["le"]) for b in buckets)
    assert len(bounds) == 13 and bounds[-1] == float("inf")
    counts = [float(b["value"][1]) for b in sorted(buckets, key=lambda b: float(b["metric"]["le"]))]
    assert counts == sorted(counts)  # cumulative
    assert counts[-1] == prom.value('charging_request_duration_seconds_count{method="ChargeSession"}')
    p99 = prom.value(
        'histogram_quantile(0.99, sum by (le) (charging_request_duration_seconds_bucket{method="ChargeSession"}))'
    )
    assert p99 is not None and 0 < p99 <= 2.5


def check_sessions_and_money(prom: Prometheus, before: dict[str, float], reserved: int) -> None:
    assert prom.value("charging_active_sessions") == 1
    assert prom.value("charging_accounts_with_sessions") == 1
    assert prom.value("charging_reserved_micros") == reserved  # the held session's reservation
    assert prom.value("charging_sweep_overdue_accounts") == 0
    assert added(prom, "sum(charging_sessions_opened_total)", before["opened"]) == 5 + 1 + 1
    assert added(prom, 'charging_sessions_closed_total{reason="terminate"}', before["closed"]) == 5 + 1
    assert added(prom, 'charging_topups_total{channel="voucher"}', before["topups"]) == 3
    assert added(prom, 'charging_topup_micros_total{channel="voucher"}', before["topup_micros"]) == 4_000_000


def check_customer_base(prom: Prometheus, before: dict[str, float]) -> None:
    assert added(prom, "sum(crm_gross_additions_total)", before["adds"]) == 2
    assert added(prom, "sum(crm_disconnections_total)", before["disconnections"]) == 1
    # Counters are per process: earlier tests of this process count too, so the differences.
    promql = 'crm_disconnections_total{reason="MOVED_AWAY",customer_type="MOBILE_PREPAID"}'
    assert added(prom, promql, before["moved_away_prepaid"]) == 1
    # The gauge is read from Redis (this test's Redis holds only these lines).
    lines = {r["metric"]["customer_type"]: float(r["value"][1]) for r in prom.query("crm_active_lines")}
    assert lines == {"MOBILE_PREPAID": 0, "MOBILE_POSTPAID": 1, "FIXED_PREPAID": 0, "FIXED_POSTPAID": 0}
    assert added(prom, 'sum(provisioning_commands_total{outcome="acknowledged"})', before["commands"]) >= 3
    assert prom.value("provisioning_dead_letters_total") is not None


def check_billing(prom: Prometheus, before: dict[str, float]) -> None:
    assert added(prom, 'billing_invoices_issued_total{kind="period"}', before["invoices"]) == 1
    promql = 'billing_invoice_deliveries_total{channel="directory",outcome="delivered"}'
    assert added(prom, promql, before["delivered"]) == 1
    assert added(prom, "sum(billing_dunning_actions_total)", before["dunning"]) >= 1
    assert added(prom, "sum(billing_payment_minor_total)", before["payments"]) == 100


def check_jobs_and_hygiene(prom: Prometheus) -> None:
    assert prom.value('up{job="charging"}') == 1
    # The server's label `job` arrives as `exported_job` (alerts.yml and the dashboard read it so).
    ages = {r["metric"]["exported_job"]: float(r["value"][1]) for r in prom.query("charging_job_seconds_since_success")}
    assert {"sweeper", "census", "renewer", "catalog", "notifications", "provisioning", "order_resumer"} <= set(ages)
    runs = {r["metric"]["exported_job"]: float(r["value"][1]) for r in prom.query("charging_job_runs_total")}
    assert runs["census"] >= 1 and runs["provisioning"] >= 1
    assert prom.query('{__name__=~".+_created"}') == []
    # Every rule of alerts.yml evaluates on these series without error.
    groups = prom.get("/api/v1/rules")["groups"]
    rules = [rule for g in groups for rule in g["rules"]]
    assert len(rules) >= 20 and all(rule["health"] == "ok" for rule in rules), [
        (rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"
    ]
    # The recorded error ratio exists for the methods called: none failed (NaN: no call in
    # the last two scrapes, 0/0).
    for method in ("ChargeSession", "ChargeEvent", "Recharge", "RunBilling"):
        ratio = prom.value(f'method:charging_request_errors:ratio_rate5m{{method="{method}"}}')
        assert ratio is not None and (math.isnan(ratio) or ratio == 0), (method, ratio)


def check_dashboard(prom: Prometheus) -> None:
    """Every query of the Grafana dashboard runs on the scraped series; those of the panels
    this traffic feeds show data."""
    answered = {promql: prom.get("/api/v1/query", query=promql)["result"] for promql in dashboard_queries()}
    fed = (
        "charging_requests_total",
        "charging_active_sessions",
        "crm_active_lines",
        "charging_job_seconds_since_success",
    )
    for promql, result in answered.items():
        if any(name in promql for name in fed) and "UNAVAILABLE" not in promql and "offset" not in promql:
            assert result, f"no data for {promql}"
