"""The `authsvc` command as a real process: signals, bind failures, config, dev mode."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authsvc.access import CallerSet
from authsvc.v1 import auth_pb2, auth_pb2_grpc
from tests.conftest import Keys
from tests.support.callers import (
    TEST_CALLER_KEY,
    TEST_CALLERS,
    caller_channel,
    callers_toml,
)
from tests.support.jwks_stub import JwksStub
from tests.support.tokens import SUPABASE_URL, UID_A, es256

AUTHSVC = str(Path(sys.executable).parent / "authsvc")
START_TIMEOUT_SECONDS = 15


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self.target = f"127.0.0.1:{port}"

    async def wait_serving(self) -> None:
        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            deadline = asyncio.get_running_loop().time() + START_TIMEOUT_SECONDS
            while True:
                try:
                    response = await stub.Check(
                        health_pb2.HealthCheckRequest(), timeout=1
                    )
                    if response.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError("server never became SERVING")
                await asyncio.sleep(0.1)

    async def finish(self, timeout: float = 15) -> tuple[int, str]:
        """Wait for the exit; return the code and all output (JSON logs go to
        stdout, messages for people to stderr)."""
        stdout, stderr = await asyncio.wait_for(self.proc.communicate(), timeout)
        assert self.proc.returncode is not None
        return self.proc.returncode, stdout.decode() + stderr.decode()


async def spawn(*args: str, env: dict[str, str], port: int) -> Process:
    proc = await asyncio.create_subprocess_exec(
        AUTHSVC,
        *args,
        env={"PATH": os.environ["PATH"], **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    return Process(proc, port)


def serve_env(jwks: JwksStub, port: int, **extra: str) -> dict[str, str]:
    return {
        "SUPABASE_URL": SUPABASE_URL,
        "AUTHSVC_JWKS_URL": jwks.url,
        "AUTHSVC_LISTEN_ADDR": f"127.0.0.1:{port}",
        "AUTHSVC_JWKS_COOLDOWN_SECONDS": "0",
        "AUTHSVC_SHUTDOWN_GRACE_SECONDS": "5",
        "AUTHSVC_CALLERS": TEST_CALLERS,
        "AUTHSVC_METRICS_ADDR": "127.0.0.1:0",
        # One process: these tests are about one server; tests/test_workers.py
        # covers the supervisor and its workers.
        "AUTHSVC_WORKERS": "1",
        **extra,
    }


@pytest.fixture
async def served(jwks: JwksStub) -> AsyncIterator[Process]:
    port = free_port()
    process = await spawn("serve", env=serve_env(jwks, port), port=port)
    try:
        await process.wait_serving()
        yield process
    finally:
        if process.proc.returncode is None:
            process.proc.kill()
            await process.proc.wait()


async def _verify(
    target: str, token: str, timeout: float = 10, key: str = TEST_CALLER_KEY
) -> auth_pb2.VerifyTokenResponse:
    async with caller_channel(target, key) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        return await stub.VerifyToken(
            auth_pb2.VerifyTokenRequest(token=token), timeout=timeout
        )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
async def test_c21_signal_lets_in_flight_calls_finish_refuses_new_ones_and_exits_0(
    served: Process, jwks: JwksStub, keys: Keys, signum: signal.Signals
) -> None:
    # A call for a rotated-in key waits on a slow JWKS: it is in flight.
    jwks.serve_keys(keys.ec1, keys.ec2)
    jwks.delay_seconds = 2
    in_flight = asyncio.create_task(_verify(served.target, es256(keys.ec2)))
    await asyncio.sleep(0.5)

    served.proc.send_signal(signum)
    await asyncio.sleep(0.3)
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await _verify(served.target, es256(keys.ec1), timeout=3)
    finished = await in_flight
    code, stderr = await served.finish()

    assert finished.key_id == "ec-2"
    assert late.value.code() == grpc.StatusCode.UNAVAILABLE
    assert code == 0
    assert f"received {signum.name}" in stderr
    assert "stopped" in stderr
    assert "Task was destroyed" not in stderr
    assert "Unclosed" not in stderr
    assert "Traceback" not in stderr


async def test_c21_second_signal_during_shutdown_exits_at_once(
    served: Process, jwks: JwksStub, keys: Keys
) -> None:
    jwks.serve_keys(keys.ec1, keys.ec2)
    jwks.delay_seconds = 30
    in_flight = asyncio.create_task(_verify(served.target, es256(keys.ec2), timeout=30))
    await asyncio.sleep(0.5)

    served.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    served.proc.send_signal(signal.SIGTERM)
    code, stderr = await served.finish(timeout=3)
    in_flight.cancel()

    assert code == 1
    assert "exiting now" in stderr


async def test_c23_second_instance_on_the_same_port_fails_loudly(
    served: Process, jwks: JwksStub
) -> None:
    second = await spawn("serve", env=serve_env(jwks, served.port), port=served.port)

    code, stderr = await second.finish(timeout=5)

    assert code != 0
    assert f"cannot listen on 127.0.0.1:{served.port}" in stderr
    assert "SERVING" not in stderr.replace("NOT_SERVING", "")


async def test_a_busy_operations_port_fails_start_up_cleanly(
    jwks: JwksStub,
) -> None:
    """The gRPC port is already serving when the ops port is bound; failing
    then must release it and exit 1 without a traceback."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        ops_port = busy.getsockname()[1]
        port = free_port()
        env = serve_env(jwks, port, AUTHSVC_METRICS_ADDR=f"127.0.0.1:{ops_port}")
        process = await spawn("serve", env=env, port=port)

        code, output = await process.finish(timeout=10)

    assert code == 1
    assert f"cannot listen on 127.0.0.1:{ops_port} for metrics" in output
    assert "Traceback" not in output
    assert "Event loop is closed" not in output
    with socket.socket() as reuse:  # the gRPC port was released
        reuse.bind(("127.0.0.1", port))


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AUTHSVC_LEEWAY_SECONDS", "abc"),
        ("AUTHSVC_LEEWAY_SECONDS", "3600"),
        ("AUTHSVC_JWKS_TTL_SECONDS", "0"),
        ("AUTHSVC_AUDIENCES", " , "),
        ("SUPABASE_URL", "abcdefghijklmnopqrst.supabase.co"),
        ("AUTHSVC_LOG_LEVEL", "LOUD"),
    ],
)
async def test_invalid_configuration_fails_at_start_naming_the_setting(
    jwks: JwksStub, variable: str, value: str
) -> None:
    port = free_port()
    process = await spawn(
        "serve", env=serve_env(jwks, port, **{variable: value}), port=port
    )

    code, stderr = await process.finish(timeout=10)

    assert code == 2
    assert variable in stderr
    assert "Traceback" not in stderr


