"""One settings object, built from the environment in one place and passed down.

Every variable is prefixed ``CHARGING_``; the README lists them all. Secrets (the
``SECRETS`` fields, a password inside any URL) come only from the environment (or files
it names) and never appear in the object's repr or in logs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charging.errors import InvalidRequest
from charging.logs import redact as redact_url
from charging.money import MAX_AMOUNT, MAX_UNITS
from charging.redis_link import RedisTls

__all__ = ["SECRETS", "Settings", "redact_url"]

# Fields shown as "***" in the repr; passwords inside URLs are hidden in every field.
SECRETS = frozenset({"crm_salt", "smtp_password", "data_key", "console_secret"})


@dataclass(frozen=True)
class Settings:
    grpc_address: str = "127.0.0.1:50051"
    metrics_address: str = "127.0.0.1:9464"
    # Empty: start and supervise an embedded redis-server under redis_dir.
    redis_url: str = ""
    redis_dir: Path = Path("var/redis")
    redis_server_bin: str = "redis-server"
    redis_appendfsync: str = "everysec"
    redis_max_connections: int = 64
    # How long start-up waits for Redis to answer (a restart may load a large dataset).
    redis_ready_timeout_s: float = 120.0
    # The system of record. Empty: start and supervise an embedded PostgreSQL under
    # database_dir (migrated at start); else migrate with `charging migrate` first, or at
    # start with database_migrate.
    database_url: str = ""
    database_dir: Path = Path("var/postgres")
    postgres_bin_dir: str = ""
    database_pool_size: int = 10
    database_migrate: bool = False
    # The schema owner's URL for migrations (`charging migrate`, database_migrate); empty:
    # database_url. The server itself connects as a member of charging_app (see
    # charging/database_roles.py), never as the owner.
    database_migrate_url: str = ""
    # Months of usage records and audit entries kept before the current month (0: all).
    usage_retention_months: int = 24
    audit_retention_months: int = 120
    # A usage record per rated use and money movement, relayed to PostgreSQL
    # (charging/cdr_relay.py). Off only to measure what they cost (make bench).
    usage_records: bool = True
    # How long the relay holds a usage record back after it is in Redis, so PostgreSQL never
    # keeps the record of a write a machine death takes from Redis (charging/cdr_hold.py).
    # -1: from the Redis's appendfsync (everysec 2,500 ms, always 0).
    cdr_hold_ms: int = -1
    # Supervision time of a session = factor x the longest validity time granted.
    supervision_factor: int = 2
    sweep_interval_s: float = 1.0
    sweep_batch: int = 200
    renew_interval_s: float = 5.0
    # How long answers are kept to answer retransmissions identically.
    answer_ttl_s: int = 3600
    # How long event ids and top-up idempotency keys are remembered.
    idempotency_ttl_s: int = 30 * 86_400
    subscriber_cache_size: int = 200_000
    census_interval_s: float = 15.0
    grace_period_s: float = 5.0
    # Admission: calls worked on at once in this process (more: RESOURCE_EXHAUSTED; as
    # many may wait in grpc's queue), the calls one connection may have open at once (its
    # HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: a client's burst beyond it waits in the client,
    # not in our queue), and the bounds of idle and dead connections (admission.py). 64
    # from `make bench` on the project's VM: the p99 of admitted calls at twice the capacity
    # stays within twice its value at 70% load (1.2-1.5x) at full goodput; 96 and 128 gave
    # 2.5-3.1x, 512 up to 15x. README "Measured figures".
    max_in_flight: int = 64
    # Calls that arrived but that the event loop has not taken up yet, in grpc's own queue;
    # beyond them grpc resets a call (CANCELLED). 0: as many as max_in_flight.
    max_waiting_calls: int = 0
    max_streams_per_connection: int = 48
    grpc_keepalive_s: float = 60.0
    grpc_keepalive_timeout_s: float = 20.0
    grpc_max_idle_s: float = 3600.0
    grpc_max_age_s: float = 86_400.0
    grpc_max_age_grace_s: float = 30.0
    grpc_min_ping_interval_s: float = 10.0
    log_level: str = "INFO"
    # A catalog file to load at start (it becomes the running catalog). Empty: keep the
    # stored catalog, or load the bundled sample when none is stored.
    catalog_file: str = ""
    catalog_refresh_s: float = 2.0
    # Notify once when a money balance falls below this (micros; 0: never).
    low_balance_micros: int = 1_000_000
    # What one session request may report per rating group (more is 5004) and be granted.
    max_used_time_s: int = 86_400
    max_used_octets: int = 10**12
    max_used_units: int = 10_000
    max_used_money_micros: int = 10**9
    # How far below zero usage beyond its grants may take an account's available money
    # (micros); further usage is unbilled overrun and ends the session. -1: the largest
    # single grant of the account's plan.
    overrun_floor_micros: int = -1
    # The network's provisioning gateway (HLR/HSS); empty starts the bundled simulator.
    network_url: str = ""
    network_timeout_s: float = 2.0
    provisioning_interval_s: float = 1.0
    # Run the provisioning worker inside the server; false when `charging worker` runs it.
    provisioning_in_server: bool = True
    # A credit bureau for postpaid applications; empty: the declared history is used.
    bureau_url: str = ""
    # An order run that has not finished within this lease is taken over and resumed
    # (a crash mid-way); resumable orders are looked for every order_resume_interval_s.
    order_lease_s: float = 30.0
    order_resume_interval_s: float = 5.0
    # Secret salt for fingerprints of identity documents and addresses; empty: a random
    # salt generated once and kept in Redis.
    crm_salt: str = ""
    # Postpaid billing settings (issuer, taxes, discounts, dunning ladder); empty: the
    # bundled postpaid/billing.json.
    billing_file: str = ""
    # How often the server runs due bill runs and the dunning ladder (s; 0: only on request).
    billing_interval_s: float = 60.0
    # Invoice delivery: by email when smtp_host is set, as files when invoice_dir is set.
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_sender: str = "billing@example.net"
    smtp_starttls: bool = False
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_timeout_s: float = 30.0
    invoice_dir: str = ""
    # Data at rest and secrets (README "Data at rest and secrets").
    # rediss:// verifies the server's certificate against this CA file (empty: the
    # system's CAs); a client certificate and key for a server that asks for one.
    redis_tls_ca_file: str = ""
    redis_tls_cert_file: str = ""
    redis_tls_key_file: str = ""
    # The keys that encrypt personal data in Redis, "<id>:<base64 of 32 bytes>" separated
    # by commas or lines, the last one encrypting; or a file holding them. Neither: a
    # development key generated once into <redis_dir>/data.key.
    data_key: str = ""
    data_key_file: str = ""
    # Security (README "Security"). TLS from files, re-read when they change; with a client
    # CA every caller on grpc_address presents a certificate, and callers with bearer tokens
    # use grpc_token_address (TLS, no client certificate). Without TLS the server listens on
    # loopback only, unless insecure is set.
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    grpc_token_address: str = ""
    policy_file: str = ""
    insecure: bool = False
    reflection: bool = True
    # Background jobs (charging/jobs.py): a failed pass is tried again after job_retry_s,
    # doubling up to job_retry_max_s, with jitter.
    job_retry_s: float = 1.0
    job_retry_max_s: float = 60.0
    # On SIGTERM health answers NOT_SERVING, calls still served, for this long before the
    # drain (grace_period_s): load balancers polling health move traffic away meanwhile.
    # Set it to their health-check interval; a second SIGTERM or SIGINT skips it.
    shutdown_delay_s: float = 2.0
    # The customer-service console (console/, README "Console"): host:port, empty for none
    # (`make run` serves it on 127.0.0.1:8080). Its session cookies are signed with
    # console_secret, or the secret in console_secret_file, or a development secret
    # generated once into <redis_dir>/console.key.
    console_address: str = ""
    console_secret: str = ""
    console_secret_file: str = ""
    # The 5G CHF door (Nchf_ConvergedCharging over HTTP/2, README "5G CHF (Nchf)"): h2c on
    # loopback, TLS with the tls_* files otherwise. Empty: not served.
    nchf_address: str = "127.0.0.1:8090"
    # Register the CHF in this NRF (Nnrf_NFManagement; empty: no registration), with
    # this apiPrefix (empty: the listener's own address) and NF instance id (empty: a
    # UUID derived from the prefix).
    nchf_nrf_url: str = ""
    nchf_api_prefix: str = ""
    nchf_instance_id: str = ""
    # A ChargingNotify request (charging/nchf/notify.py) gets this long, in all, for its answer.
    nchf_notify_timeout_s: float = 5.0
    # Processes and hosts (README "Processes and hosts"): the lease period of a background
    # job, within which another process takes over a job whose holder died.
    lease_s: float = 10.0
    # How long a catalog load waits for every other process to confirm it (changes.py).
    change_ack_timeout_s: float = 5.0
    # `charging serve` worker processes; 0: one per core. Their metrics files (prometheus
    # multiprocess mode) go to metrics_dir, emptied at start (empty: a temporary directory).
    workers: int = 0
    metrics_dir: str = ""
    # Set by the supervisor for its workers, never by hand: its pid (the worker shares the
    # gRPC port) and the pipe on which the worker says it is serving.
    worker_of: int = 0
    ready_fd: int = -1
    # The compiled gRPC door (door/, README "The compiled gRPC door"): the path of the
    # charging-grpc-door program (`make door` builds it). Set, the door serves the gRPC
    # addresses and the workers serve it on Unix sockets; empty, the workers serve gRPC.
    grpc_door: str = ""
    # Set by the supervisor for its workers behind the door, never by hand: the security
    # mode the door serves (secured, local or insecure).
    behind_door: str = ""
    # Diameter Gy/Ro (README "Diameter Gy/Ro"; charging/diameter/config.py). Empty address:
    # no Diameter (`make run` listens on 127.0.0.1:3868). Peers: host@realm or *@realm,
    # comma-separated; empty admits peers on loopback only.
    diameter_address: str = ""
    diameter_origin_host: str = "ocs.charging.localdomain"
    diameter_origin_realm: str = "localdomain"
    diameter_peers: str = ""
    diameter_default_rating_groups: str = "32251@3gpp.org=30"
    diameter_watchdog_s: float = 30.0
    diameter_answer_timeout_s: float = 5.0
    # Diameter over TLS from the start (RFC 6733 13; IANA port 5658), beside the address
    # above: the server certificate of CHARGING_TLS_CERT/_KEY, client certificates from
    # CHARGING_TLS_CLIENT_CA naming the peer's Origin-Host. Empty: no TLS port.
    diameter_tls_address: str = ""
    # TLS after CER on the address above (RFC 6733 inband security, Inband-Security-Id TLS):
    # off (empty), offer (when the CER offers it) or require; the same certificates.
    diameter_inband_tls: str = ""

    def __repr__(self) -> str:
        fields = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in SECRETS and value:
                value = "***"
            elif isinstance(value, str):
                value = redact_url(value)  # a URL's password: Redis, network gateway, bureau
            fields.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(fields)})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read ``CHARGING_*`` variables; a bad value raises ``InvalidRequest`` naming it."""
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            name = "CHARGING_" + f.name.upper()
            if name not in environ:
                continue
            raw = environ[name]
            default: Any = f.default
            kind = type(default)
            try:
                if kind is bool:
                    values[f.name] = raw.lower() in ("1", "true", "yes", "on")
                elif kind is int:
                    values[f.name] = int(raw)
                elif kind is float:
                    values[f.name] = float(raw)
                elif f.name in ("redis_dir", "database_dir"):
                    values[f.name] = Path(raw)
                else:
                    values[f.name] = raw
            except ValueError:
                raise InvalidRequest(name, f"not a valid {kind.__name__}: {raw!r}") from None
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def redis_tls(self) -> RedisTls:
        return RedisTls(self.redis_tls_ca_file, self.redis_tls_cert_file, self.redis_tls_key_file)

    def validate(self) -> None:
        if self.redis_appendfsync not in ("always", "everysec", "no"):
            raise InvalidRequest("CHARGING_REDIS_APPENDFSYNC", "must be always, everysec or no")
        if self.supervision_factor < 1:
            raise InvalidRequest("CHARGING_SUPERVISION_FACTOR", "must be at least 1")
        if self.answer_ttl_s < 60:
            raise InvalidRequest("CHARGING_ANSWER_TTL_S", "must be at least 60")
        if self.idempotency_ttl_s < 1:  # an expiry every script sets (SET EX refuses 0)
            raise InvalidRequest("CHARGING_IDEMPOTENCY_TTL_S", "must be at least 1")
        for name, ceiling in (
            ("CHARGING_MAX_USED_TIME_S", self.max_used_time_s),
            ("CHARGING_MAX_USED_OCTETS", self.max_used_octets),
            ("CHARGING_MAX_USED_UNITS", self.max_used_units),
            ("CHARGING_MAX_USED_MONEY_MICROS", self.max_used_money_micros),
        ):
            if not 1 <= ceiling <= MAX_UNITS:
                raise InvalidRequest(name, f"must be between 1 and {MAX_UNITS}")
        if not -1 <= self.overrun_floor_micros <= MAX_AMOUNT:
            raise InvalidRequest("CHARGING_OVERRUN_FLOOR_MICROS", f"must be between -1 and {MAX_AMOUNT}")
        if self.database_pool_size < 1:
            raise InvalidRequest("CHARGING_DATABASE_POOL_SIZE", "must be at least 1")
        if self.usage_retention_months < 0:
            raise InvalidRequest("CHARGING_USAGE_RETENTION_MONTHS", "must be 0 (keep all) or more months")
        if self.audit_retention_months < 0:
            raise InvalidRequest("CHARGING_AUDIT_RETENTION_MONTHS", "must be 0 (keep all) or more months")
        if self.smtp_password and not self.smtp_username:
            raise InvalidRequest("CHARGING_SMTP_USERNAME", "must be set with CHARGING_SMTP_PASSWORD")
        tls_set = self.redis_tls_ca_file or self.redis_tls_cert_file or self.redis_tls_key_file
        if tls_set and not self.redis_url.startswith("rediss://"):
            raise InvalidRequest("CHARGING_REDIS_URL", "must be a rediss:// URL when CHARGING_REDIS_TLS_* is set")
        if self.redis_tls_key_file and not self.redis_tls_cert_file:
            raise InvalidRequest("CHARGING_REDIS_TLS_CERT_FILE", "must be set with CHARGING_REDIS_TLS_KEY_FILE")
        if self.data_key and self.data_key_file:
            raise InvalidRequest("CHARGING_DATA_KEY_FILE", "set CHARGING_DATA_KEY or CHARGING_DATA_KEY_FILE, not both")
        if self.job_retry_s <= 0 or self.job_retry_max_s < self.job_retry_s:
            raise InvalidRequest("CHARGING_JOB_RETRY_S", "must be above 0 and at most CHARGING_JOB_RETRY_MAX_S")
        if self.shutdown_delay_s < 0:
            raise InvalidRequest("CHARGING_SHUTDOWN_DELAY_S", "must not be negative")
        if not 0 < self.smtp_port < 65536:
            raise InvalidRequest("CHARGING_SMTP_PORT", "must be a port number")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise InvalidRequest("CHARGING_TLS_KEY", "CHARGING_TLS_CERT and CHARGING_TLS_KEY go together")
        if self.tls_client_ca and not self.tls_cert:
            raise InvalidRequest("CHARGING_TLS_CLIENT_CA", "needs CHARGING_TLS_CERT and CHARGING_TLS_KEY")
        if self.grpc_token_address and not self.tls_cert:
            raise InvalidRequest("CHARGING_GRPC_TOKEN_ADDRESS", "needs CHARGING_TLS_CERT and CHARGING_TLS_KEY")
        for name, address in (
            ("CHARGING_GRPC_ADDRESS", self.grpc_address),
            ("CHARGING_METRICS_ADDRESS", self.metrics_address),
            ("CHARGING_GRPC_TOKEN_ADDRESS", self.grpc_token_address),
            ("CHARGING_CONSOLE_ADDRESS", self.console_address),
            ("CHARGING_NCHF_ADDRESS", self.nchf_address),
        ):
            if address and ":" not in address:
                raise InvalidRequest(name, "must be host:port")
        for name, url in (
            ("CHARGING_NCHF_NRF_URL", self.nchf_nrf_url),
            ("CHARGING_NCHF_API_PREFIX", self.nchf_api_prefix),
        ):
            if url and not url.startswith(("http://", "https://")):
                raise InvalidRequest(name, "must be an http:// or https:// URL")
        if self.grpc_door and not (os.path.isfile(self.grpc_door) and os.access(self.grpc_door, os.X_OK)):
            what = f"not an executable file: {self.grpc_door} (`make door` builds it)"
            raise InvalidRequest("CHARGING_GRPC_DOOR", what)
        if self.behind_door not in ("", "secured", "local", "insecure"):
            raise InvalidRequest("CHARGING_BEHIND_DOOR", "is set by the supervisor: secured, local or insecure")
        if self.behind_door and not self.grpc_address.startswith("unix:"):
            # the worker trusts the door's metadata: only the door may reach it
            raise InvalidRequest("CHARGING_BEHIND_DOOR", "is set by the supervisor, with a unix: gRPC address")
        if self.lease_s <= 0:
            raise InvalidRequest("CHARGING_LEASE_S", "must be more than 0")
        if self.workers < 0:
            raise InvalidRequest("CHARGING_WORKERS", "must be 0 (one per core) or more")
        if self.max_in_flight < 1:
            raise InvalidRequest("CHARGING_MAX_IN_FLIGHT", "must be at least 1")
        if self.max_waiting_calls < 0:
            raise InvalidRequest("CHARGING_MAX_WAITING_CALLS", "must be 0 (as CHARGING_MAX_IN_FLIGHT) or more")
        if self.max_streams_per_connection < 1:
            raise InvalidRequest("CHARGING_MAX_STREAMS_PER_CONNECTION", "must be at least 1")
        if self.nchf_notify_timeout_s <= 0:
            raise InvalidRequest("CHARGING_NCHF_NOTIFY_TIMEOUT_S", "must be more than 0")
        from charging.diameter.config import DiameterConfig  # its own checks, named by variable

        DiameterConfig.of(self)
        for f in dataclasses.fields(self):
            if f.name.startswith("grpc_") and f.name.endswith("_s") and getattr(self, f.name) <= 0:
                raise InvalidRequest("CHARGING_" + f.name.upper(), "must be more than 0")
