"""The asyncpg pool, set up for Supabase's transaction pooler when it is one.

Behind a transaction pooler (Supavisor on port 6543, or PgBouncer in
transaction mode) a server connection changes hands after every transaction,
so prepared statements cannot be kept: the statement cache is turned off and
the pool never resets session state (we never set any). Everything a request
sets is transaction-local.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

logger = logging.getLogger(__name__)

TRANSACTION_POOLER_PORT = 6543
PGBOUNCER_PARAM = "pgbouncer"
APPLICATION_NAME = "authsvc"


@dataclass(frozen=True)
class PoolSettings:
    dsn: str
    min_size: int
    max_size: int
    acquire_timeout_seconds: float
    connect_timeout_seconds: float
    max_idle_seconds: float


def behind_transaction_pooler(dsn: str) -> bool:
    """Port 6543 (Supabase's transaction pooler) or `?pgbouncer=true`."""
    parts = urlsplit(dsn)
    flags = dict(parse_qsl(parts.query))
    if flags.get(PGBOUNCER_PARAM, "").lower() in ("true", "1"):
        return True
    return parts.port == TRANSACTION_POOLER_PORT


def driver_dsn(dsn: str) -> str:
    """The DSN without `pgbouncer=` (asyncpg would send it as a server setting)."""
    parts = urlsplit(dsn)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != PGBOUNCER_PARAM]
    return urlunsplit(parts._replace(query=urlencode(query)))


def redacted(dsn: str) -> str:
    """The DSN as it may be logged: no password."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


async def _no_reset(connection: Any) -> None:
    """Nothing to reset: requests never change session state."""


async def create_pool(settings: PoolSettings) -> Any:
    pooler = behind_transaction_pooler(settings.dsn)
    options: dict[str, Any] = {
        "min_size": settings.min_size,
        "max_size": settings.max_size,
        "max_inactive_connection_lifetime": settings.max_idle_seconds,
        "timeout": settings.connect_timeout_seconds,
        "reset": _no_reset,
        "server_settings": {"application_name": APPLICATION_NAME},
    }
    if pooler:
        options["statement_cache_size"] = 0
        logger.info(
            "transaction pooler detected; prepared statements disabled dsn=%s",
            redacted(settings.dsn),
        )
    pool = await asyncpg.create_pool(driver_dsn(settings.dsn), **options)
    logger.info(
        "pool ready dsn=%s min=%d max=%d pooler=%s",
        redacted(settings.dsn),
        settings.min_size,
        settings.max_size,
        pooler,
    )
    return pool
