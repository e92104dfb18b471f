"""Prometheus metrics, declared once. Labels are small closed sets (method, result code,
channel): never a subscriber, session or account id."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

REQUESTS = Counter(
    "charging_requests_total",
    "gRPC requests by method and outcome (RFC 8506 result code, or gRPC status name).",
    ["method", "result"],
)
LATENCY = Histogram(
    "charging_request_duration_seconds",
    "Time to answer a gRPC request.",
    ["method"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
RETRANSMISSIONS = Counter(
    "charging_retransmissions_total",
    "Requests answered from a stored answer (retransmissions and repeated keys).",
    ["method"],
)
SESSIONS_OPENED = Counter("charging_sessions_opened_total", "Sessions opened by INITIAL requests.")
SESSIONS_CLOSED = Counter("charging_sessions_closed_total", "Sessions closed, by how.", ["reason"])
ACTIVE_SESSIONS = Gauge("charging_active_sessions", "Open sessions (counted in Redis by the census).")
RESERVED_MICROS = Gauge("charging_reserved_micros", "Money held in open reservations, micros (counted by the census).")
ACCOUNTS_WITH_SESSIONS = Gauge("charging_accounts_with_sessions", "Accounts that have open sessions (census).")
TOPUPS = Counter("charging_topups_total", "Recharges applied, by channel.", ["channel"])
TOPUP_MICROS = Counter("charging_topup_micros_total", "Money recharged, micros, by channel.", ["channel"])
UNBILLED_OVERRUN = Counter(
    "charging_unbilled_overrun_total",
    "Session usage beyond the overrun floor, not billed (the session was ended), by unit: "
    "seconds, bytes, service units or micros, rounded up to the rate's increments.",
    ["unit"],
)
SWEPT_MICROS = Counter("charging_swept_micros_total", "Reserved money returned by the supervision sweeper, micros.")
REDIS_ERRORS = Counter("charging_redis_errors_total", "Redis could not be reached, by component.", ["component"])
CDRS_RELAYED = Counter(
    "charging_cdrs_relayed_total",
    "Usage records and audit entries moved from Redis to PostgreSQL, by table.",
    ["table"],
)
CDRS_REPEATED = Counter(
    "charging_cdrs_repeated_total",
    "Records the relay found in PostgreSQL already (relayed again after a crash before the trim), by table.",
    ["table"],
)
CDR_RELAY_LAG = Gauge(
    "charging_cdr_relay_lag_seconds", "Age of the oldest record this process knows to be waiting for the relay."
)
CDRS_UNREADABLE = Counter("charging_cdrs_unreadable_total", "Record outbox entries skipped as unreadable.")
NOTIFICATIONS = Counter("charging_notifications_total", "Notifications relayed to the stream, by kind.", ["kind"])
BUNDLES_SOLD = Counter("charging_bundles_sold_total", "Bundles bought with the money balance, by channel.", ["channel"])
RENEWALS = Counter("charging_bundle_renewals_total", "Recurring bundle renewals, by outcome.", ["outcome"])
ADMISSION_REJECTIONS = Counter(
    "charging_admission_rejections_total",
    "Calls refused before any work: reason in_flight (RESOURCE_EXHAUSTED, the process is at its "
    "in-flight limit) or deadline (DEADLINE_EXCEEDED, the caller's deadline passed before Redis was asked).",
    ["method", "reason"],
)

# Background jobs (charging/jobs.py), by job name only.
JOB_RUNS = Counter("charging_job_runs_total", "Passes of background jobs done, failed ones included, by job.", ["job"])
JOB_FAILURES = Counter("charging_job_failures_total", "Failed passes of background jobs, by job.", ["job"])


class JobAges(Collector):
    """``charging_job_seconds_since_success{job}``, computed when scraped: since the job's
    last successful pass (since it started, before its first). Alert when it grows well
    past the job's interval."""

    NAME = "charging_job_seconds_since_success"
    HELP = "Seconds since the last successful pass of a background job, by job."

    def __init__(self) -> None:
        self._ages: dict[str, Callable[[], float]] = {}
        self._lock = threading.Lock()  # scraped from the metrics server's thread

    def track(self, job: str, age: Callable[[], float]) -> None:
        with self._lock:
            self._ages[job] = age

    def forget(self, job: str, age: Callable[[], float]) -> None:
        """Stop reporting ``job``, unless another ``age`` has been tracked for it since."""
        with self._lock:
            if self._ages.get(job) == age:
                del self._ages[job]

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.NAME, self.HELP, labels=["job"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["job"])
        with self._lock:
            ages = sorted(self._ages.items())
        for job, age in ages:
            family.add_metric([job], age())
        yield family


JOB_AGES = JobAges()
REGISTRY.register(JOB_AGES)

# Postpaid billing.
BILL_RUN_INVOICES = Counter("billing_invoices_issued_total", "Invoices issued by bill runs and final bills.")
PAYMENTS = Counter("billing_payments_total", "Payments applied, by channel.", ["channel"])
PAYMENT_MINOR = Counter("billing_payment_minor_total", "Money received, minor units, by channel.", ["channel"])
DUNNING_ACTIONS = Counter("billing_dunning_actions_total", "Dunning actions taken, by kind.", ["kind"])
INVOICE_DELIVERIES = Counter(
    "billing_invoice_deliveries_total", "Invoice deliveries, by channel and outcome.", ["channel", "outcome"]
)

# Security: calls refused by the guard (reason: unauthenticated, role, channel, no_policy).
AUTH_REFUSALS = Counter(
    "charging_auth_refusals_total",
    "Calls refused for want of an identity or a role, by method and reason.",
    ["method", "reason"],
)
