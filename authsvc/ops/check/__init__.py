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

One module per group of rows: `deployment` (the `config` and `fly.toml`
rows), `region`, `pooler` (`pooler.*`, `pool.size`), `secrets`, `jwks`,
`database`, `fly`; `results` holds the row type and its rendering.

Assumption for the pool-size check: Supabase's pooler opens at most "Pool
Size" server connections per database user and database, 15 by default on
the Nano to Small computes (the dashboard's Database settings show the real
figure; pass it as `--pool-budget`). Other apps using the same user share it.
"""

from __future__ import annotations

import asyncio

from authsvc.ops.check.database import check_database
from authsvc.ops.check.deployment import (
    DEFAULT_MACHINES,
    DEFAULT_POOL_BUDGET,
    Deployment,
    check_config,
    load_deployment,
)
from authsvc.ops.check.fly import check_fly, check_listen
from authsvc.ops.check.jwks import check_jwks
from authsvc.ops.check.pooler import check_pool_size, check_pooler
from authsvc.ops.check.region import check_region
from authsvc.ops.check.results import (
    Result,
    Status,
    failed,
    render_json,
    render_table,
)
from authsvc.ops.check.secrets import check_secrets

__all__ = [
    "DEFAULT_MACHINES",
    "DEFAULT_POOL_BUDGET",
    "Deployment",
    "Result",
    "Status",
    "check_config",
    "check_fly",
    "check_listen",
    "check_pool_size",
    "check_pooler",
    "check_region",
    "check_secrets",
    "failed",
    "load_deployment",
    "render_json",
    "render_table",
    "run_checks",
]


async def run_checks(deployment: Deployment) -> list[Result]:
    """Every check, in a fixed order; the two that do I/O run concurrently."""
    results = [
        *check_config(deployment),
        *check_listen(deployment),
        *check_region(deployment),
        *check_pooler(deployment),
        *check_pool_size(deployment),
        *check_secrets(deployment),
    ]
    keys, database = await asyncio.gather(
        check_jwks(deployment), check_database(deployment)
    )
    return [*results, *keys, *database, *check_fly(deployment)]
