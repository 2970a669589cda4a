"""`authsvc check` against real parts: Postgres with Supabase's roles behind a
real PgBouncer, a JWKS served over HTTP, a fly.toml on disk.

A good deployment passes (its one WARN is the region, which a loopback host
cannot tell); then each setting is broken alone and the row that names it
must WARN or FAIL with a fix. The command runs as a subprocess for a good and
a failing case; the rest call the checks directly. Region and fly.toml checks
read only the settings, so their fake Supabase host names never reach DNS.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from authsvc.ops.check import (
    Deployment,
    Result,
    Status,
    check_config,
    check_fly,
    check_listen,
    check_pool_size,
    check_pooler,
    check_region,
    check_secrets,
    failed,
    load_deployment,
    render_json,
    render_table,
    run_checks,
)
from tests.support.callers import TEST_CALLER_KEY, callers_toml
from tests.support.callers import TEST_CALLERS as ALL_SCOPE_CALLERS
from tests.support.jwks_stub import JwksStub
from tests.support.pgbouncer import PgBouncer
from tests.support.postgres import TestDatabase, create_test_database, quote_ident
from tests.support.tokens import HS_SECRET, REF, SUPABASE_URL

ROOT = Path(__file__).parents[1]
AUTHSVC = str(Path(sys.executable).parent / "authsvc")
COMMAND_TIMEOUT_SECONDS = 30

GOOD_FLY_TOML = """
app = "authsvc-check-test"
primary_region = "fra"
kill_signal = "SIGTERM"
kill_timeout = "15s"

[env]
  AUTHSVC_LISTEN_ADDR = "[::]:50051"

[checks]
  [checks.ready]
    type = "http"
    port = 9091
    path = "/readyz"
    interval = "15s"
    timeout = "2s"

[metrics]
  port = 9091
  path = "/metrics"
