"""The database test infrastructure works: real PostgreSQL, real PgBouncer.

These prove the tools other tests rely on: a fresh database with Supabase's
roles, the login role reaching it directly and through PgBouncer in
transaction mode, per-transaction claims that do not leak between clients,
and the ways tests break connections (killing backends, restarting PgBouncer).
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from tests.support.pgbouncer import PgBouncer, PgBouncerError
from tests.support.postgres import (
    ADMIN_DSN,
    LOGIN_ROLE,
    TestDatabase,
    create_test_database,
)

USER_ID = uuid.UUID("11111111-1111-1111-1111-111111111111")
CLAIMS = json.dumps({"sub": str(USER_ID)})

StartPgBouncer = Callable[..., Awaitable[PgBouncer]]


@pytest.fixture(scope="module")
async def database() -> AsyncIterator[TestDatabase]:
    db = await create_test_database()
    try:
        yield db
    finally:
        await db.drop()


@pytest.fixture
async def start_pgbouncer() -> AsyncIterator[StartPgBouncer]:
    """Start PgBouncers (keyword arguments go to PgBouncer); stop them after."""
    started: list[PgBouncer] = []

    async def start(**kwargs: Any) -> PgBouncer:
        bouncer = PgBouncer(**kwargs)
        started.append(bouncer)
        return await bouncer.start()

    try:
        yield start
    finally:
        for bouncer in started:
            await bouncer.stop()


async def connect_via(bouncer: PgBouncer, db: TestDatabase) -> asyncpg.Connection:
    return await asyncpg.connect(bouncer.dsn(db.name), statement_cache_size=0)


async def session_state(conn: asyncpg.Connection) -> dict[str, Any]:
    """What a fresh transaction on this connection starts with.

    The login role cannot call auth.uid() itself (no USAGE on schema auth,
    and NOINHERIT), so that is read after SET LOCAL ROLE authenticated, the
    way authsvc reads it.
    """
    async with conn.transaction():
        start = await conn.fetchrow(
            "SELECT current_user AS user, pg_backend_pid() AS backend,"
            " current_setting('request.jwt.claims', true) AS claims"
        )
        await conn.execute("SET LOCAL ROLE authenticated")
        uid = await conn.fetchval("SELECT auth.uid()")
    assert start is not None
    return {**start, "uid": uid}


async def test_bootstrap_creates_supabase_roles(database: TestDatabase) -> None:
    rows = await database.fetch_as_superuser(
        "SELECT rolname, rolbypassrls, rolcanlogin, rolinherit FROM pg_roles"
        " WHERE rolname = ANY($1::text[])",
        ["anon", "authenticated", "service_role", LOGIN_ROLE],
    )
    roles = {row["rolname"]: row for row in rows}
    assert set(roles) == {"anon", "authenticated", "service_role", LOGIN_ROLE}
    assert roles["service_role"]["rolbypassrls"]
    assert not roles["authenticated"]["rolbypassrls"]
    assert not roles["anon"]["rolbypassrls"]
    assert roles[LOGIN_ROLE]["rolcanlogin"]
    assert not roles[LOGIN_ROLE]["rolbypassrls"]
    functions = await database.fetch_as_superuser(
        "SELECT p.proname FROM pg_proc p JOIN pg_namespace n"
        " ON n.oid = p.pronamespace WHERE n.nspname = 'auth' ORDER BY 1"
    )
    assert [row["proname"] for row in functions] == ["jwt", "role", "uid"]


async def test_bootstrap_is_idempotent() -> None:
    second = await create_test_database()
    try:
        assert await second.fetchval_as_superuser("SELECT current_database()") == (
            second.name
        )
    finally:
        await second.drop()


async def test_login_role_connects_directly(database: TestDatabase) -> None:
    conn = await asyncpg.connect(database.login_dsn_direct)
    try:
        assert await conn.fetchval("SELECT current_user") == LOGIN_ROLE
        assert await conn.fetchval("SELECT current_database()") == database.name
        # NOINHERIT: nothing of service_role's until it SETs ROLE.
        assert (
            await conn.fetchval("SELECT pg_has_role('service_role', 'USAGE')") is False
        )
        assert await conn.fetchval("SELECT pg_has_role('service_role', 'MEMBER')")
    finally:
        await conn.close()


async def test_login_role_connects_through_pgbouncer(
    database: TestDatabase, start_pgbouncer: StartPgBouncer
) -> None:
    bouncer = await start_pgbouncer()
    conn = await connect_via(bouncer, database)
    try:
        assert await conn.fetchval("SELECT current_user") == LOGIN_ROLE
        assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
        assert await conn.fetchval("SELECT current_database()") == database.name
    finally:
        await conn.close()


async def test_claims_stay_in_their_transaction_through_pgbouncer(
    database: TestDatabase, start_pgbouncer: StartPgBouncer
) -> None:
    bouncer = await start_pgbouncer(default_pool_size=1)
    first = await connect_via(bouncer, database)
    second = await connect_via(bouncer, database)
    try:
        async with first.transaction():
            await first.execute("SET LOCAL ROLE authenticated")
            await first.execute(
                "SELECT set_config('request.jwt.claims', $1, true)", CLAIMS
            )
            inside = await first.fetchrow(
                "SELECT current_user AS user, auth.uid() AS uid,"
                " pg_backend_pid() AS backend"
            )
        assert inside is not None
        assert inside["user"] == "authenticated"
        assert inside["uid"] == USER_ID

        # One server connection in the pool: both clients get the same
        # backend, and it carries nothing over from the transaction.
        for conn in (second, first):
            after = await session_state(conn)
            assert after["backend"] == inside["backend"]
            assert after["user"] == LOGIN_ROLE
            assert not after["claims"]  # '' once the placeholder GUC exists
            assert after["uid"] is None
    finally:
        await first.close()
        await second.close()


async def test_session_settings_do_leak_through_pgbouncer(
    database: TestDatabase, start_pgbouncer: StartPgBouncer
) -> None:
    """Control for the test above: it would see a leak if there were one."""
    bouncer = await start_pgbouncer(default_pool_size=1)
    first = await connect_via(bouncer, database)
    second = await connect_via(bouncer, database)
    try:
        await first.execute("SET ROLE authenticated")  # session-wide: wrong
        await first.execute(
            "SELECT set_config('request.jwt.claims', $1, false)", CLAIMS
        )
        leaked = await session_state(second)
        assert leaked["user"] == "authenticated"
        assert leaked["uid"] == USER_ID
        await second.execute("RESET ROLE; RESET ALL")
    finally:
        await first.close()
        await second.close()


async def test_terminate_backends_by_application_name(database: TestDatabase) -> None:
    victim = await asyncpg.connect(
        database.login_dsn_direct, server_settings={"application_name": "victim"}
    )
    bystander = await asyncpg.connect(
        database.login_dsn_direct, server_settings={"application_name": "bystander"}
    )
    try:
        assert await database.terminate_backends(application_name="victim") == 1
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await victim.fetchval("SELECT 1")
        assert await bystander.fetchval("SELECT 1") == 1
        assert await database.terminate_backends() == 1
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await bystander.fetchval("SELECT 1")
    finally:
        victim.terminate()
        bystander.terminate()


async def test_pgbouncer_restart_drops_clients_and_comes_back(
    database: TestDatabase, start_pgbouncer: StartPgBouncer
) -> None:
    bouncer = await start_pgbouncer()
    port, old_pid = bouncer.port, bouncer.pid
    before = await connect_via(bouncer, database)
    try:
        assert await before.fetchval("SELECT 1") == 1
        await bouncer.restart()
        assert (bouncer.port, bouncer.running) == (port, True)
        assert bouncer.pid != old_pid
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await before.fetchval("SELECT 1")
    finally:
        before.terminate()
    after = await connect_via(bouncer, database)
    try:
        assert await after.fetchval("SELECT current_user") == LOGIN_ROLE
    finally:
        await after.close()


async def test_pgbouncer_stop_leaves_nothing(start_pgbouncer: StartPgBouncer) -> None:
    bouncer = await start_pgbouncer()
    directory = bouncer.directory
    assert directory is not None
    assert directory.is_dir()
    await bouncer.stop()
    assert not bouncer.running
    assert not directory.exists()
    assert not await bouncer._accepts_connections()


async def test_missing_pgbouncer_fails_with_install_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shutil, "which", lambda *_, **__: None)
    with pytest.raises(PgBouncerError, match="apt-get install -y pgbouncer"):
        await PgBouncer().start()


async def test_drop_removes_database_with_open_connections() -> None:
    db = await create_test_database()
    conn = await asyncpg.connect(db.login_dsn_direct)
    try:
        await db.drop()
    finally:
        conn.terminate()
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        assert (
            await admin.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", db.name
            )
            is None
        )
    finally:
        await admin.close()
