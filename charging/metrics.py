"""Prometheus metrics, declared once. Labels are small closed sets (method, result code,
channel): never a subscriber, session or account id."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# No ``<counter>_created`` series: one more series per labelled child that no query of ours
# reads (rate() needs none). A process-wide switch read at every collection: it covers the
# metrics of every package (provisioning declares its own).
disable_created_metrics()  # type: ignore[no-untyped-call]

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
# Census gauges: set by the one process holding the census lease; with workers
# (supervisor.py) the endpoint shows the value a live worker set last.
ACTIVE_SESSIONS = Gauge(
    "charging_active_sessions", "Open sessions (counted in Redis by the census).", multiprocess_mode="livemostrecent"
)
RESERVED_MICROS = Gauge(
    "charging_reserved_micros",
    "Money held in open reservations, micros (counted by the census).",
    multiprocess_mode="livemostrecent",
)
ACCOUNTS_WITH_SESSIONS = Gauge(
    "charging_accounts_with_sessions", "Accounts that have open sessions (census).", multiprocess_mode="livemostrecent"
)
SWEEP_OVERDUE = Gauge(
    "charging_sweep_overdue_accounts",
    "Accounts whose session deadline or bucket expiry passed over a minute ago and that the sweeper has not "
    "released yet (census): reservations not released.",
    multiprocess_mode="livemostrecent",
)
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
# Set by each process every second (the ``cdr_relay_lag`` job: a function gauge is not
# exported by a supervisor's shared endpoint); with workers, the largest of the live ones.
CDR_RELAY_LAG = Gauge(
    "charging_cdr_relay_lag_seconds",
    "Age of the oldest record a process knows to be waiting for the relay (workers: the largest).",
    multiprocess_mode="livemax",
)
CDRS_UNREADABLE = Counter("charging_cdrs_unreadable_total", "Record outbox entries skipped as unreadable.")
ORDER_ROWS_REFUSED = Counter(
    "charging_order_rows_refused_total", "Order and line records PostgreSQL refused, set aside (order_rows_refused)."
)
NOTIFICATIONS = Counter("charging_notifications_total", "Notifications relayed to the stream, by kind.", ["kind"])
BUNDLES_SOLD = Counter("charging_bundles_sold_total", "Bundles bought with the money balance, by channel.", ["channel"])
RENEWALS = Counter("charging_bundle_renewals_total", "Recurring bundle renewals, by outcome.", ["outcome"])
ADMISSION_REJECTIONS = Counter(
    "charging_admission_rejections_total",
    "Calls refused before any work: reason in_flight (RESOURCE_EXHAUSTED, the process is at its "
    "in-flight limit) or deadline (DEADLINE_EXCEEDED, the caller's deadline passed before Redis was asked).",
    ["method", "reason"],
)
STALE_VIEW_RETRIES = Counter(
    "charging_stale_view_retries_total",
    "Charging scripts that refused the account, plan, catalog or tariff change they were given and were "
    "tried again (routing.py), by the script's answer: UNKNOWN, PLAN, CATALOG (a cache lagged behind a change "
    "made elsewhere) or TARIFF (a split report around another tariff change than the session announced).",
    ["kind"],
)

# The process's pauses (heap.py): what makes a call wait before any code of ours runs.
PAUSE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
GC_PAUSE = Histogram(
    "charging_gc_pause_seconds",
    "Pauses of Python's cyclic garbage collector (the whole process stops), by generation (0, 1, 2).",
    ["generation"],
    buckets=PAUSE_BUCKETS,
)
LOOP_LAG = Histogram(
    "charging_event_loop_lag_seconds",
    "How late the event loop ran a timer sampled every 100 ms: how long a call that just arrived waits "
    "before the server's code can look at it.",
    buckets=PAUSE_BUCKETS,
)

# Background jobs (charging/jobs.py), by job name only.
JOB_RUNS = Counter("charging_job_runs_total", "Passes of background jobs done, failed ones included, by job.", ["job"])
JOB_FAILURES = Counter("charging_job_failures_total", "Failed passes of background jobs, by job.", ["job"])
# The one job-age figure a supervisor's shared endpoint can show (JobAges below is computed
# per process at scrape time): the latest success among all workers.
JOB_LAST_SUCCESS = Gauge(
    "charging_job_last_success_timestamp_seconds",
    "When a background job last passed successfully (Unix time), by job.",
    ["job"],
    multiprocess_mode="max",
)


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
INVOICES_ISSUED = Counter(
    "billing_invoices_issued_total",
    "Invoices issued, by kind: period (a bill run, or a period billed before a final invoice) or final.",
    ["kind"],
)
ACCOUNT_FAILURES = Counter(
    "billing_account_failures_total",
    "Billing accounts a bill run or dunning pass could not handle (logged with the account; the pass goes on), "
    "by step: bill_run, dunning.",
    ["step"],
)
UNDELIVERABLE_INVOICES = Counter(
    "billing_invoices_without_channel_total",
    "Invoices taken for delivery while no delivery channel is configured (they stay PENDING).",
)
PAYMENTS = Counter("billing_payments_total", "Payments applied, by channel.", ["channel"])
PAYMENT_MINOR = Counter("billing_payment_minor_total", "Money received, minor units, by channel.", ["channel"])
# Money movements committed in PostgreSQL, not yet applied in Redis, as the
# billing_applications job last found them (postpaid/receivables.py); 0 once caught up.
BILLING_APPLICATIONS_PENDING = Gauge(
    "billing_applications_pending", "Payments, credit notes, refunds and adjustments committed, not applied in Redis."
)
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

# Processes and hosts: job leases taken by this process (charging/leases.py), by job.
LEASES_TAKEN = Counter("charging_leases_taken_total", "Job leases this process took, by job.", ["job"])
CHANGE_ACK_TIMEOUTS = Counter(
    "charging_change_ack_timeouts_total",
    "Changes (a catalog loaded) that some process did not confirm in time (charging/changes.py), by document.",
    ["document"],
)
# TLS: the not-after of the certificates the server presents and trusts, as loaded (at
# start and at each reload); alert well before it comes. certificate: server or client_ca
# (the earliest of the CA file's certificates).
TLS_NOT_AFTER = Gauge(
    "charging_tls_certificate_not_after_seconds",
    "Expiry (not-after) of the loaded TLS certificates, Unix seconds, by certificate (server, client_ca).",
    ["certificate"],
)

# Account signals (charging/signals.py) and the gRPC watchers of sessions (charging/watch.py).
SIGNALS = Counter(
    "charging_signals_total",
    "Account signals (credit, blocked) published for re-authorization or abort, or lost (Redis did not take them).",
    ["kind", "outcome"],
)
WATCH_SIGNALS = Counter(
    "charging_watch_signals_total",
    "Session signals for gRPC watchers, by action (reauth, abort) and outcome (sent, no_watcher, dropped).",
    ["action", "outcome"],
)
WATCHERS = Gauge("charging_watchers", "Open WatchSessions streams.")
