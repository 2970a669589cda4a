"""Throwaway databases on the shared test PostgreSQL server.

Each test database gets a unique name and Supabase's roles and ``auth.*``
functions (authsvc/data/supabase_roles.sql). Roles are cluster-wide, so the
bootstrap is idempotent and serialised across processes with an advisory lock
held on the admin database.

The superuser connection (``ADMIN_DSN``) is for tests only: setting up,
inspecting and breaking things. The code under test connects as
``LOGIN_ROLE``, directly or through PgBouncer (tests/support/pgbouncer.py).
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

ADMIN_DSN = os.environ.get(
    "AUTHSVC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
LOGIN_ROLE = "authsvc_login"

BOOTSTRAP_SQL = (
    Path(__file__).resolve().parents[2] / "authsvc" / "data" / "supabase_roles.sql"
)

# pg_advisory_lock key serialising the cluster-wide role bootstrap
# ("authsvc" in ASCII). Advisory locks are per database, so every caller takes
# it on a connection to the admin database.
_BOOTSTRAP_LOCK = 0x6175746873766300

_NAME_PREFIX = re.compile(r"[a-z_][a-z0-9_]*")


def _admin_parts() -> tuple[str, int]:
    parts = urlsplit(ADMIN_DSN)
    return parts.hostname or "127.0.0.1", parts.port or 5432


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def bootstrap_sql(login_role: str = LOGIN_ROLE) -> str:
    """The Supabase roles bootstrap with the login role filled in."""
    return BOOTSTRAP_SQL.read_text(encoding="utf-8").replace("LOGIN_ROLE", login_role)


@dataclass(frozen=True)
class TestDatabase:
    """A database made for this test run; ``drop()`` it when done."""

    __test__: ClassVar[bool] = False  # not a pytest test class

    name: str
    superuser_dsn: str
    login_dsn_direct: str
    host: str
    port: int

    async def connect_as_superuser(self, **kwargs: Any) -> asyncpg.Connection:
        return await asyncpg.connect(self.superuser_dsn, **kwargs)

    async def execute_as_superuser(self, sql: str, *args: Any) -> str:
        conn = await self.connect_as_superuser()
        try:
            status: str = await conn.execute(sql, *args)
            return status
        finally:
            await conn.close()

    async def fetch_as_superuser(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await self.connect_as_superuser()
        try:
            rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
            return rows
        finally:
            await conn.close()

    async def fetchval_as_superuser(self, sql: str, *args: Any) -> Any:
        conn = await self.connect_as_superuser()
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    async def terminate_backends(self, application_name: str | None = None) -> int:
        """Kill client backends connected to this database; return how many.

        Runs from the admin database, and never kills the calling connection.
        Each kill waits (up to 5 s) for the backend to be gone, so a
        connection made afterwards cannot be one of the victims.
        """
        conn = await asyncpg.connect(ADMIN_DSN)
        try:
            killed = await conn.fetchval(
                """
                SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000))
                FROM pg_stat_activity
                WHERE datname = $1
                  AND pid <> pg_backend_pid()
                  AND backend_type = 'client backend'
                  AND ($2::text IS NULL OR application_name = $2::text)
                """,
                self.name,
                application_name,
            )
        finally:
            await conn.close()
        return int(killed)

    async def drop(self) -> None:
        conn = await asyncpg.connect(ADMIN_DSN)
        try:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                self.name,
            )
            await conn.execute(
                f"DROP DATABASE IF EXISTS {quote_ident(self.name)} WITH (FORCE)"
            )
        finally:
            await conn.close()


async def create_test_database(name_prefix: str = "authsvc_test") -> TestDatabase:
    """Create a fresh database with the Supabase roles bootstrap applied."""
    if not _NAME_PREFIX.fullmatch(name_prefix):
        raise ValueError(f"database name prefix must be [a-z0-9_]: {name_prefix!r}")
    name = f"{name_prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    if len(name) > 63:
        raise ValueError(f"database name too long for PostgreSQL: {name!r}")
    host, port = _admin_parts()
    db = TestDatabase(
        name=name,
        superuser_dsn=_with_database(ADMIN_DSN, name),
        login_dsn_direct=f"postgresql://{LOGIN_ROLE}@{host}:{port}/{name}",
        host=host,
        port=port,
    )
    script = bootstrap_sql()

    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        # template0: nobody connects to it, so concurrent CREATE DATABASE calls
        # cannot fail with "source database is being accessed by other users".
        await admin.execute(f"CREATE DATABASE {quote_ident(name)} TEMPLATE template0")
        try:
            await admin.execute("SELECT pg_advisory_lock($1)", _BOOTSTRAP_LOCK)
            try:
                conn = await db.connect_as_superuser()
                try:
                    await conn.execute(script)
                finally:
                    await conn.close()
            finally:
                await admin.execute("SELECT pg_advisory_unlock($1)", _BOOTSTRAP_LOCK)
            await admin.execute(
                f"GRANT CONNECT, TEMP ON DATABASE {quote_ident(name)}"
                f" TO {quote_ident(LOGIN_ROLE)}"
            )
        except BaseException:
            await admin.execute(
                f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)"
            )
            raise
    finally:
        await admin.close()
    return db
