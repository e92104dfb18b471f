"""Money on billing accounts after invoicing: payments, refunds, credit notes, disputes and
manual adjustments.

Every change is idempotent on a key the caller gives (the channel's payment reference,
the dispute or adjustment id): a repeat answers the same, a reuse of the key with another
payload is refused and changes nothing. Payments, credit notes, refunds, adjustments and
disputes are committed in PostgreSQL first, with their audit entry, and then applied in
Redis once (``receivables.py``, ``disputes.py``).

- A payment is allocated to the open invoices oldest first; a partial payment leaves the
  rest open; an overpayment is kept as credit, which pays the next invoice first and
  can be refunded.
- A dispute holds its amount out of dunning; accepting it issues a credit note (own
  gapless sequence) for the amount, rejecting it releases the hold with a reason.
- An adjustment is a charge or credit with a reason on the next invoice; every dispute
  decision is audited with who did it, in the transaction that commits it.
Each change then calls ``on_change`` (the collection service re-evaluates the account
at once, so a payment that clears the overdue amount restores service).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

from charging import metrics
from charging.audit_trail import AuditEntry
from charging.clock import Clock
from charging.errors import Conflict, InvalidRequest, LimitExceeded, NotFound
from charging.security.identity import caller_name
from charging.settings import Settings
from charging.store import storage_errors
from postpaid import keys as bill_keys
from postpaid.config import BillingConfig
from postpaid.disputes import Disputes
from postpaid.dunning_record import lock_account
from postpaid.invoice_book import InvoiceBook
from postpaid.invoices import ADJUSTMENT, Charge
from postpaid.receivables import Adjustment, Applied, CreditNote, Movement, Payment, Receivables, Refund
from postpaid.scripts import PAY, PayArgs
from postpaid.settled import SettledInvoices, is_settled

log = logging.getLogger("postpaid.payments")
# The most one payment, refund or credit note moves, and the most credit an account
# may hold (minor units).
MAX_MINOR = 10**13
Changed = Callable[[str], Awaitable[None]]
CHANNELS = ("BANK_TRANSFER", "CARD", "DIRECT_DEBIT", "CASH", "APP", "RETAIL")
# Where pay.lua puts a credit note's number and the allocations: control characters,
# which JSON text never contains, so no reference or reason can forge them.
NUMBER, ALLOCATIONS = "\x01NUMBER\x01", "\x01ALLOCATIONS\x01"
# How long a movement's Redis record outlives a crash between its queueing and its
# committed outcome: CHARGING_IDEMPOTENCY_TTL_S (its default here; the server passes the
# setting).
IDEMPOTENCY_TTL_S = Settings.idempotency_ttl_s


def _digest(*parts: object) -> str:
    return hashlib.sha1("|".join(str(p) for p in parts).encode()).hexdigest()[:16]


def _amount(value: int, field: str, allow_negative: bool = False) -> int:
    low = -MAX_MINOR if allow_negative else 1
    if not low <= value <= MAX_MINOR or value == 0:
        raise InvalidRequest(field, f"must be a non-zero amount in minor units up to {MAX_MINOR}")
    return value


def _key_part(value: str, field: str) -> str:
    if not value or len(value) > 128 or any(c in value for c in " |\n"):
        raise InvalidRequest(field, "is required: 1-128 characters without spaces or '|'")
    return value


class Payments:
    def __init__(
        self,
        client: aioredis.Redis,
        config: BillingConfig,
        clock: Clock,
        book: InvoiceBook,
        idempotency_ttl_s: int = IDEMPOTENCY_TTL_S,
    ) -> None:
        self.client = client
        self.idempotency_ttl_s = idempotency_ttl_s
        self.book = book
        self.config = config
        self.clock = clock
        self.on_change: Changed | None = None
        self.on_credit: Callable[[str], None] | None = None  # told of a credit outbox written to
        issuer = config.issuer
        self.ledger = Receivables(book.pool, issuer.id, config.currency, issuer.credit_note_prefix)
        self.disputes = Disputes(self)
        # Settled invoices' states leave Redis; PostgreSQL answers for them (settled.py).
        self.settled = SettledInvoices(client, book.pool, clock)

    async def _changed(self, ba: str) -> None:
        """Re-evaluate the account now. The change itself is applied already: a failure
        here is logged, and the account stays marked for the next collection run."""
        if self.on_change is None:
            return
        await self.client.sadd(bill_keys.recheck(ba), ba)
        try:
            await self.on_change(ba)
        except Exception:
            log.exception("re-evaluating an account after a payment failed; the next run does it")

    async def _account_exists(self, ba: str) -> None:
        if not await self.client.exists(bill_keys.billing_account(ba)):
            raise NotFound("no such billing account")

    async def _decide(self, record_key: str, ba: str, args: PayArgs) -> list[Any]:
        """pay.lua's reply, or the refusal it answered raised as a typed error."""
        with storage_errors():
            reply: list[Any] = await PAY(
                self.client,
                (
                    record_key,
                    bill_keys.billing_account(ba),
                    bill_keys.billing_open(ba),
                    bill_keys.dunning_index(ba),
                    bill_keys.credit_outbox(ba),
                    bill_keys.settled(ba),
                ),
                args,
            )
        _refused(str(reply[0]), reply)
        return reply

    def _payment_args(self, p: Payment, check: bool = False) -> PayArgs:
        doc = json.dumps(
            {
                "kind": "PAYMENT",
                "ba": p.billing_account,
                "amount": p.amount,
                "channel": p.channel,
                "reference": p.reference,
            }
        )
        doc = doc[:-1] + ', "at": ' + str(p.received_s) + ', "allocations": ' + ALLOCATIONS + "}"
        digest = _digest(p.billing_account, p.amount, p.channel)
        return PayArgs(
            "PAY",
            digest,
            p.amount,
            p.received_s,
            bill_keys.state_prefix(p.billing_account),
            doc,
            MAX_MINOR,
            check=check,
            record_ttl_s=self.idempotency_ttl_s,
        )

    def _note_args(self, n: CreditNote, check: bool = False, settled: bool = False) -> PayArgs:
        doc = json.dumps(
            {
                "kind": "CREDIT_NOTE",
                "ba": n.billing_account,
                "invoice": n.invoice,
                "amount": n.amount,
                "reason": n.reason,
            }
        )
        doc = doc[:-1] + f', "number": "{NUMBER}", "at": {n.issued_s}, "allocations": {ALLOCATIONS}}}'
        return PayArgs(
            kind="CREDIT",
            digest=_digest(n.invoice, n.amount, n.reason),
            amount=n.amount,
            at_s=n.issued_s,
            state_prefix=bill_keys.state_prefix(n.billing_account),
            record=doc,
            max_credit=MAX_MINOR,
            invoice=n.invoice,
            release=n.release,
            note_number=n.number,
            check=check,
            record_ttl_s=self.idempotency_ttl_s,
            settled=settled,
        )

    async def pay(self, ba: str, amount: int, channel: str, reference: str) -> dict[str, Any]:
        """Record a payment (PostgreSQL first, then its allocation in Redis); the record
        lists what it paid of which invoice."""
        _amount(amount, "amount_minor")
        if channel not in CHANNELS:
            raise InvalidRequest("channel", f"must be one of {', '.join(CHANNELS)}")
        _key_part(reference, "reference")
        await self._account_exists(ba)
        payment = await self.ledger.payment(ba, f"{channel}:{reference}")
        if payment is None:
            if (await self.ledger.payer_of(channel, reference)) not in (None, ba):
                raise Conflict("this reference was used before with another payload")
            draft = Payment(uuid.uuid4().hex, ba, channel, reference, amount, self.clock.now_ms() // 1000)
            # Decided in Redis before the commit, so a refused payment leaves no row; a
            # payment Redis kept before PostgreSQL did answers as it did then.
            reply = await self._decide(
                bill_keys.payment(ba, channel, reference), ba, self._payment_args(draft, check=True)
            )
            if reply[0] == "REPLAY":
                return _record(reply)
            entry = self._entry("payment", ba, amount, "", reference, channel=channel)
            payment = await self.ledger.record_payment(draft, entry)
        if payment.amount != amount:
            raise Conflict("this reference was used before with another payload")
        record = await self.apply(payment)
        await self._changed(ba)
        return record

    async def apply(self, movement: Movement) -> dict[str, Any]:
        """Apply a committed payment, credit note, refund or adjustment in Redis, once, and
        record the outcome (``receivables.py``). A movement Redis refuses (a race after the pre-check) is
        recorded as refused, void, and its error raised, now and on every retry."""
        if isinstance(movement, Adjustment):
            async with self.ledger.applying(movement.application_id) as conn:
                if await self.ledger.applied(conn, movement.application_id) is None:
                    await self._queue_adjustment(movement)  # never refused; once by its record
                    await self.ledger.mark(conn, Applied(movement.application_id, "APPLIED"))
            # Its Redis record kept it once until the outcome was committed; PostgreSQL's
            # billing_applied does from now on (a crash before this: the record expires).
            with storage_errors():
                await self.client.delete(bill_keys.adjustment(movement.billing_account, movement.adjustment_id))
            return _adjustment_doc(movement)
        ba = movement.billing_account
        if isinstance(movement, Payment):
            key, args = bill_keys.payment(ba, movement.channel, movement.reference), self._payment_args(movement)
        elif isinstance(movement, Refund):
            key, args = bill_keys.payment(ba, "REFUND", movement.reference), self._refund_args(movement)
        else:
            key, args = bill_keys.payment(ba, "CN", movement.key), self._note_args(movement)
        refused: Exception | None = None
        async with self.ledger.applying(movement.application_id) as conn:
            await lock_account(conn, ba)  # no dunning decision is made or applied meanwhile
            if isinstance(movement, CreditNote) and await is_settled(conn, movement.invoice):
                # Committed against a settled invoice: PostgreSQL bounded it (settled.py);
                # the switch waits for what is pending, so it was settled when committed.
                args = self._note_args(movement, settled=True)
            before = await self.ledger.applied(conn, movement.application_id)
            if before is not None and before.outcome == "REFUSED":
                _refused(before.detail, [before.detail, "0"])
            if before is not None:  # applied before: PostgreSQL answers, as Redis's record did
                reply = ["REPLAY", _filled(args, before.allocations)]
                record = _record(reply)
            else:
                try:
                    reply = await self._decide(key, ba, args)
                except (Conflict, LimitExceeded, NotFound, InvalidRequest) as exc:
                    refused = exc  # raised once the refusal is committed (leaving the block)
                    detail = await self._refusal(key, ba, args)
                    await self.ledger.mark(conn, Applied(movement.application_id, "REFUSED", detail))
                else:
                    record = _record(reply)
                    allocations = {str(k): int(v) for k, v in record.get("allocations", {}).items()}
                    await self.ledger.mark(conn, Applied(movement.application_id, "APPLIED", "", allocations))
        if refused is not None:
            raise refused
        # pay.lua's record answered a retry until the outcome was committed; PostgreSQL's
        # billing_applied answers from now on, so Redis keeps no record per movement (a
        # stop before this delete: the record expires, pay.lua set its record_ttl_s).
        with storage_errors():
            await self.client.delete(key)
        if reply[0] == "DONE" and self.on_credit is not None:
            self.on_credit(bill_keys.credit_outbox(ba))  # the credit's movement, if any, is relayed soon
        if isinstance(movement, Payment) and reply[0] == "DONE":
            metrics.PAYMENTS.labels(movement.channel).inc()
            metrics.PAYMENT_MINOR.labels(movement.channel).inc(movement.amount)
        # The states of the invoices this movement settled leave Redis now that its outcome
        # is committed: only those it touched (its allocation's, a credit note's invoice).
        touched = set(record.get("allocations", {}))
        if isinstance(movement, CreditNote):
            touched.add(movement.invoice)
        await self.settled.sweep_invoices(bill_keys.shard_of(ba), touched)
        return record

    async def _refusal(self, key: str, ba: str, args: PayArgs) -> str:
        with storage_errors():
            reply = await PAY(
                self.client,
                (
                    key,
                    bill_keys.billing_account(ba),
                    bill_keys.billing_open(ba),
                    bill_keys.dunning_index(ba),
                    bill_keys.credit_outbox(ba),
                    bill_keys.settled(ba),
                ),
                dataclasses.replace(args, check=True),
            )
        return str(reply[0])

    async def apply_pending(self) -> int:
        """The ``billing_applications`` job: apply what was committed and not applied (a
        crash between the commit and Redis). Answers how many it applied or refused."""
        done = 0
        found = await self.ledger.pending()
        metrics.BILLING_APPLICATIONS_PENDING.set(len(found))
        for pending in found:
            movement: Movement | None
            if pending.kind == "PAYMENT":
                movement = await self.ledger.payment_by_id(pending.movement_id)
            elif pending.kind == "ADJUSTMENT":
                movement = await self.ledger.adjustment(pending.movement_id)
            elif pending.kind == "REFUND":
                movement = await self.ledger.refund_by_id(pending.movement_id)
            else:
                movement = await self.ledger.credit_note_by_number(pending.movement_id)
            if movement is None:
                continue
            try:
                await self.apply(movement)
            except (Conflict, LimitExceeded, NotFound, InvalidRequest) as exc:
                facts = {"application": pending.application_id, "error": type(exc).__name__}
                log.warning("a committed movement was refused in redis", extra=facts)
            await self._changed(movement.billing_account)
            done += 1
        metrics.BILLING_APPLICATIONS_PENDING.set(len(found) - done)
        return done + await self.disputes.apply_pending()

    def _refund_args(self, r: Refund, check: bool = False) -> PayArgs:
        doc = json.dumps(
            {
                "kind": "REFUND",
                "ba": r.billing_account,
                "amount": r.amount,
                "reference": r.reference,
                "reason": r.reason,
            }
        )
        digest = _digest(r.billing_account, r.amount)
        return PayArgs(
            "REFUND",
            digest,
            r.amount,
            r.refunded_s,
            bill_keys.state_prefix(r.billing_account),
            doc,
            MAX_MINOR,
            check=check,
            record_ttl_s=self.idempotency_ttl_s,
        )

    async def refund(self, ba: str, amount: int, reference: str, reason: str, actor: str = "") -> dict[str, Any]:
        """Pay back part of the account's credit (an overpayment), with a reason; committed
        in PostgreSQL first and audited there, then taken from the credit in Redis."""
        _amount(amount, "amount_minor")
        _key_part(reference, "reference")
        if not reason.strip():
            raise InvalidRequest("reason", "is required")
        await self._account_exists(ba)
        refund = await self.ledger.refund(ba, reference)
        if refund is None:
            if (await self.ledger.refunded_of(reference)) not in (None, ba):
                raise Conflict("this reference was used before with another payload")
            draft = Refund(uuid.uuid4().hex, ba, reference, amount, reason, actor or "api", self.clock.now_ms() // 1000)
            reply = await self._decide(
                bill_keys.payment(ba, "REFUND", reference), ba, self._refund_args(draft, check=True)
            )
            if reply[0] == "REPLAY":  # made before PostgreSQL kept refunds
                return _record(reply)
            entry = self._entry("refund", ba, amount, reason, reference, agent=draft.actor)
            refund = await self.ledger.record_refund(draft, entry)
        if refund.amount != amount:
            raise Conflict("this reference was used before with another payload")
        return await self.apply(refund)

    async def credit_note(
        self, number: str, amount: int, reason: str, key: str, release: int = 0, actor: str = ""
    ) -> dict[str, Any]:
        """Credit an issued invoice (it stays as issued: the credit note is its own
        numbered document, committed in PostgreSQL first); ``key`` makes it idempotent."""
        _amount(amount, "amount_minor")
        if not reason.strip():
            raise InvalidRequest("reason", "is required")
        _key_part(key, "key")
        ba = await self.settled.account_of(number)
        if ba is None:
            raise NotFound("no such invoice")
        note = await self.ledger.credit_note(ba, key)
        if note is None:
            draft = CreditNote("", ba, number, amount, release, reason, key, self.clock.now_ms() // 1000)
            # Redis decides while the invoice has its state there; once it is settled
            # PostgreSQL does, in the transaction that commits the credit note (settled.py).
            settled = await self.settled.settled(number)
            try:
                check = self._note_args(draft, check=True, settled=settled)
                reply = await self._decide(bill_keys.payment(ba, "CN", key), ba, check)
            except NotFound:
                if not await self.settled.settled(number):
                    raise
                reply = ["OK"]  # settled (its state dropped) since: bounded at the commit
            if reply[0] == "REPLAY":  # numbered by Redis before PostgreSQL kept credit notes
                return _record(reply)
            before = int(await self.client.get(bill_keys.credit_note_seq(self.config.issuer.id)) or 0)
            entry = self._entry("credit_note", ba, amount, reason, key, invoice=number, agent=actor)
            note = await self.ledger.record_credit_note(draft, entry, before)
        if (note.invoice, note.amount, note.reason) != (number, amount, reason):
            raise Conflict("this reference was used before with another payload")
        record = await self.apply(note)
        await self._changed(ba)
        return record

    def _entry(self, action: str, ba: str, amount: int, reason: str, ref: str, **details: str) -> AuditEntry:
        """The audit entry of a movement, naming the authenticated caller."""
        now = datetime.fromtimestamp(self.clock.now_ms() / 1000, UTC)
        facts: dict[str, Any] = {"amount_minor": amount, "ref": ref, **{k: v for k, v in details.items() if v}}
        return AuditEntry(uuid.uuid4().hex, now, caller_name(), action, ba, reason, facts)

    async def records(self, ba: str) -> list[dict[str, Any]]:
        """The account's payments, refunds and credit notes, oldest first (PostgreSQL)."""
        await self._account_exists(ba)
        return await self.ledger.records(ba)

    async def open_dispute(
        self, dispute_id: str, number: str, amount: int, reason: str, actor: str, line: str = "", customer: str = ""
    ) -> dict[str, Any]:
        """Hold ``amount`` of an invoice (of one of its lines, if given) out of dunning.
        With ``customer`` (the CRM), the invoice must be one of that customer's. Committed
        in PostgreSQL first (``disputes.py``)."""
        _key_part(dispute_id, "dispute_id")
        _amount(amount, "amount_minor")
        if not reason.strip():
            raise InvalidRequest("reason", "is required")
        if line:
            found = await self.book.get(number)
            if found is None:
                raise NotFound("no such invoice")
            sections = {s.line: s for s in found.sections}
            if line not in sections:
                raise InvalidRequest("line", "is not a line of this invoice")
            if amount > sections[line].subtotal:
                raise InvalidRequest("amount_minor", f"at most the line's charges ({sections[line].subtotal})")
        return await self.disputes.open(dispute_id, number, amount, reason, actor, line, customer)

    async def resolve_dispute(self, dispute_id: str, accept: bool, reason: str, actor: str) -> dict[str, Any]:
        """Accept (a credit note for the disputed amount, releasing the hold) or reject
        (releasing the hold, with a reason); ``disputes.py``."""
        return await self.disputes.resolve(dispute_id, accept, reason, actor)

    async def disputes_of(self, customer_id: str) -> list[dict[str, Any]]:
        """The billing disputes about the customer's invoices, oldest first."""
        return await self.disputes.of_customer(customer_id)

    async def dispute(self, dispute_id: str) -> dict[str, Any]:
        return await self.disputes.get(dispute_id)

    async def adjust(self, adjustment_id: str, ba: str, amount: int, reason: str, actor: str) -> dict[str, Any]:
        """A manual charge (positive) or credit (negative) on the next invoice: committed
        in PostgreSQL first (audited there), then queued on the account in Redis once."""
        _key_part(adjustment_id, "adjustment_id")
        _amount(amount, "amount_minor", allow_negative=True)
        if not reason.strip():
            raise InvalidRequest("reason", "is required")
        if not actor.strip():
            raise InvalidRequest("actor", "is required")
        await self._account_exists(ba)
        adjustment = await self.ledger.adjustment(adjustment_id)
        if adjustment is None:
            stored = await self.client.get(bill_keys.adjustment(ba, adjustment_id))
            if stored is not None:  # made before PostgreSQL kept adjustments
                old: dict[str, Any] = json.loads(stored)
                if (old["ba"], old["amount"], old["reason"]) != (ba, amount, reason):
                    raise Conflict("this adjustment id was used for another adjustment")
                return old
            draft = Adjustment(adjustment_id, ba, amount, reason, actor, self.clock.now_ms() // 1000)
            entry = self._entry("adjustment", ba, amount, reason, adjustment_id, agent=actor)
            adjustment = await self.ledger.record_adjustment(draft, entry)
        if (adjustment.billing_account, adjustment.amount, adjustment.reason) != (ba, amount, reason):
            raise Conflict("this adjustment id was used for another adjustment")
        return await self.apply(adjustment)

    async def _queue_adjustment(self, a: Adjustment) -> None:
        """The adjustment's charge on the account's next invoice, once per id (its record,
        expiring, until the outcome is committed)."""
        doc = _adjustment_doc(a)
        charge = Charge(ADJUSTMENT, f"Adjustment: {a.reason}", a.amount)
        async with self.client.pipeline(transaction=True) as pipe:
            # One transaction: the record, the pending charge and the audit entry, once.
            record_key = bill_keys.adjustment(a.billing_account, a.adjustment_id)
            await pipe.watch(record_key)
            if await pipe.get(record_key) is not None:
                return  # queued before a crash kept its outcome from PostgreSQL
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.set(record_key, json.dumps(doc), ex=self.idempotency_ttl_s)
            pipe.rpush(bill_keys.billing_pending(a.billing_account), json.dumps(charge.__dict__))
            # An account whose lines have all ended is billed again for it.
            pipe.zadd(bill_keys.due_index(a.billing_account), {a.billing_account: a.made_s}, nx=True)
            # The stream keeps its entry for its readers; the record is PostgreSQL's audit.
            fields = _audit_fields(
                "adjustment", a.actor, a.billing_account, a.amount, a.reason, a.adjustment_id, a.made_s
            )
            pipe.xadd(bill_keys.audit(a.billing_account), fields)
            await pipe.execute()


def _adjustment_doc(a: Adjustment) -> dict[str, Any]:
    """An adjustment as it is answered (and as its Redis record kept it)."""
    return {
        "id": a.adjustment_id,
        "ba": a.billing_account,
        "amount": a.amount,
        "reason": a.reason,
        "actor": a.actor,
        "at": a.made_s,
    }


def _refused(kind: str, reply: list[Any]) -> None:
    """pay.lua's refusals as typed errors (nothing was changed)."""
    if kind == "CONFLICT":
        raise Conflict("this reference was used before with another payload")
    if kind == "NOCREDIT":
        raise LimitExceeded("the refund is larger than the account's credit")
    if kind == "NOINVOICE":
        raise NotFound("no such invoice")
    if kind == "LIMIT":
        raise LimitExceeded(f"the account's credit would pass {MAX_MINOR} minor units")
    if kind == "TOOMUCH":
        raise InvalidRequest("amount_minor", f"at most what the invoice can still be credited ({reply[1]})")


def _filled(args: PayArgs, allocations: dict[str, int]) -> str:
    """The record pay.lua made of ``args`` with these allocations (and the credit note's
    number), as it kept it."""
    done = "{" + ",".join(f"{json.dumps(n)}:{a}" for n, a in allocations.items()) + "}"
    return args.record.replace(NUMBER, args.note_number, 1).replace(ALLOCATIONS, done, 1)


def _record(reply: list[Any]) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(reply[1])
    record["replayed"] = reply[0] == "REPLAY"
    return record


def _audit_fields(action: str, actor: str, ba: str, amount: int, reason: str, ref: str, at_s: int) -> dict[Any, Any]:
    """``actor`` is who the caller says acted (an agent's name); ``caller`` is the
    authenticated caller of the gRPC call (``internal`` for background jobs)."""
    return {
        "action": action,
        "actor": actor,
        "caller": caller_name(),
        "ba": ba,
        "amount": amount,
        "reason": reason,
        "ref": ref,
        "at": at_s,
    }
