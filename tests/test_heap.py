"""The process's pauses (charging/heap.py): the start-up heap frozen out of the collector's
sight, every collection's pause and the event loop's lateness measured."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import time

from prometheus_client import REGISTRY

from charging import heap, metrics


def count(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name + "_count", labels or {}) or 0.0


def total(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name + "_sum", labels or {}) or 0.0


def test_the_start_up_heap_is_frozen_and_later_garbage_still_collected() -> None:
    # In a child process: freezing the test process would keep its garbage cycles for ever.
    script = (
        "import gc, json\n"
        "from charging import heap\n"
        "class Cycle:\n"
        "    pass\n"
        "frozen = heap.freeze_startup_heap()\n"
        "a, b = Cycle(), Cycle()\n"
        "a.other, b.other = b, a\n"
        "del a, b\n"
        "print(json.dumps([frozen.frozen, gc.get_freeze_count(), gc.collect(2)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    frozen, still_frozen, collected = (int(v) for v in out.stdout.strip().strip("[]").split(","))
    assert frozen > 10_000  # modules, protobuf descriptors, metrics: what a start leaves
    assert still_frozen == frozen
    assert collected >= 2  # a cycle made after the freeze is still found


def test_every_collection_s_pause_is_recorded_by_generation() -> None:
    meter = heap.PauseMeter()
    meter.install()
    try:
        before = {g: count("charging_gc_pause_seconds", {"generation": str(g)}) for g in range(3)}
        gc.collect(0)
        gc.collect(2)
        meter.flush()
        after = {g: count("charging_gc_pause_seconds", {"generation": str(g)}) for g in range(3)}
    finally:
        meter.remove()
    assert after[0] >= before[0] + 1
    assert after[2] >= before[2] + 1
    assert meter not in gc.callbacks
    gc.collect(2)  # no longer counted
    assert count("charging_gc_pause_seconds", {"generation": "2"}) == after[2]


async def test_a_stalled_event_loop_shows_as_lag() -> None:
    before_n, before_s = count("charging_event_loop_lag_seconds"), total("charging_event_loop_lag_seconds")
    watcher = asyncio.ensure_future(heap.watch_loop_lag(interval_s=0.01))
    try:
        await asyncio.sleep(0)  # the watcher's first timer is set
        time.sleep(0.05)  # noqa: ASYNC251 (the point: the loop is held, no timer can run on time)
        while count("charging_event_loop_lag_seconds") == before_n:  # noqa: ASYNC110 (a counter, not an event)
            await asyncio.sleep(0.005)
    finally:
        watcher.cancel()
    assert total("charging_event_loop_lag_seconds") - before_s >= 0.03  # held 50 ms, due after 10


def test_a_collection_while_the_metric_s_lock_is_held_does_not_wait_for_it() -> None:
    """A collection can start anywhere, also inside prometheus_client while it holds a
    lock (a worker's shared metrics files take a process-wide one): the callback must not
    take it. It used to observe the histogram from the callback, and a worker hung at start
    for ever (tests/test_workers.py, 1 run in 9 under load)."""
    meter = heap.PauseMeter()
    meter.install()
    held = metrics.GC_PAUSE.labels("2")._sum._lock  # the lock an observation takes
    try:
        before = count("charging_gc_pause_seconds", {"generation": "2"})
        with held:  # not reentrant: taking it again in this thread would never return
            gc.collect(2)
        meter.flush()
        assert count("charging_gc_pause_seconds", {"generation": "2"}) == before + 1
    finally:
        meter.remove()
