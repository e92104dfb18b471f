"""The operations page: the customer base and churn for a period, the bill runs and
their outcome, the dunning queue, the provisioning dead letters and the background jobs.
No personal data: ids, counts, amounts and states."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from console.customers import masked
from console.desk import Desk
from console.web import Visit, guarded
from postpaid import collection, dunning
from provisioning import keys as provisioning_keys
from provisioning.base import EPOCH

QUEUE_LIMIT = 50


@dataclass(frozen=True)
class Dunned:
    billing_account: str
    state: str
    overdue_minor: int
    promised_until: str


@dataclass(frozen=True)
class JobRow:
    name: str
    running: bool
    runs: int
    failures: int
    streak: int
    since_success_s: float


def period(first: str, last: str, today: date) -> tuple[date, date, str]:
    """The period asked for (default: the last 30 days), or the default and what was wrong."""
    try:
        start, end = date.fromisoformat(first), date.fromisoformat(last)
    except ValueError:
        return max(today - timedelta(days=30), EPOCH), today, ("dates must be YYYY-MM-DD" if first or last else "")
    if not EPOCH <= start <= end:
        return (
            max(today - timedelta(days=30), EPOCH),
            today,
            f"the period must start on or after {EPOCH} and end after it starts",
        )
    return start, end, ""


async def dunning_queue(desk: Desk) -> list[Dunned]:
    client = desk.redis
    due = await collection.watched(client, desk.now_s(), recheck=False)
    today = desk.billing.collection.today()
    out = []
    for ba in sorted(due)[:QUEUE_LIMIT]:
        info = await desk.billing.accounts.get(ba)
        invoices = await desk.billing.collection.invoices(ba)
        promised = await desk.billing.collection.promised_until(ba)
        out.append(Dunned(ba, info.get("state", "ACTIVE"), dunning.overdue(invoices, today), promised))
    return out


def job_rows(desk: Desk) -> list[JobRow]:
    running = set(desk.jobs.running())
    rows = []
    for name in desk.jobs.names:
        job = desk.jobs.get(name)
        if job is None:
            rows.append(JobRow(name, name in running, 0, 0, 0, 0.0))
        else:
            rows.append(JobRow(name, name in running, job.runs, job.failures, job.streak, job.seconds_since_success()))
    return rows


@guarded("operations")
async def operations(visit: Visit) -> Response:
    desk = visit.desk
    params = visit.request.query_params
    today = datetime.fromtimestamp(desk.now_s(), UTC).date()
    first, last, period_error = period(params.get("first", ""), params.get("last", ""), today)
    base = desk.acquisition.base
    figures = await base.figures(first, last) if base is not None else []
    dead = [str(x) for x in await desk.redis.lrange(provisioning_keys.DEAD, 0, QUEUE_LIMIT - 1)]
    return visit.render(
        "operations.html",
        first=first,
        last=last,
        period_error=period_error,
        figures=figures,
        runs=await desk.billing.run_history(20),
        queue=await dunning_queue(desk),
        dead=dead,
        jobs=job_rows(desk),
        masked=masked,
    )


def routes() -> list[BaseRoute]:
    return [Route("/operations", operations)]
