"""`charging serve` with one change, for the crash test (tests/test_cdr_crash.py): its
record relay stops for good between its commit to PostgreSQL and its trim of the
outboxes, after creating the file named by ``CDR_CRASH_MARK``, so that the test can
kill -9 the process exactly there. Everything else is the real server."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import uvloop

from charging import logs, server
from charging.cdr_relay import CdrRelay
from charging.settings import Settings


class StoppingRelay(CdrRelay):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        async def stop_here() -> None:
            await asyncio.to_thread(Path(os.environ["CDR_CRASH_MARK"]).write_text, "committed")
            await asyncio.Event().wait()  # until killed

        super().__init__(*args, after_commit=stop_here, **kwargs)


def main() -> None:
    settings = Settings.from_env(os.environ)
    logs.configure(settings.log_level)
    server.CdrRelay = StoppingRelay  # type: ignore[attr-defined]
    uvloop.run(server.serve(settings))


if __name__ == "__main__":
    main()
