"""What an app does without authsvc: the same Select, straight from its own pool.

An asyncpg pool of the same size and options as authsvc's (prepared
statements off behind PgBouncer, no reset query), with CONCURRENCY tasks in a
closed loop. Each request is the transaction authsvc runs: READ ONLY, the
role and JWT claims set transaction-locally with `set_config(..., true)`, and
one statement whose rows Postgres returns as JSON text.

Same wall-clock protocol and output as bench/h2client.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from typing import Any

import asyncpg

from authsvc.data.runner import SETUP_SQL  # the very settings authsvc makes
from bench.h2client import percentile, say

STATEMENT_TIMEOUT_MS = "10000"
ADMIN_ROLE = "service_role"
USER_ROLE = "authenticated"


def statement(query: str, table: str, columns: list[str], limit: int) -> str:
    listed = ", ".join(columns)
    where = (
        "id = $1" if query == "pk" else f"owner = $1::uuid ORDER BY id LIMIT {limit}"
    )
    # Names come from the harness, never from input.
    return (
        "SELECT coalesce(json_agg(r), '[]')::text "  # noqa: S608
        f"FROM (SELECT {listed} FROM public.{table} WHERE {where}) AS r"
    )


async def _no_reset(connection: Any) -> None:
    """Nothing to reset: every setting is transaction-local."""


def _load_work(path: str) -> list[dict[str, Any]]:
    with open(path) as file:
        work: list[dict[str, Any]] = json.load(file)
    return work


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    work = _load_work(args.work)
    sql = statement(args.query, args.table, args.columns.split(","), args.limit)
    pool = await asyncpg.create_pool(
        args.dsn,
        min_size=args.pool_max,
        max_size=args.pool_max,
        statement_cache_size=0,
        reset=_no_reset,
    )
    offset = time.time() - time.perf_counter()
    low = args.start_at + args.warmup - offset
    high = low + args.duration
    latencies: list[float] = []
    errors = 0

    async def one() -> None:
        item = random.choice(work)  # noqa: S311 (load shape, not secrets)
        if args.mode == "admin":
            settings = (ADMIN_ROLE, json.dumps({"role": ADMIN_ROLE}), "", ADMIN_ROLE)
        else:
            settings = (USER_ROLE, item["claims"], item["owner"], USER_ROLE)
        param = item["id"] if args.query == "pk" else item["owner"]
        async with pool.acquire() as connection, connection.transaction(readonly=True):
            await connection.execute(SETUP_SQL, *settings, STATEMENT_TIMEOUT_MS)
            rows = await connection.fetchval(sql, param)
        if rows == "[]":
            raise LookupError("no rows: the bench data and the query disagree")

    async def worker() -> None:
        nonlocal errors
        while (started := time.perf_counter()) < high:
            try:
                await one()
                ok = True
            except (asyncpg.PostgresError, LookupError, OSError):
                ok = False
            now = time.perf_counter()
            if low <= now <= high:
                if ok:
                    latencies.append(now - started)
                else:
                    errors += 1

    marks: list[float] = []
    loop = asyncio.get_running_loop()
    for at in (low, high):
        loop.call_later(
            max(0.0, at - time.perf_counter()),
            lambda: marks.append(time.process_time()),
        )
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    await pool.close()
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "requests_per_second": len(latencies) / args.duration,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        # CPU time of this process (the app's side) inside the window.
        "client_cpu_seconds": marks[1] - marks[0] if len(marks) == 2 else None,
    }


async def _marks(args: argparse.Namespace) -> None:
    for mark, at in (
        ("measure-start", args.start_at + args.warmup),
        ("measure-end", args.start_at + args.warmup + args.duration),
    ):
        await asyncio.sleep(max(0.0, at - time.time()))
        say(mark)


async def _main(args: argparse.Namespace) -> None:
    result, _ = await asyncio.gather(_run(args), _marks(args))
    say(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description="direct asyncpg Select load")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--mode", choices=("admin", "user"), required=True)
    parser.add_argument("--query", choices=("pk", "filtered"), required=True)
    parser.add_argument("--work", required=True, help="JSON list of id/owner/claims")
    parser.add_argument("--table", required=True)
    parser.add_argument("--columns", required=True, help="comma-separated")
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--pool-max", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--start-at", type=float, default=0.0)
    args = parser.parse_args()
    if not args.start_at:
        args.start_at = time.time() + 1.0
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
