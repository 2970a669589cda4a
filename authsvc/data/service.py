"""The database side of one server: pool, schema cache, compiler, runner, health.

The pool opens without connecting (connections are made on demand), so the
server starts even while the database is down; `monitor()` probes it and
reports SERVING/NOT_SERVING for DataService as it comes and goes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from authsvc.config import Settings
from authsvc.data.compiler import Compiler
from authsvc.data.limits import Limits
from authsvc.data.pool import PoolSettings, behind_transaction_pooler, create_pool
from authsvc.data.runner import ADMIN_ROLE, ANON_ROLE, Runner
from authsvc.data.schema import SchemaCache

logger = logging.getLogger(__name__)

HEALTH_INTERVAL_SECONDS = 2.0
HEALTH_TIMEOUT_SECONDS = 2.0
POOL_MIN_SIZE = 0
ROLES_SQL = """
SELECT r.name,
       coalesce(pg_has_role(current_user, ro.oid, 'MEMBER'), false) AS member
FROM unnest($1::text[]) AS r(name)
LEFT JOIN pg_roles ro ON ro.rolname = r.name
"""

# Leave room under gRPC's 4 MiB message limit for the rest of the response.
MAX_RESULT_BYTES = 4 * 1024 * 1024 - 64 * 1024


class Database:
    def __init__(self, settings: Settings) -> None:
        if settings.database_url is None:
            raise ValueError("Database needs DATABASE_URL")
        self._settings = settings
        self._pool_settings = PoolSettings(
            dsn=settings.database_url.get_secret_value(),
            min_size=POOL_MIN_SIZE,
            max_size=settings.db_pool_max,
            acquire_timeout_seconds=settings.db_acquire_timeout_seconds,
            connect_timeout_seconds=settings.db_connect_timeout_seconds,
            max_idle_seconds=settings.db_max_idle_seconds,
        )
        self._pool: Any = None
        self._roles_ok = False
        self._roles_problem: str | None = None
        self.schema: SchemaCache | None = None
        self.compiler: Compiler | None = None
        self.runner: Runner | None = None

    @property
    def pooled(self) -> bool:
        """True behind a transaction pooler (no prepared statements)."""
        return behind_transaction_pooler(self._pool_settings.dsn)

    @property
    def max_connections(self) -> int:
        return self._pool_settings.max_size

    def connections(self) -> int:
        return int(self._pool.get_size()) if self._pool is not None else 0

    def connections_in_use(self) -> int:
        if self._pool is None:
            return 0
        return int(self._pool.get_size() - self._pool.get_idle_size())

    def requests_waiting(self) -> int:
        return self.runner.waiting if self.runner is not None else 0

    async def open(self) -> None:
        settings = self._settings
        self._pool = await create_pool(self._pool_settings)
        self.schema = SchemaCache(self._acquire, settings.db_schemas)
        self.compiler = Compiler(
            self.schema,
            max_rows=settings.db_max_rows,
            max_result_bytes=MAX_RESULT_BYTES,
            limits=Limits(
                max_conditions=settings.db_max_conditions,
                max_filter_depth=settings.db_max_filter_depth,
                max_in_list=settings.db_max_in_list,
                max_insert_rows=settings.db_max_insert_rows,
                max_affected=settings.db_max_affected,
            ),
        )
        self.runner = Runner(
            self._pool,
            user_roles=frozenset(settings.db_user_roles),
            admin_enabled=settings.db_allow_admin,
            default_timeout_seconds=settings.db_statement_timeout_seconds,
            max_timeout_seconds=settings.db_max_statement_timeout_seconds,
            acquire_timeout_seconds=settings.db_acquire_timeout_seconds,
            max_result_bytes=MAX_RESULT_BYTES,
        )

    async def close(self, grace_seconds: float) -> None:
        if self._pool is None:
            return
        try:
            await asyncio.wait_for(self._pool.close(), timeout=max(grace_seconds, 0.1))
        except TimeoutError:
            logger.warning("pool did not close in time; terminating connections")
            self._pool.terminate()
        logger.info("pool closed")

    def mark_schema_stale(self) -> None:
        if self.schema is not None:
            self.schema.mark_stale()

    async def reload_schema(self) -> tuple[int, int]:
        """Reread the catalog (admin request)."""
        if self.schema is None:
            raise ValueError("the database is not open")
        return await self.schema.refresh()

    async def monitor(self, report: Callable[[bool], Awaitable[None]]) -> None:
        """Probe the database until cancelled; load the schema when it is up."""
        while True:
            healthy = await self._probe()
            if healthy and not self._roles_ok:
                healthy = self._roles_ok = await self._check_roles()
            if healthy and self.schema is not None and not self.schema.loaded:
                try:
                    await self.schema.refresh()
                except Exception as exc:  # reported as health, never raised
                    logger.warning(
                        "schema not loaded error=%s: %s", type(exc).__name__, exc
                    )
                    healthy = False
            await report(healthy)
            await asyncio.sleep(HEALTH_INTERVAL_SECONDS)

    async def _check_roles(self) -> bool:
        """Can the login role switch to every role requests will use?"""
        settings = self._settings
        needed = sorted(
            {*settings.db_user_roles, ANON_ROLE}
            | ({ADMIN_ROLE} if settings.db_allow_admin else set())
        )
        try:
            async with self._acquire() as connection:
                rows = await connection.fetch(ROLES_SQL, needed)
        except Exception as exc:  # reported as health, never raised
            logger.warning("role check failed error=%s: %s", type(exc).__name__, exc)
            return False
        missing = [row["name"] for row in rows if not row["member"]]
        if missing:
            message = ",".join(missing)
            if message != self._roles_problem:
                logger.error(
                    "the DATABASE_URL user cannot switch to role(s) %s; DataService "
                    "stays NOT_SERVING. On Supabase use the pooler URL's postgres "
                    "user; on plain Postgres run authsvc/data/supabase_roles.sql",
                    message,
                )
            self._roles_problem = message
            return False
        return True

    async def _probe(self) -> bool:
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_SECONDS):
                async with self._pool.acquire() as connection:
                    await connection.fetchval("SELECT 1")
        except Exception as exc:  # reported as health, never raised
            logger.warning("database unreachable error=%s: %s", type(exc).__name__, exc)
            return False
        return True

    def _acquire(self) -> Any:
        return self._pool.acquire(timeout=self._settings.db_acquire_timeout_seconds)
