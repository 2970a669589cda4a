"""`authsvc check`: the Supabase-on-Fly deployment checklist, as results.

A `Deployment` is what the server would run with: the environment (with
fly.toml's `[env]` filling in what it lacks, as Fly does on a Machine), the
settings read from it, and the parsed fly.toml. Each check takes one and
returns `Result`s: PASS, or WARN/FAIL with a one-line fix. The checks that do
I/O (the JWKS fetch, the database) are async and bounded by the configured
timeouts; the rest read nothing but the `Deployment`, so a check of a fake
Supabase host name never touches the network. Nothing here prints or exits:
`render_table`/`render_json` turn results into text, and cli.py picks the
exit code.

Assumption for the pool-size check: Supabase's pooler opens at most "Pool
Size" server connections per database user and database, 15 by default on
the Nano to Small computes (the dashboard's Database settings show the real
figure; pass it as `--pool-budget`). Other apps using the same user share it.
"""

from __future__ import annotations

import asyncio
import enum
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

import asyncpg
import httpx

from authsvc import __version__
from authsvc.access import CallerSet, Scope
from authsvc.config import (
    ISSUER_PATH,
    MIN_JWT_SECRET_CHARS,
    ConfigError,
    Settings,
)
from authsvc.data.pool import _driver_dsn, behind_transaction_pooler, redacted
from authsvc.data.runner import ADMIN_ROLE, ANON_ROLE
from authsvc.data.service import _ROLES_SQL
from authsvc.errors import KeysUnavailable
from authsvc.ops.http import LIVENESS_PATH, METRICS_PATH, READINESS_PATH
from authsvc.ops.regions import SUPABASE_TO_FLY_REGION
from authsvc.server import load_callers
from authsvc.tokens import KeySet

# Supabase's default pooler "Pool Size" (server connections per user and
# database) on Nano to Small computes; see the module docstring.
DEFAULT_POOL_BUDGET = 15
# `fly deploy` gives an app two Machines in its primary region by default.
DEFAULT_MACHINES = 2
# What Fly uses when fly.toml says nothing.
FLY_DEFAULT_KILL_SIGNAL = "SIGINT"
FLY_DEFAULT_KILL_TIMEOUT_SECONDS = 5.0
# After the gRPC grace period the server still closes the pool and the HTTP
# client; Fly's SIGKILL must not cut that short.
KILL_TIMEOUT_MARGIN_SECONDS = 2.0
DB_QUERY_TIMEOUT_SECONDS = 5.0
DB_CLOSE_TIMEOUT_SECONDS = 2.0
CHECK_APPLICATION_NAME = "authsvc-check"

_HANDLED_SIGNALS = frozenset({"SIGINT", "SIGTERM"})  # see authsvc.server
_HEALTH_PATHS = (READINESS_PATH, LIVENESS_PATH)
_SUPABASE_ROLES = (ANON_ROLE, "authenticated", ADMIN_ROLE)
# Never to be written in fly.toml, which is committed with the code.
_SECRET_VARIABLES = frozenset(
    {"SUPABASE_JWT_SECRET", "DATABASE_URL", "DIRECT_URL", "AUTHSVC_CALLERS"}
)

_POOLER_HOST = re.compile(
    r"aws-\d+-(?P<region>[a-z]{2}-[a-z]+-\d+)\.pooler\.supabase\.com"
)
_DIRECT_HOST = re.compile(r"db\.(?P<ref>[a-z0-9]+)\.supabase\.co")
_PROJECT_URL = re.compile(r"https://(?P<ref>[a-z0-9]+)\.supabase\.co")
# A JWT, a caller key, a Supabase secret API key, or a PEM block.
_SECRET_VALUE = re.compile(
    r"eyJ[\w-]+\.eyJ[\w-]+\.|\basvc_\w|\bsb_secret_\w|-----BEGIN [A-Z ]*KEY-----"
)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class Status(enum.StrEnum):
    # A row's outcome, not a password.
    PASS = "PASS"  # noqa: S105
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Result:
    """One row: `check` names it (`group.item`); WARN and FAIL carry a fix."""

    check: str
    status: Status
    detail: str
    fix: str = ""


