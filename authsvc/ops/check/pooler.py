"""The `pooler.*` and `pool.size` rows: how DATABASE_URL reaches Postgres.

DATABASE_URL should go through Supabase's transaction pooler and belong to
the project that signs the tokens; DIRECT_URL, for migrations, should go
around the pooler; and every Machine's pool at once must fit the pooler's
server connections (`Deployment.pool_budget`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import SplitResult

from authsvc.data.pool import behind_transaction_pooler
from authsvc.ops.check.deployment import Deployment, table, tables, url_parts
from authsvc.ops.check.results import Result, fail, pass_, warn
from authsvc.workers import pool_share

# Supabase's shared pooler; the region row reads the project's region from it.
POOLER_HOST = re.compile(
    r"aws-\d+-(?P<region>[a-z]{2}-[a-z]+-\d+)\.pooler\.supabase\.com"
)
_DIRECT_HOST = re.compile(r"db\.(?P<ref>[a-z0-9]+)\.supabase\.co")
# Fly's preset sizes: shared-cpu-2x, performance-4x, ... (N CPUs).
_VM_SIZE = re.compile(r"(?:shared-cpu|performance)-(\d+)x")
_PROJECT_URL = re.compile(r"https://(?P<ref>[a-z0-9]+)\.supabase\.co")


def check_pooler(deployment: Deployment) -> list[Result]:
    """DATABASE_URL through the transaction pooler; DIRECT_URL around it."""
    environ = deployment.environ
    dsn = environ.get("DATABASE_URL", "").strip()
    if not dsn:
        return [
            pass_(
                "pooler",
                "DATABASE_URL is not set: DataService is off, no database checks",
            )
        ]
    parts = url_parts(dsn)
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
        return pass_(
            "pooler",
            f"transaction pooler at {where}; authsvc turns prepared statements "
            "off for it (statement_cache_size=0)",
        )
    if POOLER_HOST.fullmatch(host):
        return warn(
            "pooler",
            f"session pooler at {where}: each pooled connection holds one of the "
            "pooler's server connections for as long as it is open",
            "use port 6543 (transaction mode) in DATABASE_URL",
        )
    if _DIRECT_HOST.fullmatch(host):
        return warn(
            "pooler",
            f"direct connection to {where}: no pooler shares the database's "
            "connections, and the host is IPv6 only",
            "set DATABASE_URL to the transaction pooler URL (Connect dialog, "
            "port 6543) and keep this one as DIRECT_URL for migrations",
        )
    return warn(
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
    elif POOLER_HOST.fullmatch(host):
        _, dot, ref = (parts.username or "").partition(".")
        if not dot or not ref:
            return fail(
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
        return fail(
            "pooler.project",
            f"DATABASE_URL is project {ref} but SUPABASE_URL is project "
            f"{project['ref']}: users of one would query the other's data",
            "take both from the same project's dashboard",
        )
    return pass_("pooler.project", f"DATABASE_URL and SUPABASE_URL are project {ref}")


def _direct_url(dsn: str, direct: str) -> Result:
    if not direct:
        return warn(
            "pooler.direct_url",
            "DIRECT_URL is not set; authsvc does not use it, migration tools do",
            "set DIRECT_URL to the direct connection (db.<ref>.supabase.co:5432) or "
            "the session pooler (port 5432) where migrations run",
        )
    if behind_transaction_pooler(direct):
        same = " (the same URL as DATABASE_URL)" if direct == dsn else ""
        return fail(
            "pooler.direct_url",
            f"DIRECT_URL goes through a transaction pooler{same}: migrations need "
            "a session (prepared statements, advisory locks)",
            "set DIRECT_URL to the direct connection or the session pooler (port 5432)",
        )
    if direct == dsn:
        return warn(
            "pooler.direct_url",
            "DIRECT_URL is the same as DATABASE_URL, so authsvc's pool skips the "
            "transaction pooler",
            "set DATABASE_URL to the transaction pooler URL (port 6543)",
        )
    return pass_("pooler.direct_url", "DIRECT_URL is set and bypasses the pooler")


def check_pool_size(deployment: Deployment) -> list[Result]:
    """Every Machine's pool at once must fit the pooler's server connections."""
    settings = deployment.settings
    if settings is None or settings.database_url is None:
        return []
    machines = deployment.machines
    fly = deployment.fly or {}
    during = ""
    if table(fly.get("deploy")).get("strategy") == "bluegreen":
        # The new Machines start before the old ones stop.
        machines *= 2
        during = " during a blue-green deploy"
    workers, source = _machine_workers(settings.workers, fly)
    per_machine = pool_share(settings.db_pool_max, workers) * workers
    peak = per_machine * machines
    budget = deployment.pool_budget
    split = (
        f" ({workers} workers{source} x {pool_share(settings.db_pool_max, workers)})"
        if workers > 1
        else ""
    )
    detail = (
        f"AUTHSVC_DB_POOL_MAX={settings.db_pool_max}{split} x {machines} Machines"
        f"{during} = {peak} connections, budget {budget}"
    )
    if peak > budget:
        return [
            warn(
                "pool.size",
                f"{detail}: past the budget, calls queue at the pooler (session "
                "mode refuses them)",
                f"set AUTHSVC_DB_POOL_MAX={max(1, budget // machines)}"
                + (
                    f" (at least AUTHSVC_WORKERS={workers} gives each worker one)"
                    if workers > budget // machines
                    else ""
                )
                + ", or raise Supabase's pool size and pass it as --pool-budget",
            )
        ]
    return [pass_("pool.size", detail)]


def _machine_workers(configured: int, fly: Mapping[str, Any]) -> tuple[int, str]:
    """The worker count a Machine will run, and where that figure came from:
    AUTHSVC_WORKERS, else the CPUs of fly.toml's [[vm]], else this machine's."""
    if configured:
        return configured, ""
    for vm in tables(fly.get("vm")):
        cpus = vm.get("cpus")
        if isinstance(cpus, int) and cpus > 0:
            return cpus, ", the [[vm]] cpus"
        size = _VM_SIZE.fullmatch(str(vm.get("size", "")))
        if size is not None:
            return int(size.group(1)), f", one per CPU of {size.group(0)}"
    return len(os.sched_getaffinity(0)), ", one per CPU of the machine running this"


def _port(parts: SplitResult) -> int | None:
    try:
        return parts.port
    except ValueError:
        return None