"""

# Valid settings that need no network: for the checks that read only them.
OFFLINE_ENV = {
    "SUPABASE_URL": SUPABASE_URL,
    "AUTHSVC_JWKS_URL": "off",
    "SUPABASE_JWT_SECRET": HS_SECRET,
    "AUTHSVC_CALLERS": ALL_SCOPE_CALLERS,
    # One process, whatever the CPUs of the machine running the tests.
    "AUTHSVC_WORKERS": "1",
}
POOLER_6543 = f"postgresql://postgres.{REF}:pw@aws-0-eu-central-1.pooler.supabase.com:6543/postgres"
DIRECT = f"postgresql://postgres:pw@db.{REF}.supabase.co:5432/postgres"


@pytest.fixture(scope="module")
async def database() -> AsyncIterator[tuple[TestDatabase, PgBouncer]]:
    db = await create_test_database("authsvc_check")
    bouncer = PgBouncer(default_pool_size=2)
    try:
        await bouncer.start()
        yield db, bouncer
    finally:
        await bouncer.stop()
        await db.drop()


@pytest.fixture
def fly_toml(tmp_path: Path) -> Path:
    path = tmp_path / "fly.toml"
    path.write_text(GOOD_FLY_TOML)
    return path


@pytest.fixture
def good_env(
    database: tuple[TestDatabase, PgBouncer], jwks: JwksStub
) -> dict[str, str]:
    db, bouncer = database
    return {
        "SUPABASE_URL": SUPABASE_URL,
        "AUTHSVC_JWKS_URL": jwks.url,
        "AUTHSVC_CALLERS": ALL_SCOPE_CALLERS,
        # A transaction pooler not on port 6543, as authsvc's own tests use.
        "DATABASE_URL": bouncer.dsn(db.name) + "?pgbouncer=true",
        "DIRECT_URL": db.login_dsn_direct,
        "AUTHSVC_DB_POOL_MAX": "5",
        "AUTHSVC_WORKERS": "1",
        "AUTHSVC_DB_ALLOW_ADMIN": "true",
        "AUTHSVC_DB_CONNECT_TIMEOUT_SECONDS": "2",
        "AUTHSVC_JWKS_TIMEOUT_SECONDS": "2",
        "FLY_REGION": "fra",
    }


def fly_variant(tmp_path: Path, old: str, new: str) -> Path:
    """The good fly.toml with one piece replaced."""
    assert old in GOOD_FLY_TOML
    path = tmp_path / "variant.toml"
    path.write_text(GOOD_FLY_TOML.replace(old, new))
    return path


def deployment(fly: Path, **env: str) -> Deployment:
    return load_deployment({**OFFLINE_ENV, **env}, fly_toml=fly)


async def run_all(env: dict[str, str], fly: Path, **options: int) -> dict[str, Result]:
    results = await run_checks(load_deployment(env, fly_toml=fly, **options))
    return {result.check: result for result in results}


def row(results: Sequence[Result], check: str) -> Result:
    found = [result for result in results if result.check == check]
    assert len(found) == 1, f"{check}: {results}"
    return found[0]


async def run_command(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        AUTHSVC,
        "check",
        *args,
        env={"PATH": os.environ["PATH"], **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT_SECONDS)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


# The whole command


async def test_good_deployment_passes_every_check_but_the_unknowable_region(
    good_env: dict[str, str], fly_toml: Path
) -> None:
    results = await run_all(good_env, fly_toml)

    not_passed = {
        name: result.status
        for name, result in results.items()
        if result.status is not Status.PASS
    }
    assert not_passed == {"region": Status.WARN}
    assert set(results) == {
        "config",
        "fly.toml",
        "listen.listen_addr",
        "listen.metrics_addr",
        "region",
        "pooler",
        "pooler.direct_url",
        "pool.size",
        "secrets.supabase_url",
        "secrets.fly_env",
        "secrets.callers",
        "secrets.admin",
        "jwks",
        "jwks.issuer",
        "database.connect",
        "database.roles",
        "database.schemas",
        "fly.kill_signal",
        "fly.kill_timeout",
        "fly.checks",
        "fly.metrics",
    }
    assert "statement_cache_size=0" in results["pooler"].detail
    assert results["jwks"].detail.startswith("2 usable keys")
    assert "anon, authenticated, service_role" in results["database.roles"].detail


async def test_command_on_a_good_deployment_prints_json_and_exits_0(
    good_env: dict[str, str], fly_toml: Path
) -> None:
    code, out, _ = await run_command(
        "--json", "--fly-toml", str(fly_toml), env=good_env
    )

    report = json.loads(out)
    statuses = {item["check"]: item["status"] for item in report["results"]}
    assert code == 0
    assert report["ok"] is True
    assert statuses["database.roles"] == "PASS"
    assert statuses["region"] == "WARN"
    assert next(i for i in report["results"] if i["check"] == "region")["fix"]


async def test_command_with_an_unreachable_database_prints_the_failure_and_exits_1(
    good_env: dict[str, str], fly_toml: Path
) -> None:
    port = _closed_port()
    env = {
        **good_env,
        "DATABASE_URL": f"postgresql://app:hunter2-secret@127.0.0.1:{port}/postgres",
    }

    code, out, err = await run_command("--fly-toml", str(fly_toml), env=env)

    lines = out.splitlines()
    failing = [line for line in lines if line.startswith("FAIL")]
    assert code == 1
    assert len(failing) == 1
    assert "database.connect" in failing[0]
    assert f"127.0.0.1:{port}" in failing[0]
    assert (
        lines[lines.index(failing[0]) + 1].strip().startswith("fix: check DATABASE_URL")
    )
    assert out.rstrip().endswith(", 1 FAIL")
    assert "hunter2-secret" not in out + err
    assert "Traceback" not in err


async def test_command_reports_a_bad_setting_as_a_failing_row_not_a_crash(
    fly_toml: Path,
) -> None:
    env = {**OFFLINE_ENV, "AUTHSVC_LEEWAY_SECONDS": "abc"}

    code, out, err = await run_command("--fly-toml", str(fly_toml), env=env)

    assert code == 1
    assert out.startswith("FAIL  config")
    assert "AUTHSVC_LEEWAY_SECONDS='abc'" in out
    assert "Traceback" not in err


async def test_command_refuses_a_machine_count_below_one() -> None:
    code, _, err = await run_command("--machines", "0", env=OFFLINE_ENV)

    assert code == 2
    assert "--machines" in err


def test_unknown_authsvc_variable_is_a_warning_naming_it(fly_toml: Path) -> None:
    checked = deployment(fly_toml, AUTHSVC_LEEWAY_SECOND="5")

    result = row(check_config(checked), "config.unknown")

    assert result.status is Status.WARN
    assert "AUTHSVC_LEEWAY_SECOND" in result.detail


def test_table_puts_each_fix_under_its_row_and_json_carries_the_same() -> None:
    results = [
        Result("region", Status.PASS, "fine"),
        Result("pool.size", Status.WARN, "20 connections, budget 15", "lower it"),
    ]

    table = render_table(results).splitlines()
    document = json.loads(render_json(results))

    assert table[0] == "PASS  region     fine"
    assert table[1] == "WARN  pool.size  20 connections, budget 15"
    assert table[2] == "                 fix: lower it"
    assert table[-1] == "1 PASS, 1 WARN, 0 FAIL"
    assert document == {
        "ok": True,
        "results": [
            {"check": "region", "status": "PASS", "detail": "fine", "fix": ""},
            {
                "check": "pool.size",
                "status": "WARN",
                "detail": "20 connections, budget 15",
                "fix": "lower it",
            },
        ],
    }


# Region: read from the pooler host name, never looked up


@pytest.mark.parametrize(
    ("database_url", "fly_region", "primary_region", "status", "expected"),
    [
        (POOLER_6543, "iad", "fra", Status.FAIL, 'primary_region = "fra"'),
        (POOLER_6543, "fra", "iad", Status.PASS, "(FLY_REGION)"),
        (POOLER_6543, None, "fra", Status.PASS, "(primary_region)"),
        (
            "postgresql://postgres.x:pw@aws-1-us-east-1.pooler.supabase.com:6543/db",
            "iad",
            "fra",
            Status.PASS,
            "us-east-1",
        ),
        (
            "postgresql://postgres.x:pw@aws-0-me-central-1.pooler.supabase.com:6543/db",
            "fra",
            "fra",
            Status.WARN,
            "me-central-1 has no Fly region",
        ),
        (DIRECT, "fra", "fra", Status.WARN, "cannot tell the Supabase region"),
        (POOLER_6543, None, None, Status.WARN, 'primary_region = "fra"'),
    ],
    ids=[
        "mismatch",
        "fly-region-wins",
        "primary-region",
        "aws-1-host",
        "unknown-region",
        "direct-host",
        "no-fly-region",
    ],
)
def test_region_compares_the_pooler_host_with_the_fly_region(
    tmp_path: Path,
    database_url: str,
    fly_region: str | None,
    primary_region: str | None,
    status: Status,
    expected: str,
) -> None:
    region_line = f'primary_region = "{primary_region}"' if primary_region else ""
    fly = fly_variant(tmp_path, 'primary_region = "fra"', region_line)
    env = {"DATABASE_URL": database_url}
    if fly_region is not None:
        env["FLY_REGION"] = fly_region

    result = row(check_region(deployment(fly, **env)), "region")

    assert result.status is status
    assert expected in result.detail + result.fix
    assert (result.fix != "") == (status is not Status.PASS)


# Pooler and DIRECT_URL


@pytest.mark.parametrize(
    ("env", "check", "status", "expected"),
    [
        (
            {"DATABASE_URL": POOLER_6543},
            "pooler",
            Status.PASS,
            "statement_cache_size=0",
        ),
        (
            {"DATABASE_URL": "postgresql://u:pw@10.0.0.5:6432/db?pgbouncer=true"},
            "pooler",
            Status.PASS,
            "transaction pooler",
        ),
        (
            {"DATABASE_URL": POOLER_6543.replace(":6543", ":5432")},
            "pooler",
            Status.WARN,
            "use port 6543",
        ),
        (
            {"DATABASE_URL": POOLER_6543.replace(":6543", "")},
            "pooler",
            Status.WARN,
            "session pooler",
        ),
        (
            {"DATABASE_URL": DIRECT},
            "pooler",
            Status.WARN,
            "keep this one as DIRECT_URL",
        ),
        (
            {"DATABASE_URL": "postgresql://u:pw@10.0.0.5:5432/db"},
            "pooler",
            Status.WARN,
            "?pgbouncer=true",
        ),
        (
            {"DATABASE_URL": POOLER_6543.replace(f"postgres.{REF}", "postgres")},
            "pooler.project",
            Status.FAIL,
            "postgres.<ref>",
        ),
        (
            {"DATABASE_URL": POOLER_6543.replace(REF, "otherprojectref00000")},
            "pooler.project",
            Status.FAIL,
            "otherprojectref00000",
        ),
        ({"DATABASE_URL": POOLER_6543}, "pooler.project", Status.PASS, REF),
        (
            {"DATABASE_URL": POOLER_6543},
            "pooler.direct_url",
            Status.WARN,
            "migration",
        ),
        (
            {"DATABASE_URL": POOLER_6543, "DIRECT_URL": POOLER_6543},
            "pooler.direct_url",
            Status.FAIL,
            "the same URL as DATABASE_URL",
        ),
        (
            {"DATABASE_URL": DIRECT, "DIRECT_URL": DIRECT},
            "pooler.direct_url",
            Status.WARN,
            "same as DATABASE_URL",
        ),
        (
            {"DATABASE_URL": POOLER_6543, "DIRECT_URL": DIRECT},
            "pooler.direct_url",
            Status.PASS,
            "bypasses the pooler",
        ),
    ],
    ids=[
        "transaction-6543",
        "pgbouncer-flag",
        "session-5432",
        "session-default-port",
        "direct",
        "unrecognised",
        "pooler-user-without-ref",
        "other-project",
        "same-project",
        "direct-url-missing",
        "direct-url-pooled",
        "direct-url-same-direct",
        "direct-url-good",
    ],
)
def test_pooler_rows_judge_database_url_and_direct_url(
    fly_toml: Path, env: dict[str, str], check: str, status: Status, expected: str
) -> None:
    result = row(check_pooler(deployment(fly_toml, **env)), check)

    assert result.status is status
    assert expected in result.detail + result.fix
    assert "pw@" not in result.detail + result.fix


def test_no_database_url_passes_the_pooler_and_skips_the_database_rows(
    fly_toml: Path,
) -> None:
    checked = deployment(fly_toml)

    assert [r.check for r in check_pooler(checked)] == ["pooler"]
    assert check_pool_size(checked) == []


# Pool size against the pooler's budget


@pytest.mark.parametrize(
    ("pool_max", "options", "fly_extra", "status", "expected"),
    [
        ("10", {}, "", Status.WARN, "x 2 Machines = 20 connections, budget 15"),
        ("5", {}, "", Status.PASS, "= 10 connections, budget 15"),
        ("10", {"machines": 1}, "", Status.PASS, "x 1 Machines = 10"),
        ("10", {"pool_budget": 30}, "", Status.PASS, "budget 30"),
        (
            "5",
            {},
            '[deploy]\n  strategy = "bluegreen"\n',
            Status.WARN,
            "x 4 Machines during a blue-green deploy = 20",
        ),
        (
            "5",
            {},
            "[[services]]\n  internal_port = 50051\n  min_machines_running = 3\n",
            Status.PASS,
            "x 3 Machines = 15",
        ),
        (
            "7 workers=2",
            {},
            "",
            Status.PASS,
            "=7 (2 workers x 3) x 2 Machines = 12 connections",
        ),
        (
            "2 workers=4",
            {},
            "",
            Status.PASS,
            "=2 (4 workers x 1) x 2 Machines = 8 connections",
        ),
    ],
    ids=[
        "default-2",
        "fits",
        "one-machine",
        "bigger-budget",
        "bluegreen",
        "min-3",
        "split-between-workers",
        "one-each-at-least",
    ],
)
def test_pool_size_times_machines_is_held_against_the_pooler_budget(
    fly_toml: Path,
    pool_max: str,
    options: dict[str, int],
    fly_extra: str,
    status: Status,
    expected: str,
) -> None:
    fly_toml.write_text(GOOD_FLY_TOML + fly_extra)
    pool_max, _, workers = pool_max.partition(" workers=")
    env = {**OFFLINE_ENV, "DATABASE_URL": POOLER_6543, "AUTHSVC_DB_POOL_MAX": pool_max}
    if workers:
        env["AUTHSVC_WORKERS"] = workers

    result = row(
        check_pool_size(load_deployment(env, fly_toml=fly_toml, **options)),
        "pool.size",
    )

    assert result.status is status
    assert expected in result.detail


@pytest.mark.parametrize(
    ("vm", "expected"),
    [
        ('size = "shared-cpu-1x"', "AUTHSVC_DB_POOL_MAX=7 x 2 Machines = 14"),
        (
            'size = "performance-4x"',
            "=7 (4 workers, one per CPU of performance-4x x 1) x 2 Machines = 8",
        ),
        ("cpus = 2", "=7 (2 workers, the [[vm]] cpus x 3) x 2 Machines = 12"),
    ],
)
def test_pool_size_counts_the_workers_of_the_machine_size_in_fly_toml(
    fly_toml: Path, vm: str, expected: str
) -> None:
    """Without AUTHSVC_WORKERS, each Machine runs one worker per CPU: the
    CPUs of fly.toml's [[vm]], not of the machine running the check."""
    fly_toml.write_text(GOOD_FLY_TOML + f"\n[[vm]]\n  {vm}\n")
    env = {**OFFLINE_ENV, "DATABASE_URL": POOLER_6543, "AUTHSVC_DB_POOL_MAX": "7"}
    del env["AUTHSVC_WORKERS"]

    result = row(check_pool_size(load_deployment(env, fly_toml=fly_toml)), "pool.size")

    assert expected in result.detail