def _pass(check: str, detail: str) -> Result:
    return Result(check, Status.PASS, detail)


def _warn(check: str, detail: str, fix: str) -> Result:
    return Result(check, Status.WARN, detail, fix)


def _fail(check: str, detail: str, fix: str) -> Result:
    return Result(check, Status.FAIL, detail, fix)


@dataclass(frozen=True)
class Deployment:
    """What the checks look at; `settings` is None when they cannot be read."""

    environ: Mapping[str, str]
    settings: Settings | None
    config_error: str | None
    fly: Mapping[str, Any] | None
    fly_path: Path
    fly_error: str | None
    machines: int
    pool_budget: int


def load_deployment(
    environ: Mapping[str, str],
    *,
    fly_toml: str | Path,
    machines: int | None = None,
    pool_budget: int = DEFAULT_POOL_BUDGET,
) -> Deployment:
    """Read fly.toml and the settings; problems become rows, never raise."""
    fly_path = Path(fly_toml)
    fly: dict[str, Any] | None = None
    fly_error = None
    try:
        with fly_path.open("rb") as file:
            fly = tomllib.load(file)
    except FileNotFoundError:
        fly_error = "not found"
    except OSError as exc:
        fly_error = f"cannot be read: {exc}"
    except tomllib.TOMLDecodeError as exc:
        fly_error = f"is not valid TOML: {exc}"

    merged = {**_fly_env(fly), **environ}
    settings = None
    config_error = None
    try:
        settings = Settings.from_environ(merged)
    except ConfigError as exc:
        config_error = str(exc)

    if machines is None:
        machines = max(DEFAULT_MACHINES, _min_machines_running(fly))
    return Deployment(
        environ=merged,
        settings=settings,
        config_error=config_error,
        fly=fly,
        fly_path=fly_path,
        fly_error=fly_error,
        machines=machines,
        pool_budget=pool_budget,
    )


async def run_checks(deployment: Deployment) -> list[Result]:
    """Every check, in a fixed order; the two that do I/O run concurrently."""
    results = [
        *check_config(deployment),
        *check_region(deployment),
        *check_pooler(deployment),
        *check_pool_size(deployment),
        *check_secrets(deployment),
    ]
    keys, database = await asyncio.gather(
        check_jwks(deployment), check_database(deployment)
    )
    return [*results, *keys, *database, *check_fly(deployment)]


def failed(results: Sequence[Result]) -> bool:
    return any(result.status is Status.FAIL for result in results)


def render_table(results: Sequence[Result]) -> str:
    width = max((len(result.check) for result in results), default=0)
    lines = []
    for result in results:
        lines.append(f"{result.status:<4}  {result.check:<{width}}  {result.detail}")
        if result.fix:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {result.fix}")
    counts = (
        f"{sum(r.status is status for r in results)} {status}" for status in Status
    )
    lines.append("\n" + ", ".join(counts))
    return "\n".join(lines)


def render_json(results: Sequence[Result]) -> str:
    return json.dumps(
        {
            "ok": not failed(results),
            "results": [asdict(result) for result in results],
        },
        indent=2,
    )


# Settings and fly.toml


def check_config(deployment: Deployment) -> list[Result]:
    results = []
    if deployment.config_error is not None:
        results.append(
            _fail(
                "config",
                f"authsvc serve would refuse to start: {deployment.config_error}",
                "correct the setting named above; checks that need the settings "
                "were skipped",
            )
        )
    else:
        results.append(_pass("config", "the settings are valid"))
    unknown = Settings.unknown_variables(deployment.environ)
    if unknown:
        results.append(
            _warn(
                "config.unknown",
                f"ignored, not an authsvc setting: {', '.join(unknown)}",
                "correct the spelling (the README lists every setting) or remove them",
            )
        )

    path = deployment.fly_path
    if deployment.fly_error == "not found":
        results.append(
            _warn(
                "fly.toml",
                f"{path} not found: the fly.toml checks were skipped",
                "run in the app's directory or pass --fly-toml PATH",
            )
        )
    elif deployment.fly_error is not None:
        results.append(
            _fail(
                "fly.toml",
                f"{path} {deployment.fly_error}",
                "fix the file; `fly config validate` explains Fly's view of it",
            )
        )
    else:
        results.append(_pass("fly.toml", f"read {path}"))
    return results


