"""Stopping background tasks so that they really end.

On Python 3.11 a cancellation can be lost. ``asyncio.wait_for``, which redis-py wraps
around every command it sends (``Connection.send_packed_command``), returns the result
instead of raising ``CancelledError`` when the task is cancelled in the event-loop turn
between the send finishing and ``wait_for`` waking up (cpython gh-86296, fixed in 3.12,
where ``wait_for`` is built on ``asyncio.timeout``). A background loop (sweeper, census,
provisioning worker: ``while True``, a few Redis commands, a sleep) that loses its
cancellation just runs on, so ``task.cancel(); await task`` never returns and the
server's shutdown hangs. The window is one loop turn, so it shows on a loaded machine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from typing import Any

log = logging.getLogger("charging.background")

# How long a cancelled task may run on before it is cancelled again. Our tasks have no
# slow clean-up on cancellation, so a task still running after this has lost the request.
RECANCEL_S = 0.1


async def cancel_and_wait(tasks: Collection[asyncio.Task[Any]]) -> None:
    """Cancel the tasks and wait until every one has ended, cancelling again a task that
    lost the request and runs on. A task that ended with an error is logged."""
    for task in tasks:
        task.cancel()
    pending = {task for task in tasks if not task.done()}
    while pending:
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_S)
        for task in pending:
            log.warning("background task ran on after cancel, cancelling again", extra={"task": task.get_name()})
            task.cancel()
    for task in tasks:
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("background task failed", extra={"task": task.get_name()}, exc_info=exc)