def test_pool_size_warning_names_a_pool_max_that_fits(fly_toml: Path) -> None:
    env = {**OFFLINE_ENV, "DATABASE_URL": POOLER_6543, "AUTHSVC_DB_POOL_MAX": "10"}

    result = row(check_pool_size(load_deployment(env, fly_toml=fly_toml)), "pool.size")

    assert "set AUTHSVC_DB_POOL_MAX=7" in result.fix


# Secrets and callers


@pytest.mark.parametrize(
    ("env", "check", "status", "expected"),
    [
        ({"AUTHSVC_CALLERS": ""}, "secrets.callers", Status.FAIL, "no callers"),
        (
            {"AUTHSVC_CALLERS": "", "AUTHSVC_ALLOW_UNAUTHENTICATED": "true"},
            "secrets.callers",
            Status.WARN,
            "any app that reaches the port",
        ),
        (
            {
                "AUTHSVC_CALLERS": callers_toml(
                    ("reader", TEST_CALLER_KEY, ["tokens:verify", "data:read"])
                ),
                "DATABASE_URL": POOLER_6543,
                "AUTHSVC_DB_ALLOW_ADMIN": "true",
            },
            "secrets.admin",
            Status.WARN,
            "no caller has data:admin",
        ),
        (
            {"DATABASE_URL": POOLER_6543, "AUTHSVC_DB_ALLOW_ADMIN": "true"},
            "secrets.admin",
            Status.PASS,
            "admin mode for: tests",
        ),
        ({"SUPABASE_URL": ""}, "secrets.supabase_url", Status.FAIL, "fly secrets set"),
    ],
    ids=["no-callers", "unauthenticated", "admin-unused", "admin-granted", "no-url"],
)
def test_secret_rows_judge_callers_admin_and_project_url(
    fly_toml: Path, env: dict[str, str], check: str, status: Status, expected: str
) -> None:
    result = row(check_secrets(deployment(fly_toml, **env)), check)

    assert result.status is status
    assert expected in result.detail + result.fix