# Region


def check_region(deployment: Deployment) -> list[Result]:
    """The Fly region beside the project's, read from the pooler's host name."""
    environ = deployment.environ
    host = _url_parts(environ.get("DATABASE_URL", "")).hostname or ""
    match = _POOLER_HOST.fullmatch(host)
    if match is None:
        where = f"the database host {host}" if host else "DATABASE_URL (not set)"
        return [
            _warn(
                "region",
                f"cannot tell the Supabase region from {where}",
                "compare the project's region (Supabase dashboard, Settings) with "
                "primary_region by hand, using the table in the README",
            )
        ]
    supabase_region = match["region"]
    expected = SUPABASE_TO_FLY_REGION.get(supabase_region)
    if expected is None:
        return [
            _warn(
                "region",
                f"Supabase region {supabase_region} has no Fly region on record",
                "pick the nearest Fly region (`fly platform regions`) as "
                "primary_region",
            )
        ]

    fly_region, source = environ.get("FLY_REGION"), "FLY_REGION"
    if not fly_region and deployment.fly is not None:
        fly_region, source = deployment.fly.get("primary_region"), "primary_region"
    if not fly_region:
        return [
            _warn(
                "region",
                f"Supabase is in {supabase_region} but neither FLY_REGION nor "
                "fly.toml's primary_region says where authsvc runs",
                f'set primary_region = "{expected}" in fly.toml',
            )
        ]
    if fly_region != expected:
        return [
            _fail(
                "region",
                f"{source}={fly_region}, but Supabase {supabase_region} sits beside "
                f"Fly {expected}: every query and JWKS fetch would cross regions",
                f'set primary_region = "{expected}" in fly.toml and move the '
                f"Machines there (`fly scale count {deployment.machines} "
                f"--region {expected}`)",
            )
        ]
    return [
        _pass(
            "region",
            f"Supabase {supabase_region} and Fly {fly_region} ({source}) are "
            "neighbours",
        )
    ]


# Pooler


def check_pooler(deployment: Deployment) -> list[Result]:
    """DATABASE_URL through the transaction pooler; DIRECT_URL around it."""
    environ = deployment.environ
    dsn = environ.get("DATABASE_URL", "").strip()
    if not dsn:
        return [
            _pass(
                "pooler",
                "DATABASE_URL is not set: DataService is off, no database checks",
            )
        ]
    parts = _url_parts(dsn)
    results = [_pooler_mode(dsn, parts)]
    project = _pooler_project(parts, environ.get("SUPABASE_URL", ""))
    if project is not None:
        results.append(project)
    results.append(_direct_url(dsn, environ.get("DIRECT_URL", "").strip()))
    return results


def _pooler_mode(dsn: str, parts: SplitResult) -> Result:
    host = parts.hostname or ""
    where = f"{host}:{_port(parts) or 5432}"
    if behind_transaction_pooler(dsn):
        return _pass(
            "pooler",
            f"transaction pooler at {where}; authsvc turns prepared statements "
            "off for it (statement_cache_size=0)",
        )
    if _POOLER_HOST.fullmatch(host):
        return _warn(
            "pooler",
            f"session pooler at {where}: each pooled connection holds one of the "
            "pooler's server connections for as long as it is open",
            "use port 6543 (transaction mode) in DATABASE_URL",
        )
    if _DIRECT_HOST.fullmatch(host):
        return _warn(
            "pooler",
            f"direct connection to {where}: no pooler shares the database's "
            "connections, and the host is IPv6 only",
            "set DATABASE_URL to the transaction pooler URL (Connect dialog, "
            "port 6543) and keep this one as DIRECT_URL for migrations",
        )
    return _warn(
        "pooler",
        f"{where} is not recognised as a transaction pooler: prepared statements "
        "stay on and each pooled connection is a server connection",
        "if it is a transaction pooler on another port, add ?pgbouncer=true to "
        "DATABASE_URL; on Supabase use port 6543",
    )


