"""Prometheus metrics of the Diameter door, declared once. Labels are small closed sets
(command, result code, outcome): never a peer, subscriber or session."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "charging_diameter_requests_total",
    "Diameter requests answered, by command (CER, DWR, DPR, CCR-I/U/T/E, other) and result code.",
    ["command", "result"],
)
LATENCY = Histogram(
    "charging_diameter_request_duration_seconds",
    "Time to answer a Credit-Control-Request.",
    ["command"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
RETRANSMISSIONS = Counter(
    "charging_diameter_retransmissions_total",
    "Credit-Control-Requests answered from the stored answer (T flag or a repeated request number).",
)
CONNECTIONS = Gauge("charging_diameter_connections", "Open peer connections (capabilities exchanged).")
CONNECTS = Counter(
    "charging_diameter_connects_total",
    "Connections by outcome: accepted, refused (CEA with an error), no_cer, closed_by_peer, watchdog, framing,"
    " tls_failed.",
    ["outcome"],
)
SENT = Counter(
    "charging_diameter_sent_total",
    "Requests this server sent to peers, by command (DWR, DPR, RAR, ASR) and outcome (answered, unanswered, "
    "refused, no_connection, relayed: to the process holding the peer's connection, elsewhere: another process "
    "sent it, dropped: too many RAR/ASR under way).",
    ["command", "outcome"],
)
PEER_RESTARTS = Counter(
    "charging_diameter_peer_restarts_total", "Peers that came back with a higher Origin-State-Id (they restarted)."
)