async def test_missing_supabase_url_fails_at_start(jwks: JwksStub) -> None:
    port = free_port()
    process = await spawn(
        "serve", env={"AUTHSVC_LISTEN_ADDR": f"127.0.0.1:{port}"}, port=port
    )

    code, stderr = await process.finish(timeout=10)

    assert code == 2
    assert "SUPABASE_URL is not set" in stderr


async def test_short_jwt_secret_is_refused_without_echoing_it(jwks: JwksStub) -> None:
    port = free_port()
    secret = "too-short-but-secret-value"
    process = await spawn(
        "serve", env=serve_env(jwks, port, SUPABASE_JWT_SECRET=secret), port=port
    )

    code, stderr = await process.finish(timeout=10)

    assert code == 2
    assert "SUPABASE_JWT_SECRET" in stderr
    assert secret not in stderr


async def test_c23_dual_stack_listener_answers_on_ipv4_and_ipv6(
    jwks: JwksStub, keys: Keys
) -> None:
    port = free_port()
    process = await spawn(
        "serve",
        env=serve_env(jwks, port, AUTHSVC_LISTEN_ADDR=f"[::]:{port}"),
        port=port,
    )
    try:
        await process.wait_serving()

        over_ipv4 = await _verify(f"127.0.0.1:{port}", es256(keys.ec1))
        over_ipv6 = await _verify(f"[::1]:{port}", es256(keys.ec1))
    finally:
        process.proc.send_signal(signal.SIGTERM)
        code, _ = await process.finish()

    assert over_ipv4.sub == over_ipv6.sub == UID_A
    assert code == 0