def _pooler_project(parts: SplitResult, supabase_url: str) -> Result | None:
    """On Supabase, the database must belong to the project that signs tokens."""
    host = parts.hostname or ""
    direct = _DIRECT_HOST.fullmatch(host)
    if direct is not None:
        ref = direct["ref"]
    elif _POOLER_HOST.fullmatch(host):
        _, dot, ref = (parts.username or "").partition(".")
        if not dot or not ref:
            return _fail(
                "pooler.project",
                f"the shared pooler needs the user as <role>.<project-ref>, got "
                f"{parts.username or '(none)'!r}: it would answer 'Tenant or user "
                "not found'",
                "copy DATABASE_URL from the Connect dialog (user postgres.<ref>)",
            )
    else:
        return None

    project = _PROJECT_URL.fullmatch(supabase_url.strip().rstrip("/"))
    if project is None:
        return None
    if project["ref"] != ref:
        return _fail(
            "pooler.project",
            f"DATABASE_URL is project {ref} but SUPABASE_URL is project "
            f"{project['ref']}: users of one would query the other's data",
            "take both from the same project's dashboard",
        )
    return _pass("pooler.project", f"DATABASE_URL and SUPABASE_URL are project {ref}")


def _direct_url(dsn: str, direct: str) -> Result:
    if not direct:
        return _warn(
            "pooler.direct_url",
            "DIRECT_URL is not set; authsvc does not use it, migration tools do",
            "set DIRECT_URL to the direct connection (db.<ref>.supabase.co:5432) or "
            "the session pooler (port 5432) where migrations run",
        )
    if behind_transaction_pooler(direct):
        same = " (the same URL as DATABASE_URL)" if direct == dsn else ""
        return _fail(
            "pooler.direct_url",
            f"DIRECT_URL goes through a transaction pooler{same}: migrations need "
            "a session (prepared statements, advisory locks)",
            "set DIRECT_URL to the direct connection or the session pooler (port 5432)",
        )
    if direct == dsn:
        return _warn(
            "pooler.direct_url",
            "DIRECT_URL is the same as DATABASE_URL, so authsvc's pool skips the "
            "transaction pooler",
            "set DATABASE_URL to the transaction pooler URL (port 6543)",
        )
    return _pass("pooler.direct_url", "DIRECT_URL is set and bypasses the pooler")


def check_pool_size(deployment: Deployment) -> list[Result]:
    """Every Machine's pool at once must fit the pooler's server connections."""
    settings = deployment.settings
    if settings is None or settings.database_url is None:
        return []
    machines = deployment.machines
    fly = deployment.fly or {}
    during = ""
    if _table(fly.get("deploy")).get("strategy") == "bluegreen":
        # The new Machines start before the old ones stop.
        machines *= 2
        during = " during a blue-green deploy"
    peak = settings.db_pool_max * machines
    budget = deployment.pool_budget
    detail = (
        f"AUTHSVC_DB_POOL_MAX={settings.db_pool_max} x {machines} Machines"
        f"{during} = {peak} connections, budget {budget}"
    )
    if peak > budget:
        return [
            _warn(
                "pool.size",
                f"{detail}: past the budget, calls queue at the pooler (session "
                "mode refuses them)",
                f"set AUTHSVC_DB_POOL_MAX={max(1, budget // machines)}, or raise "
                "Supabase's pool size and pass it as --pool-budget",
            )
        ]
    return [_pass("pool.size", detail)]


# Secrets and callers


