"""Shutdown on a real signal under load, the way Fly stops a Machine.

Fly sends fly.toml's `kill_signal` (SIGINT), and SIGKILL once `kill_timeout`
(15 s) has passed. In between, authsvc must drain: health turns NOT_SERVING
(gRPC Watch and HTTP /readyz), calls already in flight finish OK, new calls
are refused with UNAVAILABLE so that clients go elsewhere, and the process
exits 0 with each step logged. The exception, calls that gRPC itself had
queued but not yet handed to authsvc when it stopped, is pinned down below.
"""

from __future__ import annotations

import asyncio
import json
import signal
import tomllib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authsvc.config import DEFAULT_SHUTDOWN_GRACE_SECONDS
from authsvc.v1 import auth_pb2, auth_pb2_grpc
from tests.conftest import Keys
from tests.support.callers import TEST_CALLER_KEY, caller_channel
from tests.support.jwks_stub import JwksStub
from tests.support.tokens import es256
from tests.test_deploy_files import seconds
from tests.test_process import Process, free_port, serve_env, spawn

with (Path(__file__).parents[1] / "fly.toml").open("rb") as _file:
    _FLY = tomllib.load(_file)
FLY_KILL_SIGNAL: str = _FLY["kill_signal"]
FLY_KILL_TIMEOUT_SECONDS = seconds(_FLY["kill_timeout"])

LOAD_WORKERS = 20
SLOW_CALLS = 3
# The slow calls wait this long on the JWKS, so they are in flight at the signal.
JWKS_DELAY_SECONDS = 2.0
LOAD_BEFORE_SIGNAL_SECONDS = 0.5
CALL_TIMEOUT_SECONDS = 10.0
# A refused worker pauses this long, so it does not spin on a closed port.
REFUSED_PAUSE_SECONDS = 0.05
READYZ_POLL_SECONDS = 0.02
HTTP_TIMEOUT_SECONDS = 1.0
STEP_TIMEOUT_SECONDS = 5.0
POLL_SECONDS = 0.01

OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
CANCELLED = grpc.StatusCode.CANCELLED
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class Call:
    started: float
    ended: float
    code: grpc.StatusCode


@dataclass
class Served:
    process: Process
    readyz: str
    # Read from the start: under load the access log would fill the pipe and
    # block the server on its next log line.
    stdout: asyncio.Task[bytes]
    stderr: asyncio.Task[bytes]

    async def output(self) -> str:
        return (await self.stdout).decode() + (await self.stderr).decode()


@pytest.fixture
async def served(jwks: JwksStub) -> AsyncIterator[Served]:
    """`authsvc serve` with its operations port and the default grace period."""
    port, ops_port = free_port(), free_port()
    env = serve_env(
        jwks,
        port,
        AUTHSVC_METRICS_ADDR=f"127.0.0.1:{ops_port}",
        AUTHSVC_SHUTDOWN_GRACE_SECONDS=str(DEFAULT_SHUTDOWN_GRACE_SECONDS),
    )
    process = await spawn("serve", env=env, port=port)
    assert process.proc.stdout is not None
    assert process.proc.stderr is not None
    served = Served(
        process,
        f"http://127.0.0.1:{ops_port}/readyz",
        asyncio.create_task(process.proc.stdout.read()),
        asyncio.create_task(process.proc.stderr.read()),
    )
    try:
        await process.wait_serving()
        yield served
    finally:
        if process.proc.returncode is None:
            process.proc.kill()
        await process.proc.wait()
        await served.output()


async def _timed_verify(stub: auth_pb2_grpc.AuthServiceStub, token: str) -> Call:
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await stub.VerifyToken(
            auth_pb2.VerifyTokenRequest(token=token), timeout=CALL_TIMEOUT_SECONDS
        )
    except grpc.aio.AioRpcError as error:
        return Call(started, loop.time(), error.code())
    return Call(started, loop.time(), OK)


async def _load(
    stub: auth_pb2_grpc.AuthServiceStub,
    token: str,
    stop: asyncio.Event,
    calls: list[Call],
) -> None:
    """One client worker: call, record, repeat until told to stop."""
    while not stop.is_set():
        call = await _timed_verify(stub, token)
        calls.append(call)
        if call.code != OK:
            await asyncio.sleep(REFUSED_PAUSE_SECONDS)


async def _watch(
    health: health_pb2_grpc.HealthStub,
    seen: list[int],
    keep_open: bool,
) -> None:
    """What a Watch stream on `""` sees; end it on NOT_SERVING unless
    `keep_open` (as gRPC's client-side health checking does)."""
    call = health.Watch(health_pb2.HealthCheckRequest())
    try:
        async for response in call:
            seen.append(response.status)
            if response.status == NOT_SERVING and not keep_open:
                call.cancel()
    except (grpc.aio.AioRpcError, asyncio.CancelledError):
        pass


async def _poll_readyz(url: str, answers: list[tuple[float, int]]) -> None:
    """GET /readyz until the port closes."""
    loop = asyncio.get_running_loop()
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while True:
            try:
                async with session.get(url) as response:
                    answers.append((loop.time(), response.status))
            except aiohttp.ClientError:
                return
            await asyncio.sleep(READYZ_POLL_SECONDS)


def _lifecycle(output: str) -> str:
    """The server's output without its access events, for failure messages."""
    lines = output.splitlines()
    return "\n".join(line for line in lines if "authsvc.api.status" not in line)


