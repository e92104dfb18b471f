"""Number quarantine: a terminated number rests before it can be given out again.

How long depends on why the line was terminated (``lifecycle.reusable_from``: 90 days
for most reasons, 180 after non-payment, 365 after fraud). The end of the rest is kept
per number (``crm:quarantine:<msisdn>``, Unix time in seconds); a new customer's
application or a further line with a resting number is refused, as of the order's
submission.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from provisioning import keys
from provisioning.lifecycle import TerminationReason, reusable_from


class Quarantine:
    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    async def holds(self, msisdn: str, at_s: int) -> bool:
        """Whether the number is still resting at ``at_s``."""
        until = await self.client.get(keys.quarantine(msisdn))
        return until is not None and int(until) > at_s

    async def start(self, msisdn: str, reason: TerminationReason, terminated_at_s: int) -> None:
        """The number was terminated for ``reason``: it rests from now on."""
        await self.client.set(keys.quarantine(msisdn), reusable_from(terminated_at_s, reason))
