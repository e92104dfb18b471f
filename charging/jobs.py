"""Background jobs: every periodic loop of a process runs through ``Job``, watched by ``Jobs``.

A job is a name, one *pass* (an async function doing one round of work) and an interval.
``Job.run`` repeats the pass until it is cancelled:

* A pass that raises an ``Exception`` has *failed*: it is counted
  (``charging_job_failures_total{job}``) and tried again after an exponential backoff
  with jitter. A streak of failures is logged once, when it starts (Redis unavailable as
  a warning, anything else with its traceback), and its end once, when a pass succeeds
  again; a streak that starts within ``LOG_EVERY_S`` of the last one logged is only
  counted. The job goes on: a mail server or a Redis that is down shows in the job's
  metrics (``charging_job_seconds_since_success{job}`` grows), for alerts, and does not
  take the charging service out of its load balancer: every process would fail alike.
* Anything else ending the task is the job *dying*: a ``CancelledError`` that no stop
  asked for (a cancelled inner task awaited), another ``BaseException``, a bug in this
  module. ``Jobs`` then logs it and calls its ``on_death`` (the server goes NOT_SERVING:
  a restart mends a process whose job is gone; nothing else would).
* Cancelling the task ends the job, also when a pass swallowed the ``CancelledError``
  (on Python 3.11 redis-py's ``wait_for`` around each command can, see
  ``background.py``): the loop looks at ``Task.cancelling()`` after every pass and
  wait, so stopping a process does not depend on ``Jobs.stop`` cancelling again.

Between passes a job waits on its ``WakeSource``: by default a ``Wakeup`` that
``Job.wake()`` sets (the notification relay is woken by requests); the provisioning
worker waits on its change stream instead. ``mark()`` is called before each pass and
``wait()`` after it, so a change made during a pass is seen by the wait that follows:
no wake-up is lost between a pass and the wait. Backoff after a failure is not cut
short by wake-ups (a Redis that is down is not asked more often because requests come).

Before each pass the job asks its ``Gate`` whether this process may run it: ``ALWAYS``
by default. A lease held in Redis (one holder among several processes) is a ``Gate``,
so a job can run under one without its callers changing. A process that does not hold
the gate skips the pass (neither a run nor a success: alert on the smallest age among
the processes) and asks again after at most the gate's ``retry_s``, so a job whose holder
died is taken over within one lease period (``charging/leases.py``). ``Jobs.stop``
releases each gate once its job has ended.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from charging import metrics
from charging.background import cancel_and_wait
from charging.clock import Clock
from charging.errors import StorageUnavailable
from charging.store import unavailable

log = logging.getLogger("charging.jobs")

LOG_EVERY_S = 60  # at most one failure streak logged per job per minute


class Gate(Protocol):
    # A process that does not hold the gate asks again after at most this long.
    retry_s: float

    async def hold(self) -> bool:
        """Whether this process may run the next pass (acquire or renew a lease)."""
        ...

    async def release(self) -> None:
        """The job has stopped in this process: let another one take it over."""
        ...


class AlwaysHeld:
    """The gate of a job every process runs (each pass is safe to run concurrently)."""

    retry_s = float("inf")

    async def hold(self) -> bool:
        return True

    async def release(self) -> None:
        return None


ALWAYS = AlwaysHeld()


class WakeSource(Protocol):
    async def mark(self) -> None:
        """Called before a pass: what happens from now on ends the next ``wait``."""
        ...

    async def wait(self, timeout_s: float) -> None:
        """Return after ``timeout_s``, or earlier when woken since the last ``mark``."""
        ...


class Wakeup:
    """A wake source set in process (``wake``), e.g. by a request that left work."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def wake(self) -> None:
        self._event.set()

    async def mark(self) -> None:
        self._event.clear()  # the pass about to run covers wake-ups made before it

    async def wait(self, timeout_s: float) -> None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
        # cancellation that arrives as the event is set.
        try:
            async with asyncio.timeout(timeout_s):
                await self._event.wait()
        except TimeoutError:
            pass


@dataclass(frozen=True)
class Backoff:
    """How long to wait after the n-th failure in a row: doubling from ``first_s`` up to
    ``max_s``, the upper half of it random ("equal jitter"), so processes that failed
    together do not retry together."""

    first_s: float = 1.0
    max_s: float = 60.0

    def delay_s(self, failures: int, jitter: float) -> float:
        """``jitter`` in [0, 1)."""
        ceiling = min(self.first_s * float(1 << min(max(failures - 1, 0), 32)), self.max_s)
        return ceiling / 2 + ceiling / 2 * jitter


