"""Billing disputes in the system of record (PostgreSQL), and their hold in Redis.

A dispute's life is rows (``dispute_events``): OPENED, then ACCEPTED or REJECTED. Each
event is committed first, in one transaction with its audit entry and its pending Redis
application (``billing_applications``, kind ``DISPUTE``, the ``payload`` saying what
``dispute.lua`` is to do); accepting also numbers and commits the dispute's credit note
(with its own pending application) in that transaction. Redis then applies it under the
application's and the account's locks (``receivables.py``, ``dunning_record.py``): the
disputed amount is held out of dunning (``{bill.<n>}:is:NUMBER`` ``disputed``, which
``pay.lua`` releases with the credit note) or released on a rejection. ``dispute.lua``
keeps the dispute's status under ``{bill.<n>}:disp:ID``, so applying twice changes nothing.
A dispute Redis refuses after its commit (a payment left less open than the pre-check
saw) is REFUSED: void, and its error raised now and on every retry. Whatever crashes
between a commit and Redis, a retry of the same call or the ``billing_applications`` job
finishes it.

Deciding is serialized per dispute (an advisory lock in the deciding transaction), so an
accept and a reject racing cannot both happen.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from charging import audit_trail
from charging.errors import Conflict, InvalidRequest, NotFound
from charging.store import storage_errors
from postpaid import keys as bill_keys
from postpaid.dunning_record import lock_account
from postpaid.receivables import Applied, CreditNote
from postpaid.scripts import DISPUTE, DisputeArgs

if TYPE_CHECKING:
    from postpaid.payments import Payments

EVENTS = ("OPENED", "ACCEPTED", "REJECTED")


def _at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class Disputes:
    def __init__(self, payments: Payments) -> None:
        self.payments = payments
        self.client = payments.client
        self.ledger = payments.ledger
        self.pool = payments.ledger.pool

    # -- reading

    async def get(self, dispute_id: str) -> dict[str, Any]:
        found = await self._find(dispute_id)
        if found is None:
            raise NotFound("no such dispute")
        return found

    async def of_customer(self, customer_id: str) -> list[dict[str, Any]]:
        """The billing disputes about the customer's invoices, oldest first."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT dispute_id FROM dispute_events WHERE customer_id = %s AND event = 'OPENED' "
                "ORDER BY occurred_at, dispute_id",
                (customer_id,),
            )
            ids = [str(r[0]) for r in await cur.fetchall()]
        return [await self.get(i) for i in ids]

    async def _find(self, dispute_id: str) -> dict[str, Any] | None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT e.event, e.billing_account, e.invoice_id, e.line, e.amount_minor, e.reason, e.occurred_at, "
                "e.credit_note_id, coalesce(a.outcome, '') FROM dispute_events e LEFT JOIN billing_applied a "
                "ON a.application_id = 'DISPUTE:' || e.dispute_id || ':' || e.event WHERE e.dispute_id = %s",
                (dispute_id,),
            )
            rows = {r[0]: r for r in await cur.fetchall()}
        opened = rows.get("OPENED")
        if opened is None:
            return None
        doc: dict[str, Any] = {
            "id": dispute_id,
            "invoice": opened[2],
            "ba": opened[1],
            "amount": int(opened[4]),
            "reason": opened[5],
            "opened": int(opened[6].timestamp()),
            "line": opened[3],
            "status": "REFUSED" if opened[8] == "REFUSED" else "OPEN",
        }
        for event in ("ACCEPTED", "REJECTED"):
            if event in rows:
                doc |= {"status": event, "resolution": rows[event][5], "credit_note": rows[event][7]}
        return doc

    # -- opening and deciding

    async def open(
        self, dispute_id: str, number: str, amount: int, reason: str, actor: str, line: str, customer: str
    ) -> dict[str, Any]:
        """Hold ``amount`` of an invoice out of dunning (checked by ``Payments.open_dispute``)."""
        # The invoice's open and disputed amounts: Redis's while it has its state, once it
        # is settled PostgreSQL's (nothing open: nothing to dispute; settled.py).
        state = await self.payments.settled.state(number)
        if state is None:
            raise NotFound("no such invoice")
        ba, open_, disputed = state["ba"], state["open"], state["disputed"]
        owner = str(await self.client.hget(bill_keys.billing_account(ba), "customer") or "")
        if customer and owner != customer:
            raise NotFound("no such invoice of this customer")
        existing = await self._find(dispute_id)
        if existing is None:
            free = int(open_ or 0) - int(disputed or 0)
            if amount > free:
                raise InvalidRequest("amount_minor", f"at most the undisputed open amount ({free}) can be disputed")
            now_s = self.payments.clock.now_ms() // 1000
            doc = {"id": dispute_id, "invoice": number, "ba": ba, "amount": amount, "reason": reason, "opened": now_s}
            doc["line"] = line
            payload = {"op": "OPEN", "invoice": number, "amount": amount, "record": json.dumps(doc)}
            entry = self.payments._entry("dispute_opened", ba, amount, reason, dispute_id, agent=actor, invoice=number)
            async with self.pool.connection() as conn, conn.transaction():
                await _lock_dispute(conn, dispute_id)
                if await _events(conn, dispute_id) == set():
                    row = (dispute_id, "OPENED", ba, number, line, amount, reason, actor, _at(now_s), "", owner)
                    await _insert(conn, row, payload)
                    await audit_trail.insert(conn, [entry])
            existing = await self.get(dispute_id)
        if (existing["invoice"], existing["amount"], existing["line"]) != (number, amount, line):
            raise Conflict("this dispute id was used for another dispute")
        await self.finish(dispute_id)
        await self.payments._changed(ba)
        return await self.get(dispute_id)

    async def resolve(self, dispute_id: str, accept: bool, reason: str, actor: str) -> dict[str, Any]:
        """Accept (a credit note for the disputed amount, releasing the hold) or reject
        (releasing the hold, with a reason); a repeat of the decision finishes it once."""
        if not reason.strip():
            raise InvalidRequest("reason", "is required")
        d = await self.get(dispute_id)
        if d["status"] == "REFUSED":
            raise Conflict("the dispute was refused: it holds nothing")
        target = "ACCEPTED" if accept else "REJECTED"
        if d["status"] == "OPEN":
            await self.finish(dispute_id)  # its hold first
            await self._decide(d, target, reason, actor)
            d = await self.get(dispute_id)
        if d["status"] != target:
            raise Conflict(f"the dispute is already {d['status']}")
        await self.finish(dispute_id)
        await self.payments._changed(d["ba"])
        return await self.get(dispute_id)

    async def _decide(self, d: dict[str, Any], event: str, reason: str, actor: str) -> None:
        dispute_id, ba, invoice = d["id"], d["ba"], d["invoice"]
        now_s = self.payments.clock.now_ms() // 1000
        with storage_errors():
            total, credited = await self.client.hmget(bill_keys.invoice_state(ba, invoice), ["total", "credited"])
            before = int(await self.client.get(bill_keys.credit_note_seq(self.payments.config.issuer.id)) or 0)
        creditable = min(int(d["amount"]), max(int(total or 0) - int(credited or 0), 0))
        action = "dispute_accepted" if event == "ACCEPTED" else "dispute_rejected"
        entry = self.payments._entry(action, ba, d["amount"], reason, dispute_id, agent=actor, invoice=invoice)
        async with self.pool.connection() as conn, conn.transaction():
            await _lock_dispute(conn, dispute_id)
            if await _events(conn, dispute_id) != {"OPENED"}:
                return  # decided meanwhile
            number = ""
            if event == "ACCEPTED" and creditable > 0:
                key = f"dispute-{dispute_id}"
                note = CreditNote("", ba, invoice, creditable, int(d["amount"]), reason, key, now_s)
                credit = self.payments._entry("credit_note", ba, creditable, reason, key, invoice=invoice, agent=actor)
                number = await self.ledger.insert_credit_note(conn, note, credit, before)
            record = {k: v for k, v in d.items() if k != "status"} | {"resolution": reason, "credit_note": number}
            payload = {
                "op": "ACCEPT" if event == "ACCEPTED" else "REJECT",
                "invoice": invoice,
                "amount": d["amount"],
                "record": json.dumps(record),
                "release": event == "ACCEPTED" and not number,  # nothing left to credit
                "credit_note": number,
            }
            row = (dispute_id, event, ba, invoice, d["line"], d["amount"], reason, actor, _at(now_s), number, "")
            await _insert(conn, row, payload)
            await audit_trail.insert(conn, [entry])

    # -- applying in Redis

    async def finish(self, dispute_id: str) -> None:
        """Apply the dispute's committed events in Redis (each once), and its credit note."""
        ids = [f"{dispute_id}:{e}" for e in EVENTS]
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT application_id, billing_account, payload FROM billing_applications "
                "WHERE kind = 'DISPUTE' AND movement_id = ANY(%s) ORDER BY created_at",
                (ids,),
            )
            found = await cur.fetchall()
        for application_id, ba, payload in found:
            await self.apply(application_id, ba, json.loads(payload))

    async def apply(self, application_id: str, ba: str, payload: dict[str, Any]) -> None:
        dispute_id = application_id.split(":", 1)[1].rsplit(":", 1)[0]
        refused = ""
        async with self.ledger.applying(application_id) as conn:
            await lock_account(conn, ba)
            before = await self.ledger.applied(conn, application_id)
            if before is not None:
                refused = before.detail if before.outcome == "REFUSED" else ""
            else:
                state_keys = (
                    bill_keys.dispute(ba, dispute_id),
                    bill_keys.invoice_state(ba, payload["invoice"]),
                    bill_keys.settled(ba),
                )
                args = DisputeArgs(payload["op"], int(payload["amount"]), payload["record"])
                with storage_errors():
                    reply = await DISPUTE(self.client, state_keys, args)
                    if reply[0] in ("DONE", "SAME") and payload.get("release"):
                        await DISPUTE(self.client, state_keys, DisputeArgs("RELEASE", int(payload["amount"]), ""))
                if reply[0] in ("DONE", "SAME"):
                    await self.ledger.mark(conn, Applied(application_id, "APPLIED"))
                else:
                    refused = str(reply[1]) if reply[0] == "TOOMUCH" else str(reply[0])
                    if reply[0] == "NOINVOICE" and payload["op"] == "OPEN":
                        # Its state left Redis: the invoice was settled meanwhile (a payment
                        # after the pre-check), so nothing of it is open (settled.py).
                        refused = "0"
                    await self.ledger.mark(conn, Applied(application_id, "REFUSED", refused))
        if payload.get("credit_note"):
            note = await self.ledger.credit_note_by_number(payload["credit_note"])
            if note is not None:
                await self.payments.apply(note)
        if refused.isdigit():
            raise InvalidRequest("amount_minor", f"at most the undisputed open amount ({refused}) can be disputed")
        if refused:
            raise Conflict(f"the dispute could not be applied ({refused})")

    async def apply_pending(self) -> int:
        """The ``billing_applications`` job's part: dispute events a crash kept from Redis."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT a.application_id, a.billing_account, a.payload FROM billing_applications a "
                "WHERE a.kind = 'DISPUTE' "
                "AND NOT EXISTS (SELECT 1 FROM billing_applied d WHERE d.application_id = a.application_id) "
                "ORDER BY a.created_at, a.application_id LIMIT 500"
            )
            found = await cur.fetchall()
        for application_id, ba, payload in found:
            try:
                await self.apply(application_id, ba, json.loads(payload))
            except (Conflict, InvalidRequest):
                pass  # refused: recorded as such
            await self.payments._changed(ba)
        return len(found)


async def _lock_dispute(conn: AsyncConnection[TupleRow], dispute_id: str) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('dispute'), hashtext(%s))", (dispute_id,))


async def _events(conn: AsyncConnection[TupleRow], dispute_id: str) -> set[str]:
    cur = await conn.execute("SELECT event FROM dispute_events WHERE dispute_id = %s", (dispute_id,))
    return {str(r[0]) for r in await cur.fetchall()}


async def _insert(conn: AsyncConnection[TupleRow], row: tuple[Any, ...], payload: dict[str, Any]) -> None:
    """The event's row and its pending application."""
    await conn.execute(
        "INSERT INTO dispute_events (dispute_id, event, billing_account, invoice_id, line, amount_minor, reason, "
        "actor, occurred_at, credit_note_id, customer_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        row,
    )
    movement = f"{row[0]}:{row[1]}"
    await conn.execute(
        "INSERT INTO billing_applications (application_id, kind, movement_id, billing_account, payload) "
        "VALUES (%s, 'DISPUTE', %s, %s, %s)",
        (f"DISPUTE:{movement}", movement, row[2], json.dumps(payload)),
    )