def test_short_jwt_secret_fails_without_showing_it(fly_toml: Path) -> None:
    secret = "short-but-private-value"

    checked = deployment(fly_toml, SUPABASE_JWT_SECRET=secret)
    results = check_secrets(checked)

    assert row(results, "secrets.jwt_secret").status is Status.FAIL
    assert row(check_config(checked), "config").status is Status.FAIL
    assert secret not in render_table(results + check_config(checked))


@pytest.mark.parametrize(
    ("line", "name"),
    [
        (f'DATABASE_URL = "{POOLER_6543}"', "DATABASE_URL"),
        (
            'DIRECT_URL = "postgresql://postgres@db.x.supabase.co/postgres"',
            "DIRECT_URL",
        ),
        (f'SUPABASE_JWT_SECRET = "{HS_SECRET}"', "SUPABASE_JWT_SECRET"),
        ('AUTHSVC_CALLERS = "[callers.a]"', "AUTHSVC_CALLERS"),
        ('MY_DB = "postgres://app:hunter2@10.0.0.1/db"', "MY_DB"),
        (
            'SERVICE_TOKEN_X = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"',
            "SERVICE_TOKEN_X",
        ),
        (f'APP_KEY = "{TEST_CALLER_KEY}"', "APP_KEY"),
        ('SB = "sb_secret_abcdefghijklmnop"', "SB"),
    ],
    ids=[
        "database-url",
        "direct-url",
        "jwt-secret",
        "callers",
        "url-with-password",
        "jwt-value",
        "caller-key",
        "supabase-secret-key",
    ],
)
def test_secret_in_fly_toml_env_fails_naming_it_but_not_its_value(
    tmp_path: Path, line: str, name: str
) -> None:
    fly = fly_variant(tmp_path, "[env]\n", f"[env]\n  {line}\n")

    result = row(check_secrets(deployment(fly)), "secrets.fly_env")

    value = line.split(" = ", 1)[1].strip('"')
    assert result.status is Status.FAIL
    assert name in result.detail
    assert "rotate" in result.fix
    assert value not in render_table([result])


