"""`authsvc serve --workers 2`: one port, one /metrics, one signal stops all.

Real processes throughout: the supervisor is the `authsvc` command, its
workers are the processes it starts, and the calls are real gRPC calls on
separate connections (the kernel spreads connections across the workers).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from authsvc.workers import pool_share
from tests.conftest import Keys
from tests.support.jwks_stub import JwksStub
from tests.support.tokens import es256
from tests.test_process import Process, _verify, free_port, serve_env, spawn

WORKERS = 2
CALLS = 24


class Supervised(Process):
    ops_port: int

    def workers(self) -> list[int]:
        return children(self.proc.pid)

    async def get(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient(timeout=5) as http:
            return await http.get(f"http://127.0.0.1:{self.ops_port}{path}")


def children(pid: int) -> list[int]:
    """Live child processes of `pid`, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The fields after the command, which is in parentheses.
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.append(int(entry.name))
    return found


async def start_supervised(jwks: JwksStub, port: int, **extra: str) -> Supervised:
    ops_port = free_port()
    env = serve_env(jwks, port, AUTHSVC_METRICS_ADDR=f"127.0.0.1:{ops_port}", **extra)
    process = await spawn("serve", "--workers", str(WORKERS), env=env, port=port)
    supervised = Supervised(process.proc, port)
    supervised.ops_port = ops_port
    await supervised.wait_serving()
    return supervised


@pytest.fixture
async def supervised(jwks: JwksStub) -> AsyncIterator[Supervised]:
    process = await start_supervised(jwks, free_port())
    try:
        yield process
    finally:
        if process.proc.returncode is None:
            process.proc.send_signal(signal.SIGTERM)
            await process.finish()


async def _ok_calls_by_worker(supervised: Supervised) -> dict[str, float]:
    text = (await supervised.get("/metrics")).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "authsvc_rpcs_total"
                and labels.get("method") == "VerifyToken"
                and labels.get("code") == "OK"
            ):
                counts[labels["worker"]] = (
                    counts.get(labels["worker"], 0) + sample.value
                )
    return counts


async def test_workers_share_the_port_and_metrics_show_every_worker(
    supervised: Supervised, keys: Keys
) -> None:
    token = es256(keys.ec1)
    for _ in range(CALLS):  # a new connection each time
        assert (await _verify(supervised.target, token)).sub

    by_worker = await _ok_calls_by_worker(supervised)
    ready = await supervised.get("/readyz")
    live = await supervised.get("/healthz")

    assert len(supervised.workers()) == WORKERS
    assert sum(by_worker.values()) == CALLS
    # Both served some: all 24 connections on one worker has odds of 2^-23.
    assert sorted(by_worker) == ["0", "1"]
    assert (ready.status_code, ready.json()["status"]) == (200, "SERVING")
    assert live.status_code == 200
    unknown = await supervised.get("/readyz?service=nope.Nothing")
    assert unknown.status_code == 404


async def test_one_sigterm_drains_every_worker_and_exits_0(
    supervised: Supervised, jwks: JwksStub, keys: Keys
) -> None:
    workers = supervised.workers()
    # A call for a rotated-in key waits on the slow JWKS: it is in flight.
    jwks.serve_keys(keys.ec1, keys.ec2)
    jwks.delay_seconds = 2
    in_flight = asyncio.create_task(_verify(supervised.target, es256(keys.ec2)))
    await asyncio.sleep(0.5)

    supervised.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.2)
    during = await supervised.get("/readyz")
    finished = await in_flight
    code, output = await supervised.finish()

    assert during.status_code == 503
    assert finished.key_id == "ec-2"
    assert code == 0
    assert output.count('"message": "stopped"') == WORKERS + 1
    assert "Traceback" not in output
    assert not [pid for pid in workers if _alive(pid)]


async def test_a_worker_that_dies_stops_the_others_and_the_supervisor_exits_1(
    supervised: Supervised,
) -> None:
    first, second = supervised.workers()

    os.kill(first, signal.SIGKILL)
    code, output = await supervised.finish()

    assert code == 1
    assert re.search(r"worker \d exited with status -9", output)
    assert not _alive(second)


async def test_a_killed_supervisor_leaves_no_worker_behind(
    supervised: Supervised,
) -> None:
    workers = supervised.workers()

    supervised.proc.kill()
    await supervised.proc.wait()
    for _ in range(100):
        if not [pid for pid in workers if _alive(pid)]:
            break
        await asyncio.sleep(0.1)

    assert not [pid for pid in workers if _alive(pid)]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_a_second_supervisor_on_a_busy_port_fails_loudly(
    supervised: Supervised, jwks: JwksStub
) -> None:
    env = serve_env(jwks, supervised.port, AUTHSVC_METRICS_ADDR="off")
    second = await spawn("serve", "--workers", "2", env=env, port=supervised.port)

    code, output = await second.finish(timeout=10)

    assert code == 1
    assert f"cannot listen on 127.0.0.1:{supervised.port}" in output
    assert "Traceback" not in output