def check_secrets(deployment: Deployment) -> list[Result]:
    environ = deployment.environ
    results = [_supabase_url(environ)]

    secret = environ.get("SUPABASE_JWT_SECRET", "")
    if secret and len(secret) < MIN_JWT_SECRET_CHARS:
        results.append(
            _fail(
                "secrets.jwt_secret",
                f"SUPABASE_JWT_SECRET (value hidden) is shorter than "
                f"{MIN_JWT_SECRET_CHARS} characters: not Supabase's JWT secret",
                "copy the legacy JWT secret from the dashboard (Settings, JWT Keys)",
            )
        )
    elif secret:
        results.append(
            _pass("secrets.jwt_secret", "SUPABASE_JWT_SECRET is set: HS256 verifies")
        )

    if deployment.fly is not None:
        results.append(_fly_env_secrets(deployment.fly))

    settings = deployment.settings
    if settings is not None:
        try:
            callers = load_callers(settings)
        except ConfigError as exc:
            results.append(
                _fail(
                    "secrets.callers",
                    str(exc),
                    "correct the callers setting named above; `authsvc caller-key "
                    "--name APP` prints a key and its entry",
                )
            )
        else:
            results.extend(_callers(settings, callers))
    return results


def _supabase_url(environ: Mapping[str, str]) -> Result:
    url = environ.get("SUPABASE_URL", "").strip()
    if url:
        return _pass("secrets.supabase_url", f"SUPABASE_URL={url}")
    if environ.get("AUTHSVC_ISSUER") and environ.get("AUTHSVC_JWKS_URL"):
        return _warn(
            "secrets.supabase_url",
            "SUPABASE_URL is not set; the issuer and JWKS URL are set by hand",
            "set SUPABASE_URL=https://<ref>.supabase.co unless tokens come from "
            "elsewhere",
        )
    return _fail(
        "secrets.supabase_url",
        "SUPABASE_URL is not set: authsvc cannot know the issuer or the keys",
        "fly secrets set SUPABASE_URL=https://<ref>.supabase.co",
    )


def _fly_env_secrets(fly: Mapping[str, Any]) -> Result:
    """fly.toml is committed: its [env] must hold no secret (values never shown)."""
    env = _table(fly.get("env"))
    found = sorted(
        str(name)
        for name, value in env.items()
        if name in _SECRET_VARIABLES or (isinstance(value, str) and _is_secret(value))
    )
    if found:
        return _fail(
            "secrets.fly_env",
            f"fly.toml [env] holds secrets: {', '.join(found)}",
            "move them to `fly secrets set NAME=...` and rotate them: they are in "
            "the git history",
        )
    return _pass("secrets.fly_env", "fly.toml [env] holds no secrets")


def _is_secret(value: str) -> bool:
    if _SECRET_VALUE.search(value):
        return True
    parts = _url_parts(value)
    return parts.scheme in ("postgres", "postgresql") and bool(parts.password)


def _callers(settings: Settings, callers: CallerSet) -> list[Result]:
    if not callers:
        results = [
            _warn(
                "secrets.callers",
                "no callers: AUTHSVC_ALLOW_UNAUTHENTICATED=true lets any app that "
                "reaches the port verify tokens and query as a user",
                "configure AUTHSVC_CALLERS (`authsvc caller-key`) and unset "
                "AUTHSVC_ALLOW_UNAUTHENTICATED",
            )
        ]
    else:
        names = ", ".join(caller.name for caller in callers.callers)
        results = [_pass("secrets.callers", f"{len(callers)} callers: {names}")]

    if settings.db_allow_admin and settings.database_url is not None:
        admins = [c.name for c in callers.callers if Scope.DATA_ADMIN in c.scopes]
        if not admins:
            results.append(
                _warn(
                    "secrets.admin",
                    "AUTHSVC_DB_ALLOW_ADMIN=true but no caller has data:admin",
                    "grant data:admin to the app that needs it, or unset "
                    "AUTHSVC_DB_ALLOW_ADMIN",
                )
            )
        else:
            results.append(
                _pass("secrets.admin", f"admin mode for: {', '.join(admins)}")
            )
    return results


# Keys


async def check_jwks(deployment: Deployment) -> list[Result]:
    """The JWKS answers with usable keys, or the HS256 secret stands in."""
    settings = deployment.settings
    if settings is None:
        return []
    results = [_keys(settings, await _fetch_key_count(settings))]

    issuer = settings.issuer
    if settings.issuer_override is not None and settings.supabase_url is not None:
        expected = settings.supabase_url + ISSUER_PATH
        if settings.issuer_override != expected:
            results.append(
                _warn(
                    "jwks.issuer",
                    f"AUTHSVC_ISSUER={issuer} differs from {expected}, the issuer "
                    "of SUPABASE_URL's tokens: those would be BAD_ISSUER",
                    "unset AUTHSVC_ISSUER unless your tokens carry that issuer",
                )
            )
            return results
    results.append(_pass("jwks.issuer", f"issuer {issuer}"))
    return results


