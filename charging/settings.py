"""One settings object, built from the environment in one place and passed down.

Every variable is prefixed ``CHARGING_``; the README lists them all. Secrets (a
password inside the Redis URL) come only from the environment and never appear in the
object's repr or in logs.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charging.errors import InvalidRequest


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
    log_level: str = "INFO"
    # A catalog file to load at start (it becomes the running catalog). Empty: keep the
    # stored catalog, or load the bundled sample when none is stored.
    catalog_file: str = ""
    catalog_refresh_s: float = 2.0
    # Notify once when a money balance falls below this (micros; 0: never).
    low_balance_micros: int = 1_000_000
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
    # Background jobs (charging/jobs.py): a failed pass is tried again after job_retry_s,
    # doubling up to job_retry_max_s, with jitter.
    job_retry_s: float = 1.0
    job_retry_max_s: float = 60.0
    # On SIGTERM health answers NOT_SERVING, calls still served, for this long before the
    # drain (grace_period_s): load balancers polling health move traffic away meanwhile.
    # Set it to their health-check interval; a second SIGTERM or SIGINT skips it.
    shutdown_delay_s: float = 2.0

    def __repr__(self) -> str:
        fields = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "redis_url":
                value = redact_url(value)
            elif f.name in ("crm_salt", "smtp_password") and value:
                value = "***"
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
                elif f.name == "redis_dir":
                    values[f.name] = Path(raw)
                else:
                    values[f.name] = raw
            except ValueError:
                raise InvalidRequest(name, f"not a valid {kind.__name__}: {raw!r}") from None
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.redis_appendfsync not in ("always", "everysec", "no"):
            raise InvalidRequest("CHARGING_REDIS_APPENDFSYNC", "must be always, everysec or no")
        if self.supervision_factor < 1:
            raise InvalidRequest("CHARGING_SUPERVISION_FACTOR", "must be at least 1")
        if self.answer_ttl_s < 60:
            raise InvalidRequest("CHARGING_ANSWER_TTL_S", "must be at least 60")
        if self.smtp_password and not self.smtp_username:
            raise InvalidRequest("CHARGING_SMTP_USERNAME", "must be set with CHARGING_SMTP_PASSWORD")
        if self.job_retry_s <= 0 or self.job_retry_max_s < self.job_retry_s:
            raise InvalidRequest("CHARGING_JOB_RETRY_S", "must be above 0 and at most CHARGING_JOB_RETRY_MAX_S")
        if self.shutdown_delay_s < 0:
            raise InvalidRequest("CHARGING_SHUTDOWN_DELAY_S", "must not be negative")
        if not 0 < self.smtp_port < 65536:
            raise InvalidRequest("CHARGING_SMTP_PORT", "must be a port number")
        for name, address in (
            ("CHARGING_GRPC_ADDRESS", self.grpc_address),
            ("CHARGING_METRICS_ADDRESS", self.metrics_address),
        ):
            if address and ":" not in address:
                raise InvalidRequest(name, "must be host:port")


def redact_url(url: str) -> str:
    """Hide the password of a URL such as redis://user:secret@host:6379/0."""
    return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)