async def test_a_supervisor_restarts_at_once_on_the_port_it_just_left(
    jwks: JwksStub, keys: Keys
) -> None:
    """The server closes its connections on shutdown, leaving them in
    TIME_WAIT on its port; that must not look like a port in use."""
    port = free_port()
    first = await start_supervised(jwks, port, AUTHSVC_SHUTDOWN_GRACE_SECONDS="1")
    async with grpc.aio.insecure_channel(first.target) as channel:
        # A health Watch outlasts the grace period, so the server is the one
        # that closes the connection (and keeps it in TIME_WAIT).
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="authsvc.v1.AuthService")
        )
        await watch.read()
        first.proc.send_signal(signal.SIGTERM)
        assert (await first.finish())[0] == 0

    second = await start_supervised(jwks, port)
    try:
        assert (await _verify(second.target, es256(keys.ec1))).sub
    finally:
        second.proc.send_signal(signal.SIGTERM)
        code, output = await second.finish()
    assert code == 0, output


async def test_a_worker_that_cannot_start_fails_the_supervisor_with_its_code(
    jwks: JwksStub,
) -> None:
    """A worker refuses the configuration (admin without callers); its exit
    code reaches the supervisor's caller."""
    port = free_port()
    env = serve_env(
        jwks,
        port,
        AUTHSVC_CALLERS="",
        AUTHSVC_DB_ALLOW_ADMIN="true",
        DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
    )
    process = await spawn("serve", "--workers", "2", env=env, port=port)

    code, output = await process.finish(timeout=20)

    assert code == 2
    assert "Traceback" not in output


@pytest.mark.parametrize(
    ("pool_max", "workers", "each"), [(7, 2, 3), (10, 4, 2), (1, 2, 1), (5, 1, 5)]
)
def test_the_pool_is_split_between_workers(
    pool_max: int, workers: int, each: int
) -> None:
    assert pool_share(pool_max, workers) == each


async def test_calls_keep_working_when_a_grpc_client_reuses_one_channel(
    supervised: Supervised, keys: Keys
) -> None:
    """A long-lived channel (one connection) stays on one worker and works."""
    async with grpc.aio.insecure_channel(supervised.target) as channel:
        await channel.channel_ready()
    for _ in range(5):
        assert (await _verify(supervised.target, es256(keys.ec1))).sub


async def test_a_flood_of_probes_gets_the_workers_real_state(
    supervised: Supervised,
) -> None:
    """The ops port needs no key: many concurrent probes and scrapes must not
    make ready workers look down (they share one round of questions)."""
    async with httpx.AsyncClient(
        timeout=10, limits=httpx.Limits(max_connections=300)
    ) as http:
        base = f"http://127.0.0.1:{supervised.ops_port}"
        ready = await asyncio.gather(*(http.get(f"{base}/readyz") for _ in range(300)))
        scraped = await asyncio.gather(
            *(http.get(f"{base}/metrics") for _ in range(50))
        )

    assert {r.status_code for r in ready} == {200}
    assert {r.status_code for r in scraped} == {200}
    assert all('worker="1"' in r.text for r in scraped)


async def test_an_overlong_service_name_is_unknown_not_an_error(
    supervised: Supervised,
) -> None:
    """Forwarded percent-encoded, a long name would pass the worker's request
    line limit; it is refused before that. Too long for the supervisor's own
    limit, it is a plain 400. Never a 500."""
    long_name = await supervised.get("/readyz?service=" + "x" * 3000)
    encoded = await supervised.get("/readyz?service=" + "%7B" * 3000)

    assert long_name.status_code == 404
    assert encoded.status_code == 400


@pytest.mark.parametrize(
    "variables",
    [{"AUTHSVC_WORKER_INDEX": "0"}, {"AUTHSVC_WORKER_REPORT_FD": "2"}],
    ids=["index", "report-fd"],
)
async def test_worker_settings_set_by_an_operator_are_refused(
    jwks: JwksStub, variables: dict[str, str]
) -> None:
    """They would let a second server share the port silently."""
    port = free_port()
    process = await spawn("serve", env=serve_env(jwks, port, **variables), port=port)

    code, output = await process.finish(timeout=10)

    assert code == 2
    assert "set by `authsvc serve` for its own workers" in output