def test_plain_settings_in_fly_toml_env_pass(tmp_path: Path) -> None:
    fly = fly_variant(
        tmp_path,
        "[env]\n",
        "[env]\n"
        f'  SUPABASE_URL = "{SUPABASE_URL}"\n'
        "  AUTHSVC_MAX_TOKEN_BYTES = 16384\n"
        '  REPLICA_URL = "postgresql://reader@10.0.0.1/db"\n',
    )

    result = row(check_secrets(deployment(fly)), "secrets.fly_env")

    assert result.status is Status.PASS


# Keys, fetched from a real JWKS endpoint


async def test_jwks_with_an_error_status_fails_naming_the_status(
    good_env: dict[str, str], fly_toml: Path, jwks: JwksStub
) -> None:
    jwks.status = 500

    result = (await run_all(good_env, fly_toml))["jwks"]

    assert result.status is Status.FAIL
    assert "HTTP 500" in result.detail
    assert "SUPABASE_URL" in result.fix


async def test_jwks_without_usable_keys_fails(
    good_env: dict[str, str], fly_toml: Path, jwks: JwksStub
) -> None:
    jwks.serve_keys()

    result = (await run_all(good_env, fly_toml))["jwks"]

    assert result.status is Status.FAIL
    assert "no usable key" in result.detail