async def _fetch_key_count(settings: Settings) -> int | str | None:
    """Usable keys in the JWKS, the reason it failed, or None when it is off."""
    url = settings.jwks_url
    if url is None:
        return None
    async with httpx.AsyncClient(
        timeout=settings.jwks_timeout_seconds,
        follow_redirects=False,
        headers={"user-agent": f"authsvc-check/{__version__}"},
    ) as http:
        keys = KeySet(
            url,
            http,
            ttl_seconds=settings.jwks_ttl_seconds,
            cooldown_seconds=0,
            timeout_seconds=settings.jwks_timeout_seconds,
        )
        try:
            await keys.refresh()
        except KeysUnavailable as exc:
            return exc.cause
        return keys.key_count


def _keys(settings: Settings, found: int | str | None) -> Result:
    url = settings.jwks_url
    if found is None:
        return _pass("jwks", "AUTHSVC_JWKS_URL=off; the HS256 secret verifies tokens")
    if isinstance(found, int) and found > 0:
        return _pass("jwks", f"{found} usable keys at {url}")

    hs256 = settings.jwt_secret is not None
    if found == 0:
        problem = f"the JWKS at {url} has no usable key"
        if hs256:
            # A project still on the legacy secret publishes an empty JWKS.
            return _pass("jwks", f"{problem}; SUPABASE_JWT_SECRET verifies HS256")
    else:
        problem = f"cannot fetch the JWKS at {url}: {found}"
    fix = (
        "check SUPABASE_URL (https://<ref>.supabase.co) and that this Machine can "
        "reach it; AUTHSVC_JWKS_URL overrides the address"
    )
    if hs256:
        return _warn("jwks", f"{problem}; only HS256 tokens would verify", fix)
    return _fail("jwks", f"{problem}: no token could verify", fix)


# Database


