"""A network element simulator: a small real HTTP JSON server standing in for an HLR/HSS
or provisioning gateway, for tests and for trying the system out.

    POST /commands   {"line": "...", "command": "ACTIVATE", "command_id": "...", "product": "..."}
                     -> 200 {"line": ..., "state": ..., "applied": n}
    GET  /lines/ID   -> 200 {"line": ..., "state": ..., "applied": n} or 404
    POST /control    {"mode": "ok" | "fail" | "timeout" | "slow", "delay_s": 0.5}

Commands are idempotent on ``command_id``: a repeat answers as the first time and
changes nothing, as a real gateway must for a provisioning adapter that retries. In
``timeout`` mode the command is applied and the answer never comes in time (the worst
case for double activation); in ``fail`` mode it answers 503 without applying; in
``slow`` mode it applies and answers after ``delay_s``.

Tests that need a command caught in flight use the Python side: ``hold()`` makes every
command from then on apply and then wait, unanswered, until ``release()``;
``commands_received(n)`` waits until n commands have arrived (and, when held, been
applied). So a test can act exactly while a command is on the wire, not after a guess
at how long that takes.

    python -m provisioning.simulator --address 127.0.0.1:8099
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

STATE_AFTER = {
    "ACTIVATE": "active",
    "BAR_OUTGOING": "barred_outgoing",
    "SUSPEND": "suspended",
    "RESUME": "active",
    "TERMINATE": "terminated",
    "CHANGE_PRODUCT": "",  # the state stays; the product changes
}


HOLD_LIMIT_S = 30.0  # a held answer is sent after this even without release()


class NetworkSimulator:
    def __init__(self, address: str = "127.0.0.1:0") -> None:
        host, _, port = address.rpartition(":")
        self.lines: dict[str, dict[str, Any]] = {}
        self.answers: dict[str, dict[str, Any]] = {}
        self.mode = "ok"
        self.delay_s = 0.5
        self.requests = 0
        self._lock = threading.Lock()
        self._received = threading.Condition(self._lock)  # notified at each command
        self._released = threading.Event()
        self._released.set()
        simulator = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting

            def do_GET(self) -> None:
                line = self.path.removeprefix("/lines/")
                with simulator._lock:
                    state = simulator.lines.get(line)
                    body = dict(state) if state else None
                self._reply(200, body) if body else self._reply(404, {"error": "unknown line"})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                try:
                    doc = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    self._reply(400, {"error": "not JSON"})
                    return
                if self.path == "/control":
                    simulator.mode = str(doc.get("mode", "ok"))
                    simulator.delay_s = float(doc.get("delay_s", simulator.delay_s))
                    self._reply(200, {"mode": simulator.mode})
                elif self.path == "/commands":
                    status, body, delay = simulator.command(doc)
                    if delay:
                        time.sleep(delay)
                    simulator._released.wait(HOLD_LIMIT_S)
                    self._reply(status, body)
                else:
                    self._reply(404, {"error": "no such path"})

        self._server = ThreadingHTTPServer((host, int(port)), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="network-simulator", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def command(self, doc: dict[str, Any]) -> tuple[int, dict[str, Any], float]:
        """Apply one command; returns the status, the body and how long to wait first."""
        with self._lock:
            self.requests += 1
            self._received.notify_all()  # waiters need the lock: they run once this command is applied
            line, command, command_id = doc.get("line"), doc.get("command"), doc.get("command_id")
            if not isinstance(line, str) or command not in STATE_AFTER or not isinstance(command_id, str):
                return 400, {"error": "line, command and command_id are required"}, 0.0
            if self.mode == "fail":
                return 503, {"error": "network element unavailable"}, 0.0
            known = self.answers.get(command_id)
            if known is None:
                state = self.lines.setdefault(line, {"line": line, "state": "none", "applied": 0, "product": ""})
                state["state"] = STATE_AFTER[command] or state["state"]
                state["applied"] += 1
                if doc.get("product"):
                    state["product"] = doc["product"]
                known = self.answers[command_id] = dict(state)
            delay = {"timeout": 30.0, "slow": self.delay_s}.get(self.mode, 0.0)
            return 200, known, delay

    def hold(self) -> None:
        """From now on, apply each command and keep its answer until ``release()``."""
        self._released.clear()

    def release(self) -> None:
        """Answer the held commands, and the following ones at once again."""
        self._released.set()

    async def commands_received(self, count: int = 1, timeout_s: float = 5.0) -> None:
        """Wait until ``count`` commands have arrived since the start (a held one is
        applied by then); TimeoutError after ``timeout_s``."""

        def wait() -> bool:
            with self._received:
                return self._received.wait_for(lambda: self.requests >= count, timeout_s)

        if not await asyncio.to_thread(wait):
            raise TimeoutError(f"{self.requests} of {count} commands arrived within {timeout_s} s")

    def start(self) -> NetworkSimulator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m provisioning.simulator", description=__doc__)
    p.add_argument("--address", default="127.0.0.1:8099")
    args = p.parse_args(argv)
    simulator = NetworkSimulator(args.address).start()
    print(f"network simulator on {simulator.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        simulator.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
