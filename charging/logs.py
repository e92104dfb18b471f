"""Structured logs: one JSON object per line on stderr.

Log records carry counts, codes and durations, never subscriber identities; the
``Identity`` type masks itself in reprs as a second line of defence.

A client can make the server log: the grpc library logs a traceback for every request it
cannot handle (a body sent to its own health service that does not decode, say). So the
handler keeps such library records to one short line, and lets through at most a few
records of one kind per second, whoever logs them; the next one let through says how many
were dropped (``suppressed``).

Secrets never reach the output: ``Redact`` replaces the credentials of every URL in a
record (``scheme://user:password@``, in the message, its arguments, extra fields and a
traceback) with ``***``, whoever logs it; httpx, which logs each request's URL at INFO,
is held at WARNING besides.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from typing import TextIO

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, default=str)


class OneLine(logging.Filter):
    """Records of the grpc library become one short line: its tracebacks are about a
    caller's mistake (a body that does not decode), not about this server."""

    # With the timestamp, level and logger name, a line stays under 300 characters.
    MAX_MSG = 100
    MAX_ERROR = 60

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "grpc" or record.name.startswith("grpc."):
            record.msg, record.args = record.getMessage()[: self.MAX_MSG], None
            if record.exc_info:
                exc = record.exc_info[1]
                record.error = f"{type(exc).__name__}: {exc}"[: self.MAX_ERROR]
                record.exc_info, record.exc_text = None, None
        return True


# The user information of a URL: after "scheme://", the user name and its colon (kept),
# then the password (or a token standing alone) up to the last "@" before the host.
_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)([^/\s?#@:]*:)?[^/\s?#]*@")


_PASSWORD_PARAMETER = re.compile(r"(?i)([?&]password=)[^&\s#]*")


def _has_secret(text: str) -> bool:
    return "@" in text or "password=" in text.lower()


def redact(text: str) -> str:
    """``text`` with the password of every URL in it hidden: ``redis://app:***@db:6379``,
    a token given as the user name too (``https://***@host``), and a password given as a
    parameter (``postgresql://host/db?password=***``)."""
    return _PASSWORD_PARAMETER.sub(r"\1***", _CREDENTIALS.sub(r"\1\2***@", text))


class Redact(logging.Filter):
    """Credentials in URLs never reach the output, whichever field of a record holds them
    (the message and its arguments, extra fields, the text of an exception)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # arguments that do not fit: shown as they are
            message = f"{record.msg} {record.args}"
        if _has_secret(message):
            record.msg, record.args = redact(message), None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and _has_secret(text := str(value)):
                setattr(record, key, redact(text))
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class RateLimit(logging.Filter):
    """At most ``burst`` records of one kind (logger, level, message template) per
    ``window_s`` seconds of record time. The first record of a kind let through after some
    were dropped carries their count as ``suppressed``."""

    def __init__(self, burst: int = 5, window_s: float = 1.0, max_kinds: int = 1000) -> None:
        super().__init__()
        self.burst = burst
        self.window_s = window_s
        self.max_kinds = max_kinds
        # kind -> [window start, records let through in the window, dropped since last let through]
        self._kinds: dict[tuple[str, int, str], list[float]] = {}
        self._lock = threading.Lock()  # grpc logs from its own threads too

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = record.created
        with self._lock:
            state = self._kinds.get(key)
            if state is None:
                if len(self._kinds) >= self.max_kinds:
                    self._forget(now)
                state = self._kinds[key] = [now, 0, 0]
            if now - state[0] >= self.window_s:
                state[0], state[1] = now, 0
            if state[1] >= self.burst:
                state[2] += 1
                return False
            state[1] += 1
            if state[2]:
                record.suppressed = int(state[2])
                state[2] = 0
        return True

    def _forget(self, now: float) -> None:
        """Drop kinds whose window is over and that owe no count; all of them if that is not enough."""
        stale = [k for k, (start, _, dropped) in self._kinds.items() if now - start >= self.window_s and not dropped]
        for k in stale:
            del self._kinds[k]
        if len(self._kinds) >= self.max_kinds:
            self._kinds.clear()


def configure(level: str, stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(OneLine())
    handler.addFilter(RateLimit())
    handler.addFilter(Redact())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request's URL at INFO: a gateway's or bureau's URL may carry a password.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
