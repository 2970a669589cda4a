"""Log set-up: one event per line, JSON on stdout for `serve`.

Loggers live under `authsvc.*`, one per module. Messages carry key=value
pairs built with lazy %-arguments (readable in `text` and `human` formats),
and events with data for machines pass it in `extra=` too, which the JSON
format turns into fields. During an RPC, `bind_call` adds the method, caller,
request id, peer and trace id to every event, so no module passes them
around. Tokens, keys and secrets are never passed to a logger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import sys
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s%(call)s"
HUMAN_FORMAT = "%(asctime)s %(levelname)-7s %(message)s%(call)s"
HUMAN_DATE_FORMAT = "%H:%M:%S"
ACCESS_LOGGER = "authsvc.api.status"
# Access lines reach stdout within this long: one write per PIPE_BUF of
# lines instead of one per line (stdout is unbuffered in the image).
ACCESS_FLUSH_SECONDS = 0.2
MAX_PENDING_BYTES = 256 * 1024

_CALL: ContextVar[tuple[tuple[str, str], ...]] = ContextVar(
    "authsvc_log_call", default=()
)


def bind_call(*fields: tuple[str, str]) -> Token[tuple[tuple[str, str], ...]]:
    """Add (name, value) fields to every event of the current call (task)."""
    return _CALL.set(fields)


def unbind_call(token: Token[tuple[tuple[str, str], ...]]) -> None:
    _CALL.reset(token)


class _CallFields(logging.Filter):
    """Merges the bound call fields into each record: as record attributes
    (JSON fields) and as one ` key=value…` string for the text formats."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _CALL.get()
        record.call = "".join(f" {key}={value}" for key, value in fields)
        for key, value in fields:
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def configure_logging(
    level: str, log_format: str = "json", worker: int | None = None
) -> None:
    """`json` (stdout, for Fly), `text` (key=value, stderr) or `human` (dev).
    A worker process's lines carry its number as `worker`."""
    handler: logging.Handler
    if log_format == "json":
        handler = _JsonStreamHandler(sys.stdout)
        handler.setFormatter(json_formatter())
    elif log_format == "human":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(HUMAN_FORMAT, HUMAN_DATE_FORMAT))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    # Fields no authsvc line uses, each computed for every record otherwise
    # (the logging docs' "Optimization" list): the caller's source position,
    # thread and process names.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler.addFilter(_CallFields())
    if worker is not None:
        handler.addFilter(_WorkerField(worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("authsvc").setLevel(level)
    global _direct_access
    _direct_access = None
    if log_format == "json":
        # Without a real stdout (captured by a test), access events go
        # through logging like every other event.
        with contextlib.suppress(AttributeError, OSError, ValueError):
            _direct_access = _DirectAccessLog(sys.stdout.fileno(), worker)


def json_formatter() -> logging.Formatter:
    """The JSON format: one object per event with time, level, logger,
    message, the call's fields and the event's `extra` fields."""
    return JsonFormatter(
        ["levelname", "name", "message"],
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="time",
        reserved_attrs=[*RESERVED_ATTRS, "taskName", "call"],
    )


_access_logger = logging.getLogger(ACCESS_LOGGER)


def log_access(status: str, reason: str, seconds: float) -> None:
    """The access event of one RPC, with the fields bound to the call."""
    if not _access_logger.isEnabledFor(logging.INFO):
        return
    duration_ms = round(seconds * 1000, 2)
    if _direct_access is not None:
        _direct_access.write(status, reason, duration_ms)
        return
    _access_logger.info(
        "rpc status=%s reason=%s duration_ms=%.2f",
        status,
        reason or "-",
        duration_ms,
        extra={"status": status, "reason": reason, "duration_ms": duration_ms},
    )


class _DirectAccessLog:
    """Access events as JSON lines on stdout, bypassing logging's records.

    The fields match what `JsonFormatter` writes for the same event. Lines are
    held for at most ACCESS_FLUSH_SECONDS (or until MAX_PENDING_BYTES, or
    until any other event is logged, so the order on stdout stays the order
    of events) and then written in chunks of whole lines no larger than
    PIPE_BUF: workers share one stdout pipe, and only a write that small is
    never interleaved with another process's.
    """

    def __init__(self, fd: int, worker: int | None) -> None:
        self._fd = fd
        self._worker_field = "" if worker is None else f', "worker": {worker:d}'
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._flush_scheduled = False

    def write(self, status: str, reason: str, duration_ms: float) -> None:
        # The object is spelled out rather than passed to json.dumps (a few
        # microseconds less per call); every string goes through json's own
        # encoder, and test_access_log holds the result to JsonFormatter's.
        quote = encode_basestring_ascii
        message = (
            f"rpc status={status} reason={reason or '-'} duration_ms={duration_ms:.2f}"
        )
        fields = "".join(
            f", {quote(key)}: {quote(value)}" for key, value in _CALL.get()
        )
        line = (
            f'{{"level": "INFO", "logger": "{ACCESS_LOGGER}", '
            f'"message": {quote(message)}{fields}, "status": {quote(status)}, '
            f'"reason": {quote(reason)}, "duration_ms": {duration_ms!r}'
            f'{self._worker_field}, "time": "{datetime.now(UTC).isoformat()}"}}\n'
        ).encode()
        self._pending.append(line)
        self._pending_bytes += len(line)
        if self._pending_bytes >= MAX_PENDING_BYTES:
            self.flush()
        elif not self._flush_scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a test calling directly): now
                self.flush()
                return
            self._flush_scheduled = True
            loop.call_later(ACCESS_FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        lines, self._pending, self._pending_bytes = self._pending, [], 0
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            if chunk and size + len(line) > select.PIPE_BUF:
                self._write(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._write(b"".join(chunk))

    def _write(self, data: bytes) -> None:
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError:  # stdout closed or gone: the lines are lost
            pass


class _JsonStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes pending access lines before any other event, keeping order."""

    def emit(self, record: logging.LogRecord) -> None:
        if _direct_access is not None:
            _direct_access.flush()
        super().emit(record)

    def flush(self) -> None:
        # Also run by logging.shutdown() at exit.
        if _direct_access is not None:
            _direct_access.flush()
        super().flush()


_direct_access: _DirectAccessLog | None = None


class _WorkerField(logging.Filter):
    def __init__(self, worker: int) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.worker
        return True