async def test_empty_jwks_passes_when_the_hs256_secret_is_set(
    good_env: dict[str, str], fly_toml: Path, jwks: JwksStub
) -> None:
    """A project still on the legacy secret publishes an empty JWKS."""
    jwks.serve_keys()

    result = (await run_all({**good_env, "SUPABASE_JWT_SECRET": HS_SECRET}, fly_toml))[
        "jwks"
    ]

    assert result.status is Status.PASS


async def test_unreachable_jwks_only_warns_when_the_hs256_secret_is_set(
    good_env: dict[str, str], fly_toml: Path, jwks: JwksStub
) -> None:
    jwks.status = 503

    result = (await run_all({**good_env, "SUPABASE_JWT_SECRET": HS_SECRET}, fly_toml))[
        "jwks"
    ]

    assert result.status is Status.WARN
    assert "only HS256 tokens would verify" in result.detail


async def test_hanging_jwks_fails_within_the_configured_timeout(
    good_env: dict[str, str], fly_toml: Path, jwks: JwksStub
) -> None:
    jwks.delay_seconds = 10
    env = {**good_env, "AUTHSVC_JWKS_TIMEOUT_SECONDS": "0.5"}

    started = time.monotonic()
    result = (await run_all(env, fly_toml))["jwks"]
    elapsed = time.monotonic() - started

    assert result.status is Status.FAIL
    assert "timed out after 0.5s" in result.detail
    assert elapsed < 3


async def test_issuer_override_unlike_the_project_url_warns(
    good_env: dict[str, str], fly_toml: Path
) -> None:
    env = {**good_env, "AUTHSVC_ISSUER": "https://auth.example.com/auth/v1"}

    result = (await run_all(env, fly_toml))["jwks.issuer"]

    assert result.status is Status.WARN
    assert f"{SUPABASE_URL}/auth/v1" in result.detail
    assert "unset AUTHSVC_ISSUER" in result.fix


# Database: the real server, through PgBouncer or directly


async def test_database_that_refuses_connections_fails_the_connect_row_only(
    good_env: dict[str, str], fly_toml: Path
) -> None:
    env = {
        **good_env,
        "DATABASE_URL": f"postgresql://app@127.0.0.1:{_closed_port()}/db",
    }

    results = await run_all(env, fly_toml)

    assert results["database.connect"].status is Status.FAIL
    assert "database.roles" not in results
    assert results["jwks"].status is Status.PASS