async def _run_printed(command: str) -> tuple[bytes, bytes]:
    process = await asyncio.create_subprocess_exec(
        *shlex.split(command),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, err.decode()
    return out, err


async def test_dev_mode_prints_a_token_and_a_command_that_verifies_it(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = {
        "AUTHSVC_LISTEN_ADDR": f"127.0.0.1:{port}",
        "AUTHSVC_METRICS_ADDR": "127.0.0.1:0",
        "AUTHSVC_DEV_DIR": str(tmp_path / "dev"),
    }
    process = await spawn("dev", env=env, port=port)
    try:
        await process.wait_serving()
        assert process.proc.stdout is not None
        banner = (
            await asyncio.wait_for(process.proc.stdout.readuntil(b"Ctrl-C"), 5)
        ).decode()
        commands = [
            line.strip().replace("localhost:", "127.0.0.1:")
            for line in banner.splitlines()
            if "grpcurl -plaintext" in line
        ]
        verify_out, err = await _run_printed(commands[0])
        admin_out, _ = await _run_printed(commands[1])
        user_out, _ = await _run_printed(commands[2])

        minted = await asyncio.create_subprocess_exec(
            AUTHSVC,
            "token",
            "--sub",
            "22222222-2222-2222-2222-222222222222",
            "--org-id",
            "org_7",
            env={"PATH": os.environ["PATH"], **env},
            stdout=asyncio.subprocess.PIPE,
        )
        token = (await minted.communicate())[0].decode().strip()
        dev_key = re.search(r"\basvc_[\w-]+", banner)
        assert dev_key is not None, banner
        verified = await _verify(process.target, token, key=dev_key.group())
    finally:
        process.proc.send_signal(signal.SIGINT)
        code, _ = await process.finish()

    claims = json.loads(verify_out)
    admin_rows = json.loads(json.loads(admin_out)["rows_json"])
    user_rows = json.loads(json.loads(user_out)["rows_json"])
    assert err == b""
    assert len(admin_rows) == 3
    assert {row["owner"] for row in user_rows} == {claims["sub"]}
    assert len(user_rows) == 2
    assert re.search(r"\beyJ[\w-]+\.[\w-]+\.[\w-]+\b", banner)
    assert claims["sub"] == "11111111-1111-1111-1111-111111111111"
    assert claims["algorithm"] == "ES256"
    assert (verified.sub, verified.org_id) == (
        "22222222-2222-2222-2222-222222222222",
        "org_7",
    )
    assert code == 0


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"AUTHSVC_CALLERS": ""}, "no callers are configured"),
        (
            {
                "AUTHSVC_CALLERS": "",
                "AUTHSVC_ALLOW_UNAUTHENTICATED": "true",
                "AUTHSVC_DB_ALLOW_ADMIN": "true",
                "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
            },
            "AUTHSVC_DB_ALLOW_ADMIN=true but no callers are configured",
        ),
        (
            {
                "AUTHSVC_CALLERS": '[callers.app]\nkey_hashes = ["asvc_raw"]\nscopes = []'
            },
            "holds a key, not its hash",
        ),
        (
            {
                "AUTHSVC_CALLERS_FILE": "/nonexistent/callers.toml",
                "AUTHSVC_CALLERS": "",
            },
            "cannot read it",
        ),
    ],
    ids=["no-callers", "admin-without-callers", "raw-key", "missing-file"],
)
async def test_caller_configuration_that_cannot_be_safe_stops_start_up(
    jwks: JwksStub, extra: dict[str, str], expected: str
) -> None:
    port = free_port()
    process = await spawn("serve", env=serve_env(jwks, port, **extra), port=port)

    code, stderr = await process.finish(timeout=10)

    assert code == 2
    assert expected in stderr
    assert "asvc_raw" not in stderr
    assert "Traceback" not in stderr


