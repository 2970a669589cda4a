"""Transport limits: keepalive ping policy (C24) and message and metadata sizes (C25).

Where the client's own gRPC logs are the evidence (pings sent, GOAWAY received)
or where its memory must not count as the server's, the client runs as a
separate process (tests.support.transport_client).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from authsvc.config import Settings
from authsvc.server import server_options
from authsvc.v1 import auth_pb2
from tests.conftest import Keys, Refusal, Running, StartServer, base_environ
from tests.support.callers import TEST_CALLER_KEY
from tests.support.jwks_stub import JwksStub
from tests.support.tokens import HS_SECRET, UID_A, es256
from tests.support.transport_client import KEEPALIVE_TIME_MS

REPO_ROOT = Path(__file__).resolve().parents[1]
CLIENT_TIMEOUT_SECONDS = 60

IDLE_SECONDS = 6
LONG_CALL_SECONDS = 4  # under the default JWKS timeout (5 s)
TRACE_ENV = {"GRPC_VERBOSITY": "debug", "GRPC_TRACE": "http_keepalive"}
PING_SENT = re.compile(r"CLIENT\[(0x[0-9a-f]+)\]: Ping \d+ sent")
REFUSED_PINGS = re.compile(r"too_many_pings|goaway|enhance_your_calm", re.IGNORECASE)

DEAD_PEER_KEEPALIVE_MS = 1_000
DEAD_PEER_SLACK_SECONDS = 2.0

MIB = 1024 * 1024
FLOOD_CALLS = 200
FLOOD_TOKEN_BYTES = 5 * MIB
FLOOD_MAX_RSS_GROWTH_BYTES = 600 * MIB
RSS_SAMPLE_SECONDS = 0.01

REQUEST_LIMIT = 64 * 1024  # the smallest AUTHSVC_MAX_REQUEST_BYTES allowed
METADATA_SIZE = re.compile(r"\((\d+) vs\. (\d+)\)")
EDGE_REPEATS = 20
# A pad this much under the limit is still over it once the other headers count.
PROBE_UNDER_LIMIT_BYTES = 256


# C24: keepalive ping policy.


async def test_c24_eager_keepalive_client_keeps_its_connection_idle_and_in_a_long_call(
    server: Running, jwks: JwksStub, keys: Keys
) -> None:
    """A client pinging every second is never sent GOAWAY too_many_pings, neither
    while idle nor during a call that sends no data for seconds."""
    # The long call: a token for a key the server has not seen yet makes it
    # refetch the JWKS, which answers slowly.
    jwks.serve_keys(keys.ec1, keys.ec2)
    jwks.delay_seconds = LONG_CALL_SECONDS
    hits_before = jwks.hits
    plan = {
        "target": server.target,
        "key": TEST_CALLER_KEY,
        "idle_seconds": IDLE_SECONDS,
        "long_call_token": es256(keys.ec2),
    }

    report, log = await _run_client("keepalive", plan, TRACE_ENV)

    pings = PING_SENT.findall(log)
    assert report["calls"] == 4
    assert (
        len(pings) >= (IDLE_SECONDS + LONG_CALL_SECONDS) * 1000 // KEEPALIVE_TIME_MS - 2
    )
    assert REFUSED_PINGS.findall(log) == []
    assert len(set(pings)) == 1, "the pings went out on more than one connection"
    assert report["states"].count("READY") == 1, report["states"]
    assert jwks.hits == hits_before + 1


async def test_c24_control_server_without_ping_policy_sends_too_many_pings() -> None:
    """The same client against gRPC's defaults is told too_many_pings and has to
    reconnect: the test above can fail."""
    async with _plain_server(options=()) as port:
        plan = {"target": f"127.0.0.1:{port}", "key": "", "idle_seconds": IDLE_SECONDS}

        report, log = await _run_client("keepalive", plan, TRACE_ENV)

    assert "too_many_pings" in log
    assert report["calls"] == 2
    assert report["states"].count("READY") > 1, report["states"]


async def test_c24_silent_peer_is_dropped_within_keepalive_time_plus_timeout() -> None:
    """With our options, keepalive shortened to 1 s: a connection that stops
    carrying bytes after a call is closed by the server within time + timeout."""
    settings = Settings.from_environ(base_environ(None, SUPABASE_JWT_SECRET=HS_SECRET))
    configured = dict(server_options(settings))
    options = _replace_options(
        server_options(settings),
        {
            "grpc.keepalive_time_ms": DEAD_PEER_KEEPALIVE_MS,
            "grpc.keepalive_timeout_ms": DEAD_PEER_KEEPALIVE_MS,
            "grpc.http2.ping_timeout_ms": DEAD_PEER_KEEPALIVE_MS,
        },
    )
    bound = 2 * DEAD_PEER_KEEPALIVE_MS / 1000 + DEAD_PEER_SLACK_SECONDS
    async with (
        _plain_server(options) as port,
        _Blackhole(port) as proxy,
        grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}") as channel,
    ):
        stub = health_pb2_grpc.HealthStub(channel)
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        loop = asyncio.get_running_loop()

        proxy.swallow()
        started = loop.time()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proxy.server_closed.wait(), timeout=bound)
        elapsed = loop.time() - started

    # gRPC core closes on the ping timeout; keepalive_timeout alone does not.
    assert (
        configured["grpc.http2.ping_timeout_ms"]
        == configured["grpc.keepalive_timeout_ms"]
    )
    assert proxy.server_closed.is_set(), f"still open after {bound:g} s"
    assert elapsed >= DEAD_PEER_KEEPALIVE_MS / 1000
    assert proxy.connections == 1


# C25: message and metadata size limits.


async def test_c25_request_at_the_configured_limit_passes_and_one_byte_more_is_resource_exhausted(
    start_server: StartServer, jwks: JwksStub
) -> None:
    """At the limit the request reaches the handler (whose token-length check
    refuses it); one byte more is refused by gRPC before any handler runs."""
    server = await start_server(jwks, AUTHSVC_MAX_REQUEST_BYTES=str(REQUEST_LIMIT))
    at_limit = _request_of_size(REQUEST_LIMIT)
    over_limit = _request_of_size(REQUEST_LIMIT + 1)

    at = await _refusal(server, at_limit)
    over = await _refusal(server, over_limit)

    assert (at.code, at.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "TOKEN_TOO_LARGE")
    assert (over.code, over.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "")
    assert f"({REQUEST_LIMIT + 1} vs. {REQUEST_LIMIT})" in over.message


async def test_c25_parallel_five_mib_requests_are_refused_and_server_memory_stays_bounded(
    server: Running, keys: Keys
) -> None:
    """200 requests of 5 MiB at once, with the default 4 MiB request limit."""
    plan = {
        "target": server.target,
        "key": TEST_CALLER_KEY,
        "token_bytes": FLOOD_TOKEN_BYTES,
        "calls": FLOOD_CALLS,
    }

    with _PeakRss() as rss:
        report, _ = await _run_client("flood", plan, {"GRPC_VERBOSITY": "error"})
    after = await server.health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    verified = await server.verify(es256(keys.ec1))

    assert report["outcomes"] == {"RESOURCE_EXHAUSTED": FLOOD_CALLS}, report
    assert rss.growth < FLOOD_MAX_RSS_GROWTH_BYTES, f"grew {rss.growth // MIB} MiB"
    assert after.status == health_pb2.HealthCheckResponse.SERVING
    assert verified.sub == UID_A


@pytest.mark.parametrize(
    "configured", [None, 12 * 1024], ids=["default-16KiB", "configured-12KiB"]
)
async def test_c25_metadata_under_the_limit_is_always_accepted_and_at_it_always_refused(
    start_server: StartServer, jwks: JwksStub, keys: Keys, configured: int | None
) -> None:
    """Soft limit == hard limit: no size is accepted on some calls and refused
    on others. gRPC counts name + value + 32 bytes per header, all headers
    included, and refuses a total equal to the limit."""
    env = {} if configured is None else {"AUTHSVC_MAX_METADATA_BYTES": str(configured)}
    server = await start_server(jwks, **env)
    limit = configured or Settings.model_fields["max_metadata_bytes"].default
    token = es256(keys.ec1)
    other_headers, reported_limit = await _measure_other_headers(server, token, limit)
    largest_pad = limit - 1 - other_headers

    under = await _padded_calls(server, token, largest_pad)
    at = await _padded_calls(server, token, largest_pad + 1)

    refusals = [r for r in at if isinstance(r, Refusal)]
    assert reported_limit == limit
    assert all(isinstance(r, auth_pb2.VerifyTokenResponse) for r in under), under
    assert len(refusals) == EDGE_REPEATS, at
    assert {(r.code, r.reason, r.message.split(";")[0]) for r in refusals} == {
        (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "",
            f"received metadata size exceeds hard limit ({limit} vs. {limit})",
        )
    }


# Helpers.


async def _run_client(
    command: str, plan: dict[str, Any], env: dict[str, str]
) -> tuple[dict[str, Any], str]:
    """Run tests.support.transport_client; return its report and its log."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.transport_client",
        command,
        json.dumps(plan),
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(
            proc.communicate(), CLIENT_TIMEOUT_SECONDS
        )
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    log = stderr.decode(errors="replace")
    assert proc.returncode == 0, log[-4000:]
    return json.loads(stdout.decode().splitlines()[-1]), log


