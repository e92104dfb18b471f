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
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from charging import keys, metrics
from charging.cdr_store import CdrStore
from charging.cdrs import AuditRow, BadRecord, UsageRow, rows
from charging.clock import Clock
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
        linger_s: float = LINGER_S,
        after_commit: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._client = client
        self.store = store
        self.clock = clock
        self.batch = batch
        self.accounts_per_round = accounts_per_round
        self.scan_every_s = scan_every_s
        # Between the commit and the trim (crash tests stop a process here).
        self.after_commit = after_commit
        # Accounts with records waiting, as far as this process knows, with when (ms)
        # each was first known to have some.
        self._waiting: dict[str, int] = {}
        self._next_scan_ms: int | None = None  # None: scan on the first pass
        self.wakeup = Lingering(linger_s)  # the wake source of the ``cdr_relay`` job
        self._rounds = 0  # rounds in flight
        self._settled = asyncio.Event()  # no round in flight
        self._settled.set()
        self.relayed = 0

    def wake(self, account: str) -> None:
        """The account's record outbox has records: relay them soon."""
        self._waiting.setdefault(account, self.clock.now_ms())
        self.wakeup.wake()

    def lag_s(self) -> float:
        """How long the oldest record this process knows of has waited (0: none)."""
        if not self._waiting:
            return 0.0
        return max(self.clock.now_ms() - min(self._waiting.values()), 0) / 1000

    def waiting(self) -> int:
        return len(self._waiting)

    async def relay_waiting(self) -> int:
        """One pass of the ``cdr_relay`` job: scan when due, then relay the waiting
        outboxes, oldest first, for at most ``ROUNDS_PER_PASS`` rounds. Returns how many
        records were relayed."""
        now = self.clock.now_ms()
        if self._next_scan_ms is None or now >= self._next_scan_ms:
            await self.scan()
            self._next_scan_ms = now + int(self.scan_every_s * 1000)
        moved = 0
        step = self.accounts_per_round
        for _ in range(0, ROUNDS_PER_PASS, CONCURRENT_ROUNDS):
            if not self._waiting:
                break
            oldest = sorted(self._waiting, key=self._waiting.__getitem__)[: step * CONCURRENT_ROUNDS]
            rounds = [self.relay_accounts(oldest[i : i + step]) for i in range(0, len(oldest), step)]
            results = await asyncio.gather(*rounds, return_exceptions=True)
            moved += sum(r for r in results if isinstance(r, int))
            for r in results:
                if isinstance(r, BaseException):
                    raise r
        if self._waiting:
            self.wakeup.wake()  # more than a pass's worth: the next pass at once
        return moved

    async def scan(self) -> int:
        """Find every record outbox in Redis (left by any process); returns how many."""
        found = 0
        with storage_errors():
            async for key in self._client.scan_iter(match=keys.CDR_OUTBOX_PATTERN, count=SCAN_COUNT, _type="LIST"):
                account = keys.cdr_outbox_account(str(key))
                if account is not None:
                    self._waiting.setdefault(account, self.clock.now_ms())
                    found += 1
        return found

    async def relay_accounts(self, accounts: list[str]) -> int:
        """One round: up to ``batch`` records of each account into PostgreSQL in one
        transaction, then off the outboxes. An account whose outbox had more stays
        waiting; when anything fails, every one of them stays waiting."""
        since = {a: self._waiting.pop(a) for a in accounts if a in self._waiting}
        self._rounds += 1
        self._settled.clear()
        try:
            outboxes = [keys.cdr_outbox(a) for a in accounts]
            with storage_errors():
                pipe = self._client.pipeline(transaction=False)
                for outbox in outboxes:
                    pipe.lrange(outbox, 0, self.batch - 1)
                read: list[list[str]] = [[str(e) for e in entries] for entries in await pipe.execute()]
            usage: list[UsageRow] = []
            audit: list[AuditRow] = []
            for account, entries in zip(accounts, read, strict=True):
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
            if usage or audit:
                written = await self.store.write(usage, audit)
                for table, offered, inserted in (
                    ("usage_records", written.usage_offered, written.usage_inserted),
                    ("audit", written.audit_offered, written.audit_inserted),
                ):
                    metrics.CDRS_RELAYED.labels(table).inc(inserted)
                    if offered > inserted:
                        metrics.CDRS_REPEATED.labels(table).inc(offered - inserted)
            if self.after_commit is not None:
                await self.after_commit()
            trimmed = await self._trim([(o, e) for o, e in zip(outboxes, read, strict=True) if e])
        except BaseException:
            for account, at in since.items():
                self._waiting[account] = min(at, self._waiting.get(account, at))
            raise
        finally:
            self._rounds -= 1
            if not self._rounds:
                self._settled.set()
        moved = sum(trimmed.values())
        self.relayed += moved
        now = self.clock.now_ms()
        for account, outbox, entries in zip(accounts, outboxes, read, strict=True):
            # More may be behind a full batch; and a trim that found another relay's
            # trim before it (which may have taken only part of what this one read)
            # leaves the rest of what this one read for the next round.
            if len(entries) >= self.batch or (entries and not trimmed.get(outbox)):
                at = since.get(account, now)
                self._waiting[account] = min(at, self._waiting.get(account, at))
        return moved

    async def _trim(self, done: list[tuple[str, list[str]]]) -> dict[str, int]:
        """Remove what was committed from each outbox's head; how many, by outbox."""
        trimmed: dict[str, int] = {}
        pending = done
        with storage_errors():
            for attempt in (1, 2):
                pipe = self._client.pipeline(transaction=False)
                for outbox, entries in pending:
                    # As a plain command: redis-py's cluster pipeline refuses ``evalsha``.
                    trim = CdrTrimArgs(entries[0], len(entries)).to_argv()
                    pipe.execute_command("EVALSHA", CDR_TRIM.sha, 1, outbox, *trim)
                results = await pipe.execute(raise_on_error=False)
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


async def drain(relay: CdrRelay) -> int:
    """Relay until nothing known is waiting and no other task of the process is still
    relaying (tests, the bench); returns how many records this call relayed."""
    moved = 0
    while True:
        moved += await relay.relay_waiting()
        await relay.settled()
        if not relay.waiting():
            return moved
