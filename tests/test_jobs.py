"""Background jobs (charging/jobs.py) in a real server: every loop is a job, a dead job
takes the server out of its load balancer, a failing one shows in /metrics and backs
off, stopping ends every job, and SIGTERM answers NOT_SERVING before the drain."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from charging.clock import ManualClock
from charging.errors import StorageUnavailable
from charging.jobs import Backoff, Job
from charging.server import App
from charging.settings import Settings
from tests.server_process import serve, wait_serving

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
async def server(settings: Settings, clock: ManualClock) -> AsyncIterator[App]:
    """A server with every background job and a metrics endpoint."""
    app = App(replace(settings, metrics_address="127.0.0.1:0"), clock=clock, run_background=True)
    await app.start()
    yield app
    await app.stop()


async def scrape(app: App) -> str:
    url = f"http://127.0.0.1:{app.metrics_port}/metrics"
    return await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())


def sample(text: str, name: str, job: str) -> float:
    """The value of ``name{job="..."}`` (``component`` for the Redis error counter)."""
    found = re.search(rf'^{name}\{{(?:job|component)="{job}"\}} (\S+)$', text, re.MULTILINE)
    assert found is not None, f"{name} of {job} is not in /metrics"
    return float(found.group(1))


async def health_watch(app: App) -> tuple[grpc.aio.Channel, grpc.aio.UnaryStreamCall]:  # type: ignore[type-arg]
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
    assert (await watch.read()).status == SERVING
    return channel, watch


async def check(app: App, service: str = "") -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
    return int(answer.status)


JOBS = [
    "bill_run",
    "billing_applications",
    "catalog",
    "cdr_relay",
    "cdr_relay_lag",  # the relay lag gauge, per process (a function gauge is not seen by workers' endpoint)
    "census",
    "changes",  # the change feed (charging/changes.py): watched like the jobs
    "dunning",
    "invoice_delivery",
    "loop_lag",  # the event loop's lateness (charging/heap.py): watched like the jobs
    "notifications",
    "order_resumer",
    "provisioning",
    "renewer",
    "retention",
    "sweeper",
]


async def test_every_background_loop_runs_as_a_job(server: App) -> None:
    assert sorted(server.jobs.names) == JOBS
    assert sorted(server.jobs.running()) == JOBS
    assert set(JOBS) <= {t.get_name() for t in asyncio.all_tasks()}  # each task named after its job
    text = await scrape(server)
    for name in JOBS:
        if name not in ("changes", "loop_lag"):  # watched tasks, not periodic jobs: no passes to age
            sample(text, "charging_job_seconds_since_success", name)
    assert await check(server) == SERVING


class Bug(BaseException):
    """Not an ``Exception``: nothing in a pass is expected to raise it."""


async def cancelled_by_nobody() -> None:
    """A ``CancelledError`` no stop asked for: awaiting a future someone else cancelled."""
    future = asyncio.get_running_loop().create_future()
    future.cancel()
    await future


async def raises_a_bug() -> None:
    raise Bug("a bug")


@pytest.mark.parametrize("pass_", [cancelled_by_nobody, raises_a_bug], ids=["cancelled", "base-exception"])
async def test_a_job_that_dies_takes_the_server_out_of_the_load_balancer(
    server: App, clock: ManualClock, pass_: Callable[[], Awaitable[None]]
) -> None:
    channel, watch = await health_watch(server)
    server.jobs.start(Job("doomed", pass_, interval_s=3600, clock=clock))
    assert (await watch.read()).status == NOT_SERVING
    assert server.jobs.dead == ["doomed"]
    for service in ("", "charging.v1.Charging", "charging.v1.Crm"):
        assert await check(server, service) == NOT_SERVING
    assert sorted(server.jobs.running()) == JOBS  # the others go on
    await channel.close()


async def test_a_long_running_task_that_ends_is_a_dead_job(server: App) -> None:
    """What is watched without being periodic (the embedded Redis supervision) must not end either."""
    channel, watch = await health_watch(server)

    async def returns() -> None:
        return None

    server.jobs.watch("supervisor", returns())
    assert (await watch.read()).status == NOT_SERVING
    assert server.jobs.dead == ["supervisor"]
    await channel.close()


class Script:
    """A pass that does what the test says next, and says when it has done it."""

    def __init__(self) -> None:
        self.next: asyncio.Queue[str] = asyncio.Queue()
        self.done: asyncio.Queue[str] = asyncio.Queue()

    async def __call__(self) -> None:
        outcome = await self.next.get()
        self.done.put_nowait(outcome)  # the job records it before the test runs again
        if outcome == "redis down":
            raise StorageUnavailable("redis unavailable: not reachable")
        if outcome == "mail down":
            raise ConnectionRefusedError("smtp: connection refused")

    async def run(self, *outcomes: str) -> None:
        for outcome in outcomes:
            self.next.put_nowait(outcome)
            assert await self.done.get() == outcome

    @staticmethod
    def start(app: App, clock: ManualClock, name: str, caplog: pytest.LogCaptureFixture) -> tuple[Script, Job]:
        """A scripted job in ``app``, waiting for wake-ups, with a backoff of milliseconds."""
        caplog.set_level(logging.INFO, logger="charging.jobs")
        script = Script()
        job = Job(name, script, interval_s=3600, clock=clock, backoff=Backoff(0.001, 0.002))
        app.jobs.start(job)
        return script, job


def logged(caplog: pytest.LogCaptureFixture, job: str) -> list[tuple[str, str, int]]:
    """The records about ``job``: level, message, streaks not logged."""
    return [
        (r.levelname, r.getMessage(), getattr(r, "streaks_not_logged", 0))
        for r in caplog.records
        if getattr(r, "job", "") == job
    ]


async def test_a_failing_job_backs_off_counts_and_recovers_while_the_server_serves(
    server: App, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    script, job = Script.start(server, clock, "flaky", caplog)
    await script.run("ok")
    clock.advance(seconds=60)
    job.wake()
    await script.run("redis down", "redis down", "mail down")  # one streak, retried without a wake-up

    text = await scrape(server)
    assert sample(text, "charging_job_runs_total", "flaky") == 4
    assert sample(text, "charging_job_failures_total", "flaky") == 3
    assert sample(text, "charging_redis_errors_total", "flaky") == 2
    assert sample(text, "charging_job_seconds_since_success", "flaky") == 60
    assert await check(server) == SERVING
    assert job.streak == 3

    await script.run("ok")
    text = await scrape(server)
    assert sample(text, "charging_job_seconds_since_success", "flaky") == 0
    assert sample(text, "charging_job_failures_total", "flaky") == 3
    assert job.streak == 0
    assert server.jobs.dead == []
    assert logged(caplog, "flaky") == [
        ("WARNING", "job failed; retrying with backoff", 0),
        ("INFO", "job recovered", 0),
    ]


async def test_a_new_streak_soon_after_a_logged_one_is_only_counted(
    server: App, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    script, job = Script.start(server, clock, "flapping", caplog)
    for _ in range(3):
        await script.run("mail down", "ok")
        job.wake()
    clock.advance(seconds=61)
    await script.run("mail down", "ok")
    assert logged(caplog, "flapping") == [
        ("ERROR", "job failed; retrying with backoff", 0),
        ("INFO", "job recovered", 0),
        ("ERROR", "job failed; retrying with backoff", 2),
        ("INFO", "job recovered", 0),
    ]
    assert job.failures == 4


@pytest.mark.parametrize(
    ("failures", "jitter", "delay_s"),
    [(1, 0.0, 0.5), (1, 0.999, 0.9995), (2, 0.0, 1.0), (3, 0.0, 2.0), (7, 0.0, 30.0), (8, 0.0, 30.0), (999, 0.5, 45.0)],
)
def test_backoff_doubles_with_jitter_up_to_its_ceiling(failures: int, jitter: float, delay_s: float) -> None:
    assert Backoff(first_s=1.0, max_s=60.0).delay_s(failures, jitter) == pytest.approx(delay_s)


async def test_stopping_ends_every_job_also_one_that_swallows_its_cancellation(
    settings: Settings, clock: ManualClock
) -> None:
    app = App(settings, clock=clock, run_background=True)
    await app.start()
    entered = asyncio.Event()

    async def stubborn() -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass  # as a library catching BaseException would

    app.jobs.start(Job("stubborn", stubborn, interval_s=3600, clock=clock))
    await entered.wait()
    assert sorted(app.jobs.running()) == sorted([*JOBS, "stubborn"])
    await app.stop()
    assert app.jobs.running() == []  # each one ended
    assert app.jobs.dead == []


def test_sigterm_answers_not_serving_while_calls_are_still_served_then_drains(
    tmp_path: Path, database_url: str
) -> None:
    """A load balancer polling health must see NOT_SERVING before the server stops taking
    calls: it used to go from SERVING straight to unreachable. A second SIGTERM skips
    the rest of the delay."""
    proc, port = serve(tmp_path / "redis", database_url, CHARGING_SHUTDOWN_DELAY_S="50", CHARGING_GRACE_PERIOD_S="1")
    try:
        wait_serving(proc, port)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
            assert next(watch).status == SERVING
            proc.send_signal(signal.SIGTERM)
            assert next(watch).status == NOT_SERVING
            # New calls are still answered: health checks see NOT_SERVING, not a closed port.
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == NOT_SERVING
            service = health_pb2.HealthCheckRequest(service="charging.v1.Charging")
            assert health.Check(service, timeout=10).status == NOT_SERVING
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(grpc.RpcError):
                next(watch)  # the stream ends with the drain, after NOT_SERVING
        assert proc.wait(timeout=40) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        stderr = proc.communicate(timeout=30)[1]
    assert '"shutting down"' in stderr and '"stopped"' in stderr
    assert '"start-up heap frozen"' in stderr  # heap.py: serve() freezes what it holds from its start
