"""The load generators, each run as its own process, and what one run measured.

- wrk (HTTP/1.1, the Node baseline): tokens rotated per request by
  node/tokens.lua; a separate warm-up run first.
- h2load (HTTP/2, gRPC with one fixed body): the echo ceiling and a
  same-token VerifyToken cross-check; a separate warm-up run first, latency
  percentiles from its per-request log.
- bench/h2client.py (gRPC with a body per call) and bench/direct_db.py
  (asyncpg): they warm up and measure in one process and print markers at the
  window's edges.

Every runner reads the server's CPU time (process and descendants) right
before and right after the measured window.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.procs import cpu_seconds

BENCH_DIR = Path(__file__).resolve().parent
LUA_SCRIPT = BENCH_DIR / "node" / "tokens.lua"
START_DELAY_SECONDS = 1.0
EXTRA_WAIT_SECONDS = 30.0


@dataclass
class RunResult:
    """One measured window of one cell."""

    requests: int
    errors: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    server_cpu_seconds: float | None
    client_cpu_seconds: float | None = None
    wrapped: int = 0

    @property
    def cpu_per_1k(self) -> float | None:
        if self.server_cpu_seconds is None or not self.requests:
            return None
        return self.server_cpu_seconds / self.requests * 1000


def median_of(runs: list[RunResult]) -> dict[str, Any]:
    """Each figure's median over the runs, plus the runs themselves."""

    def middle(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    return {
        "requests_per_second": middle([r.requests_per_second for r in runs]),
        "p50_ms": middle([r.p50_ms for r in runs]),
        "p99_ms": middle([r.p99_ms for r in runs]),
        "cpu_seconds_per_1k": middle([r.cpu_per_1k for r in runs]),
        "errors": sum(r.errors for r in runs),
        "wrapped": sum(r.wrapped for r in runs),
        "runs": [asdict(r) | {"cpu_seconds_per_1k": r.cpu_per_1k} for r in runs],
    }


async def _output(*command: str, timeout: float) -> str:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RuntimeError(f"{command[0]} did not finish in {timeout:g} s") from None
    if process.returncode != 0:
        said = (err.decode() or out.decode())[-500:]
        raise RuntimeError(f"{command[0]} exited with {process.returncode}: {said}")
    return out.decode()


async def wrk(
    url: str,
    warmup_tokens: Path,
    tokens: Path,
    order: str,
    *,
    connections: int,
    warmup: float,
    seconds: float,
    server_pid: int,
) -> RunResult:
    def command(path: Path, duration: float) -> list[str]:
        return [
            "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "5s",
            "-s", str(LUA_SCRIPT), url, "--", str(path), order, "1",
        ]  # fmt: skip

    await _output(*command(warmup_tokens, warmup), timeout=warmup + EXTRA_WAIT_SECONDS)
    before = cpu_seconds(server_pid)
    out = await _output(*command(tokens, seconds), timeout=seconds + EXTRA_WAIT_SECONDS)
    cpu = cpu_seconds(server_pid) - before
    line = next(x for x in out.splitlines() if x.startswith("{"))
    found = json.loads(line)
    errors = found["status_errors"] + found["socket_errors"]
    ok = found["requests"] - found["status_errors"]
    duration = found["duration_us"] / 1e6
    return RunResult(
        requests=ok,
        errors=errors,
        requests_per_second=ok / duration,
        p50_ms=found["p50_us"] / 1000,
        p99_ms=found["p99_us"] / 1000,
        server_cpu_seconds=cpu,
        wrapped=found["wrapped"],
    )


_H2LOAD_DONE = re.compile(
    r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded"
)


async def h2load(
    url: str,
    body: Path,
    headers: list[str],
    *,
    connections: int,
    streams: int,
    warmup: float,
    seconds: float,
    server_pid: int,
) -> RunResult:
    def command(duration: float, log: Path | None) -> list[str]:
        args = [
            "h2load",
            "-t1",
            f"-c{connections}",
            f"-m{streams}",
            f"-D{round(duration * 1000)}ms",
        ]
        args += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
        for header in headers:
            args += ["-H", header]
        if log is not None:
            args += ["--log-file", str(log)]
        return [*args, "-d", str(body), url]

    await _output(*command(warmup, None), timeout=warmup + EXTRA_WAIT_SECONDS)
    with tempfile.TemporaryDirectory(prefix="authsvc-bench-h2load-") as directory:
        log = Path(directory) / "requests.tsv"
        before = cpu_seconds(server_pid)
        out = await _output(
            *command(seconds, log), timeout=seconds + EXTRA_WAIT_SECONDS
        )
        cpu = cpu_seconds(server_pid) - before
        latencies = sorted(
            int(line.split("\t")[2]) / 1000
            for line in log.read_text().splitlines()
            if line.split("\t")[1] == "200"
        )
    match = _H2LOAD_DONE.search(out)
    if match is None:
        raise RuntimeError(f"cannot read h2load's summary: {out[-500:]}")
    total, succeeded = int(match.group(1)), int(match.group(2))
    return RunResult(
        requests=succeeded,
        errors=total - succeeded,
        requests_per_second=succeeded / seconds,
        p50_ms=_percentile(latencies, 0.50),
        p99_ms=_percentile(latencies, 0.99),
        server_cpu_seconds=cpu,
    )


async def marked_client(
    module: str,
    args: list[str],
    *,
    warmup: float,
    seconds: float,
    server_pid: int | None,
    on_mark: Callable[[str], None] | None = None,
) -> RunResult:
    """Run bench.h2client or bench.direct_db; read the server's CPU at its marks.

    `on_mark`, when given, is also called with each mark as it arrives.
    """
    start_at = time.time() + START_DELAY_SECONDS
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args,
        "--warmup", str(warmup), "--duration", str(seconds), "--start-at", str(start_at),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=BENCH_DIR.parent,
    )  # fmt: skip
    assert process.stdout is not None  # noqa: S101 (piped above)
    deadline = warmup + seconds + START_DELAY_SECONDS + EXTRA_WAIT_SECONDS
    readings: list[float] = []
    result: dict[str, Any] | None = None
    try:
        async with asyncio.timeout(deadline):
            async for raw in process.stdout:
                line = raw.decode().strip()
                if line in ("measure-start", "measure-end"):
                    if server_pid is not None:
                        readings.append(cpu_seconds(server_pid))
                    if on_mark is not None:
                        on_mark(line)
                elif line.startswith("{"):
                    result = json.loads(line)
            await process.wait()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RuntimeError(f"{module} did not finish in {deadline:g} s") from None
    if process.returncode != 0 or result is None:
        assert process.stderr is not None  # noqa: S101 (piped above)
        err = (await process.stderr.read()).decode()
        raise RuntimeError(f"{module} failed ({process.returncode}): {err[-800:]}")
    server_cpu = readings[1] - readings[0] if len(readings) == 2 else None
    return RunResult(
        requests=result["requests"],
        errors=result["errors"],
        requests_per_second=result["requests_per_second"],
        p50_ms=result["p50_ms"],
        p99_ms=result["p99_ms"],
        server_cpu_seconds=server_cpu,
        client_cpu_seconds=result["client_cpu_seconds"],
        wrapped=result.get("wrapped", 0),
    )


def _percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[
        min(len(sorted_values) - 1, int(fraction * len(sorted_values)))
    ]
