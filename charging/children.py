"""Child processes the server owns (the embedded redis-server and PostgreSQL): started so
that they die with it, and started again when they die while it runs.

A child gets its parent-death signal from util-linux ``setpriv --pdeathsig`` (on every
Debian system), which asks for the signal, changes user if told to, and execs the
command, which keeps the signal: one process, the same pid throughout. The signal follows
the death of the parent's *thread* that forked, not of its process: asyncio and uvloop
both fork in the event loop's thread, which lives as long as the server; never start a
child from a short-lived thread (``asyncio.to_thread``), or it is stopped when that
thread ends.

Not a ``preexec_fn``: Python code between fork and exec in a process with gRPC's threads
can deadlock or abort the child (seen: redis-server "exited" with SIGABRT), and uvloop
takes no ``umask``. A parent that dies in the instant between fork and the prctl leaves
a child behind; each embedded server's directory lock makes the next start find and stop
it.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Awaitable, Callable, Sequence

from charging.errors import StartupError

log = logging.getLogger("charging.children")


def dying_with_parent(argv: Sequence[str], signal: str, *, ids: Sequence[str] = (), umask: str = "") -> list[str]:
    """``argv`` run so that it gets ``signal`` (a name: TERM, INT) when this process dies,
    even by kill -9; ``ids`` are setpriv's options to run as another user, ``umask`` an
    octal umask set before the exec (through ``sh``)."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        if ids:
            raise StartupError("setpriv (util-linux) is needed to run a child as another user")
        log.warning("setpriv not found: a child will not die with its server", extra={"command": argv[0]})
        command = list(argv)
    else:
        command = [setpriv, "--pdeathsig", signal, *ids, "--", *argv]
    if umask:
        return ["/bin/sh", "-c", f'umask {umask} && exec "$@"', "sh", *command]
    return command


async def supervise(
    name: str,
    wait: Callable[[], Awaitable[int]],
    start: Callable[[], Awaitable[object]],
    stopping: Callable[[], bool],
    retry_s: float = 0.5,
) -> None:
    """Start the child again whenever ``wait`` says it exited while not ``stopping``,
    retrying a start that fails (a dead child's resources may take a moment to go)."""
    while not stopping():
        code = await wait()
        if stopping():
            return
        log.error("embedded %s exited; restarting", name, extra={"code": code})
        while not stopping():
            await asyncio.sleep(retry_s)
            try:
                await start()
                break
            except StartupError:
                if stopping():
                    return
                log.exception("embedded %s did not restart; trying again", name)
