"""Issued invoices in the system of record (PostgreSQL): numbered, written and read.

Issuing is one database transaction per batch of invoices: it takes the next numbers of
the issuer's gapless series from the counter row (``invoice_numbers``, row-locked, so
concurrent bill runs take turns and a rollback gives the numbers back), and writes each
invoice's document, charge lines and taxes with COPY. Two unique keys per billing
account make issuing safe to repeat and to race:

- ``(billing_account, run)``: the bill run's key (the period, or ``final-<line>``). A
  repeated or resumed run finds the invoice it issued and settles that one, never a
  second: ``Issued.already``.
- ``(billing_account, account_seq)``: how many invoices the account had been settled
  with when the invoice was composed (``issued`` on the account in Redis). Two invoices
  composed from the same reading (a bill run and a final invoice taking the same
  pending charges) cannot both be written: the second finds the first (``Overtaken``),
  settles it and composes again from what is there now.

Who the invoice is addressed to (the customer's name and postal address lines) is sealed
in the document (``provisioning/sealing.py``, kinds ``invoice.customer_name`` and
``invoice.customer_address``) and opened by ``get``; everything else (amounts, charge
lines, taxes, the issuer) stays in clear for SQL. Rows are immutable, so a document
keeps the key id that sealed it: that key stays in the ring as long as invoices are kept.

The invoice is written before Redis learns of it (``settle.lua``), and its settlement
(what it does to the account) is kept in the row, so whatever crashes in between, the
next run settles exactly what was written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from psycopg import errors as pg_errors

from charging.database import Pool
from postpaid.invoices import Invoice
from postpaid.scripts import SettleArgs
from provisioning.sealing import Sealer

NAME, ADDRESS = "invoice.customer_name", "invoice.customer_address"  # the sealed fields' kinds

INVOICE_COLUMNS = (
    "issuer, series, number, invoice_id, billing_account, kind, period_start, period_end, issued_at, "
    "due_date, currency, total_minor, tax_minor, document, run, account_seq, settlement"
)
CHARGE_COLUMNS = "invoice_id, position, line, kind, description, category, tax_code, quantity, unit, amount_minor"
TAX_COLUMNS = "invoice_id, tax_code, name, rate_bp, base_minor, tax_minor"


@dataclass(frozen=True)
class Draft:
    """A composed invoice (its number empty) with what issuing it does to the account."""

    invoice: Invoice
    run: str
    settle: SettleArgs  # its number empty


@dataclass(frozen=True)
class Issued:
    """An invoice in the database: its number and the settlement to apply in Redis."""

    billing_account: str
    number: str
    settle: SettleArgs
    already: bool = False  # issued before (a repeated or resumed run)


class Overtaken(Exception):
    """Another invoice was composed from the same reading of the account and written
    first: settle it (``issued``) and compose again."""

    def __init__(self, issued: Issued) -> None:
        super().__init__(issued.billing_account)
        self.issued = issued


class Contended(Exception):
    """A batch met an invoice written meanwhile: nothing of the batch was written."""


def format_number(series: str, number: int) -> str:
    """``INV`` and 42 make ``INV-00000042``."""
    return f"{series}-{number:08d}"


# The settlement's fields kept in the row (the number and the key prefix are not).
KEPT = tuple(f.name for f in dataclasses.fields(SettleArgs) if f.name not in ("number", "state_prefix"))


def _settlement(settle: SettleArgs) -> bytes:
    return orjson.dumps({name: getattr(settle, name) for name in KEPT})


def _issued(ba: str, number: str, settlement: Any, state_prefix: str) -> Issued:
    fields = settlement if isinstance(settlement, dict) else orjson.loads(settlement)
    return Issued(ba, number, SettleArgs(number=number, state_prefix=state_prefix, **fields), already=True)


def sealed_document(inv: Invoice, number: str, sealer: Sealer) -> str:
    """The invoice's document as stored: numbered, the customer's name and address sealed."""
    return dataclasses.replace(
        inv,
        number=number,
        customer_name=sealer.seal(inv.customer_name, NAME) if inv.customer_name else "",
        customer_address=tuple(sealer.seal(x, ADDRESS) for x in inv.customer_address),
    ).to_json()


def opened_document(text: str, sealer: Sealer) -> Invoice:
    """A stored document with the customer's name and address opened (a document moved
    from Redis before sealing existed is read as it is)."""
    inv = Invoice.from_json(text)
    return dataclasses.replace(
        inv,
        customer_name=sealer.open(inv.customer_name, NAME) if inv.customer_name else "",
        customer_address=tuple(sealer.open(x, ADDRESS) for x in inv.customer_address),
    )


class InvoiceBook:
    def __init__(self, pool: Pool, issuer: str, series: str, sealer: Sealer) -> None:
        self.pool = pool
        self.issuer = issuer
        self.series = series
        self.sealer = sealer

    async def issue(self, drafts: Sequence[Draft]) -> list[Issued]:
        """Number and write the drafts in one transaction; those issued before come back
        ``already``. One draft: ``Overtaken`` when another invoice was composed from the
        same reading of its account. Several: ``Contended`` on any conflict (nothing
        written; issue them one by one)."""
        if not drafts:
            return []
        try:
            async with self.pool.connection() as conn, conn.transaction():
                found = await self._existing(conn, drafts)
                new = [d for d in drafts if (d.invoice.billing_account, d.run) not in found]
                out = {k: v for k, v in found.items()}
                if new:
                    row = await (
                        await conn.execute(
                            "INSERT INTO invoice_numbers AS n (issuer, series, last_number) "
                            "VALUES (%s, %s, %s) ON CONFLICT (issuer, series) "
                            "DO UPDATE SET last_number = n.last_number + EXCLUDED.last_number RETURNING last_number",
                            (self.issuer, self.series, len(new)),
                        )
                    ).fetchone()
                    assert row is not None
                    first = int(row[0]) - len(new) + 1
                    numbered = [(d, first + i) for i, d in enumerate(new)]
                    await self._write(conn, numbered)
                    for d, n in numbered:
                        number = format_number(self.series, n)
                        ba = d.invoice.billing_account
                        out[(ba, d.run)] = Issued(ba, number, dataclasses.replace(d.settle, number=number))
        except pg_errors.UniqueViolation:
            if len(drafts) > 1:
                raise Contended() from None
            raise await self._overtaken(drafts[0]) from None
        return [out[(d.invoice.billing_account, d.run)] for d in drafts]

    async def _existing(self, conn: Any, drafts: Sequence[Draft]) -> dict[tuple[str, str], Issued]:
        # Each account's invoice states are in its own shard (postpaid/keys.py).
        prefix = {d.invoice.billing_account: d.settle.state_prefix for d in drafts}
        cur = await conn.execute(
            "SELECT billing_account, run, invoice_id, settlement FROM invoices "
            "WHERE (billing_account, run) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
            ([d.invoice.billing_account for d in drafts], [d.run for d in drafts]),
        )
        return {(ba, run): _issued(ba, number, s, prefix[ba]) for ba, run, number, s in await cur.fetchall()}

    async def _overtaken(self, draft: Draft) -> Exception:
        """After a conflict on one draft: its own invoice (written by a racing run of the
        same account), or the one composed from the same reading."""
        ba = draft.invoice.billing_account
        async with self.pool.connection() as conn:
            found = await self._existing(conn, [draft])
            if found:
                return Overtaken(found[(ba, draft.run)])
            cur = await conn.execute(
                "SELECT invoice_id, settlement FROM invoices WHERE billing_account = %s AND account_seq = %s",
                (ba, draft.settle.account_seq),
            )
            row = await cur.fetchone()
        if row is None:  # gone again: cannot be (immutable); let the caller retry
            return Contended()
        return Overtaken(_issued(ba, row[0], row[1], draft.settle.state_prefix))

    async def _write(self, conn: Any, numbered: list[tuple[Draft, int]]) -> None:
        """COPY the invoices, their charge lines and taxes."""
        cur = conn.cursor()
        async with cur.copy(f"COPY invoices ({INVOICE_COLUMNS}) FROM STDIN") as copy:
            for d, n in numbered:
                inv, s = d.invoice, d.settle
                number = format_number(self.series, n)
                doc = sealed_document(inv, number, self.sealer)
                await copy.write_row(
                    (
                        self.issuer,
                        self.series,
                        n,
                        number,
                        inv.billing_account,
                        inv.kind,
                        inv.period_start,
                        inv.period_end,
                        datetime.fromtimestamp(s.issued_s, UTC),
                        inv.due,
                        inv.currency,
                        inv.total,
                        inv.tax_total,
                        doc,
                        d.run,
                        d.settle.account_seq,
                        _settlement(s).decode(),
                    )
                )
        async with cur.copy(f"COPY invoice_charges ({CHARGE_COLUMNS}) FROM STDIN") as copy:
            for d, n in numbered:
                number = format_number(self.series, n)
                position = 0
                rows = [(s.line, c) for s in d.invoice.sections for c in s.charges]
                rows += [("", c) for c in d.invoice.account_charges]
                for line, c in rows:
                    position += 1
                    await copy.write_row(
                        (
                            number,
                            position,
                            line,
                            c.kind,
                            c.description,
                            c.category,
                            c.tax_code,
                            c.quantity,
                            c.unit,
                            c.amount,
                        )
                    )
        async with cur.copy(f"COPY invoice_taxes ({TAX_COLUMNS}) FROM STDIN") as copy:
            for d, n in numbered:
                number = format_number(self.series, n)
                for t in d.invoice.taxes:
                    await copy.write_row((number, t.code, t.name, t.rate_bp, t.base, t.amount))

    async def record_deliveries(self, number: str, at_s: int, outcomes: Sequence[tuple[str, bool, str]]) -> None:
        """Delivery attempts of the invoice: (channel, delivered, reason) each."""
        if not outcomes:
            return
        at = datetime.fromtimestamp(at_s, UTC)
        async with self.pool.connection() as conn:
            await conn.cursor().executemany(
                "INSERT INTO invoice_deliveries (invoice_id, attempted_at, channel, delivered, reason) "
                "VALUES (%s, %s, %s, %s, %s)",
                [(number, at, channel, ok, reason) for channel, ok, reason in outcomes],
            )

    async def get(self, number: str) -> Invoice | None:
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT document::text FROM invoices WHERE invoice_id = %s", (number,))
            row = await cur.fetchone()
        return None if row is None else opened_document(row[0], self.sealer)

    async def numbers_of(self, ba: str, after: str = "", limit: int = 0) -> list[str]:
        """The account's invoice numbers, oldest first, after the number ``after`` (a
        page token), at most ``limit`` (0: all)."""
        query = "SELECT invoice_id FROM invoices WHERE billing_account = %s"
        params: list[Any] = [ba]
        if after:
            query += " AND (issued_at, invoice_id) > (SELECT issued_at, invoice_id FROM invoices WHERE invoice_id = %s)"
            params.append(after)
        query += " ORDER BY issued_at, invoice_id"
        if limit:
            query += " LIMIT %s"
            params.append(limit)
        async with self.pool.connection() as conn:
            cur = await conn.execute(query, params)
            return [str(r[0]) for r in await cur.fetchall()]

    async def record_run(self, at_s: int, report: dict[str, Any]) -> None:
        """A bill run's report (``RunReport.as_dict``) as a row."""
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO bill_runs (ran_at, accounts, issued, already, failed, seconds) "
                "VALUES (%(ran_at)s, %(accounts)s, %(issued)s, %(already)s, %(failed)s, %(seconds)s)",
                {**report, "ran_at": datetime.fromtimestamp(at_s, UTC)},
            )

    async def runs(self, limit: int) -> list[dict[str, Any]]:
        """The latest bill runs' reports, newest first."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT ran_at, accounts, issued, already, failed, seconds FROM bill_runs "
                "ORDER BY run_id DESC LIMIT %s",
                (limit,),
            )
            rows = await cur.fetchall()
        return [
            {
                "at": int(r[0].timestamp()),
                "accounts": r[1],
                "issued": r[2],
                "already": r[3],
                "failed": r[4],
                "seconds": round(r[5], 3),
            }
            for r in rows
        ]
