"""The `database.*` rows: connect as the server would, then read the catalog.

Connecting is bounded by AUTHSVC_DB_CONNECT_TIMEOUT_SECONDS, the catalog
queries and the close by the constants below.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from authsvc.config import Settings
from authsvc.data.pool import driver_dsn, redacted
from authsvc.data.runner import ADMIN_ROLE, ANON_ROLE
from authsvc.data.service import ROLES_SQL
from authsvc.ops.check.deployment import Deployment
from authsvc.ops.check.results import Result, fail, pass_, warn

DB_QUERY_TIMEOUT_SECONDS = 5.0
DB_CLOSE_TIMEOUT_SECONDS = 2.0
CHECK_APPLICATION_NAME = "authsvc-check"

_SUPABASE_ROLES = (ANON_ROLE, "authenticated", ADMIN_ROLE)


async def check_database(deployment: Deployment) -> list[Result]:
    """Reachable as the server would connect, with Supabase's roles and schemas."""
    settings = deployment.settings
    if settings is None or settings.database_url is None:
        return []
    dsn = settings.database_url.get_secret_value()
    try:
        async with asyncio.timeout(settings.db_connect_timeout_seconds):
            connection = await asyncpg.connect(
                driver_dsn(dsn),
                statement_cache_size=0,
                timeout=settings.db_connect_timeout_seconds,
                server_settings={"application_name": CHECK_APPLICATION_NAME},
            )
    except Exception as exc:  # any failure to connect is the answer
        return [
            fail(
                "database.connect",
                f"cannot connect to {redacted(dsn)}: {_describe(exc)}",
                "check DATABASE_URL's host, port, user and password, and that this "
                "Machine can reach it",
            )
        ]

    roles = sorted({*_SUPABASE_ROLES, *settings.db_user_roles})
    try:
        async with asyncio.timeout(DB_QUERY_TIMEOUT_SECONDS):
            login = await connection.fetchval("SELECT current_user")
            existing = await connection.fetch(
                "SELECT rolname FROM pg_roles WHERE rolname = ANY($1::text[])", roles
            )
            members = await connection.fetch(ROLES_SQL, roles)
            schemas = await connection.fetch(
                "SELECT nspname FROM pg_namespace WHERE nspname = ANY($1::text[])",
                list(settings.db_schemas),
            )
    except Exception as exc:  # any failure to query is the answer
        return [
            fail(
                "database.connect",
                f"connected to {redacted(dsn)}, but a catalog query failed: "
                f"{_describe(exc)}",
                "check that DATABASE_URL names a Postgres database authsvc may read",
            )
        ]
    finally:
        await _close(connection)

    return [
        pass_("database.connect", f"connected to {redacted(dsn)} as {login}"),
        _roles(
            settings,
            str(login),
            {row["rolname"] for row in existing},
            {row["name"] for row in members if row["member"]},
        ),
        _schemas(settings, {row["nspname"] for row in schemas}),
    ]


def _roles(
    settings: Settings, login: str, existing: set[str], usable: set[str]
) -> Result:
    needed = {ANON_ROLE, *settings.db_user_roles}
    if settings.db_allow_admin:
        needed.add(ADMIN_ROLE)
    wanted = sorted({*_SUPABASE_ROLES, *needed})
    missing = [role for role in wanted if role not in existing]
    outside = [role for role in wanted if role in existing and role not in usable]
    if not missing and not outside:
        return pass_("database.roles", f"{login} can switch to {', '.join(wanted)}")

    problems = []
    if missing:
        problems.append(f"role(s) {', '.join(missing)} do not exist")
    if outside:
        problems.append(f"{login} is not a member of {', '.join(outside)}")
    detail = "; ".join(problems)
    fix = (
        "connect as the pooler URL's postgres user (postgres.<ref>); on plain "
        "Postgres run authsvc/data/supabase_roles.sql"
    )
    if needed & {*missing, *outside}:
        return fail("database.roles", f"{detail}: requests would fail", fix)
    return warn("database.roles", f"{detail} (unused by these settings)", fix)


def _schemas(settings: Settings, existing: set[str]) -> Result:
    missing = [name for name in settings.db_schemas if name not in existing]
    if missing:
        return fail(
            "database.schemas",
            f"AUTHSVC_DB_SCHEMAS names schema(s) that do not exist: "
            f"{', '.join(missing)}",
            "create them, or remove them from AUTHSVC_DB_SCHEMAS",
        )
    return pass_("database.schemas", f"schemas exist: {', '.join(settings.db_schemas)}")


async def _close(connection: Any) -> None:
    try:
        await asyncio.wait_for(connection.close(), DB_CLOSE_TIMEOUT_SECONDS)
    except Exception:  # a close that fails leaves nothing to do but drop it
        connection.terminate()


def _describe(exc: BaseException) -> str:
    message = str(exc).strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
