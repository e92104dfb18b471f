"""Clock jumps: the server's wall clock moved forward and backward under load.

The server is a real process, so the test clock cannot reach it; libfaketime can
(Debian's ``libfaketime``). The server starts with ``LD_PRELOAD`` of the multithreaded
library and ``FAKETIME_TIMESTAMP_FILE`` naming a file the suite rewrites (atomically) with
an offset such as ``+2678400`` or ``-90``; ``FAKETIME_NO_CACHE=1`` makes every clock
read see the current offset at once. Only the wall clock jumps:
``FAKETIME_DONT_FAKE_MONOTONIC=1`` leaves ``CLOCK_MONOTONIC`` true, as the kernel does
when NTP steps the clock, so asyncio's timers, gRPC's deadlines and every timeout keep
their length (faking them would be an artefact of the tool, not a clock jump).
Redis is then an external redis-server the suite starts, on the true clock (as on its
own machine): redis-server cannot start under libfaketime (its allocator reads the clock
before the library is ready), so the server's embedded one is not used in these runs.

The faults: ``clock_forward`` (past validity times, past supervision, or 31 days: past
every bundle's expiry) and ``clock_back`` (a few seconds to a few minutes). When the
faults end the clock is set to the furthest time it reached (NTP bringing a clock back
that had been stepped back), so supervision deadlines set at any moment are due.

What must hold (besides every other check of the run): money conserved exactly and
nothing applied twice (the other checks, unchanged); reservations released once swept;
bucket units conserved with expiry counted, ``bought = used + remaining + expired``
(``records.buckets_conserved``): a backward jump must not bring back units that were
counted expired, and units given back to an expired bucket count as expired; and once
the sweeper ran at the final time no bucket past its expiry is left holding nothing.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import redis

from chaos import checks
from charging import keys
from charging.buckets import unpack

LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu/faketime", "/usr/lib/aarch64-linux-gnu/faketime", "/usr/lib/faketime")
DAY_S = 86_400


def library() -> str:
    """libfaketimeMT.so.1 (the server has threads: gRPC's, the default executor's)."""
    for directory in LIBRARY_DIRS:
        path = Path(directory) / "libfaketimeMT.so.1"
        if path.exists():
            return str(path)
    raise RuntimeError("libfaketime is missing (apt-get install libfaketime; make chaos installs it)")


class FakeClock:
    """The offset of the server's wall clock, in a file libfaketime reads on every call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset_s = 0
        self.furthest_s = 0
        self._write()

    def env(self) -> dict[str, str]:
        return {
            "LD_PRELOAD": library(),
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }

    def _write(self) -> None:
        partial = self.path.with_suffix(".new")
        partial.write_text(f"{self.offset_s:+d}\n")
        os.replace(partial, self.path)  # never a half-written file for a reader

    def jump(self, seconds: int) -> str:
        self.offset_s += seconds
        self.furthest_s = max(self.furthest_s, self.offset_s)
        self._write()
        return f"{seconds:+d} s (offset {self.offset_s:+d} s)"

    def forward(self, rnd: random.Random) -> str:
        """Past a validity time, past supervision, or (rarely) past every bundle's expiry."""
        kind = rnd.choices(["validity", "supervision", "expiry"], [3, 3, 2])[0]
        if kind == "validity":
            return self.jump(rnd.randint(2, 10))
        if kind == "supervision":
            return self.jump(rnd.randint(30, 600))
        return self.jump(31 * DAY_S)

    def back(self, rnd: random.Random) -> str:
        return self.jump(-rnd.randint(2, 300))

    def restore(self) -> str:
        """The furthest time the clock reached: every deadline set so far is due."""
        return self.jump(self.furthest_s - self.offset_s)

    def now_s(self) -> int:
        """The server's wall clock now."""
        return int(time.time()) + self.offset_s

    def time(self) -> float:
        """The server's wall clock now, to the fraction of a second."""
        return time.time() + self.offset_s


def expired_units(client: redis.Redis | redis.RedisCluster, accounts: list[str]) -> dict[str, int]:
    """Units each account's buckets lost to expiry (the scripts' ``expired_<unit>`` totals)."""
    found: dict[str, int] = {}
    for account in accounts:
        totals = client.hgetall(keys.account(account))
        found[account] = sum(int(v) for k, v in totals.items() if str(k).startswith("expired_"))
    return found


def expired_left(client: redis.Redis | redis.RedisCluster, accounts: list[str], now_s: int) -> list[checks.Violation]:
    """Buckets still stored past their expiry with nothing held on them, once the sweeper
    ran at ``now_s`` (GetBalance hides them; the units equation would then miss them)."""
    found: list[checks.Violation] = []
    for account in accounts:
        for bucket_id, text in client.hgetall(keys.buckets(account)).items():
            b = unpack(str(bucket_id), str(text))
            if b.expiry_s <= now_s and b.reserved == 0:
                found.append(
                    checks.Violation(
                        "buckets_expired", account, f"bucket {b.id} expired at {b.expiry_s} (now {now_s}) still stored"
                    )
                )
    return found
