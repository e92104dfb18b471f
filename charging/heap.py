"""The server process's heap and event loop, as they bear on latency.

Python's cyclic garbage collector stops the whole process while it walks a generation. The
oldest generation holds everything the server loaded at start (modules, protobuf
descriptors, catalogs, the scripts' texts, the caches' first entries): measured under
`make bench` (README "Measured figures"), a full collection of that heap stopped the event
loop for up to a quarter of a second, several times a minute under load, and every call
arriving meanwhile waited in grpc's queue (at 70% of capacity some were reset by its
bound). What the server holds from its start is moved out of the collector's sight once it
is serving (``gc.freeze``): those objects are still freed by reference counting when
released, but no collection walks them again, so a full collection walks only what was
made since. A cycle among frozen objects is never collected: acceptable for what is held
for the life of the process, which is why only the start-up heap is frozen, once.

What is left is measured rather than guessed: every collection's pause, per generation
(``charging_gc_pause_seconds``), and how late the event loop runs a timer
(``charging_event_loop_lag_seconds``): the time a call that just arrived waits before any
of the server's code can look at it."""

from __future__ import annotations

import asyncio
import gc
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from charging import metrics

LAG_INTERVAL_S = 0.1  # how often the loop's lateness is sampled: 10 wake-ups a second


@dataclass(frozen=True)
class Frozen:
    collected: int  # unreachable objects found by the collection before the freeze
    frozen: int  # objects out of the collector's sight from now on


def freeze_startup_heap() -> Frozen:
    """Collect what start-up left unreachable, then freeze the rest (see the module
    docstring). Call once, when the server is serving."""
    collected = gc.collect()
    gc.freeze()
    return Frozen(collected, gc.get_freeze_count())


class PauseMeter:
    """Times each collection of the cyclic collector (two clock reads per collection, from
    ``gc.callbacks``) for ``charging_gc_pause_seconds{generation}``.

    The callback only appends to a bounded deque (atomic, no lock): a collection can start
    anywhere, also inside prometheus_client while it holds its own lock (workers' shared
    metrics files), and observing there would wait for that lock for ever. The pauses reach
    the histogram from ``flush``, which the loop-lag watcher calls every 100 ms."""

    def __init__(self, kept: int = 10_000) -> None:
        self._started = 0.0
        self._pending: deque[tuple[int, float]] = deque(maxlen=kept)
        self._children = {g: metrics.GC_PAUSE.labels(str(g)) for g in range(3)}

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._pending.append((info["generation"], time.perf_counter() - self._started))

    def flush(self) -> None:
        """Observe the pauses recorded since the last flush (outside any collection)."""
        pending = self._pending
        while True:
            try:
                generation, seconds = pending.popleft()
            except IndexError:
                return
            self._children[generation].observe(seconds)

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)
        self.flush()


PAUSES = PauseMeter()  # the process's one meter: installed by ``serve``, flushed by the watcher


async def watch_loop_lag(interval_s: float = LAG_INTERVAL_S, pauses: PauseMeter = PAUSES) -> None:
    """For ever: sleep ``interval_s`` and record how much later than asked the loop woke
    (``charging_event_loop_lag_seconds``), and the collector's pauses since the last turn.
    Uses the monotonic clock of the process, not the charging clock: it measures the
    machine, not business time."""
    loop = asyncio.get_running_loop()
    lag = metrics.LOOP_LAG
    while True:
        asked = loop.time() + interval_s
        await asyncio.sleep(interval_s)
        lag.observe(max(0.0, loop.time() - asked))
        pauses.flush()
