"""Standard gRPC health (Check and Watch) and server reflection."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.conftest import Keys, StartServer
from tests.support.jwks_stub import JwksStub
from tests.support.tokens import HS_SECRET, es256

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICES = ["", "authsvc.v1.AuthService"]


async def _check(server: object, service: str) -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    response = await server.health.Check(request, timeout=5)  # type: ignore[attr-defined]
    return int(response.status)


@pytest.mark.parametrize("service", SERVICES, ids=["overall", "auth"])
async def test_health_is_serving_once_keys_are_loaded(
    start_server: StartServer, jwks: JwksStub, service: str
) -> None:
    server = await start_server(jwks)

    assert await _check(server, service) == SERVING


async def test_health_is_not_serving_until_the_jwks_can_be_fetched_then_serving(
    start_server: StartServer, jwks: JwksStub, keys: Keys
) -> None:
    jwks.status = 503
    server = await start_server(jwks)
    watch = server.health.Watch(health_pb2.HealthCheckRequest(service=""))
    first = await watch.read()

    jwks.status = 200
    second = await asyncio.wait_for(watch.read(), timeout=10)
    watch.cancel()
    response = await server.verify(es256(keys.ec1))

    assert first.status == NOT_SERVING
    assert second.status == SERVING
    assert response.key_id == "ec-1"


async def test_empty_jwks_without_a_secret_is_not_serving(
    start_server: StartServer, jwks: JwksStub
) -> None:
    jwks.document = {"keys": []}

    server = await start_server(jwks)

    assert await _check(server, "") == NOT_SERVING


async def test_legacy_secret_alone_is_serving_even_while_the_jwks_is_down(
    start_server: StartServer, jwks: JwksStub
) -> None:
    jwks.status = 503

    server = await start_server(jwks, SUPABASE_JWT_SECRET=HS_SECRET)

    assert await _check(server, "") == SERVING


async def test_unknown_service_is_not_found(
    start_server: StartServer, jwks: JwksStub
) -> None:
    server = await start_server(jwks)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _check(server, "authsvc.v1.NoSuchService")

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_watch_sees_not_serving_when_the_server_shuts_down(
    start_server: StartServer, jwks: JwksStub
) -> None:
    server = await start_server(jwks)
    watch = server.health.Watch(health_pb2.HealthCheckRequest(service=""))
    first = await watch.read()

    stopping = asyncio.create_task(server.server.stop())
    second = await asyncio.wait_for(watch.read(), timeout=5)
    await stopping

    assert (first.status, second.status) == (SERVING, NOT_SERVING)


async def test_reflection_lists_the_services(
    start_server: StartServer, jwks: JwksStub
) -> None:
    server = await start_server(jwks)
    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)

    async def requests():  # type: ignore[no-untyped-def]
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    responses = [r async for r in stub.ServerReflectionInfo(requests())]
    names = {s.name for s in responses[0].list_services_response.service}

    assert {
        "authsvc.v1.AuthService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
