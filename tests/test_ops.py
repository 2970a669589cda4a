"""The operations port: metrics after real calls, /healthz and /readyz."""

from __future__ import annotations

import asyncio
import logging
import math

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from authsvc.v1 import auth_pb2, auth_pb2_grpc, data_pb2
from tests.conftest import Keys, Running, StartServer
from tests.support.callers import caller_channel, callers_toml
from tests.support.jwks_stub import JwksStub
from tests.support.pgbouncer import PgBouncer
from tests.support.postgres import TestDatabase
from tests.support.tokens import es256, supabase_claims
from tests.test_data import ADMIN, OwnPooler, notes
from tests.test_data import database as database  # the module's test database
from tests.test_data import own_pooler as own_pooler

DATA = "authsvc.v1.DataService"
AUTH = "authsvc.v1.AuthService"


def _url(running: Running, path: str) -> str:
    return f"http://127.0.0.1:{running.server.ops_port}{path}"


async def _get(running: Running, path: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as http:
        return await http.get(_url(running, path))


async def _samples(
    running: Running,
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = (await _get(running, "/metrics")).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float],
    name: str,
    **labels: str,
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_rpc_verification_and_jwks_metrics_count_real_calls(
    server: Running, keys: Keys
) -> None:
    await server.verify(es256(keys.ec1))
    await server.verify(es256(keys.ec1))
    await server.refusal(es256(keys.ec1, supabase_claims(exp=1000)))
    async with caller_channel(server.target, None) as anonymous:
        with pytest.raises(grpc.aio.AioRpcError):
            await auth_stub(anonymous).VerifyToken(
                auth_pb2.VerifyTokenRequest(token="x"), timeout=5
            )

    samples = await _samples(server)

    rpcs = "authsvc_rpcs_total"
    assert _value(samples, rpcs, method="VerifyToken", caller="tests", code="OK") == 2
    assert (
        _value(
            samples, rpcs, method="VerifyToken", caller="tests", code="UNAUTHENTICATED"
        )
        == 1
    )
    # Refused before a caller was known: counted under "-".
    assert (
        _value(samples, rpcs, method="VerifyToken", caller="-", code="UNAUTHENTICATED")
        == 1
    )
    assert (
        _value(
            samples,
            "authsvc_rpc_duration_seconds_count",
            method="VerifyToken",
            caller="tests",
        )
        == 3
    )
    verifications = "authsvc_token_verifications_total"
    assert _value(samples, verifications, outcome="accepted", reason="") == 2
    assert (
        _value(samples, verifications, outcome="rejected", reason="TOKEN_EXPIRED") == 1
    )
    assert _value(samples, "authsvc_jwks_fetches_total", result="ok") >= 1
    assert _value(samples, "authsvc_jwks_keys") == 2
    assert 0 <= _value(samples, "authsvc_jwks_age_seconds") < 60
    assert _value(samples, "process_resident_memory_bytes") > 0


async def test_a_call_refused_by_a_limit_is_counted_under_its_caller(
    start_server: StartServer, jwks: JwksStub, keys: Keys
) -> None:
    key = "asvc_rated-metrics-key-0123456789abcdef"
    running = await start_server(
        jwks,
        AUTHSVC_CALLERS=callers_toml(
            ("rated", key, ["tokens:verify"]), requests_per_second="1"
        ),
    )
    async with caller_channel(running.target, key) as channel:
        request = auth_pb2.VerifyTokenRequest(token=es256(keys.ec1))
        await auth_stub(channel).VerifyToken(request, timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await auth_stub(channel).VerifyToken(request, timeout=5)

    samples = await _samples(running)

    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    rpcs = "authsvc_rpcs_total"
    exhausted = "RESOURCE_EXHAUSTED"
    assert _value(samples, rpcs, method="VerifyToken", caller="rated", code="OK") == 1
    assert (
        _value(samples, rpcs, method="VerifyToken", caller="rated", code=exhausted) == 1
    )
    assert _value(samples, rpcs, method="VerifyToken", caller="-", code=exhausted) == 0


def auth_stub(channel: grpc.aio.Channel) -> auth_pb2_grpc.AuthServiceStub:
    return auth_pb2_grpc.AuthServiceStub(channel)


async def test_jwks_failures_and_key_age_before_any_fetch(
    start_server: StartServer, jwks: JwksStub
) -> None:
    jwks.status = 503
    running = await start_server(jwks)

    samples = await _samples(running)

    assert _value(samples, "authsvc_jwks_fetches_total", result="failed") >= 1
    assert math.isnan(_value(samples, "authsvc_jwks_age_seconds"))


async def test_database_metrics_show_the_pool_pooler_and_query_latency(
    database: tuple[TestDatabase, PgBouncer], own_pooler: OwnPooler
) -> None:
    _, running, stub = await own_pooler(2, AUTHSVC_DB_ALLOW_ADMIN="true")
    for _ in range(3):
        await stub.Select(
            data_pb2.SelectRequest(mode=ADMIN, target=notes()), timeout=10
        )

    samples = await _samples(running)

    assert (
        _value(samples, "authsvc_db_query_duration_seconds_count", operation="select")
        == 3
    )
    assert _value(samples, "authsvc_db_pooler", mode="transaction") == 1
    assert _value(samples, "authsvc_db_pool_max") == 7
    assert _value(samples, "authsvc_db_pool_connections") >= 1
    assert _value(samples, "authsvc_db_pool_in_use") == 0
    assert _value(samples, "authsvc_db_pool_waiting") == 0


async def _wait_ready(running: Running, status: int, path: str = "/readyz") -> dict:
    for _ in range(100):
        response = await _get(running, path)
        if response.status_code == status:
            return dict(response.json())
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path} never answered {status}")


async def test_readyz_follows_the_database_and_healthz_stays_up(
    database: tuple[TestDatabase, PgBouncer], own_pooler: OwnPooler
) -> None:
    bouncer, running, _ = await own_pooler(2)
    ready = await _wait_ready(running, 200)

    await bouncer.stop()
    down = await _wait_ready(running, 503)
    data_down = await _get(running, f"/readyz?service={DATA}")
    auth_up = await _get(running, f"/readyz?service={AUTH}")
    live = await _get(running, "/healthz")
    await bouncer.start()
    back = await _wait_ready(running, 200)

    assert ready == {"service": "", "status": "SERVING", "failing": []}
    assert down == {"service": "", "status": "NOT_SERVING", "failing": [DATA]}
    assert data_down.status_code == 503
    assert auth_up.status_code == 200
    assert live.status_code == 200
    assert back["status"] == "SERVING"


async def test_readyz_follows_jwks_availability(
    start_server: StartServer, jwks: JwksStub
) -> None:
    jwks.status = 503
    running = await start_server(jwks)

    down = await _wait_ready(running, 503)
    jwks.status = 200
    up = await _wait_ready(running, 200)

    assert down["failing"] == [AUTH]
    assert up["status"] == "SERVING"


async def test_readyz_for_an_unknown_service_is_404(server: Running) -> None:
    response = await _get(server, "/readyz?service=nope.Nothing")

    assert response.status_code == 404
    assert response.json()["status"] == "SERVICE_UNKNOWN"


async def test_readyz_is_503_from_the_start_of_shutdown(
    start_server: StartServer, jwks: JwksStub, keys: Keys
) -> None:
    running = await start_server(jwks)
    await _wait_ready(running, 200)
    url = _url(running, "/readyz")
    # A call for a rotated-in key waits on the slow JWKS: shutdown must drain it.
    jwks.serve_keys(keys.ec1, keys.ec2)
    jwks.delay_seconds = 0.5
    jwks.requested.clear()
    in_flight = asyncio.create_task(running.verify(es256(keys.ec2)))
    await asyncio.wait_for(jwks.requested.wait(), 5)  # the call is in the server
    seen: list[int] = []
    first_answer = asyncio.Event()

    async def watch() -> None:
        async with httpx.AsyncClient(timeout=2) as http:
            while True:
                try:
                    seen.append((await http.get(url)).status_code)
                except httpx.HTTPError:
                    return
                first_answer.set()
                await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    # Stop only once the watcher has seen the ready state (not after a fixed
    # sleep, which a loaded machine can outlast).
    await asyncio.wait_for(first_answer.wait(), 5)
    await running.server.stop()
    await asyncio.wait_for(watcher, 5)

    assert (await in_flight).sub
    assert seen[0] == 200
    assert seen[-1] == 503
    assert seen == sorted(seen)  # never back to 200


async def test_every_admin_write_leaves_an_audit_event(
    database: tuple[TestDatabase, PgBouncer],
    own_pooler: OwnPooler,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="authsvc.audit")
    _, _, stub = await own_pooler(2, AUTHSVC_DB_ALLOW_ADMIN="true")
    await stub.Insert(
        data_pb2.InsertRequest(
            mode=ADMIN,
            target=notes(),
            rows_json='{"owner": "11111111-1111-1111-1111-111111111111", "body": "x"}',
        ),
        timeout=10,
    )
    await stub.Select(data_pb2.SelectRequest(mode=ADMIN, target=notes()), timeout=10)
    await stub.Delete(
        data_pb2.DeleteRequest(
            mode=ADMIN,
            target=notes(),
            filter=data_pb2.Filter(
                condition=data_pb2.Condition(
                    column="body", op=data_pb2.EQ, value_json='"x"'
                )
            ),
        ),
        timeout=10,
    )

    audits = [r for r in caplog.records if r.name == "authsvc.audit"]
    assert [(r.operation, r.target, r.affected) for r in audits] == [  # type: ignore[attr-defined]
        ("insert", "public.notes", 1),
        ("delete", "public.notes", 1),
    ]
    assert all("caller=tests" in r.getMessage() for r in audits)


async def test_access_log_errors_only_logs_failed_calls_but_counts_all(
    start_server: StartServer,
    jwks: JwksStub,
    keys: Keys,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="authsvc.api.status")
    running = await start_server(jwks, AUTHSVC_ACCESS_LOG="errors")

    await running.verify(es256(keys.ec1))
    await running.refusal(es256(keys.ec1, supabase_claims(exp=1000)))
    samples = await _samples(running)

    access = [r for r in caplog.records if r.name == "authsvc.api.status"]
    assert [getattr(r, "status", None) for r in access] == ["UNAUTHENTICATED"]
    rpcs = "authsvc_rpcs_total"
    assert _value(samples, rpcs, method="VerifyToken", caller="tests", code="OK") == 1


def test_per_call_metrics_read_as_prometheus_clients_own_types() -> None:
    """The per-call counters and histograms are our own collector (for
    speed); a scrape must not tell them from prometheus_client's types fed
    the same observations, bucket edges and `le` spelling included."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from authsvc.ops.metrics import QUERY_BUCKETS, RPC_BUCKETS, Metrics

    ours = Metrics()
    theirs = CollectorRegistry()
    rpcs = Counter(
        "authsvc_rpcs",
        "RPCs handled, by method, caller and gRPC status code.",
        ("method", "caller", "code"),
        registry=theirs,
    )
    rpc_seconds = Histogram(
        "authsvc_rpc_duration_seconds",
        "Time to answer an RPC, from admission to response.",
        ("method", "caller"),
        buckets=RPC_BUCKETS,
        registry=theirs,
    )
    verifications = Counter(
        "authsvc_token_verifications",
        "Token verifications (VerifyToken and user mode), by outcome and reason.",
        ("outcome", "reason"),
        registry=theirs,
    )
    query_seconds = Histogram(
        "authsvc_db_query_duration_seconds",
        "Time from a connection request to the result, by operation.",
        ("operation",),
        buckets=QUERY_BUCKETS,
        registry=theirs,
    )
    # Below, on and between bounds, and past the last one.
    for seconds in (0.0001, 0.0005, 0.0007, 0.001, 0.3, 2.5, 3.0):
        ours.observe_rpc("VerifyToken", "app", "OK", seconds)
        rpcs.labels("VerifyToken", "app", "OK").inc()
        rpc_seconds.labels("VerifyToken", "app").observe(seconds)
    ours.observe_rpc("Select", "-", "UNAUTHENTICATED", 0.002)
    rpcs.labels("Select", "-", "UNAUTHENTICATED").inc()
    rpc_seconds.labels("Select", "-").observe(0.002)
    for reason in (None, None, "BAD_SIGNATURE"):
        ours.observe_verification(reason)
        outcome = "accepted" if reason is None else "rejected"
        verifications.labels(outcome, reason or "").inc()
    for operation, seconds in (("select", 0.004), ("select", 10.0), ("call", 11.0)):
        ours.observe_query(operation, seconds)
        query_seconds.labels(operation).observe(seconds)

    def lines(exposition: bytes) -> list[str]:
        names = ("authsvc_rpc", "authsvc_token_verif", "authsvc_db_query")
        return sorted(
            line
            for line in exposition.decode().splitlines()
            if any(name in line for name in names)
        )

    expected = lines(generate_latest(theirs))
    assert len(expected) > 40
    assert lines(ours.exposition()) == expected
