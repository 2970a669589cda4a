"""Log set-up: one event per line, key=value pairs, to stderr.

Loggers live under `authsvc.*`, one per module. Messages carry key=value
pairs built with lazy %-arguments; tokens, keys and secrets are never passed
to a logger. During an RPC, `bind_call` adds the method and the caller's name
to every event, so no module passes them around.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar, Token

LOG_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s%(call)s"
HUMAN_FORMAT = "%(asctime)s %(levelname)-7s %(message)s%(call)s"
HUMAN_DATE_FORMAT = "%H:%M:%S"

_CALL: ContextVar[str] = ContextVar("authsvc_log_call", default="")


def bind_call(**fields: str) -> Token[str]:
    """Add key=value pairs to every event of the current call (task)."""
    return _CALL.set("".join(f" {key}={value}" for key, value in fields.items()))


def unbind_call(token: Token[str]) -> None:
    _CALL.reset(token)


class _CallFields(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.call = _CALL.get()
        return True


def configure_logging(level: str, *, human: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if human:
        handler.setFormatter(logging.Formatter(HUMAN_FORMAT, HUMAN_DATE_FORMAT))
    else:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(_CallFields())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("authsvc").setLevel(level)
