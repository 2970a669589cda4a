"""Log set-up: one event per line, JSON on stdout for `serve`.

Loggers live under `authsvc.*`, one per module. Messages carry key=value
pairs built with lazy %-arguments (readable in `text` and `human` formats),
and events with data for machines pass it in `extra=` too, which the JSON
format turns into fields. During an RPC, `bind_call` adds the method, caller,
request id, peer and trace id to every event, so no module passes them
around. Tokens, keys and secrets are never passed to a logger.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar, Token

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s%(call)s"
HUMAN_FORMAT = "%(asctime)s %(levelname)-7s %(message)s%(call)s"
HUMAN_DATE_FORMAT = "%H:%M:%S"

_CALL: ContextVar[tuple[tuple[str, str], ...]] = ContextVar(
    "authsvc_log_call", default=()
)


def bind_call(**fields: str) -> Token[tuple[tuple[str, str], ...]]:
    """Add fields to every event of the current call (task)."""
    return _CALL.set(tuple(fields.items()))


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
    if log_format == "json":
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(
            JsonFormatter(
                ["levelname", "name", "message"],
                rename_fields={"levelname": "level", "name": "logger"},
                timestamp="time",
                reserved_attrs=[*RESERVED_ATTRS, "taskName", "call"],
            )
        )
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


class _WorkerField(logging.Filter):
    def __init__(self, worker: int) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.worker
        return True