@asynccontextmanager
async def _plain_server(options: Sequence[tuple[str, Any]]) -> AsyncIterator[int]:
    """A bare grpc.aio server with only the health service; yields its port."""
    server = grpc.aio.server(options=options)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(0)


def _replace_options(
    options: Sequence[tuple[str, Any]], replacements: dict[str, Any]
) -> list[tuple[str, Any]]:
    names = {name for name, _ in options}
    assert set(replacements) <= names, "replacing an option server_options lacks"
    return [(name, replacements.get(name, value)) for name, value in options]


class _Blackhole:
    """A TCP proxy that forwards until `swallow()`, then drops every byte in
    both directions without closing; it notes when the server closes."""

    def __init__(self, upstream_port: int) -> None:
        self.port = 0
        self.connections = 0
        self.server_closed = asyncio.Event()
        self._upstream_port = upstream_port
        self._swallowing = False
        self._listener: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: list[asyncio.Task[None]] = []

    def swallow(self) -> None:
        self._swallowing = True

    async def __aenter__(self) -> _Blackhole:
        self._listener = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._listener.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._listener is not None
        self._listener.close()
        for task in self._tasks:
            task.cancel()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._listener.wait_closed()

    async def _accept(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        server_reader, server_writer = await asyncio.open_connection(
            "127.0.0.1", self._upstream_port
        )
        self._writers += [client_writer, server_writer]
        self._tasks += [
            asyncio.create_task(self._pump(client_reader, server_writer)),
            asyncio.create_task(
                self._pump(server_reader, client_writer, from_server=True)
            ),
        ]

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        from_server: bool = False,
    ) -> None:
        try:
            while chunk := await reader.read(64 * 1024):
                if not self._swallowing:
                    writer.write(chunk)
                    await writer.drain()
        except ConnectionError:
            pass
        if from_server:
            self.server_closed.set()