async def test_database_that_never_answers_fails_within_the_connect_timeout(
    good_env: dict[str, str], fly_toml: Path
) -> None:
    silent = await asyncio.start_server(_hold_open, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    env = {
        **good_env,
        "DATABASE_URL": f"postgresql://app@127.0.0.1:{port}/db",
        "AUTHSVC_DB_CONNECT_TIMEOUT_SECONDS": "0.5",
    }
    try:
        started = time.monotonic()
        result = (await run_all(env, fly_toml))["database.connect"]
        elapsed = time.monotonic() - started
    finally:
        silent.close()

    assert result.status is Status.FAIL
    assert "Timeout" in result.detail
    assert elapsed < 3


async def test_missing_schema_fails_naming_it(
    good_env: dict[str, str], fly_toml: Path
) -> None:
    env = {**good_env, "AUTHSVC_DB_SCHEMAS": "public,reporting"}

    result = (await run_all(env, fly_toml))["database.schemas"]

    assert result.status is Status.FAIL
    assert result.detail.endswith("do not exist: reporting")


@pytest.mark.parametrize(
    ("granted", "admin", "status", "expected"),
    [
        ("", "false", Status.FAIL, "is not a member of anon, authenticated"),
        ("anon, authenticated", "true", Status.FAIL, "not a member of service_role"),
        ("anon, authenticated", "false", Status.WARN, "(unused by these settings)"),
    ],
    ids=["no-roles", "admin-without-service-role", "service-role-unused"],
)
async def test_login_role_outside_supabase_roles_is_reported(
    database: tuple[TestDatabase, PgBouncer],
    good_env: dict[str, str],
    fly_toml: Path,
    granted: str,
    admin: str,
    status: Status,
    expected: str,
) -> None:
    db, _ = database
    outsider = f"authsvc_check_outsider_{secrets.token_hex(4)}"
    quoted = quote_ident(outsider)
    await db.execute_as_superuser(f"CREATE ROLE {quoted} LOGIN NOINHERIT")
    try:
        await db.execute_as_superuser(
            f"GRANT CONNECT ON DATABASE {quote_ident(db.name)} TO {quoted}"
        )
        if granted:
            await db.execute_as_superuser(f"GRANT {granted} TO {quoted}")
        env = {
            **good_env,
            "DATABASE_URL": f"postgresql://{outsider}@{db.host}:{db.port}/{db.name}",
            "AUTHSVC_DB_ALLOW_ADMIN": admin,
        }

        result = (await run_all(env, fly_toml))["database.roles"]
    finally:
        await db.execute_as_superuser(f"DROP OWNED BY {quoted}; DROP ROLE {quoted}")

    assert result.status is status
    assert expected in result.detail
    assert "supabase_roles.sql" in result.fix


# fly.toml


@pytest.mark.parametrize(
    ("old", "new", "check", "status", "expected"),
    [
        (
            'kill_timeout = "15s"',
            "kill_timeout = 5",
            "fly.kill_timeout",
            Status.FAIL,
            "kill_timeout = 11",
        ),
        (
            'kill_timeout = "15s"',
            "kill_timeout = 10",
            "fly.kill_timeout",
            Status.FAIL,
            "not more than the 8s grace",
        ),
        (
            'kill_timeout = "15s"',
            "kill_timeout = 11",
            "fly.kill_timeout",
            Status.PASS,
            "11s outlasts the 8s grace",
        ),
        (
            'kill_timeout = "15s"',
            "",
            "fly.kill_timeout",
            Status.FAIL,
            "kill_timeout is 5s",
        ),
        (
            'kill_timeout = "15s"',
            'kill_timeout = "1m"',
            "fly.kill_timeout",
            Status.PASS,
            "60s",
        ),
        (
            'kill_timeout = "15s"',
            'kill_timeout = "soon"',
            "fly.kill_timeout",
            Status.FAIL,
            "not a duration",
        ),
        (
            'kill_signal = "SIGTERM"',
            'kill_signal = "SIGKILL"',
            "fly.kill_signal",
            Status.FAIL,
            "SIGKILL",
        ),
        ('kill_signal = "SIGTERM"', "", "fly.kill_signal", Status.PASS, "SIGINT"),
        (
            "port = 9091\n    path",
            "port = 8080\n    path",
            "fly.checks",
            Status.FAIL,
            "port 8080",
        ),
        (
            'path = "/readyz"',
            'path = "/health"',
            "fly.checks",
            Status.FAIL,
            "path /health",
        ),
        (
            'path = "/readyz"',
            'path = "/healthz"',
            "fly.checks",
            Status.PASS,
            "checks.ready",
        ),
        (
            'type = "http"\n    port = 9091',
            'type = "tcp"\n    port = 50051',
            "fly.checks",
            Status.PASS,
            "TCP sees only an open port",
        ),
        (
            GOOD_FLY_TOML[
                GOOD_FLY_TOML.index("[checks]") : GOOD_FLY_TOML.index("[metrics]")
            ],
            "",
            "fly.checks",
            Status.WARN,
            "no health checks",
        ),
        (
            "[metrics]\n  port = 9091",
            "[metrics]\n  port = 9090",
            "fly.metrics",
            Status.FAIL,
            "port 9090",
        ),
        (
            "[metrics]",
            "[[services]]\n  internal_port = 8080\n\n[metrics]",
            "fly.services",
            Status.FAIL,
            "internal_port 8080",
        ),
        (
            "[metrics]",
            "[[services]]\n  internal_port = 50051\n\n[metrics]",
            "fly.services",
            Status.PASS,
            "gRPC port",
        ),
    ],
    ids=[
        "kill-timeout-short",
        "kill-timeout-at-the-margin",
        "kill-timeout-past-the-margin",
        "kill-timeout-fly-default",
        "kill-timeout-minutes",
        "kill-timeout-garbage",
        "kill-signal-sigkill",
        "kill-signal-fly-default",
        "check-wrong-port",
        "check-wrong-path",
        "check-liveness-path",
        "check-tcp-only",
        "no-checks",
        "metrics-wrong-port",
        "service-wrong-port",
        "service-grpc-port",
    ],
)
def test_fly_toml_rows_match_the_server_settings(
    tmp_path: Path, old: str, new: str, check: str, status: Status, expected: str
) -> None:
    fly = fly_variant(tmp_path, old, new)

    result = row(check_fly(deployment(fly)), check)

    assert result.status is status
    assert expected in result.detail + result.fix


def test_fly_toml_env_counts_as_the_machine_environment(tmp_path: Path) -> None:
    """A grace period set in fly.toml's [env] is held against its kill_timeout."""
    fly = fly_variant(
        tmp_path, "[env]\n", '[env]\n  AUTHSVC_SHUTDOWN_GRACE_SECONDS = "20"\n'
    )

    result = row(check_fly(deployment(fly)), "fly.kill_timeout")

    assert result.status is Status.FAIL
    assert "20s grace" in result.detail


@pytest.mark.parametrize(
    ("listen_value", "shell", "check", "expected"),
    [
        (
            '"127.0.0.1:50051"',
            {},
            "listen.listen_addr",
            "127.0.0.1:50051 (from fly.toml [env]) is loopback only",
        ),
        (
            '"[::]:50051"',
            {"AUTHSVC_LISTEN_ADDR": "0.0.0.0:50051"},
            "listen.listen_addr",
            "0.0.0.0:50051 (from the environment) is IPv4 only",
        ),
        (
            '"[::]:50051"\n  AUTHSVC_METRICS_ADDR = "localhost:9091"',
            {},
            "listen.metrics_addr",
            "localhost:9091 (from fly.toml [env]) is loopback only",
        ),
        (
            '"[::]:50051"\n  AUTHSVC_METRICS_ADDR = "[::]:9091"',
            {"AUTHSVC_METRICS_ADDR": "[::1]:9091"},
            "listen.metrics_addr",
            "[::1]:9091 (from the environment) is loopback only",
        ),
    ],
    ids=["grpc-loopback-env", "grpc-ipv4-shell", "ops-localhost", "shell-wins"],
)
def test_an_address_other_machines_cannot_reach_fails_naming_its_source(
    tmp_path: Path, listen_value: str, shell: dict[str, str], check: str, expected: str
) -> None:
    """`listen_value` replaces the value of fly.toml's AUTHSVC_LISTEN_ADDR
    (and may add lines after it)."""
    fly = fly_variant(tmp_path, '"[::]:50051"', listen_value)

    result = row(check_listen(deployment(fly, **shell)), check)

    assert result.status is Status.FAIL
    assert expected in result.detail
    assert "[::]:" in result.fix


def test_the_default_addresses_pass_the_listen_rows(fly_toml: Path) -> None:
    results = check_listen(deployment(fly_toml))

    assert [r.status for r in results] == [Status.PASS, Status.PASS]
    assert "[::]:50051 (from fly.toml [env])" in results[0].detail
    assert "[::]:9091 (the default)" in results[1].detail


def test_fly_toml_metrics_with_the_metrics_port_off_fails(fly_toml: Path) -> None:
    checked = deployment(fly_toml, AUTHSVC_METRICS_ADDR="off")

    results = check_fly(checked)

    assert row(results, "fly.metrics").status is Status.FAIL
    assert row(results, "fly.checks").status is Status.FAIL
    assert 'type = "tcp", port = 50051' in row(results, "fly.checks").fix


async def test_missing_fly_toml_warns_and_skips_its_checks(
    good_env: dict[str, str], tmp_path: Path
) -> None:
    results = await run_all(good_env, tmp_path / "absent.toml")

    assert results["fly.toml"].status is Status.WARN
    assert "--fly-toml" in results["fly.toml"].fix
    assert not [name for name in results if name.startswith("fly.k")]
    assert "secrets.fly_env" not in results
    assert not failed(list(results.values()))


def test_unreadable_fly_toml_fails(tmp_path: Path) -> None:
    fly = tmp_path / "fly.toml"
    fly.write_text('app = "authsvc\n')

    result = row(check_config(deployment(fly)), "fly.toml")

    assert result.status is Status.FAIL
    assert "is not valid TOML" in result.detail


@pytest.mark.parametrize(
    "shipped", sorted(ROOT.glob("fly*.toml")), ids=lambda path: path.name
)
def test_the_shipped_fly_files_pass_their_own_checks(shipped: Path) -> None:
    checked = deployment(shipped)

    results = check_fly(checked) + check_secrets(checked)

    assert checked.fly is not None
    assert [r for r in results if r.status is not Status.PASS] == []


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _hold_open(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """A server that accepts and never answers: a hung database."""
    await reader.read()
    writer.close()
