"""A simulated machine death: what Redis had not yet written to disk is gone.

The external redis-server writes its AOF with timestamp annotations
(``aof-timestamp-enabled``). After a burst of load, with no request in flight, the
server and Redis are killed and the AOF is cut at a second ``cut`` a little before the
kill with ``redis-check-aof --truncate-to-timestamp`` (what ``appendfsync everysec``
may lose when the machine dies: the writes of the last second or so, acknowledged or
not). Redis and the server start again on what remains, which must be a consistent
prefix of what happened:

* every request acknowledged before the cut second is still there (its stored answer
  exists);
* every script applied whole or not at all: on accounts with events, top-ups and
  purchases the balance is exactly the initial balance plus the effects of the requests
  whose stored answers survived.

What an acknowledged request after the cut lost is the honest exception: with
``appendfsync always`` it could not be lost, with ``everysec`` it can. Its record is not in
PostgreSQL: the relay holds records back until Redis has surely written them.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass

import redis

from chaos import checks
from chaos.history import History, Operation
from chaos.system import ExternalRedis, System
from charging import keys


@dataclass(frozen=True)
class Cut:
    cut_s: int  # annotations up to this second were kept
    killed_at: float  # wall clock


def die(system: System, external: ExternalRedis, back_s: int = 1) -> Cut:
    """Kill the server and Redis, cut the AOF ``back_s`` seconds before now, restart."""
    assert system.proc is not None
    killed_at = time.time()
    system.proc.kill()
    system.proc.wait()
    external.kill()
    cut_s = int(killed_at) - back_s
    manifest = external.directory / "appendonlydir" / "appendonly.aof.manifest"
    done = subprocess.run(
        ["redis-check-aof", "--truncate-to-timestamp", str(cut_s), str(manifest)],
        input="y\n",
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"redis-check-aof failed: {done.stdout[-500:]} {done.stderr[-500:]}")
    external.start()
    system.start()
    return Cut(cut_s, killed_at)


def record_key(op: Operation) -> str | None:
    """The key of the stored answer that shows ``op`` was applied."""
    if op.kind in ("topup", "buy"):
        return keys.topup(op.account, str(op.request["key"]))
    if op.kind in ("debit", "refund"):
        return keys.event(op.account, str(op.request["event_id"]))
    if op.kind == "session":
        return keys.answer(op.account, str(op.request["session_id"]), int(op.request["number"]))
    return None


def survivors(history: History, redis_port: int) -> set[str]:
    """Identities of the operations whose stored answer is still in Redis."""
    client = redis.Redis(port=redis_port, decode_responses=True)
    try:
        found: set[str] = set()
        for op in history.operations:
            key = record_key(op)
            if key is not None and op.identity not in found and client.exists(key):
                found.add(op.identity)
        return found
    finally:
        client.close()


def check_prefix(
    history: History,
    cut: Cut,
    alive: set[str],
    initial: dict[str, int],
    final: dict[str, checks.AccountState],
    prices: dict[str, int],
) -> list[checks.Violation]:
    found: list[checks.Violation] = []
    for op in history.operations:
        if op.applied and op.acked_at < cut.cut_s and op.identity not in alive:
            found.append(
                checks.Violation(
                    "machine_death",
                    op.account,
                    f"{op.identity} was acknowledged {cut.cut_s - op.acked_at:.2f} s before the cut and is gone",
                    (op.seq,),
                )
            )
    kept = History([op for op in history.operations if op.identity in alive], history.faults)
    for v in checks.conservation(kept, initial, final, prices):
        found.append(checks.Violation("machine_death", v.account, "after the cut: " + v.detail, v.operations))
    return found


def lost_after_cut(history: History, alive: set[str]) -> int:
    """Acknowledged requests the cut took (the honest exception of everysec)."""
    return len({op.identity for op in history.operations if op.applied and op.identity not in alive})


def records_of_lost(history: History, alive: set[str], usage_ids: set[str], audit_ids: set[str]) -> int:
    """Records already in PostgreSQL of acknowledged changes the cut took from Redis. The
    relay holds every record back until Redis has surely written it (charging/cdr_hold.py),
    so there must be none: the database never knows of a change Redis lost."""
    return len(recorded_but_lost(history, alive, usage_ids, audit_ids))


def recorded_but_lost(history: History, alive: set[str], usage_ids: set[str], audit_ids: set[str]) -> list[Operation]:
    lost = [op for op in history.operations if op.applied and op.identity not in alive]
    known = usage_ids | audit_ids
    sessions = {i.rsplit(":", 1)[0] + ":" for i in usage_ids if ":s:" in i}  # "<account>:s:<session>:<n>:"
    found: dict[str, Operation] = {}
    for op in lost:
        if op.kind == "session":
            hit = f"{op.account}:s:{op.request['session_id']}:{op.request['number']}:" in sessions
        else:
            hit = op.record_id in known
        if hit:
            found.setdefault(op.identity, op)
    return list(found.values())


def check_no_record_of_lost(
    history: History, alive: set[str], usage_ids: set[str], audit_ids: set[str]
) -> list[checks.Violation]:
    return [
        checks.Violation(
            "machine_death", op.account, f"{op.identity} was lost by Redis but its record is in PostgreSQL", (op.seq,)
        )
        for op in recorded_but_lost(history, alive, usage_ids, audit_ids)
    ]