async def test_sighup_reloads_the_callers_file_and_logs_carry_the_caller_name(
    jwks: JwksStub, keys: Keys, tmp_path: Path
) -> None:
    callers_file = tmp_path / "callers.toml"
    callers_file.write_text(
        callers_toml(("first-app", TEST_CALLER_KEY, ["tokens:verify"]))
    )
    port = free_port()
    env = serve_env(
        jwks, port, AUTHSVC_CALLERS="", AUTHSVC_CALLERS_FILE=str(callers_file)
    )
    process = await spawn("serve", env=env, port=port)
    try:
        await process.wait_serving()
        await _verify(process.target, es256(keys.ec1))

        # Same size and a restored mtime: only the signal can notice the change.
        stat = callers_file.stat()
        callers_file.write_text(
            callers_toml(("other-app", TEST_CALLER_KEY, ["tokens:verify"]))
        )
        os.utime(callers_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        process.proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        await _verify(process.target, es256(keys.ec1))
    finally:
        process.proc.send_signal(signal.SIGTERM)
        code, stderr = await process.finish()

    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    access = [e for e in events if e["logger"] == "authsvc.api.status"]
    assert code == 0
    assert "callers reloaded callers=1 trigger=SIGHUP" in stderr
    assert [(e["method"], e["caller"], e["status"]) for e in access] == [
        ("VerifyToken", "first-app", "OK"),
        ("VerifyToken", "other-app", "OK"),
    ]
    assert all(len(e["request_id"]) == 32 and e["peer"] for e in access)
    assert TEST_CALLER_KEY not in stderr


def test_caller_key_prints_the_key_apart_from_the_toml_it_belongs_to() -> None:
    result = subprocess.run(
        [AUTHSVC, "caller-key", "--name", "reports", "--admin-table", "invoices"],
        capture_output=True,
        text=True,
        check=True,
    )

    key = re.fullmatch(r"asvc_[\w-]{43}", result.stderr.splitlines()[-1])
    assert key is not None, result.stderr
    callers = CallerSet.parse(result.stdout)
    caller = callers.by_key(key.group())
    assert caller is not None
    assert (caller.name, caller.admin_tables) == (
        "reports",
        frozenset({("public", "invoices")}),
    )
    assert "asvc_" not in result.stdout


async def test_logs_are_json_lines_with_request_ids_and_no_secret(
    jwks: JwksStub, keys: Keys
) -> None:
    port = free_port()
    secret = "a-legacy-secret-that-must-never-be-logged-0123456789"
    process = await spawn(
        "serve", env=serve_env(jwks, port, SUPABASE_JWT_SECRET=secret), port=port
    )
    good, expired = es256(keys.ec1), es256(keys.ec1, {"exp": 1000})
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    try:
        await process.wait_serving()
        async with caller_channel(process.target, TEST_CALLER_KEY) as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            call = stub.VerifyToken(
                auth_pb2.VerifyTokenRequest(token=good),
                metadata=(
                    ("x-request-id", "req-42"),
                    ("traceparent", f"00-{trace}-00f067aa0ba902b7-01"),
                ),
                timeout=10,
            )
            await call
            echoed = dict(await call.trailing_metadata())
            refused = stub.VerifyToken(
                auth_pb2.VerifyTokenRequest(token=expired),
                metadata=(("x-request-id", "req-43"),),
                timeout=10,
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await refused
            # An error carries the id in its trailers, and no early headers
            # (which would stop gRPC's client from retrying UNAVAILABLE).
            error_trailers = dict(caught.value.trailing_metadata() or ())
            for token, key in (
                (expired, TEST_CALLER_KEY),
                (good, good),
                (good, "asvc_x"),
            ):
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.VerifyToken(
                        auth_pb2.VerifyTokenRequest(token=token),
                        metadata=(("authorization", f"Bearer {key}"),),
                        timeout=10,
                    )
    finally:
        process.proc.send_signal(signal.SIGTERM)
        stdout, _ = await asyncio.wait_for(process.proc.communicate(), 15)

    lines = stdout.decode().splitlines()
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    access = [e for e in events if e["logger"] == "authsvc.api.status"]
    assert echoed["x-request-id"] == "req-42"
    assert error_trailers["x-request-id"] == "req-43"
    assert access[0]["request_id"] == "req-42"
    assert access[0]["trace_id"] == trace
    assert [e["status"] for e in access] == ["OK"] + ["UNAUTHENTICATED"] * 4
    assert access[1]["request_id"] == "req-43"
    assert {e["level"] for e in events} <= {"INFO", "WARNING"}
    assert any("hs256_secret=set" in e["message"] for e in events)
    # `authsvc serve` serves on uvloop.
    assert any(
        e["message"].startswith("listening ") and e["message"].endswith("loop=uvloop")
        for e in events
    )
    for secret_text in (secret, good, expired, TEST_CALLER_KEY, good.split(".")[2]):
        assert secret_text not in stdout.decode()


async def test_an_old_connection_is_closed_so_clients_resolve_again(
    jwks: JwksStub, keys: Keys
) -> None:
    """gRPC clients re-resolve a name (Fly's `.internal`) only when a
    connection ends: the server ends them after AUTHSVC_MAX_CONNECTION_AGE_SECONDS,
    and the same channel carries on over a new connection."""
    port = free_port()
    env = serve_env(jwks, port, AUTHSVC_MAX_CONNECTION_AGE_SECONDS="1")
    process = await spawn("serve", env=env, port=port)
    try:
        await process.wait_serving()
        async with caller_channel(process.target, TEST_CALLER_KEY) as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            request = auth_pb2.VerifyTokenRequest(token=es256(keys.ec1))
            await stub.VerifyToken(request, timeout=10)
            await asyncio.sleep(2.5)
            await stub.VerifyToken(request, timeout=10)
    finally:
        process.proc.send_signal(signal.SIGTERM)
        stdout, _ = await asyncio.wait_for(process.proc.communicate(), 15)

    events = [json.loads(line) for line in stdout.decode().splitlines()]
    peers = [
        e["peer"]
        for e in events
        if e["logger"] == "authsvc.api.status" and e.get("status") == "OK"
    ]
    assert len(peers) == 2
    assert peers[0] != peers[1]  # another client port: a new connection


def test_output_to_a_reader_that_went_away_is_no_traceback(tmp_path: Path) -> None:
    """`authsvc token | head -c 1` and the like: the pipe closes early."""
    process = subprocess.Popen(
        [AUTHSVC, "token"],
        env={"PATH": os.environ["PATH"], "AUTHSVC_DEV_DIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    process.stdout.close()  # before the token is written

    _, stderr = process.communicate(timeout=30)

    assert "Traceback" not in stderr.decode()
    assert "BrokenPipeError" not in stderr.decode()