async def check_database(deployment: Deployment) -> list[Result]:
    """Reachable as the server would connect, with Supabase's roles and schemas."""
    settings = deployment.settings
    if settings is None or settings.database_url is None:
        return []
    dsn = settings.database_url.get_secret_value()
    try:
        async with asyncio.timeout(settings.db_connect_timeout_seconds):
            connection = await asyncpg.connect(
                _driver_dsn(dsn),
                statement_cache_size=0,
                timeout=settings.db_connect_timeout_seconds,
                server_settings={"application_name": CHECK_APPLICATION_NAME},
            )
    except Exception as exc:  # any failure to connect is the answer
        return [
            _fail(
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
            members = await connection.fetch(_ROLES_SQL, roles)
            schemas = await connection.fetch(
                "SELECT nspname FROM pg_namespace WHERE nspname = ANY($1::text[])",
                list(settings.db_schemas),
            )
    except Exception as exc:  # any failure to query is the answer
        return [
            _fail(
                "database.connect",
                f"connected to {redacted(dsn)}, but a catalog query failed: "
                f"{_describe(exc)}",
                "check that DATABASE_URL names a Postgres database authsvc may read",
            )
        ]
    finally:
        await _close(connection)

    return [
        _pass("database.connect", f"connected to {redacted(dsn)} as {login}"),
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
        return _pass("database.roles", f"{login} can switch to {', '.join(wanted)}")

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
        return _fail("database.roles", f"{detail}: requests would fail", fix)
    return _warn("database.roles", f"{detail} (unused by these settings)", fix)


def _schemas(settings: Settings, existing: set[str]) -> Result:
    missing = [name for name in settings.db_schemas if name not in existing]
    if missing:
        return _fail(
            "database.schemas",
            f"AUTHSVC_DB_SCHEMAS names schema(s) that do not exist: "
            f"{', '.join(missing)}",
            "create them, or remove them from AUTHSVC_DB_SCHEMAS",
        )
    return _pass("database.schemas", f"schemas exist: {', '.join(settings.db_schemas)}")


async def _close(connection: Any) -> None:
    try:
        await asyncio.wait_for(connection.close(), DB_CLOSE_TIMEOUT_SECONDS)
    except Exception:  # a close that fails leaves nothing to do but drop it
        connection.terminate()


# fly.toml


def check_fly(deployment: Deployment) -> list[Result]:
    """Signals, timeouts, checks and ports in fly.toml match the server."""
    settings, fly = deployment.settings, deployment.fly
    if settings is None or fly is None:
        return []
    grpc_port = int(settings.listen_addr.rpartition(":")[2])
    ops = settings.metrics_host_port
    ops_port = ops[1] if ops is not None else None
    results = [
        _kill_signal(fly),
        _kill_timeout(fly, settings.shutdown_grace_seconds),
        _checks(fly, grpc_port, ops_port),
    ]
    services = _services(fly, grpc_port)
    if services is not None:
        results.append(services)
    if "metrics" in fly:
        results.append(_metrics(fly["metrics"], ops_port))
    return results


def _kill_signal(fly: Mapping[str, Any]) -> Result:
    signal = str(fly.get("kill_signal", FLY_DEFAULT_KILL_SIGNAL)).upper()
    if signal not in _HANDLED_SIGNALS:
        return _fail(
            "fly.kill_signal",
            f"kill_signal = {signal}: authsvc drains only on SIGINT or SIGTERM",
            'set kill_signal = "SIGTERM" in fly.toml',
        )
    return _pass("fly.kill_signal", f"kill_signal = {signal}")


def _kill_timeout(fly: Mapping[str, Any], grace: float) -> Result:
    raw = fly.get("kill_timeout", FLY_DEFAULT_KILL_TIMEOUT_SECONDS)
    timeout = _seconds(raw)
    needed = grace + KILL_TIMEOUT_MARGIN_SECONDS
    if timeout is None:
        return _fail(
            "fly.kill_timeout",
            f"kill_timeout = {raw!r} is not a duration",
            f"set kill_timeout = {int(needed) + 1} (seconds) in fly.toml",
        )
    if timeout <= needed:
        return _fail(
            "fly.kill_timeout",
            f"kill_timeout is {timeout:g}s, not more than the {grace:g}s grace "
            f"(AUTHSVC_SHUTDOWN_GRACE_SECONDS) + {KILL_TIMEOUT_MARGIN_SECONDS:g}s: "
            "Fly would SIGKILL in-flight calls",
            f"set kill_timeout = {int(needed) + 1} in fly.toml, or lower "
            "AUTHSVC_SHUTDOWN_GRACE_SECONDS",
        )
    return _pass(
        "fly.kill_timeout", f"kill_timeout {timeout:g}s outlasts the {grace:g}s grace"
    )


def _checks(fly: Mapping[str, Any], grpc_port: int, ops_port: int | None) -> Result:
    """Machine checks must hit a port authsvc listens on, HTTP ones a health path."""
    checks = fly.get("checks", {})
    checks = checks if isinstance(checks, dict) else {}
    service_checks = [
        check
        for service in _tables(fly.get("services"))
        for kind in ("tcp_checks", "http_checks")
        for check in _tables(service.get(kind))
    ]
    service_checks += _tables(_table(fly.get("http_service")).get("checks"))
    if ops_port is not None:
        wanted = (
            f'[checks.ready] with type = "http", port = {ops_port}, '
            f'path = "{READINESS_PATH}"'
        )
        listens = f"gRPC on {grpc_port}, HTTP health on {ops_port} {READINESS_PATH}"
    else:
        wanted = f'[checks.grpc] with type = "tcp", port = {grpc_port}'
        listens = f"gRPC on {grpc_port} (AUTHSVC_METRICS_ADDR=off)"
    if not checks and not service_checks:
        return _warn(
            "fly.checks",
            "no health checks: `fly deploy` cannot tell a Machine that never "
            "becomes ready",
            f"add {wanted}",
        )

    wrong = []
    for name, check in checks.items():
        check = _table(check)
        kind, port, path = check.get("type"), check.get("port"), check.get("path")
        if kind == "tcp" and port in (grpc_port, ops_port):
            continue
        if kind == "http" and port == ops_port and path in _HEALTH_PATHS:
            continue
        wrong.append(f"checks.{name} ({kind} port {port} path {path})")
    if wrong:
        return _fail(
            "fly.checks",
            f"{', '.join(wrong)} would never pass: authsvc listens {listens}",
            f"use {wanted}",
        )

    names = ", ".join(f"checks.{name}" for name in checks) or "service checks"
    if not any(_table(check).get("type") == "http" for check in checks.values()):
        return _pass(
            "fly.checks",
            f"{names} (TCP sees only an open port; an HTTP check on "
            f"{READINESS_PATH} also waits for the keys)",
        )
    return _pass("fly.checks", names)


def _services(fly: Mapping[str, Any], grpc_port: int) -> Result | None:
    ports = [service.get("internal_port") for service in _tables(fly.get("services"))]
    if "http_service" in fly:
        ports.append(_table(fly["http_service"]).get("internal_port"))
    if not ports:
        return None
    wrong = [port for port in ports if port != grpc_port]
    if wrong:
        return _fail(
            "fly.services",
            f"internal_port {', '.join(map(str, wrong))} is not the gRPC port "
            f"{grpc_port}: Fly's proxy would reach nothing",
            f"set internal_port = {grpc_port} (AUTHSVC_LISTEN_ADDR's port)",
        )
    return _pass("fly.services", f"internal_port {grpc_port} is the gRPC port")


def _metrics(metrics: Any, ops_port: int | None) -> Result:
    for entry in _tables(metrics):
        port, path = entry.get("port"), entry.get("path", METRICS_PATH)
        if ops_port is None:
            return _fail(
                "fly.metrics",
                f"[metrics] scrapes port {port}, but AUTHSVC_METRICS_ADDR=off",
                "remove [metrics] from fly.toml, or set AUTHSVC_METRICS_ADDR",
            )
        if port != ops_port or path != METRICS_PATH:
            return _fail(
                "fly.metrics",
                f"[metrics] scrapes port {port} path {path}, but authsvc serves "
                f"port {ops_port} path {METRICS_PATH}",
                f'set port = {ops_port} and path = "{METRICS_PATH}" under [metrics]',
            )
    return _pass("fly.metrics", f"[metrics] scrapes port {ops_port} {METRICS_PATH}")


# Helpers


def _fly_env(fly: Mapping[str, Any] | None) -> dict[str, str]:
    """fly.toml's [env] as the Machine sees it: every value a string."""
    env = _table((fly or {}).get("env"))
    values = {}
    for name, value in env.items():
        if isinstance(value, bool):
            values[name] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            values[name] = str(value)
    return values


def _min_machines_running(fly: Mapping[str, Any] | None) -> int:
    fly = fly or {}
    services = [*_tables(fly.get("services")), _table(fly.get("http_service"))]
    counts = [service.get("min_machines_running", 0) for service in services]
    return max((count for count in counts if isinstance(count, int)), default=0)


def _table(value: Any) -> dict[str, Any]:
    """A TOML table, or an empty one where fly.toml has something else."""
    return value if isinstance(value, dict) else {}


def _tables(value: Any) -> list[dict[str, Any]]:
    """An array of tables (or one table) as a list; anything else is dropped."""
    items = value if isinstance(value, list) else [value]
    return [item for item in items if isinstance(item, dict)]


def _url_parts(url: str) -> SplitResult:
    try:
        return urlsplit(url.strip())
    except ValueError:
        return urlsplit("")


def _port(parts: SplitResult) -> int | None:
    try:
        return parts.port
    except ValueError:
        return None


def _seconds(value: object) -> float | None:
    """A fly.toml duration: an integer of seconds, or a Go duration like "1m30s"."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    parts = _DURATION_PART.findall(text)
    if "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)


def _describe(exc: BaseException) -> str:
    message = str(exc).strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
