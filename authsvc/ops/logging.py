"""Log set-up: one event per line, key=value pairs, to stderr.

Loggers live under `authsvc.*`, one per module. Messages carry key=value
pairs built with lazy %-arguments; tokens, keys and secrets are never passed
to a logger.
"""

from __future__ import annotations

import logging
import sys

LOG_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"
HUMAN_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"
HUMAN_DATE_FORMAT = "%H:%M:%S"


def configure_logging(level: str, *, human: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if human:
        handler.setFormatter(logging.Formatter(HUMAN_FORMAT, HUMAN_DATE_FORMAT))
    else:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("authsvc").setLevel(level)
