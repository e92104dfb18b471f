"""A credit bureau adapter: the applicant's credit history from an HTTP JSON bureau.

    GET /reports/<fingerprint>  -> 200 {"defaults_5y": 0, "late_payments_12m": 1,
                                        "tenure_months": 40, "monthly_debt_micros": 0}
                                -> 404 when the bureau knows nobody with that identity

The bureau is asked with the salted identity fingerprint, never the document number.
Its record replaces what the applicant declared about defaults, late payments, tenure
and debt; the declared income stays. A bureau that cannot be reached is reported as
such so the caller can decide (acquisition falls back to the declared history and
says so on the order).
"""

from __future__ import annotations

from dataclasses import replace

import httpx

from provisioning.credit import CreditHistory


class BureauUnavailable(Exception):
    pass


class HttpCreditBureau:
    def __init__(self, base_url: str, *, timeout_s: float = 2.0) -> None:
        self._client = httpx.AsyncClient(base_url=base_url, timeout=timeout_s)

    async def history(self, fingerprint: str, declared: CreditHistory) -> CreditHistory:
        """The declared history with the bureau's record of the same person, if any."""
        try:
            response = await self._client.get(f"/reports/{fingerprint}")
        except httpx.HTTPError as exc:
            raise BureauUnavailable(type(exc).__name__) from exc
        if response.status_code == 404:
            return declared
        if response.status_code != 200:
            raise BureauUnavailable(f"bureau answered {response.status_code}")
        doc = response.json()
        return replace(
            declared,
            defaults_5y=int(doc.get("defaults_5y", 0)),
            late_payments_12m=int(doc.get("late_payments_12m", 0)),
            tenure_months=int(doc.get("tenure_months", 0)),
            monthly_debt_micros=int(doc.get("monthly_debt_micros", 0)),
        )

    async def aclose(self) -> None:
        await self._client.aclose()
