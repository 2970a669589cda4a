"""`make bench`: authsvc side by side with what apps would otherwise run.

Each server runs as its own process and each load generator as another, all
on loopback, in this order:

1. ceilings: raw `cryptography` ES256 verification on one core, and a bare
   gRPC echo server (bench/echo_server.py) with 1 and N processes;
2. the Node baseline (bench/node: Express + jsonwebtoken + jwks-rsa) with 1
   and 2 processes, loaded by wrk;
3. `authsvc serve` (with `--workers N` when the command has it): VerifyToken
   loaded by bench/h2client.py, the batch RPC when the server has one, and
   DataService Select; then, on the same server, the memory run: its RSS
   every 5 s through a long ES256 reuse load;
4. the ES256 reuse cell again on a second `authsvc serve` started with
   AUTHSVC_ACCESS_LOG=errors (an access event for failed calls only);
5. the same Selects from an app's own asyncpg pool (bench/direct_db.py).

Same keys (one JWKS on loopback), same tokens, same concurrency for every
target (see bench/workload.py for the traffic shapes).

Settings (environment): BENCH_SECONDS (5), BENCH_WARMUP (1), BENCH_RUNS (1;
the table shows medians), BENCH_CONCURRENCY (64), BENCH_USERS (2000),
BENCH_WORKERS (CPU count; used when `authsvc serve` has --workers),
BENCH_BATCH (64 tokens per batch call), BENCH_MEMORY_SECONDS (60, the
memory run after its 10 s warm-up), BENCH_ONLY (comma list of groups:
ceiling, node, authsvc, data, memory), BENCH_PYSPY (a py-spy binary: profile
authsvc during its ES256 (batch included) and data cells into bench/results/profile-*.txt).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from google.protobuf.message_factory import GetMessageClass

from authsvc.v1 import auth_pb2, data_pb2
from bench import database, loaders, probes, report, tokens
from bench.procs import RssSampler, Service, free_port, rss_bytes
from bench.tools import NODE_DIR, ensure_tools
from bench.workload import Workload
from tests.support.callers import ALL_SCOPES, callers_toml

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
VENV_BIN = Path(sys.executable).parent
VERIFY_PATH = "/authsvc.v1.AuthService/VerifyToken"
BATCH_METHOD = "VerifyTokens"
SELECT_PATH = "/authsvc.v1.DataService/Select"
ECHO_PATH = "/bench.Echo/Echo"
GROUPS = frozenset({"ceiling", "node", "authsvc", "data", "memory"})
DB_POOL_MAX = 10
H2_CONNECTIONS = 8
PAUSE_BETWEEN_RUNS_SECONDS = 0.5
# Long enough for every worker's verified-token cache to hold the whole pool.
MEMORY_WARMUP_SECONDS = 10.0
MEMORY_SAMPLE_EVERY_SECONDS = 5.0
# The issue's bar: RSS stays within 10% of the first sample after warm-up.
MEMORY_FLAT_WITHIN = 0.10
ACCESS_LOG_ERRORS_ENV = {"AUTHSVC_ACCESS_LOG": "errors"}

Measure = Callable[[int], Awaitable[loaders.RunResult]]


@dataclass(frozen=True)
class Options:
    seconds: float
    warmup: float
    runs: int
    concurrency: int
    users: int
    workers: int
    batch: int
    memory_seconds: float
    only: frozenset[str]
    pyspy: str | None

    @classmethod
    def from_environ(cls) -> Options:
        env = os.environ
        only = {g.strip() for g in env.get("BENCH_ONLY", "").split(",") if g.strip()}
        if only - GROUPS:
            raise SystemExit(f"BENCH_ONLY: unknown group(s) {sorted(only - GROUPS)}")
        return cls(
            seconds=float(env.get("BENCH_SECONDS", "5")),
            warmup=float(env.get("BENCH_WARMUP", "1")),
            runs=int(env.get("BENCH_RUNS", "1")),
            concurrency=int(env.get("BENCH_CONCURRENCY", "64")),
            users=int(env.get("BENCH_USERS", "2000")),
            workers=int(env.get("BENCH_WORKERS", str(os.cpu_count() or 1))),
            batch=int(env.get("BENCH_BATCH", "64")),
            memory_seconds=float(env.get("BENCH_MEMORY_SECONDS", "60")),
            only=frozenset(only or GROUPS),
            pyspy=env.get("BENCH_PYSPY") or None,
        )


class Bench:
    def __init__(self, options: Options, workload: Workload) -> None:
        self.o = options
        self.w = workload
        self.cells: list[report.Cell] = []
        self.rss: dict[str, tuple[int, int]] = {}
        self.key = "asvc_bench_" + secrets.token_urlsafe(24)
        self.workers_note = "authsvc serve has no --workers yet"
        self.authsvc_workers = 1
        if _serve_supports_workers():
            self.authsvc_workers = options.workers
            self.workers_note = f"--workers {options.workers}"
        self.metrics: dict[str, str] = {}

    # -- cells -----------------------------------------------------------------

    async def cell(
        self,
        spec: dict[str, Any],
        measure: Measure,
        check: Callable[[], Awaitable[str | None]] | None = None,
        runs: int | None = None,
    ) -> report.Cell:
        """Run one cell `runs` times (BENCH_RUNS unless given); a failure is
        recorded, never fatal."""
        print("bench: " + " ".join(str(v) for v in spec.values()), flush=True)
        cell: report.Cell = dict(spec)
        try:
            problem = await check() if check is not None else None
            if problem is not None:
                raise RuntimeError(problem)
            results = []
            for run in range(self.o.runs if runs is None else runs):
                results.append(await measure(run))
                await asyncio.sleep(PAUSE_BETWEEN_RUNS_SECONDS)
            cell.update(loaders.median_of(results))
        except Exception as exc:
            traceback.print_exc()
            cell["error"] = str(exc) or type(exc).__name__
        self.cells.append(cell)
        return cell

    def skip(self, spec: dict[str, Any], reason: str) -> None:
        print("bench: " + " ".join(str(v) for v in spec.values()) + f": {reason}")
        self.cells.append(spec | {"skipped": reason})

    def h2client(
        self,
        port: int,
        path: str,
        bodies: Callable[[int], Path],
        order: str,
        pid: int,
        *,
        warmup: float | None = None,
        seconds: float | None = None,
        on_mark: Callable[[str], None] | None = None,
    ) -> Measure:
        """bench/h2client.py; the cell's warm-up and length unless given."""
        streams = max(1, self.o.concurrency // H2_CONNECTIONS)

        async def measure(run: int) -> loaders.RunResult:
            return await loaders.marked_client(
                "bench.h2client",
                [
                    "--target", f"127.0.0.1:{port}", "--path", path,
                    "--bodies", str(bodies(run)), "--order", order,
                    "--header", f"authorization: Bearer {self.key}",
                    "--connections", str(H2_CONNECTIONS), "--streams", str(streams),
                ],
                warmup=self.o.warmup if warmup is None else warmup,
                seconds=self.o.seconds if seconds is None else seconds,
                server_pid=pid,
                on_mark=on_mark,
            )  # fmt: skip

        return measure

    def h2load(self, port: int, path: str, body: Path, pid: int) -> Measure:
        async def measure(run: int) -> loaders.RunResult:
            return await loaders.h2load(
                f"http://127.0.0.1:{port}{path}",
                body,
                [f"authorization: Bearer {self.key}"],
                connections=H2_CONNECTIONS,
                streams=max(1, self.o.concurrency // H2_CONNECTIONS),
                warmup=self.o.warmup,
                seconds=self.o.seconds,
                server_pid=pid,
            )

        return measure

    def check(
        self,
        port: int,
        path: str,
        bodies: Path,
        validate: Callable[[bytes], str | None] | None = None,
    ) -> Callable[[], Awaitable[str | None]]:
        return lambda: probes.grpc_check(port, path, bodies, self.key, validate)

    # -- ceilings ----------------------------------------------------------------

    async def ceilings(self) -> None:
        body = self.w.one_body("ES256")
        for processes in sorted({1, self.authsvc_workers}):
            port = free_port()
            service = Service(
                f"echo {processes}p",
                [sys.executable, "-m", "bench.echo_server", "--port", str(port),
                 "--workers", str(processes)],
                dict(os.environ),
                RESULTS_DIR / f"echo-{processes}.log",
            )  # fmt: skip
            await service.start(
                lambda p=port: probes.grpc_ready(p, ECHO_PATH, body, self.key)
            )
            spec = {"group": "ceiling", "target": "echo", "processes": processes,
                    "label": f"bare echo {processes}p"}  # fmt: skip
            try:
                await self.cell(
                    spec | {"loader": "h2load", "note": "one body"},
                    self.h2load(port, ECHO_PATH, body, service.pid),
                )
                await self.cell(
                    spec | {"loader": "h2client", "note": "ES256 reuse bodies"},
                    self.h2client(
                        port,
                        ECHO_PATH,
                        lambda run: self.w.verify_bodies("ES256", "reuse", run),
                        "random",
                        service.pid,
                    ),
                )
            finally:
                await service.stop()

    # -- the Node baseline ---------------------------------------------------------

    async def node(self, jwks_url: str) -> None:
        for processes in (1, 2):
            port = free_port()
            env = dict(os.environ) | {
                "PORT": str(port),
                "WORKERS": str(processes),
                "JWKS_URI": jwks_url,
                "ISSUER": tokens.ISSUER,
                "AUDIENCE": "authenticated",
                "HS256_SECRET": tokens.HS256_SECRET,
            }
            service = Service(
                f"node {processes}p",
                ["node", str(NODE_DIR / "server.js")],
                env,
                RESULTS_DIR / f"node-{processes}.log",
            )
            await service.start(lambda p=port: probes.http_ready(p))
            before = rss_bytes(service.pid)
            try:
                for alg in tokens.ALGORITHMS:
                    for shape in ("distinct", "reuse"):
                        await self.cell(
                            {"group": "verify", "target": "node", "processes": processes,
                             "alg": alg, "shape": shape, "loader": "wrk"},
                            self._wrk(f"http://127.0.0.1:{port}/verify", alg, shape, service.pid),
                            lambda a=alg, p=port: probes.node_check(p, self.w.pool[a][0]),
                        )  # fmt: skip
                self.rss[f"node {processes}p"] = (before, rss_bytes(service.pid))
            finally:
                await service.stop()

    def _wrk(self, url: str, alg: str, shape: str, pid: int) -> Measure:
        async def measure(run: int) -> loaders.RunResult:
            return await loaders.wrk(
                url,
                self.w.token_lines(alg, shape, run, "warmup", self.o.warmup),
                self.w.token_lines(alg, shape, run, "measure", self.o.warmup),
                "random" if shape == "reuse" else "sequential",
                connections=self.o.concurrency,
                warmup=self.o.warmup,
                seconds=self.o.seconds,
                server_pid=pid,
            )

        return measure

    # -- authsvc -------------------------------------------------------------------

    async def authsvc(
        self, jwks_url: str, bench_db: database.BenchDatabase | None
    ) -> None:
        """The default server's cells, then the access-log variant's."""
        service, port, ops_port = await self._start_authsvc(jwks_url, bench_db)
        before = rss_bytes(service.pid)
        try:
            if "authsvc" in self.o.only:
                await self._verify(port, service.pid)
            if bench_db is not None:
                await self._select(port, service.pid, bench_db)
            if {"authsvc", "data"} & self.o.only:
                self.rss["authsvc"] = (before, rss_bytes(service.pid))
            # Read before the memory run, so the cache figures are the cells'.
            self.metrics = await probes.authsvc_metrics(ops_port)
            if "memory" in self.o.only:
                await self._memory(port, service.pid)
        finally:
            await service.stop()

        if "authsvc" in self.o.only:
            await self._access_log_errors(jwks_url, bench_db)

    async def _start_authsvc(
        self,
        jwks_url: str,
        bench_db: database.BenchDatabase | None,
        extra_env: Mapping[str, str] | None = None,
        name: str = "authsvc",
    ) -> tuple[Service, int, int]:
        """A ready `authsvc serve`, its gRPC port and its ops port."""
        port, ops_port = free_port(), free_port()
        command = [str(VENV_BIN / "authsvc"), "serve"]
        if self.authsvc_workers > 1:
            command += ["--workers", str(self.authsvc_workers)]
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AUTHSVC_", "SUPABASE_"))
            and k not in ("DATABASE_URL", "DIRECT_URL")
        } | {
            "AUTHSVC_LISTEN_ADDR": f"127.0.0.1:{port}",
            "AUTHSVC_METRICS_ADDR": f"127.0.0.1:{ops_port}",
            "AUTHSVC_ISSUER": tokens.ISSUER,
            "AUTHSVC_JWKS_URL": jwks_url,
            "SUPABASE_JWT_SECRET": tokens.HS256_SECRET,
            "AUTHSVC_CALLERS": callers_toml(
                ("bench", self.key, ALL_SCOPES),
                max_concurrent="100000",
                requests_per_second="0",
            ),
        }
        if bench_db is not None:
            env |= {
                "DATABASE_URL": bench_db.dsn + "?pgbouncer=true",
                "AUTHSVC_DB_ALLOW_ADMIN": "true",
                "AUTHSVC_DB_POOL_MAX": str(DB_POOL_MAX),
            }
        env |= extra_env or {}
        service = Service(name, command, env, RESULTS_DIR / f"{name}.log")
        await service.start(lambda: probes.http_ready(ops_port, "/readyz"))
        return service, port, ops_port

    async def _verify(self, port: int, pid: int) -> None:
        for alg in tokens.ALGORITHMS:
            one = self.w.one_body(alg)
            for shape in ("distinct", "reuse"):
                profile = (
                    self._profile(pid, f"{alg}-{shape}") if alg == "ES256" else None
                )
                await self.cell(
                    {"group": "verify", "target": "authsvc",
                     "processes": self.authsvc_workers, "alg": alg, "shape": shape,
                     "loader": "h2client"},
                    self.h2client(
                        port, VERIFY_PATH,
                        lambda run, a=alg, s=shape: self.w.verify_bodies(a, s, run),
                        "random" if shape == "reuse" else "sequential", pid,
                    ),
                    self.check(port, VERIFY_PATH, one),
                )  # fmt: skip
                if profile is not None:
                    await profile
            await self._batch(port, pid, alg)

        one = self.w.one_body("ES256")
        await self.cell(
            {"group": "ceiling", "target": "authsvc", "processes": self.authsvc_workers,
             "label": f"authsvc ES256 {self.authsvc_workers}p", "loader": "h2load",
             "note": "one token, every call"},
            self.h2load(port, VERIFY_PATH, one, pid),
            self.check(port, VERIFY_PATH, one),
        )  # fmt: skip

    async def _access_log_errors(
        self, jwks_url: str, bench_db: database.BenchDatabase | None
    ) -> None:
        """ES256 reuse on a server that logs only failed calls, for the row
        next to the default's; everything else as for the default server."""
        spec = {"group": "verify", "target": "authsvc", "processes": self.authsvc_workers,
                "alg": "ES256", "shape": "reuse", "loader": "h2client",
                "access_log": "errors"}  # fmt: skip
        try:
            service, port, _ = await self._start_authsvc(
                jwks_url, bench_db, ACCESS_LOG_ERRORS_ENV, "authsvc-access-log-errors"
            )
        except RuntimeError as exc:
            self.cells.append(spec | {"error": str(exc)})
            return
        try:
            await self.cell(
                spec,
                self.h2client(
                    port,
                    VERIFY_PATH,
                    lambda run: self.w.verify_bodies("ES256", "reuse", run),
                    "random",
                    service.pid,
                ),
                self.check(port, VERIFY_PATH, self.w.one_body("ES256")),
            )
        finally:
            await service.stop()

    async def _memory(self, port: int, pid: int) -> None:
        """RSS of the supervisor and its workers through one long ES256 reuse
        run, sampled every few seconds after a warm-up."""
        seconds = self.o.memory_seconds
        sampler = RssSampler(pid, MEMORY_SAMPLE_EVERY_SECONDS, seconds)
        spec = {"group": "memory", "target": "authsvc", "processes": self.authsvc_workers,
                "alg": "ES256", "shape": "reuse", "loader": "h2client",
                "warmup": MEMORY_WARMUP_SECONDS, "seconds": seconds,
                "sample_every": MEMORY_SAMPLE_EVERY_SECONDS}  # fmt: skip
        try:
            cell = await self.cell(
                spec,
                self.h2client(
                    port,
                    VERIFY_PATH,
                    lambda run: self.w.verify_bodies("ES256", "reuse", run),
                    "random",
                    pid,
                    warmup=MEMORY_WARMUP_SECONDS,
                    seconds=seconds,
                    on_mark=sampler.on_mark,
                ),
                self.check(port, VERIFY_PATH, self.w.one_body("ES256")),
                runs=1,
            )
        finally:
            sampler.stop()
        if not cell.get("error"):
            cell.update(_rss_summary(sampler.samples))

    async def _batch(self, port: int, pid: int, alg: str) -> None:
        spec = {"group": "verify", "target": "authsvc", "processes": self.authsvc_workers,
                "alg": alg, "shape": "batch", "loader": "h2client"}  # fmt: skip
        service = auth_pb2.DESCRIPTOR.services_by_name["AuthService"]
        method = service.methods_by_name.get(BATCH_METHOD)
        path = f"/authsvc.v1.AuthService/{BATCH_METHOD}"
        if method is None:
            self.skip(spec, f"not implemented (the proto has no {BATCH_METHOD})")
            return
        if await probes.grpc_call(port, path, b"", self.key) == "UNIMPLEMENTED":
            self.skip(spec, f"not implemented (the server has no {BATCH_METHOD})")
            return
        repeated = [f for f in method.input_type.fields if f.is_repeated]
        if not repeated:
            self.skip(spec, f"{method.input_type.name} has no repeated field")
            return
        field, request_class = repeated[0], GetMessageClass(method.input_type)

        def message(batch: list[str]) -> bytes:
            request = request_class()
            if field.type == field.TYPE_STRING:
                getattr(request, field.name).extend(batch)
            else:
                getattr(request, field.name).extend(
                    auth_pb2.VerifyTokenRequest(token=t) for t in batch
                )
            return bytes(request.SerializeToString())

        size = self.o.batch
        response_class = GetMessageClass(method.output_type)
        profile = self._profile(pid, f"{alg}-batch") if alg == "ES256" else None
        cell = await self.cell(
            spec | {"batch": size},
            self.h2client(
                port,
                path,
                lambda run: self.w.batch_bodies(alg, run, size, message),
                "sequential",
                pid,
            ),
            self.check(
                port,
                path,
                self.w.batch_bodies(alg, 0, size, message),
                lambda answer: _batch_refusal(response_class.FromString(answer)),
            ),
        )
        if profile is not None:
            await profile
        # Per token, not per call (latencies stay per call).
        if cell.get("requests_per_second"):
            cell["calls_per_second"] = cell["requests_per_second"]
            cell["requests_per_second"] *= size
            if cell.get("cpu_seconds_per_1k"):
                cell["cpu_seconds_per_1k"] /= size

    async def _select(
        self, port: int, pid: int, bench_db: database.BenchDatabase
    ) -> None:
        for query in ("pk", "filtered"):
            for mode in ("admin", "user"):
                bodies = self.w.select_bodies(mode, query, bench_db)
                profile = self._profile(pid, f"select-{query}-{mode}")
                await self.cell(
                    {"group": "data", "target": "authsvc",
                     "processes": self.authsvc_workers, "alg": mode, "shape": query,
                     "loader": "h2client"},
                    self.h2client(port, SELECT_PATH, lambda run, b=bodies: b, "random", pid),
                    self.check(port, SELECT_PATH, bodies, _empty_rows),
                )  # fmt: skip
                if profile is not None:
                    await profile

    # -- the app's own pool ----------------------------------------------------------

    async def direct(self, bench_db: database.BenchDatabase) -> None:
        for query in ("pk", "filtered"):
            work = self.w.direct_work(query, bench_db)
            for mode in ("admin", "user"):
                await self.cell(
                    {"group": "data", "target": "direct", "processes": 1,
                     "alg": mode, "shape": query, "loader": "asyncpg"},
                    self._direct(bench_db, mode, query, work),
                )  # fmt: skip

    def _direct(
        self, bench_db: database.BenchDatabase, mode: str, query: str, work: Path
    ) -> Measure:
        async def measure(run: int) -> loaders.RunResult:
            result = await loaders.marked_client(
                "bench.direct_db",
                [
                    "--dsn", bench_db.dsn, "--mode", mode, "--query", query,
                    "--work", str(work), "--table", database.TABLE,
                    "--columns", ",".join(database.COLUMNS),
                    "--limit", str(database.FILTERED_ROWS),
                    "--pool-max", str(DB_POOL_MAX * self.authsvc_workers),
                    "--concurrency", str(self.o.concurrency),
                ],
                warmup=self.o.warmup,
                seconds=self.o.seconds,
                server_pid=None,
            )  # fmt: skip
            # No service in this path: the app's own CPU is the cost to compare.
            result.server_cpu_seconds = result.client_cpu_seconds
            return result

        return measure

    def _profile(self, pid: int, name: str) -> asyncio.Task[None] | None:
        """py-spy over the measured window of the next cell (BENCH_PYSPY)."""
        if self.o.pyspy is None:
            return None
        output = RESULTS_DIR / f"profile-{name}.txt"
        pyspy = self.o.pyspy

        async def record() -> None:
            await asyncio.sleep(loaders.START_DELAY_SECONDS + self.o.warmup)
            process = await asyncio.create_subprocess_exec(
                pyspy, "record", "--pid", str(pid), "--subprocesses",
                "--duration", str(round(self.o.seconds)), "--format", "raw",
                "--output", str(output), "--nonblocking",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            await process.wait()

        return asyncio.ensure_future(record())

    # -- the whole run -------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        started = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        self.load_before = os.getloadavg()
        crypto_rate = _crypto_es256_per_core()
        self.w.sign()
        jwks = await self.w.keys.serve()
        bench_db = None
        try:
            if "data" in self.o.only:
                bench_db = await database.create(self.w.data_users)
            if "ceiling" in self.o.only:
                await self.ceilings()
            if "node" in self.o.only:
                await self.node(jwks.url)
            if {"authsvc", "data", "memory"} & self.o.only:
                await self.authsvc(jwks.url, bench_db)
            if bench_db is not None:
                await self.direct(bench_db)
        finally:
            if bench_db is not None:
                await bench_db.close()
            await jwks.close()
        return {
            "meta": self._meta(started, crypto_rate, jwks.hits),
            "cells": self.cells,
        }

    def _meta(
        self, started: datetime.datetime, crypto_rate: float, jwks_hits: int
    ) -> dict[str, Any]:
        return {
            "started": started.isoformat(),
            "machine": f"{platform.node()}, {os.cpu_count()} CPUs, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}",
            "seconds": self.o.seconds,
            "warmup": self.o.warmup,
            "runs": self.o.runs,
            "concurrency": self.o.concurrency,
            "users": self.o.users,
            "batch": self.o.batch,
            "memory_seconds": self.o.memory_seconds,
            "authsvc_workers": self.authsvc_workers,
            "workers_note": self.workers_note,
            "pyjwt": _version("pyjwt"),
            "cryptography": _version("cryptography"),
            "grpcio": _version("grpcio"),
            "node": _node_version(),
            "cryptography_es256_verify_per_core": crypto_rate,
            "rss": self.rss,
            "authsvc_metrics": self.metrics,
            "jwks_fetches": jwks_hits,
            # Other work on the machine skews every figure; compare runs made
            # on a quiet machine.
            "loadavg_before": self.load_before,
            "loadavg_after": os.getloadavg(),
        }


def _rss_summary(samples: list[tuple[float, int]]) -> dict[str, Any]:
    """First, last, min and max RSS of a run, and whether it stayed flat."""
    if not samples:
        return {"rss_samples": [], "rss_flat": None}
    values = [rss for _, rss in samples]
    first = values[0]
    return {
        "rss_samples": [{"second": s, "bytes": rss} for s, rss in samples],
        "rss_first": first,
        "rss_last": values[-1],
        "rss_min": min(values),
        "rss_max": max(values),
        "rss_last_over_first": values[-1] / first,
        "rss_max_over_first": max(values) / first,
        "rss_flat_within": MEMORY_FLAT_WITHIN,
        "rss_flat": all(abs(v / first - 1) <= MEMORY_FLAT_WITHIN for v in values),
    }


def _batch_refusal(response: Any) -> str | None:
    """Why a batch answer is not all-valid: a result that holds an error."""
    for field in response.DESCRIPTOR.fields:
        if not field.is_repeated or field.message_type is None:
            continue
        for result in getattr(response, field.name):
            for oneof in result.DESCRIPTOR.oneofs:
                if result.WhichOneof(oneof.name) == "error":
                    return f"the batch refused a bench token: {result.error}"
    return None


def _empty_rows(answer: bytes) -> str | None:
    rows = data_pb2.RowsResponse.FromString(answer).rows_json
    return (
        "the Select returned no rows: bench data and query disagree"
        if rows == "[]"
        else None
    )


def _crypto_es256_per_core() -> float:
    """Raw `cryptography` ES256 verifications per second on one core."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    public, algorithm = key.public_key(), ec.ECDSA(hashes.SHA256())
    messages = [os.urandom(300) for _ in range(200)]
    signed = [(m, key.sign(m, algorithm)) for m in messages]
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < 1.0:
        for message, signature in signed:
            public.verify(signature, message, algorithm)
        done += len(signed)
    return done / (time.perf_counter() - start)


def _serve_supports_workers() -> bool:
    out = subprocess.run(  # noqa: S603 (our own command)
        [str(VENV_BIN / "authsvc"), "serve", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    return "--workers" in out.stdout


def _node_version() -> str:
    return subprocess.run(
        ["node", "--version"],  # noqa: S607 (the Node on PATH is the baseline's)
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "-"


def main() -> None:
    options = Options.from_environ()
    ensure_tools()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cell_seconds = options.warmup + options.seconds + loaders.START_DELAY_SECONDS + 1
    with tempfile.TemporaryDirectory(prefix="authsvc-bench-") as directory:
        workload = Workload(
            Path(directory),
            runs=options.runs,
            users=options.users,
            cell_seconds=cell_seconds,
        )
        results = asyncio.run(Bench(options, workload).run())
    results["meta"]["wall_seconds"] = round(time.perf_counter() - started, 1)
    path = report.write(results, RESULTS_DIR)
    print()
    print(report.render(results))
    print(
        f"\nresults: {path.relative_to(REPO)} ({results['meta']['wall_seconds']:g} s)"
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
