"""Fresh databases copied from the migrated template ahead of the tests that take them,
and dropped after them, on a thread of their own.

Each test still gets a database of its own, copied from the template just before (nothing
else ever connects to it before the test does) and dropped once the test is done; only
the waiting moves: PostgreSQL copies the next one while a test runs, on the other core."""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

AHEAD = 2  # databases kept ready: a test takes one, a copy starts for the one after next
# As the fixture made them before: a copy of the files (two checkpoints), not through WAL.
COPY = "CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY"
DROP = "DROP DATABASE {} WITH (FORCE)"


class DatabaseSupply:
    def __init__(self, admin_url: str, template: str, ahead: int = AHEAD) -> None:
        self._admin_url = admin_url
        self._template = template
        self._ready: queue.Queue[str | BaseException] = queue.Queue()
        # The thread's work in the order asked: a name to drop, "" to copy one more, None to stop.
        self._work: queue.Queue[str | None] = queue.Queue()
        self._busy = threading.Lock()  # held by the thread while it copies or drops
        self._thread = threading.Thread(target=self._run, name="database-supply", daemon=True)
        for _ in range(ahead):
            self._work.put("")
        self._thread.start()

    def take(self) -> str:
        """The name of a fresh copy of the template, for one test; ``give_back`` it after."""
        self._work.put("")
        found = self._ready.get(timeout=120)
        if isinstance(found, BaseException):
            raise found
        return found

    def give_back(self, name: str) -> None:
        """Drop ``name`` (WITH (FORCE): a connection the test left open does not keep it)."""
        self._work.put(name)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Nothing copied or dropped in the block (once what is under way is done): for a
        test that reads the server's files, which a copy or a drop changes under it."""
        with self._busy:
            yield

    def close(self) -> None:
        """Drop what was copied and not taken; return once the thread is done."""
        self._work.put(None)
        self._thread.join(60)
        while True:
            try:
                left = self._ready.get_nowait()
            except queue.Empty:
                return
            if isinstance(left, str):
                with psycopg.connect(self._admin_url, autocommit=True) as conn:
                    conn.execute(_statement(DROP, left))

    def _run(self) -> None:
        conn: psycopg.Connection[TupleRow] | None = None
        while (name := self._work.get()) is not None:
            with self._busy:
                try:
                    if conn is None or conn.closed:
                        conn = psycopg.connect(self._admin_url, autocommit=True)
                    if name:
                        conn.execute(_statement(DROP, name))
                    else:
                        copy = f"test_{uuid.uuid4().hex[:16]}"
                        conn.execute(_statement(COPY, copy, self._template))
                        self._ready.put(copy)
                except BaseException as exc:  # the next test to take a database fails with it
                    self._ready.put(RuntimeError(f"dropping {name} failed: {exc}") if name else exc)
        if conn is not None:
            conn.close()


def _statement(template: str, *names: str) -> sql.Composed:
    return sql.SQL(template).format(*(sql.Identifier(n) for n in names))
