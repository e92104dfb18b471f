"""The relay that moves usage records and money movements from Redis to PostgreSQL.

The ledger scripts append records to the account's record outbox ``{a:ID}:cdr`` in the
same script as the change (``cdrs.py``). The relay, the ``cdr_relay`` job
(``charging/jobs.py``), reads the head of many outboxes at once, writes them to
PostgreSQL in one transaction (``cdr_store.py``: COPY, then insert skipping rows that are
there already) and, once that has committed, removes from each outbox's head exactly
what it read (``cdr_trim.lua``, only if still at the head).

Guarantees: a record leaves Redis only after its transaction committed, so none is lost
(a crash before the commit leaves it in Redis; the outbox survives with Redis's AOF like
the balance it goes with). A crash between the commit and the trim relays the same
records again: they carry deterministic ids and times, so the tables' primary keys keep
each once (counted in ``charging_cdrs_repeated_total``). At least once into the
transaction, exactly once in the tables. Concurrent relays (several processes) may read
the same head; both inserts are idempotent and only one trim removes it.

How the relay finds outboxes with records, with no global key in the scripts (a global
key would leave the account's hash slot, and every charging request would write it):

* Each script's reply carries the record outbox's length after its pushes; ``Ledger``
  calls ``wake(account)`` when it is not 0. The process keeps these accounts in memory,
  with the time each was first woken (the relay lag is the oldest of these).
* Memory is lost with the process, and a reply can be lost after its script ran (the
  connection broke). So the relay also SCANs for outbox keys when it starts and every
  ``scan_every_s`` afterwards: records a crashed process or a lost reply left behind are
  relayed by whichever process scans next. SCAN walks the whole keyspace in small steps
  (``COUNT``), so it runs rarely; the in-memory set carries the normal flow.
* The outboxes known by name (``documents``, ``history``, ``kept`` below: the catalog's,
  the coverage table's, the orders', every billing shard's credit outbox) are written by
  other processes too (``charging worker``, a bill run on another host), whose writes do
  not wake this one. They cost no SCAN, so the relay looks at them every
  ``named_every_s`` (one pipelined ``EXISTS`` each; the job is woken for it): a record
  another process left there waits seconds, not until the next scan.

The hold (``cdr_hold.py``): with ``appendfsync everysec`` a machine death can take the last
writes from Redis, and PostgreSQL must not keep their records. The relay marks the last
record of an outbox it read (its "mark") with the time of that read, and relays the records
up to the mark only once ``hold_ms`` has passed since: each was in Redis before the read,
so Redis has written it to disk by then. No record's own time is trusted for this: a script
takes its time before it runs, maybe long before (a queue, a stalled link).

Outboxes of things other than accounts (``documents``: the catalog's ``{catalog}:cdr``, the
coverage table's, each in its store's slot) carry only audit entries of their changes
(``c`` entries, ``cdrs.py``); the relay knows their names, so its scan asks for them
directly, and their stores wake it with ``wake_outbox``.

History outboxes (``history``: the catalog's ``{catalog}:applied``, the coverage table's)
carry the versions applied (``document_history.py``); their rows go to
``document_versions`` (``history_store.py``) after the round's usage and audit rows, in a
transaction of their own, before the trim, with the same guarantees (a repeat is kept
once by its id). Other packages' outboxes of
rows other than audit entries (``kept``: provisioning's orders and lines' history,
``provisioning/order_store.py``) are read, written in the same transaction by their own
idempotent inserts, and trimmed the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from charging import keys, metrics
from charging.cdr_store import CdrStore, KeptRows
from charging.cdrs import AuditRow, BadRecord, UsageRow, rows
from charging.clock import Clock
from charging.document_history import VersionRow, version_row
from charging.history_store import HistoryStore
from charging.jobs import Wakeup
from charging.ledger import LuaScript
from charging.script_args import CdrTrimArgs
from charging.store import storage_errors

log = logging.getLogger("charging.cdr_relay")

CDR_TRIM = LuaScript("cdr_trim.lua")

BATCH = 1000  # records read from one outbox per round
ACCOUNTS_PER_ROUND = 200  # outboxes read (and written in one transaction) per round
CONCURRENT_ROUNDS = 4  # rounds on disjoint outboxes at once: one parses while another's COPY runs
ROUNDS_PER_PASS = 50  # then the pass ends (and the job runs the next at once)
LINGER_S = 0.25  # a woken relay waits this long for more records before its pass
SCAN_EVERY_S = 600.0
NAMED_EVERY_S = 2.0  # how often the outboxes known by name are looked at
SCAN_COUNT = 1000


class Lingering(Wakeup):
    """The ``cdr_relay`` job's wake source: woken, it waits ``linger_s`` more before the
    pass runs, so that one pass (one transaction, one read and trim per outbox) carries
    the records of many requests instead of one: a pass per request would cost the server
    more per record than the records themselves (``make bench``). The records wait that
    much longer in Redis, where they are as safe as the balance they go with."""

    def __init__(self, linger_s: float) -> None:
        super().__init__()
        self.linger_s = linger_s

    async def wait(self, timeout_s: float) -> None:
        await super().wait(timeout_s)
        if self._event.is_set() and self.linger_s > 0:
            await asyncio.sleep(self.linger_s)


@dataclass(frozen=True, slots=True)
class Mark:
    """The last record of an outbox seen by a read at ``at_ms``: it and every record
    before it were in Redis then."""

    entry: str
    at_ms: int


class CdrRelay:
    def __init__(
        self,
        client: aioredis.Redis,
        store: CdrStore,
        clock: Clock,
        *,
        batch: int = BATCH,
        accounts_per_round: int = ACCOUNTS_PER_ROUND,
        scan_every_s: float = SCAN_EVERY_S,
        named_every_s: float = NAMED_EVERY_S,
        linger_s: float = LINGER_S,
        after_commit: Callable[[], Awaitable[None]] | None = None,
        hold_ms: int = 0,
        documents: tuple[str, ...] = (),
        history: HistoryStore | None = None,
        kept: tuple[KeptRows, ...] = (),
    ) -> None:
        self._client = client
        self.store = store
        self.clock = clock
        self.batch = batch
        self.accounts_per_round = accounts_per_round
        self.scan_every_s = scan_every_s
        self.named_every_s = named_every_s
        # Between the commit and the trim (crash tests stop a process here).
        self.after_commit = after_commit
        self.history = history  # where the history outboxes' versions go
        self.histories = history.outboxes if history is not None else ()
        # ``kept``: outboxes of other rows than audit entries, written by their own inserts
        self.kept = {k.outbox: k for k in kept}
        # the record outboxes that are not an account's (scanned for by name)
        self.documents = documents + self.histories + tuple(self.kept)
        # Outboxes (keys) with records waiting, as far as this process knows, with when
        # (ms) each was first known to have some.
        self._waiting: dict[str, int] = {}
        self._next_scan_ms: int | None = None  # None: scan on the first pass
        self._next_named_ms = 0  # when to look at the outboxes known by name again
        self.wakeup = Lingering(linger_s)  # the wake source of the ``cdr_relay`` job
        self._rounds = 0  # rounds in flight
        self._settled = asyncio.Event()  # no round in flight
        self._settled.set()
        self.relayed = 0
        # Records are relayed only once in Redis for hold_ms (0: at once; cdr_hold.py).
        self.hold_ms = hold_ms
        self._marks: dict[str, Mark] = {}
        self._due: dict[str, int] = {}  # outboxes whose records are all held: until when (ms)
        self._timer: asyncio.TimerHandle | None = None

    def wake(self, account: str) -> None:
        """The account's record outbox has records: relay them soon."""
        self.wake_outbox(keys.cdr_outbox(account))

    def wake_outbox(self, outbox: str) -> None:
        """The record outbox ``outbox`` has records: relay them soon."""
        self._waiting.setdefault(outbox, self.clock.now_ms())
        self.wakeup.wake()

    def lag_s(self) -> float:
        """How long the oldest record this process knows of has waited (0: none)."""
        if not self._waiting:
            return 0.0
        return max(self.clock.now_ms() - min(self._waiting.values()), 0) / 1000

    def waiting(self) -> int:
        return len(self._waiting)

    def ready(self) -> list[str]:
        """Waiting outboxes not held back, oldest first."""
        now = self.clock.now_ms()
        ready = [a for a in self._waiting if self._due.get(a, now) <= now]
        return sorted(ready, key=self._waiting.__getitem__)

    def held_for_s(self) -> float | None:
        """How long until the first held outbox is due (None: none is held)."""
        due = [self._due[a] for a in self._waiting if a in self._due]
        return max(min(due) - self.clock.now_ms(), 0) / 1000 if due else None

    async def relay_waiting(self) -> int:
        """One pass of the ``cdr_relay`` job: scan when due, then relay the waiting
        outboxes, oldest first, for at most ``ROUNDS_PER_PASS`` rounds. Returns how many
        records were relayed."""
        now = self.clock.now_ms()
        if self._next_scan_ms is None or now >= self._next_scan_ms:
            await self.scan()
            self._next_scan_ms = now + int(self.scan_every_s * 1000)
            self._next_named_ms = now + int(self.named_every_s * 1000)
        elif now >= self._next_named_ms:
            await self.look_named()
            self._next_named_ms = now + int(self.named_every_s * 1000)
        moved = 0
        step = self.accounts_per_round
        for _ in range(0, ROUNDS_PER_PASS, CONCURRENT_ROUNDS):
            oldest = self.ready()[: step * CONCURRENT_ROUNDS]
            if not oldest:
                break
            rounds = [self.relay_outboxes(oldest[i : i + step]) for i in range(0, len(oldest), step)]
            results = await asyncio.gather(*rounds, return_exceptions=True)
            moved += sum(r for r in results if isinstance(r, int))
            for r in results:
                if isinstance(r, BaseException):
                    raise r
        if self.ready():
            self.wakeup.wake()  # more than a pass's worth: the next pass at once
        else:
            self._wake_when_due()
        return moved

    def next_pass_in_s(self) -> float | None:
        """How long until the job must run again with nothing woken: the first held
        record may go, or the outboxes known by name are to be looked at (None: neither)."""
        delay = self.held_for_s()
        if self.documents:
            named = max(self._next_named_ms - self.clock.now_ms(), 0) / 1000
            delay = named if delay is None else min(delay, named)
        return delay

    def _wake_when_due(self) -> None:
        """Run the job again when ``next_pass_in_s`` says."""
        delay = self.next_pass_in_s()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if delay is not None:
            self._timer = asyncio.get_running_loop().call_later(delay, self.wakeup.wake)

    async def scan(self) -> int:
        """Find every record outbox in Redis (left by any process); returns how many."""
        found = 0
        with storage_errors():
            async for key in self._client.scan_iter(match=keys.CDR_OUTBOX_PATTERN, count=SCAN_COUNT, _type="LIST"):
                if keys.cdr_outbox_account(str(key)) is not None:
                    self._waiting.setdefault(str(key), self.clock.now_ms())
                    found += 1
        return found + await self.look_named()

    async def look_named(self) -> int:
        """The outboxes known by name that have records wait (one pipelined ``EXISTS``
        each, no scan); returns how many have."""
        if not self.documents:
            return 0
        with storage_errors():
            pipe = self._client.pipeline(transaction=False)
            for outbox in self.documents:
                pipe.exists(outbox)
            found = await pipe.execute()
        now = self.clock.now_ms()
        with_records = [outbox for outbox, n in zip(self.documents, found, strict=True) if n]
        for outbox in with_records:
            self._waiting.setdefault(outbox, now)
        return len(with_records)

    async def relay_accounts(self, accounts: list[str]) -> int:
        """``relay_outboxes`` for the record outboxes of these accounts."""
        return await self.relay_outboxes([keys.cdr_outbox(a) for a in accounts])

    async def relay_outboxes(self, outboxes: list[str]) -> int:
        """One round: up to ``batch`` records of each outbox into PostgreSQL in one
        transaction, then off the outboxes. An outbox that had more stays waiting; when
        anything fails, every one of them stays waiting."""
        since = {o: self._waiting.pop(o) for o in outboxes if o in self._waiting}
        for outbox in outboxes:
            self._due.pop(outbox, None)
        self._rounds += 1
        self._settled.clear()
        try:
            with storage_errors():
                pipe = self._client.pipeline(transaction=False)
                for outbox in outboxes:
                    pipe.lrange(outbox, 0, self.batch - 1)
                read: list[list[str]] = [[str(e) for e in entries] for entries in await pipe.execute()]
            if self.hold_ms > 0:
                now = self.clock.now_ms()  # after the read: every record read was in Redis before
                read = [await self._held_back(*held, now) for held in zip(outboxes, read, strict=True)]
            usage: list[UsageRow] = []
            audit: list[AuditRow] = []
            versions: list[VersionRow] = []
            kept: list[tuple[KeptRows, list[str]]] = []
            for outbox, entries in zip(outboxes, read, strict=True):
                if outbox in self.histories:
                    versions += _versions(entries)
                    continue
                if outbox in self.kept:
                    if entries:
                        kept.append((self.kept[outbox], entries))
                    continue
                account = keys.cdr_outbox_account(outbox) or ""  # "": a document's (``c`` entries only)
                for entry in entries:
                    try:
                        u, a = rows(account, entry)
                    except BadRecord as exc:
                        # Kept out of the tables, and off the outbox with the batch: one bad
                        # entry must not hold back every later record of the account.
                        metrics.CDRS_UNREADABLE.inc()
                        log.error("unreadable record skipped", extra={"error": str(exc)})
                        continue
                    if u is not None:
                        usage.append(u)
                    if a is not None:
                        audit.append(a)
            if usage or audit or kept:
                written = await self.store.write(usage, audit, kept)
                for table, offered, inserted in (
                    ("usage_records", written.usage_offered, written.usage_inserted),
                    ("audit", written.audit_offered, written.audit_inserted),
                ):
                    metrics.CDRS_RELAYED.labels(table).inc(inserted)
                    if offered > inserted:
                        metrics.CDRS_REPEATED.labels(table).inc(offered - inserted)
            for kept_rows, entries in kept:  # committed: what Redis kept until then may go
                await kept_rows.committed(entries)
            if versions and self.history is not None:
                inserted = await self.history.write(versions)
                metrics.CDRS_RELAYED.labels("document_versions").inc(inserted)
                if len(versions) > inserted:
                    metrics.CDRS_REPEATED.labels("document_versions").inc(len(versions) - inserted)
            if self.after_commit is not None:
                await self.after_commit()
            trimmed = await self._trim([(o, e) for o, e in zip(outboxes, read, strict=True) if e])
        except BaseException:
            for outbox, at in since.items():
                self._waiting[outbox] = min(at, self._waiting.get(outbox, at))
            raise
        finally:
            self._rounds -= 1
            if not self._rounds:
                self._settled.set()
        moved = sum(trimmed.values())
        self.relayed += moved
        now = self.clock.now_ms()
        for outbox, entries in zip(outboxes, read, strict=True):
            # More may be behind a full batch; and a trim that found another relay's
            # trim before it (which may have taken only part of what this one read)
            # leaves the rest of what this one read for the next round.
            if len(entries) >= self.batch or (entries and not trimmed.get(outbox)) or outbox in self._marks:
                at = since.get(outbox, now)
                self._waiting[outbox] = min(at, self._waiting.get(outbox, at))
        return moved

    async def _held_back(self, outbox: str, entries: list[str], now: int) -> list[str]:
        """The head of ``entries`` that has been in Redis for the hold; the rest waits for
        the outbox's mark (set here when there is none)."""
        mark = self._marks.get(outbox)
        take = 0
        if mark is not None and now - mark.at_ms >= self.hold_ms:
            if mark.entry in entries:
                take = entries.index(mark.entry) + 1
                del self._marks[outbox]
            elif len(entries) >= self.batch and await self._behind(outbox, mark.entry):
                take = len(entries)  # the mark is further back: all of these are older
            else:
                del self._marks[outbox]  # another relay moved it: what is left is newer
        if take < len(entries) and outbox not in self._marks:
            self._marks[outbox] = Mark(entries[-1], now)
        if not entries:
            self._marks.pop(outbox, None)
        if outbox in self._marks:
            self._due[outbox] = self._marks[outbox].at_ms + self.hold_ms
        return entries[:take]

    async def _behind(self, outbox: str, entry: str) -> bool:
        with storage_errors():
            return await self._client.lpos(outbox, entry) is not None  # type: ignore[misc]

    async def _run_trims(self, pending: list[tuple[str, list[str]]]) -> list[Any]:
        """One trim per outbox, in one pipeline; each result a count or the error it met."""
        pipe = self._client.pipeline(transaction=False)
        for outbox, entries in pending:
            # As a plain command: redis-py's cluster pipeline refuses ``evalsha``.
            trim = CdrTrimArgs(entries[0], len(entries)).to_argv()
            pipe.execute_command("EVALSHA", CDR_TRIM.sha, 1, outbox, *trim)
        return list(await pipe.execute(raise_on_error=False))

    async def _trim(self, done: list[tuple[str, list[str]]]) -> dict[str, int]:
        """Remove what was committed from each outbox's head; how many, by outbox."""
        trimmed: dict[str, int] = {}
        pending = done
        with storage_errors():
            for attempt in (1, 2):
                results = await self._run_trims(pending)
                again = []
                for (outbox, entries), r in zip(pending, results, strict=True):
                    if isinstance(r, redis_errors.NoScriptError) and attempt == 1:
                        again.append((outbox, entries))  # did not run
                    elif isinstance(r, Exception):
                        raise r
                    else:
                        trimmed[outbox] = int(r)
                if not again:
                    break
                # Redis has not loaded the script yet, or lost its cache (a restart).
                await self._client.script_load(CDR_TRIM.source)
                pending = again
        return trimmed

    async def settled(self) -> None:
        """Wait until no round is in flight (another task's, e.g. the job's)."""
        await self._settled.wait()


def _versions(entries: list[str]) -> list[VersionRow]:
    """The rows of a history outbox's entries; an unreadable one is skipped (as above)."""
    found = []
    for entry in entries:
        try:
            found.append(version_row(entry))
        except BadRecord as exc:
            metrics.CDRS_UNREADABLE.inc()
            log.error("unreadable document version skipped", extra={"error": str(exc)})
    return found


async def drain(relay: CdrRelay) -> int:
    """Relay until nothing known is waiting and no other task of the process is still
    relaying (tests, the bench); returns how many records this call relayed."""
    moved = 0
    while True:
        moved += await relay.relay_waiting()
        await relay.settled()
        if not relay.waiting():
            return moved
        held = relay.held_for_s()
        if held is not None and not relay.ready():
            await asyncio.sleep(max(held, 0.01))  # everything left is held back
