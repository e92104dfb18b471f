"""The domain services the console's pages call, in process (never through gRPC), built
once by the server's wiring (``charging/server.py``)."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from charging.catalogs import CatalogBook
from charging.clock import Clock
from charging.database import Pool
from charging.jobs import Jobs
from charging.topups import TopUps
from console.audit import AuditTrail
from console.sessions import SessionStore
from console.staff import StaffBook
from postpaid.billing import Billing
from provisioning.acquisition import Acquisition
from provisioning.customer_care import CustomerCare


@dataclass(frozen=True)
class Desk:
    redis: aioredis.Redis
    database: Pool
    clock: Clock
    acquisition: Acquisition
    care: CustomerCare
    billing: Billing
    topups: TopUps
    catalogs: CatalogBook
    jobs: Jobs
    staff: StaffBook
    sessions: SessionStore
    audit: AuditTrail
    secret: bytes
    # Cookies marked Secure: always, except on plain HTTP on loopback (development and
    # tests; browsers treat http://127.0.0.1 as a secure context anyway).
    secure_cookies: bool = True

    def now_s(self) -> int:
        return self.clock.now_ms() // 1000