class _PeakRss:
    """Samples this process's resident memory in a thread; the server runs here."""

    def __init__(self) -> None:
        self.baseline = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    def __enter__(self) -> _PeakRss:
        self.baseline = self.peak = _rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_SECONDS):
            self.peak = max(self.peak, _rss_bytes())


def _rss_bytes() -> int:
    status = Path("/proc/self/status").read_text()
    kib = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert kib is not None
    return int(kib.group(1)) * 1024


def _request_of_size(size: int) -> auth_pb2.VerifyTokenRequest:
    """A VerifyTokenRequest whose encoding is exactly `size` bytes."""
    for length in range(size - 8, size):
        request = auth_pb2.VerifyTokenRequest(token="a" * length)
        if request.ByteSize() == size:
            return request
    raise AssertionError(f"no request encodes to {size} bytes")


async def _refusal(server: Running, request: auth_pb2.VerifyTokenRequest) -> Refusal:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await server.auth.VerifyToken(request, timeout=10)
    return Refusal.of(caught.value)


async def _measure_other_headers(
    server: Running, token: str, limit: int
) -> tuple[int, int]:
    """Bytes gRPC counts for every header but `x-pad` (path, user-agent,
    authorization...), and the limit the server enforces.

    A refusal reports the total the server counted, which a pad of a known
    size then explains.
    """
    pad = limit - PROBE_UNDER_LIMIT_BYTES
    probe = await _padded_call(server, token, pad)
    assert isinstance(probe, Refusal), "a pad this large should be refused"
    sizes = METADATA_SIZE.search(probe.message)
    assert sizes is not None, probe
    return int(sizes[1]) - pad, int(sizes[2])


async def _padded_call(
    server: Running, token: str, pad: int
) -> auth_pb2.VerifyTokenResponse | Refusal:
    """VerifyToken with an `x-pad` header of `pad` bytes as the last header.

    No gRPC deadline: the grpc-timeout header's length varies from call to
    call, and the sizes here must not.
    """
    metadata = (("authorization", f"Bearer {TEST_CALLER_KEY}"), ("x-pad", "p" * pad))
    call = server.auth.VerifyToken(
        auth_pb2.VerifyTokenRequest(token=token), metadata=metadata
    )
    try:
        return await asyncio.wait_for(call, timeout=10)
    except grpc.aio.AioRpcError as exc:
        return Refusal.of(exc)


async def _padded_calls(
    server: Running, token: str, pad: int
) -> list[auth_pb2.VerifyTokenResponse | Refusal]:
    """The same padded call, EDGE_REPEATS times at once (gRPC delays each
    refusal by up to a second, so one after another would be slow)."""
    calls = [_padded_call(server, token, pad) for _ in range(EDGE_REPEATS)]
    return await asyncio.gather(*calls)