class Job:
    """One background job: ``run`` repeats ``pass_`` every ``interval_s`` until cancelled."""

    def __init__(
        self,
        name: str,
        pass_: Callable[[], Awaitable[Any]],
        *,
        interval_s: float,
        clock: Clock,
        backoff: Backoff = Backoff(),
        wake: WakeSource | None = None,
        gate: Gate = ALWAYS,
    ) -> None:
        self.name = name
        self._pass = pass_
        self.interval_s = interval_s
        self.clock = clock
        self.backoff = backoff
        self.source: WakeSource = wake if wake is not None else Wakeup()
        self.gate = gate
        self.runs = 0
        self.failures = 0
        self.streak = 0  # failures since the last success
        self._since_ms = clock.now_ms()  # last success, or when the job was made
        self._logged_ms: int | None = None  # when a failure streak was last logged
        self._streak_logged = False
        self._unlogged_streaks = 0

    def wake(self) -> None:
        """Run the next pass now (when the job waits on a ``Wakeup``)."""
        if isinstance(self.source, Wakeup):
            self.source.wake()

    def seconds_since_success(self) -> float:
        """Since the last successful pass, or since the job was made when none has succeeded."""
        return max(self.clock.now_ms() - self._since_ms, 0) / 1000

    async def run(self) -> None:
        """Passes until cancelled. Only what is not an ``Exception`` leaves this loop."""
        while True:
            try:
                wait_s = self.interval_s
                if await self.gate.hold():
                    await self.source.mark()
                    await self._pass()
                    self._succeeded()
                else:
                    wait_s = min(wait_s, self.gate.retry_s)
                stop_if_cancelled()
                await self.source.wait(wait_s)
            except Exception as exc:
                self._failed(exc)
                stop_if_cancelled()
                await asyncio.sleep(self.backoff.delay_s(self.streak, random.random()))
            stop_if_cancelled()

    def _succeeded(self) -> None:
        self.runs += 1
        metrics.JOB_RUNS.labels(self.name).inc()
        self._since_ms = self.clock.now_ms()
        metrics.JOB_LAST_SUCCESS.labels(self.name).set(self._since_ms / 1000)
        if self.streak and self._streak_logged:
            log.info("job recovered", extra={"job": self.name, "failures": self.streak})
        self.streak = 0
        self._streak_logged = False

    def _failed(self, exc: Exception) -> None:
        self.runs += 1
        metrics.JOB_RUNS.labels(self.name).inc()
        self.failures += 1
        self.streak += 1
        metrics.JOB_FAILURES.labels(self.name).inc()
        redis_down = isinstance(exc, StorageUnavailable) or bool(unavailable(exc))
        if redis_down:
            metrics.REDIS_ERRORS.labels(self.name).inc()
        if self.streak > 1:
            return
        now = self.clock.now_ms()
        if self._logged_ms is not None and now - self._logged_ms < LOG_EVERY_S * 1000:
            self._unlogged_streaks += 1
            return
        self._logged_ms, self._streak_logged = now, True
        extra: dict[str, Any] = {"job": self.name, "error": f"{type(exc).__name__}: {exc}"[:200]}
        if self._unlogged_streaks:
            extra["streaks_not_logged"], self._unlogged_streaks = self._unlogged_streaks, 0
        if redis_down:
            log.warning("job failed; retrying with backoff", extra=extra)
        else:
            log.error("job failed; retrying with backoff", extra=extra, exc_info=exc)


def stop_if_cancelled() -> None:
    """End the job when its task was asked to stop, even if the pass swallowed the
    ``CancelledError`` (a library catching BaseException, say)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Jobs:
    """The background jobs of a process: started one by one, watched, stopped together.

    A task that ends while the process is not stopping is a dead job: it is logged and
    ``on_death(name)`` runs. ``stop`` cancels every task and waits until all have ended
    (``background.cancel_and_wait``: a task that lost its cancellation is cancelled
    again)."""

    def __init__(self, on_death: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.on_death = on_death
        self._jobs: dict[str, Job | None] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._reactions: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.dead: list[str] = []

    @property
    def names(self) -> list[str]:
        return list(self._tasks)

    def running(self) -> list[str]:
        """The jobs whose task has not ended."""
        return [name for name, task in self._tasks.items() if not task.done()]

    def get(self, name: str) -> Job | None:
        return self._jobs.get(name)

    def start(self, job: Job) -> None:
        """Run ``job`` in its own task (named after it) and watch it."""
        self._jobs[job.name] = job
        metrics.JOB_AGES.track(job.name, job.seconds_since_success)
        self.watch(job.name, job.run())

    def watch(self, name: str, work: Awaitable[None]) -> None:
        """Run a long-lived task that is not a periodic job (it waits on something else),
        watched and stopped like the jobs."""
        if name in self._tasks:
            raise ValueError(f"a job named {name} is running already")
        self._jobs.setdefault(name, None)
        task = asyncio.ensure_future(work)
        task.set_name(name)
        self._tasks[name] = task
        task.add_done_callback(lambda t: self._ended(name, t))

    def _ended(self, name: str, task: asyncio.Task[None]) -> None:
        error = None if task.cancelled() else task.exception()  # retrieved, so never "never retrieved"
        if self._stopping:
            return
        self.dead.append(name)
        reason = "cancelled without a stop" if task.cancelled() else "ended" if error is None else "raised"
        log.error("background job died", extra={"job": name, "how": reason}, exc_info=error)
        if self.on_death is not None:
            reaction = asyncio.ensure_future(self.on_death(name))
            self._reactions.add(reaction)
            reaction.add_done_callback(self._reactions.discard)

    async def stop(self) -> None:
        """Cancel every job and wait until they have ended."""
        self._stopping = True
        await cancel_and_wait([*self._tasks.values(), *self._reactions])
        for name, job in self._jobs.items():
            if job is not None:
                metrics.JOB_AGES.forget(name, job.seconds_since_success)
                try:
                    await job.gate.release()
                except Exception as exc:  # Redis away: the lease lapses by itself
                    log.warning("lease not released", extra={"job": name, "error": str(exc)[:200]})