async def _wait_until(condition: Callable[[], object], what: str) -> None:
    for _ in range(int(STEP_TIMEOUT_SECONDS / POLL_SECONDS)):
        if condition():
            return
        await asyncio.sleep(POLL_SECONDS)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize(
    ("signame", "watch_kept_open"),
    [(FLY_KILL_SIGNAL, True), ("SIGTERM", False)],
    ids=[f"fly-{FLY_KILL_SIGNAL}-watch-kept-open", "SIGTERM-watch-ends-on-NOT_SERVING"],
)
async def test_signal_under_load_drains_in_flight_calls_refuses_new_ones_and_exits_0(
    served: Served,
    jwks: JwksStub,
    keys: Keys,
    signame: str,
    watch_kept_open: bool,
) -> None:
    """Fly sends fly.toml's kill_signal (SIGINT); `docker stop` sends SIGTERM."""
    loop = asyncio.get_running_loop()
    proc = served.process.proc
    stop_load = asyncio.Event()
    load: list[Call] = []
    watched: list[int] = []
    readyz: list[tuple[float, int]] = []

    async with caller_channel(served.process.target, TEST_CALLER_KEY) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        watch = asyncio.create_task(_watch(health, watched, watch_kept_open))
        workers = [
            asyncio.create_task(_load(stub, es256(keys.ec1), stop_load, load))
            for _ in range(LOAD_WORKERS)
        ]
        try:
            # A token for a rotated-in key makes the server refetch the slow
            # JWKS, so these calls are certainly in flight at the signal.
            jwks.serve_keys(keys.ec1, keys.ec2)
            jwks.delay_seconds = JWKS_DELAY_SECONDS
            fetches = jwks.hits
            slow = [
                asyncio.create_task(_timed_verify(stub, es256(keys.ec2)))
                for _ in range(SLOW_CALLS)
            ]
            await _wait_until(lambda: jwks.hits > fetches, "the slow JWKS fetch")
            await _wait_until(lambda: watched, "the first Watch answer")
            await asyncio.sleep(LOAD_BEFORE_SIGNAL_SECONDS)

            signalled = loop.time()
            proc.send_signal(signal.Signals[signame])
            poller = asyncio.create_task(_poll_readyz(served.readyz, readyz))
            try:
                code = await asyncio.wait_for(proc.wait(), FLY_KILL_TIMEOUT_SECONDS)
            except TimeoutError:
                proc.kill()  # as Fly does once kill_timeout has passed
                raise AssertionError(
                    f"still running {FLY_KILL_TIMEOUT_SECONDS} s after {signame}:\n"
                    + _lifecycle(await served.output())
                ) from None
            drain_seconds = loop.time() - signalled
            slow_calls = await asyncio.gather(*slow)
            await poller
        finally:
            stop_load.set()
            await asyncio.gather(*workers)
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
    output = await served.output()

    before = [c for c in load if c.ended <= signalled]
    after = [c for c in load if c.started >= signalled]
    first_refusal = min(c.ended for c in after if c.code == UNAVAILABLE)
    after_refusal = [c for c in after if c.started > first_refusal]
    first_503 = min(t for t, status in readyz if status == 503)
    readyz_from_503 = {status for t, status in readyz if t >= first_503}
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    messages = [event["message"] for event in events]
    access = [e for e in events if e["logger"] == "authsvc.api.status"]
    answered_ok = SLOW_CALLS + sum(c.code == OK for c in load)

    assert code == 0, _lifecycle(output)
    assert drain_seconds < FLY_KILL_TIMEOUT_SECONDS
    # TODO: an open health Watch stream (gRPC's client-side health checking
    # keeps one) holds the drain until the grace period ends, so a Machine
    # whose clients health-check always takes AUTHSVC_SHUTDOWN_GRACE_SECONDS
    # to stop; only without one does the drain end with the last call.
    if not watch_kept_open:
        assert drain_seconds < DEFAULT_SHUTDOWN_GRACE_SECONDS, _lifecycle(output)
    assert watched == [SERVING, NOT_SERVING]
    assert [c.code for c in slow_calls] == [OK] * SLOW_CALLS
    assert all(c.started < signalled < c.ended for c in slow_calls)
    assert readyz_from_503 == {503}
    assert first_503 < min(c.ended for c in slow_calls)

    # Every call that authsvc took, before or during the drain, was answered
    # OK: the access log has one OK event per OK the clients saw, and no other.
    assert {e["status"] for e in access} == {"OK"}
    assert len(access) == answered_ok
    assert {c.code for c in before} == {OK}
    # Calls the clients had sent but authsvc had not yet taken when the server
    # stopped, in flight at the signal or right after it, end in one of three
    # ways: taken after all (OK), refused (UNAVAILABLE), or dropped from gRPC's
    # queue (CANCELLED). Once the first refusal is seen, every call is refused.
    # TODO: gRPC core answers CANCELLED, not UNAVAILABLE, to calls it had
    # received but not yet handed to authsvc when the server stops, so a
    # client that retries only UNAVAILABLE fails those calls.
    assert {c.code for c in load} <= {OK, UNAVAILABLE, CANCELLED}
    assert {c.code for c in after_refusal} == {UNAVAILABLE}

    assert messages.index(f"received {signame}") < messages.index("stopped")
    assert any(m.startswith("shutting down grace_seconds=") for m in messages)
    assert "Traceback" not in output
