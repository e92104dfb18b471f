"""Metrics of the Nchf door, declared once. Labels: the operation (create, update,
release) and the result (the TS 32.291 result or ProblemDetails cause answered); never a
subscriber, a ChargingDataRef or a peer address."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "charging_nchf_requests_total",
    "Nchf_ConvergedCharging requests by operation and result (SUCCESS, QUOTA_LIMIT_REACHED, "
    "USER_UNKNOWN, INVALID_MSG_FORMAT, CONTEXT_NOT_FOUND, ...).",
    ["operation", "result"],
)
LATENCY = Histogram(
    "charging_nchf_request_duration_seconds",
    "Time to answer an Nchf_ConvergedCharging request, by operation.",
    ["operation"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
RETRANSMISSIONS = Counter(
    "charging_nchf_retransmissions_total",
    "Nchf requests answered from the stored answer of an earlier copy, by operation.",
    ["operation"],
)
REFUSALS = Counter(
    "charging_nchf_refusals_total",
    "Nchf requests refused before charging: reason unauthenticated (no identity) or role "
    "(the caller lacks the network role).",
    ["reason"],
)
CONNECTIONS = Counter(
    "charging_nchf_connections_total",
    "Connections accepted by the Nchf listener, by protocol (h2c, tls).",
    ["protocol"],
)
IN_FLIGHT = Gauge("charging_nchf_requests_in_flight", "Nchf requests being answered now (a stop waits for them).")
NOTIFICATIONS = Counter(
    "charging_nchf_notifications_total",
    "ChargingNotify requests to NF consumers by notificationType (REAUTHORIZATION, "
    "ABORT_CHARGING) and outcome: answered (204/200), refused (another status), unanswered "
    "(no answer within the timeout, or no connection), insecure (a cleartext notifyUri off "
    "loopback, not sent), dropped (too many under way). Each is sent once, never retried.",
    ["type", "outcome"],
)
